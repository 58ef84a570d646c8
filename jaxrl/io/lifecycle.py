"""Run folders after training: load the policy of a run, export it with its card.

``jaxrl export RUN_DIR --format onnx`` calls `export_run`: it rebuilds the run's loop from
config.json, restores the newest verified (or the best) checkpoint, asks the algorithm for its
deterministic policy as export ops (`policy_layers`) and writes the policy file plus a JSON card
that a robot-side runtime needs: observation layout, action order, scale/offset, default pose,
control period, PD gains and the training-config hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxrl.io import export
from jaxrl.io.checkpoint import CheckpointManager


def load_run(run_dir: str | Path, which: str = "latest") -> tuple[dict, Any, Any, Any, Any]:
    """(record, algo module, config, agent state, train env) of the run's chosen checkpoint."""
    from jaxrl.train import run

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxrl run folder (no config.json)")
    record = json.loads((run_dir / "config.json").read_text())
    mod = run.algo_module(record["algo"])
    config = run.config_from_dict(mod.Config, record["config"])
    env, _, _ = run._make_envs(record["env"], config.num_envs, record["seed"], record["env_kwargs"],
                               record.get("resets"))
    loop = mod.make_loop(config, env, None, record["steps"], record["seed"], num_evals=record["num_evals"])
    ckpt = CheckpointManager(run_dir, save_interval_s=float("inf"))
    step = ckpt.best_step() if which == "best" else None
    carry, _, _ = ckpt.restore(loop.init_carry(), step=step)
    return record, mod, config, carry.agent, env


def _robot_card_fields(env: Any) -> dict:
    """Actuator names, action scale/offset, default pose and PD gains read off the task."""
    task = getattr(env.unwrapped, "unwrapped", env.unwrapped)
    model = getattr(task, "mj_model", None)
    fields: dict[str, Any] = {}
    n = env.action_size
    if model is not None and model.nu == n:
        import mujoco

        fields["action_names"] = [
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"actuator_{i}" for i in range(n)
        ]
        position = (model.actuator_biastype[:, None] == mujoco.mjtBias.mjBIAS_AFFINE).ravel()
        if position.all():
            fields["kp"] = model.actuator_gainprm[:, 0].astype(float).tolist()
            fields["kd"] = (-model.actuator_biasprm[:, 2]).astype(float).tolist()
    else:
        fields["action_names"] = [f"action_{i}" for i in range(n)]
    cfg = getattr(task, "_config", None)
    scale = getattr(cfg, "action_scale", None) if cfg is not None else None
    default_pose = getattr(task, "_default_pose", None)
    if scale is not None and default_pose is not None and np.shape(default_pose) == (n,):
        fields["action_scale"] = float(scale)
        fields["action_offset"] = np.asarray(default_pose, float).tolist()
        fields["default_joint_pos"] = np.asarray(default_pose, float).tolist()
    return fields


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               which: str = "latest") -> Path:
    """Export the run's deterministic policy; returns the policy file's path."""
    if fmt not in ("onnx", "npz"):
        raise ValueError(f"format must be 'onnx' or 'npz', got {fmt!r}")
    record, mod, config, agent, env = load_run(run_dir, which)
    layers = mod.policy_layers(agent, config)
    card = export.make_card(
        obs_layout={"state": env.obs_spec["state"].size},
        control_dt=env.spec.dt,
        config=record,
        env=record["env"],
        algo=record["algo"],
        **_robot_card_fields(env),
    )
    out = Path(out) if out is not None else Path(run_dir) / f"policy.{fmt}"
    policy_path, _ = export.export_policy(layers, out, fmt, card=card)
    return policy_path
