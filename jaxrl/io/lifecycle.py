"""Run folders after training: load the policy of a run, export it with its card.

``jaxrl export RUN_DIR --format onnx`` calls `export_run`: it rebuilds the run's loop from
config.json, restores the newest verified (or the best) checkpoint, asks the algorithm for its
deterministic policy as export ops (`policy_layers`) and writes the policy file plus a JSON card
that a robot-side runtime needs: observation layout, action order, scale/offset, default pose,
control period, PD gains and the training-config hash.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
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
    return _load_run(run_dir, which, seed_index)[:5]


def _load_run(run_dir: str | Path, which: str, seed_index: int | None
              ) -> tuple[dict, Any, Any, Any, Any, int]:
    """`load_run` and the step (env steps) of the checkpoint it restored."""
    if which not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    run_dir = Path(run_dir)
    record = run.read_record(run_dir)
    seeds = check_seed_index(run_dir, record, seed_index)
    ckpt = CheckpointManager(run_dir, save_interval_s=float("inf"))
    step = best_step(ckpt, record, seed_index) if which == "best" else None
    algo, config, env, loop = run.rebuild(record, with_eval=False, devices=1, run_dir=run_dir)
    # Shapes only, and only the agent read from disk: no replay buffer built or loaded.
    template = jax.eval_shape(loop.init_carry)
    # the record must be the one the checkpoints were written with (its hash), as for a resume:
    # an edited config.json that keeps every shape (a width, an activation, ...) would
    # otherwise rebuild another policy around the stored weights and export it silently
    carry, _, step = ckpt.restore(template, step=step, only=lambda path: path.startswith(".agent"),
                                  expected_metadata=run.metadata(record, env))
    agent = carry.agent
    if seeds > 1:
        agent = jax.tree.map(lambda x: x[int(seed_index)], agent)
    return record, algo, config, agent, env, int(step)


def check_seed_index(run_dir: Path, record: dict, seed_index: int | None) -> int:
    """The run's seed count, after refusing a ``seed_index`` that names none of its seeds (or
    none given where it trained several)."""
    seeds = int(record.get("seeds", 1))
    if seeds > 1 and seed_index is None:
        raise ValueError(f"{run_dir} trained {seeds} seeds at once: choose one with seed_index 0..{seeds - 1} "
                         "(CLI: --seed-index I; export takes --seed I too)")
    if seed_index is not None and not 0 <= int(seed_index) < seeds:
        raise ValueError(f"seed_index={seed_index} (CLI: --seed-index): {run_dir} trained {seeds} seed(s), "
                         f"so 0..{seeds - 1}")
    return seeds


def best_step(ckpt: CheckpointManager, record: dict, seed_index: int | None) -> int:
    """The 'best' checkpoint of a run: the best evaluation of seed ``seed_index`` in a
    several-seed run, else of the run; refused when no checkpoint has a finite return."""
    step = ckpt.best_verified_step(int(seed_index) if int(record.get("seeds", 1)) > 1 else None)
    if step is None:
        raise ValueError(f"{ckpt.directory}: no checkpoint that verifies has a finite evaluation return, so "
                         "there is no 'best' one; use checkpoint='latest'")
    return step


def actor_obs_key(config: Any) -> str:
    """The observation key the deployed policy reads (a finetuning run's: its SAC config's)."""
    inner = getattr(config, "sac", config)
    return getattr(inner, "actor_obs_key", "state")


def _inner_task(env: Any) -> Any:
    """The single-env task under a VecEnv (and under Playground's own wrappers)."""
    return getattr(env.unwrapped, "unwrapped", env.unwrapped)


# How a Playground task turns the action into joint targets, read off its ``step`` (the code that
# ran in training): ``motor_targets = BASE + action * self._config.action_scale``.
_TARGET = re.compile(r"motor_targets\s*=\s*(?P<base>[\w.\[\]:]+)\s*\+\s*action\s*\*\s*self\._config\.action_scale\b")
_TARGET_CLIP = re.compile(r"motor_targets\s*=\s*jp\.clip\(\s*motor_targets\s*,\s*self\._lowers\s*,\s*self\._uppers\s*\)")
ACTION_MAPPINGS = {  # BASE -> (card "mapping", the formula a robot runtime applies)
    "self._default_pose": ("absolute", "target = offset + scale * action"),
    "state.data.ctrl": ("relative_to_previous_target", "target = previous target + scale * action"),
    "state.data.qpos[7:]": ("relative_to_joint_positions", "target = measured joint positions + scale * action"),
}


def action_mapping(task_type: type) -> tuple[str | None, str | None, bool]:
    """(mapping, formula, clipped to the task's ``_lowers``/``_uppers``) of a task class, from the
    source of its ``step``; (None, None, False) where it is not one of the forms above.
    Playground uses all three: the joystick tasks the absolute one, Go1Handstand and
    H1JoystickGaitTracking the previous target, Go1Getup and SpotGetup the measured pose."""
    try:
        src = inspect.getsource(task_type.step)
    except (AttributeError, OSError, TypeError):
        return None, None, False
    m = _TARGET.search(src)
    mapping, formula = ACTION_MAPPINGS.get(m.group("base"), (None, None)) if m else (None, None)
    return mapping, formula, mapping is not None and bool(_TARGET_CLIP.search(src))


def pd_gains(model: Any) -> dict:
    """``kp``, ``kd`` and effort limits of a MuJoCo model whose actuators are all position
    servos on single joints with gear 1 (else {}).  ``kd`` is the D gain the simulation applied: the
    actuator's own (−biasprm[2], ``kv``) plus the joint's ``damping`` — Playground's T1 and Go1
    put their D gain in the joint damping and leave the actuator's at 0.  ``effort_limit`` is the
    actuator's force range where limited, else the joint's actuator-force range, else None."""
    import mujoco

    nu = model.nu
    affine = model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
    on_joint = (model.actuator_trntype == mujoco.mjtTrn.mjTRN_JOINT) & (model.actuator_gear[:, 0] == 1)
    if nu == 0 or not (affine.all() and on_joint.all()):
        return {}
    joints = model.actuator_trnid[:, 0]
    kp = model.actuator_gainprm[:, 0]
    kd = -model.actuator_biasprm[:, 2] + model.dof_damping[model.jnt_dofadr[joints]]
    limits = []
    for i, j in enumerate(joints):
        if model.actuator_forcelimited[i]:
            limits.append(np.abs(model.actuator_forcerange[i]).max())
        elif model.jnt_actfrclimited[j]:
            limits.append(np.abs(model.jnt_actfrcrange[j]).max())
        else:
            limits.append(None)
    return {"kp": kp.astype(float).tolist(), "kd": kd.astype(float).tolist(),
            "effort_limit": [None if x is None else float(x) for x in limits]}


def _robot_card_fields(env: Any) -> tuple[dict, dict]:
    """Actuator names, action mapping (scale, offset, formula, clip), default pose, PD gains and
    effort limits read off the task and its MuJoCo model: (`make_card`'s keywords, its ``extra``)."""
    task = _inner_task(env)
    model = getattr(task, "mj_model", None)
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    n = env.action_size
    if model is not None and model.nu == n:
        import mujoco

        fields["action_names"] = [
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, i) or f"actuator_{i}" for i in range(n)
        ]
        if gains := pd_gains(model):
            fields["kp"], fields["kd"] = gains["kp"], gains["kd"]
            extra["effort_limit"] = gains["effort_limit"]
        if model.actuator_ctrllimited.all():  # MuJoCo clamps every target to this range
            extra["target_range"] = np.asarray(model.actuator_ctrlrange, float).T.tolist()
    else:
        fields["action_names"] = [f"action_{i}" for i in range(n)]
    cfg = getattr(task, "_config", None)
    scale = getattr(cfg, "action_scale", None) if cfg is not None else None
    default_pose = getattr(task, "_default_pose", None)
    mapping, formula, clipped = action_mapping(type(task))
    if scale is not None and np.ndim(scale) == 0 and mapping is not None:
        fields["action_scale"] = float(scale)
        if mapping == "absolute" and default_pose is not None and np.shape(default_pose) == (n,):
            fields["action_offset"] = np.asarray(default_pose, float).tolist()
        extra["action_mapping"] = {"mapping": mapping, "formula": formula}
        if clipped:
            extra["action_mapping"]["target_clip"] = [np.asarray(task._lowers, float).tolist(),
                                                      np.asarray(task._uppers, float).tolist()]
    elif scale is not None:
        extra["action_mapping"] = {"mapping": None, "formula": (
            f"not read: {type(task).__name__}.step maps actions to targets in a form this card does not "
            "know; read that task's step")}
    if default_pose is not None and np.shape(default_pose) == (n,):
        fields["default_joint_pos"] = np.asarray(default_pose, float).tolist()
    return fields, extra


def export_run(run_dir: str | Path, fmt: str | None = None, out: str | Path | None = None,
               which: str = "latest", seed_index: int | None = None) -> Path:
    """Export the run's deterministic policy (of seed ``seed_index`` for a several-seed run);
    returns the policy file's path.  ``fmt`` defaults to ``out``'s suffix (.onnx / .npz), else
    ONNX; a suffix naming the other format is refused (`export.policy_format`), before any work."""
    out = Path(out) if out is not None else Path(run_dir) / f"policy.{fmt or 'onnx'}"
    fmt = export.policy_format(out, fmt, default="onnx")
    record, algo, config, agent, env, step = _load_run(run_dir, which, seed_index)
    layers = algo.policy_layers(agent, config)
    key = actor_obs_key(config)
    robot, robot_extra = _robot_card_fields(env)
    card = export.make_card(
        obs_layout={key: env.obs_spec[key].size},
        control_dt=env.spec.dt,
        config=runfolder.identity(record),  # the hash the checkpoints carry (not where it ran)
        env=record["env"],
        algo=record["algo"],
        **robot,
        extra={
            **robot_extra,
            "seed": record["seed"] + int(seed_index or 0),
            "checkpoint": {"which": which, "env_steps": step, "run_env_steps": int(record["steps"]),
                           "run_finished": step >= int(record["steps"])},
            # training acted with these products; the exported file computes in float32
            "training_compute_dtype": getattr(getattr(config, "sac", config), "compute_dtype", "float32"),
        },
    )
    policy_path, _ = export.export_policy(layers, out, fmt, card=card)
    return policy_path


START_NOMINAL, START_ANYWHERE = "nominal", "anywhere"  # `evaluate_run`'s choices of initial states


def default_start(record: dict, env: str) -> str:
    """Where a run's own evaluations began: OmniReset runs (record ``eval_start``) from reset
    type (1), "anywhere", as the paper scores them; every other run, and any other task, from
    the task's nominal start.  A run trained on a hand-built mixture `VecEnv` records the dataset
    saved in its folder (`run.keep_resets`); one trained without a run folder, or before stop 37,
    has no ``resets`` and is played from the nominal start."""
    own = record.get("eval_start") == run.SCRATCH_EVAL and record.get("resets") and env == record["env"]
    return START_ANYWHERE if own else START_NOMINAL


def eval_envs(record: dict, env: str, episodes: int, seed: int, start: str) -> Any:
    """``episodes`` envs of task ``env`` for a run's evaluation, starting at ``start``:
    "nominal", the task's own reset; "anywhere", OmniReset's type (1) states of the reset dataset
    the run trained on (`envs.omnireset.scratch_env`)."""
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

    Returns (and writes ``RUN_DIR/eval.json``; for another ``env``, ``RUN_DIR/eval_<env>.json``)
    the per-episode returns and lengths (and, for tasks that score it, success at each episode's end
    and the success rate).  With
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
    record, algo, config, agent, _, step = _load_run(run_dir, which, seed_index)
    policy = export.to_jax(algo.policy_layers(agent, config))
    obs_key = actor_obs_key(config)
    name = env or record["env"]
    if name != record["env"]:
        run.check_same_layout(record, name, record.get("env_kwargs") or {}, "evaluate")
    start = start or default_start(record, name)
    env = eval_envs({**record, "resets": run.resets_of(record, run_dir)}, name, episodes, seed, start)
    k = grid if video is not None else 0
    if k:  # a task that cannot be rendered, or a video that cannot be written, is refused
        from jaxrl.io import video as video_io  # before anything compiles

        video_io.check_request(sim_task(env).mj_model, video, height, width, camera)

    def frame(s):  # what the video needs of the first k envs
        d = s.inner.data
        return (d.qpos[:k], d.mocap_pos[:k], d.mocap_quat[:k])

    # a short evaluation (e.g. a 5-step check) compiles the quick way (`few_steps_options`), a
    # longer one as a run's evaluations do (`short_program_options`: as fast, compiled sooner)
    @functools.partial(jax.jit, compiler_options=few_steps_options(episodes * env.episode_length)
                       or short_program_options())
    def rollout(key):
        start = env.without_auto_reset().reset(key)  # one episode: no `reset_pool` to draw
        return episode_rollout(env, lambda obs, _: policy(obs[obs_key]), start, key,
                               record=frame if k else None)

    ep = rollout(jax.random.PRNGKey(seed))
    ret, length, frames = np.asarray(ep.returns, float), np.asarray(ep.lengths).astype(int), ep.recorded
    report = {
        "env": name, "start": start, "checkpoint": which, "checkpoint_env_steps": step,
        "seed_index": int(seed_index or 0), "episodes": episodes, "seed": seed,
        "returns": ret.tolist(), "lengths": length.tolist(),
        "mean_return": float(ret.mean()), "std_return": float(ret.std()),
    }
    if ep.success is not None:  # tasks that score success (OmniReset's): 1 where an episode ended in it
        report["success"] = np.asarray(ep.success, int).tolist()
        report["success_rate"] = float(np.mean(report["success"]))
    if video is not None:
        report["video"] = str(_write_rollout_video(env, frames, length[:k], video, height, width, camera))
    if write:  # another task's evaluation beside the run's own, not over it
        out = "eval.json" if name == record["env"] else f"eval_{name}.json"
        (Path(run_dir) / out).write_text(json.dumps(report, indent=1))
    return report


def _write_rollout_video(env, frames, lengths, path, height, width, camera) -> Path:
    """[T + 1, K, ...] states (the start, then after each step) -> video; each episode's frames
    stop at its last state, the one after its last step (held)."""
    from jaxrl.io import video

    qpos, mocap_pos, mocap_quat = (np.asarray(f) for f in frames)
    t = np.arange(qpos.shape[0])[:, None]
    idx = np.minimum(t, lengths[None, :])  # [T + 1, K] hold the last frame
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
