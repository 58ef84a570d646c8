"""Run folders after training: load the policy of a run, export it with its card.

``jaxrl export RUN_DIR --format onnx`` calls `export_run`: it rebuilds the run's loop from
config.json, restores the newest verified (or the best) checkpoint, asks the algorithm for its
deterministic policy as export ops (`policy_layers`) and writes the policy file plus a JSON card
that a robot-side runtime needs: observation layout, action order, scale/offset, default pose,
control period, PD gains and the training-config hash.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from envs._runtime import few_steps_options, short_program_options
from jaxrl.io import export, runfolder
from jaxrl.io.checkpoint import CheckpointManager
from jaxrl.train import run


def load_run(run_dir: str | Path, which: str = "latest", seed_index: int | None = None
             ) -> tuple[dict, Any, Any, Any, Any]:
    """(record, registry.Algorithm, config, agent state, train env) of the run's chosen checkpoint.

    A run that trained K > 1 seeds at once stores every seed's agent; ``seed_index`` (0 .. K-1,
    the seed ``seed + seed_index``) picks one.  A one-seed run takes None or 0."""
    if which not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    run_dir = Path(run_dir)
    record = run.read_record(run_dir)
    seeds = int(record.get("seeds", 1))
    if seeds > 1 and seed_index is None:
        raise ValueError(f"{run_dir} trained {seeds} seeds at once: choose one with seed_index 0..{seeds - 1} "
                         "(CLI: --seed)")
    if seed_index is not None and not 0 <= int(seed_index) < seeds:
        raise ValueError(f"seed_index={seed_index}: {run_dir} trained {seeds} seed(s), so 0..{seeds - 1}")
    algo, config, env, loop = run.rebuild(record, with_eval=False, devices=1)
    ckpt = CheckpointManager(run_dir, save_interval_s=float("inf"))
    step = ckpt.best_step() if which == "best" else None
    # Shapes only, and only the agent read from disk: no replay buffer built or loaded.
    template = jax.eval_shape(loop.init_carry)
    carry, _, _ = ckpt.restore(template, step=step, only=lambda path: path.startswith(".agent"))
    agent = carry.agent
    if seeds > 1:
        agent = jax.tree.map(lambda x: x[int(seed_index)], agent)
    return record, algo, config, agent, env


def _inner_task(env: Any) -> Any:
    """The single-env task under a VecEnv (and under Playground's own wrappers)."""
    return getattr(env.unwrapped, "unwrapped", env.unwrapped)


def _robot_card_fields(env: Any) -> dict:
    """Actuator names, action scale/offset, default pose and PD gains read off the task."""
    task = _inner_task(env)
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
               which: str = "latest", seed_index: int | None = None) -> Path:
    """Export the run's deterministic policy (of seed ``seed_index`` for a several-seed run);
    returns the policy file's path."""
    if fmt not in ("onnx", "npz"):
        raise ValueError(f"format must be 'onnx' or 'npz', got {fmt!r}")
    record, algo, config, agent, env = load_run(run_dir, which, seed_index)
    layers = algo.policy_layers(agent, config)
    card = export.make_card(
        obs_layout={"state": env.obs_spec["state"].size},
        control_dt=env.spec.dt,
        config=runfolder.identity(record),  # the hash the checkpoints carry (not where it ran)
        env=record["env"],
        algo=record["algo"],
        extra={"seed": record["seed"] + int(seed_index or 0)},
        **_robot_card_fields(env),
    )
    out = Path(out) if out is not None else Path(run_dir) / f"policy.{fmt}"
    policy_path, _ = export.export_policy(layers, out, fmt, card=card)
    return policy_path


START_NOMINAL, START_ANYWHERE = "nominal", "anywhere"  # `evaluate_run`'s choices of initial states


def default_start(record: dict, env: str) -> str:
    """Where a run's own evaluations began: OmniReset runs (record ``eval_start``) from reset
    type (1), "anywhere", as the paper scores them; every other run, and any other task, from
    the task's nominal start.  A run trained on a hand-built mixture `VecEnv` records the dataset
    saved in its folder (`run.keep_resets`); one trained without a run folder, or before stop 37,
    has no ``resets`` and is played from the nominal start."""
    from jaxrl.train import run

    own = record.get("eval_start") == run.SCRATCH_EVAL and record.get("resets") and env == record["env"]
    return START_ANYWHERE if own else START_NOMINAL


def eval_envs(record: dict, env: str, episodes: int, seed: int, start: str) -> Any:
    """``episodes`` envs of task ``env`` for a run's evaluation, starting at ``start``:
    "nominal", the task's own reset; "anywhere", OmniReset's type (1) states of the reset dataset
    the run trained on (`envs.omnireset.scratch_env`)."""
    from jaxrl.train import run

    kwargs = record.get("env_kwargs") or {}
    if start == START_NOMINAL:  # the task object a run in this process trained on: its trace reused
        return run.shared_env(env, episodes, seed, kwargs)
    if start != START_ANYWHERE:
        raise ValueError(f"start must be {START_NOMINAL!r} or {START_ANYWHERE!r}, got {start!r}")
    resets = record.get("resets")
    if not resets or env != record["env"]:
        raise ValueError(f"start={START_ANYWHERE!r} draws from the reset dataset a run trained on "
                         f"(train --resets FILE); this run of {record['env']} has none for {env}: "
                         f"use start={START_NOMINAL!r}")
    from envs import omnireset

    mixture = omnireset.make_mixture_env(env, resets["path"], resets.get("probs"), num_envs=episodes,
                                         seed=seed, **kwargs)
    scratch = omnireset.scratch_env(mixture, episodes, seed)
    if scratch is None:
        raise ValueError(f"{resets['path']} holds no {omnireset.SCRATCH_TYPE!r} states: use "
                         f"start={START_NOMINAL!r}")
    return scratch


def evaluate_run(run_dir: str | Path, *, episodes: int = 10, which: str = "latest", seed: int = 0,
                 video: str | Path | None = None, grid: int = 1, height: int = 240, width: int = 320,
                 camera: str | int | None = None, write: bool = True,
                 seed_index: int | None = None, env: str | None = None, start: str | None = None) -> dict:
    """Deterministic policy of a run on ``episodes`` fresh episodes (one per env, in parallel).

    ``env`` evaluates on another registered task with the same observation/action layout (a
    finetuning target: how the pretrained policy does in the changed world); default the run's.
    ``start``: where episodes begin, "nominal" or "anywhere" (`eval_envs`); default where the run's
    own evaluations began (`default_start`: "anywhere" for an OmniReset run, as the paper scores).

    Returns (and writes ``RUN_DIR/eval.json``) the per-episode returns and lengths.  With
    ``video`` it also renders the first ``grid`` episodes with MuJoCo's renderer into one video
    (a grid when ``grid > 1``); frames after an episode ends hold its last state.  ``camera``
    None picks the task's first camera (set up by its author) or MuJoCo's free camera.
    """
    from jaxrl.train.evaluate import episode_rollout

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if start not in (None, START_NOMINAL, START_ANYWHERE):
        raise ValueError(f"start must be {START_NOMINAL!r} or {START_ANYWHERE!r}, got {start!r}")
    if video is not None and not 1 <= grid <= episodes:
        raise ValueError(f"grid must be between 1 and episodes={episodes}, got {grid}")
    record, algo, config, agent, _ = load_run(run_dir, which, seed_index)
    policy = export.to_jax(algo.policy_layers(agent, config))
    name = env or record["env"]
    if name != record["env"]:
        from jaxrl.train import run

        run.check_same_layout(record, name, record.get("env_kwargs") or {}, "evaluate")
    start = start or default_start(record, name)
    env = eval_envs(record, name, episodes, seed, start)
    k = grid if video is not None else 0

    def frame(s):  # what the video needs of the first k envs
        d = s.inner.data
        return (d.qpos[:k], d.mocap_pos[:k], d.mocap_quat[:k])

    # a short evaluation (e.g. a 5-step check) compiles the quick way (`few_steps_options`), a
    # longer one as a run's evaluations do (`short_program_options`: as fast, compiled sooner)
    @functools.partial(jax.jit, compiler_options=few_steps_options(episodes * env.episode_length)
                       or short_program_options())
    def rollout(key):
        start = env.without_auto_reset().reset(key)  # one episode: no `reset_pool` to draw
        return episode_rollout(env, lambda obs, _: policy(obs["state"]), start, key,
                               record=frame if k else None)

    ret, length, frames = rollout(jax.random.PRNGKey(seed))
    ret, length = np.asarray(ret, float), np.asarray(length).astype(int)
    report = {
        "env": name, "start": start, "checkpoint": which, "episodes": episodes, "seed": seed,
        "returns": ret.tolist(), "lengths": length.tolist(),
        "mean_return": float(ret.mean()), "std_return": float(ret.std()),
    }
    if video is not None:
        report["video"] = str(_write_rollout_video(env, frames, length[:k], video, height, width, camera))
    if write:
        (Path(run_dir) / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def _write_rollout_video(env, frames, lengths, path, height, width, camera) -> Path:
    """[T, K, ...] states -> video; each episode's frames stop at its end (held)."""
    from jaxrl.io import video

    qpos, mocap_pos, mocap_quat = (np.asarray(f) for f in frames)
    t = np.arange(qpos.shape[0])[:, None]
    idx = np.minimum(t, np.maximum(lengths[None, :] - 1, 0))  # [T, K] hold the last frame
    cols = np.arange(qpos.shape[1])[None, :]
    qpos, mocap_pos, mocap_quat = qpos[idx, cols], mocap_pos[idx, cols], mocap_quat[idx, cols]
    dt = env.spec.dt or 0.02
    stride = max(1, int(np.ceil((1.0 / dt) / 50)))  # at most ~50 fps: smaller files, same speed
    model = sim_task(env).mj_model
    if camera is None:
        camera = 0 if model.ncam else -1
    rendered = video.render_frames(
        model, qpos[::stride], mocap_pos=mocap_pos[::stride] if model.nmocap else None,
        mocap_quat=mocap_quat[::stride] if model.nmocap else None,
        height=height, width=width, camera=camera)
    return video.write_video(path, rendered, fps=1.0 / (dt * stride))


def sim_task(env: Any) -> Any:
    """`_inner_task`, checked to be a MuJoCo task (it has an ``mj_model``)."""
    task = _inner_task(env)
    if not hasattr(task, "mj_model"):
        raise NotImplementedError(f"{env.name}: rendering needs a MuJoCo task with an mj_model "
                                  "(Playground or jaxrl tasks; Brax pipelines are not supported)")
    return task
