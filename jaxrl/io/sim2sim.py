"""Sim-to-sim: run an exported policy with MuJoCo's C simulator instead of MJX.

The step every robotics team takes before a real robot: the same policy file the robot will load
(ONNX through onnxruntime, or the npz through the shipped numpy forward), driving a different
physics implementation (MuJoCo C, float64, its own solver and collision code) on the same model.
A policy that only works through MJX's float32 quirks shows up here as a return gap.

The physics swap itself (`envs.mujoco_c`: the task's own step with ``mjx_env.step`` /
``physics_step`` replaced by a host call into ``mujoco.mj_step``) is shared with the finetuning
targets simulated by MuJoCo C; the task's own observation, reward and termination code runs
unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs._runtime import few_steps_options, notice, short_program_options

# The physics swap lives with the envs (the finetuning targets simulated by MuJoCo C use it too).
from envs.mujoco_c import CPhysics, mujoco_physics
from envs.wrappers import PHYSICS_MATMUL_PRECISION, strong_types


def load_policy(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """obs [B, D] float32 -> action [B, A] from an exported ``.onnx`` (onnxruntime) or ``.npz``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no policy file {path}; export one with `jaxrl export RUN_DIR`")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda obs: session.run(["action"], {"obs": np.asarray(obs, np.float32)})[0]
    if path.suffix == ".npz":
        from jaxrl.io import numpy_policy

        layers = numpy_policy.load_npz(path)
        return lambda obs: numpy_policy.forward(layers, np.asarray(obs, np.float32))
    raise ValueError(f"policy file must end in .onnx or .npz, got {path.name}")


def _state_obs(obs: Any, key: str = "state") -> np.ndarray:
    return np.asarray(obs[key] if hasattr(obs, "keys") else obs, np.float32)


def policy_obs_key(policy_file: str | Path) -> str:
    """The observation key an exported policy reads: its card's (first) layout block; "state"
    for a file without a card."""
    from jaxrl.io.export import read_card

    card = read_card(policy_file)
    layout = card["observation"]["layout"] if card else []
    return layout[0]["name"] if len(layout) == 1 else "state"


def _stale_export(policy_file: Path, want: dict) -> str | None:
    """Why ``policy_file`` (exported earlier into the run folder) is not the policy asked for:
    another seed, config or checkpoint, or a card without them; None when it is."""
    from jaxrl.io.checkpoint import file_sha256
    from jaxrl.io.export import read_card

    card = read_card(policy_file)
    if card is None:
        return "it has no card"
    if (card.get("policy") or {}).get("sha256") != file_sha256(policy_file):
        return "its card describes another file (an export stopped half way?)"
    have = {"seed": card.get("seed"), "config_sha256": card.get("config_sha256"),
            "env_steps": (card.get("checkpoint") or {}).get("env_steps")}
    diff = [f"{k} {have[k]} (wanted {want[k]})" for k in want if have[k] != want[k]]
    return ", ".join(diff) or None


def _programs(task: Any, env_steps: int, reset: Callable | None = None) -> tuple[Callable, Callable]:
    """Fresh jitted single-env (reset, step) of ``task``, traced under the physics matmul
    precision as training traces them.  Both return strong types (`envs.wrappers.strong_types`),
    so a reset state and a stepped one share one signature and the step compiles once, not twice
    (T1, impl=jax, CPU: the second compile took 20-25 s).  They run a few hundred steps, so
    compiling dominates: `short_program_options`, or `few_steps_options` when the ``env_steps``
    they will take are few (e.g. ``--max-steps 5``).  ``reset``: the one-env reset to call
    instead of ``task.reset`` (`envs.wrappers.VecEnv.one_env_reset`: its trace is reused)."""
    quick = few_steps_options(env_steps) or short_program_options()
    one_reset = task.reset if reset is None else reset

    def reset_program(key):
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            return strong_types(one_reset(key))

    def step_program(state, action):
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            return strong_types(task.step(state, action))

    return jax.jit(reset_program, compiler_options=quick), jax.jit(step_program, compiler_options=quick)


def run_episodes(task: Any, policy: Callable[[np.ndarray], np.ndarray], keys: jax.Array,
                 episode_length: int, physics: CPhysics | None = None,
                 reset: Callable | None = None, obs_key: str = "state") -> dict:
    """Run one episode per key with ``policy`` (numpy in, numpy out) on the single-env ``task``.

    ``physics=None`` steps with MJX (the task as trained); a `CPhysics` steps with MuJoCo C.
    ``reset``: a jitted reset (key -> state) every episode starts from; by default the task's
    own, traced with the physics swapped.  Returns per-episode returns and lengths.
    """
    ctx = mujoco_physics(task, physics) if physics is not None else contextlib.nullcontext()
    # Fresh closures (a jit of the bound method could reuse a trace made without the swap), and
    # the whole loop inside the context: a re-trace (e.g. reset and step states differing in
    # weak types) must see the swap too.
    own_reset, step = _programs(task, len(keys) * episode_length)
    reset = own_reset if reset is None else reset
    returns, lengths = [], []
    with ctx:
        for key in keys:
            state, total, t = reset(key), 0.0, 0
            while t < episode_length:
                action = np.asarray(policy(_state_obs(state.obs, obs_key)[None]), np.float32)[0]
                if not np.isfinite(action).all():
                    raise FloatingPointError(f"the policy returned a non-finite action at step {t}")
                calls = physics.calls if physics is not None else 0
                state = step(state, jnp.asarray(action))
                if physics is not None and physics.calls != calls + 1:
                    raise RuntimeError(f"{type(task).__name__}.step did not advance physics through "
                                       "MuJoCo C exactly once; sim2sim cannot swap its physics")
                total += float(state.reward)
                t += 1
                if float(state.done) > 0.5:
                    break
            returns.append(total)
            lengths.append(t)
    return {"returns": returns, "lengths": lengths}


def sim2sim(run_dir: str | Path, *, episodes: int = 3, policy_file: str | Path | None = None,
            which: str = "latest", seed: int = 0, max_steps: int | None = None,
            write: bool = True, seed_index: int | None = None, max_gap: float | None = None) -> dict:
    """Exported policy in MuJoCo C vs in MJX, same task, same initial states (MJX's reset of the
    same keys, for both); writes sim2sim.json.

    The policy file defaults to ``RUN_DIR/policy.onnx``, exported first when missing or when its
    card names another seed, config or checkpoint than ``seed_index`` and ``which`` ask for (an
    older export, a run resumed since).  A ``policy_file`` given runs as it is: ``which`` and
    ``seed_index``, which choose what to export, are refused beside it.  Both sides run the same
    file through the same runtime, so the gap is the simulator's alone.  The MJX side uses the JAX implementation (the data
    layout the C state is converted into) even when the run trained with MJX-Warp; observation
    and reward code are the task's either way.  ``max_gap``: the largest |relative gap| that
    passes (the report's ``passed``; the CLI exits with status 1 when it fails).
    """
    import envs
    from jaxrl.io import export, lifecycle, runfolder
    from jaxrl.io.checkpoint import CheckpointManager

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None for the task's episode length), got {max_steps}")
    if max_gap is not None and not max_gap >= 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if policy_file is not None and (which != "latest" or seed_index is not None):
        asked = ", ".join([f"which={which!r}"] * (which != "latest")
                          + [f"seed_index={seed_index!r}"] * (seed_index is not None))
        raise ValueError(f"policy_file={str(policy_file)!r} runs that file as it is, so {asked} would be ignored: "
                         "drop policy_file (CLI: --policy) to run RUN_DIR/policy.onnx, exported from the "
                         "checkpoint and seed asked for, or export that policy first (`jaxrl export`)")
    run_dir = Path(run_dir)
    record = runfolder.read_record(run_dir)
    if policy_file is None:
        policy_file = run_dir / "policy.onnx"
        lifecycle.check_seed_index(run_dir, record, seed_index)
        if policy_file.exists():
            ckpt = CheckpointManager(run_dir, save_interval_s=float("inf"))
            # (the newest step, not verified here: hashing a checkpoint with its replay buffer
            # can take minutes, and an export restores the newest that verifies anyway)
            want = {"seed": record["seed"] + int(seed_index or 0),
                    "config_sha256": runfolder.config_hash(runfolder.identity(record)),
                    "env_steps": (lifecycle.best_step(ckpt, record, seed_index) if which == "best"
                                  else ckpt.latest_step())}
            if stale := _stale_export(policy_file, want):
                notice(f"sim2sim: re-exporting {policy_file}: the file there is not the policy asked for "
                       f"({stale})")
                lifecycle.export_run(run_dir, fmt="onnx", which=which, seed_index=seed_index)
        else:
            lifecycle.export_run(run_dir, fmt="onnx", which=which, seed_index=seed_index)
    policy = load_policy(policy_file)
    obs_key = policy_obs_key(policy_file)
    kwargs = dict(record.get("env_kwargs") or {})
    if envs.source_of(record["env"]) != "brax":  # (our own tasks are JAX, or take impl: variants)
        kwargs["impl"] = "jax"  # the data layout `mjx.put_data(impl="jax")` produces
    venv = envs.make(record["env"], num_envs=1, seed=seed, **kwargs)
    task = lifecycle.sim_task(venv)
    length = min(venv.episode_length, max_steps or venv.episode_length)
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    physics = CPhysics(task.mj_model)
    # Both sides start every episode from MJX's reset of the same key: the same initial states,
    # so the gap is the stepping's alone (a reset that settles, as CheetahRun's 200 substeps,
    # settles in MJX).  It reuses the trace the observation size made (`VecEnv.one_env_reset`).
    reset, _ = _programs(task, episodes * length, venv.one_env_reset() if venv.env is task else None)
    mjx_side = run_episodes(task, policy, keys, length, reset=reset, obs_key=obs_key)
    c_side = run_episodes(task, policy, keys, length, physics, reset=reset, obs_key=obs_key)
    m_mean, c_mean = float(np.mean(mjx_side["returns"])), float(np.mean(c_side["returns"]))
    card = export.read_card(policy_file) or {}
    report = {
        "env": record["env"], "policy": str(policy_file), "episodes": episodes, "episode_length": length,
        "policy_seed": card.get("seed"), "policy_checkpoint": card.get("checkpoint"),
        "mjx_returns": mjx_side["returns"], "mujoco_returns": c_side["returns"],
        "mjx_lengths": mjx_side["lengths"], "mujoco_lengths": c_side["lengths"],
        "mjx_mean_return": m_mean, "mujoco_mean_return": c_mean,
        "relative_gap": (c_mean - m_mean) / max(abs(m_mean), 1e-8),
        "mujoco_instability_warnings": physics.warnings, "mujoco_step_calls": physics.calls,
        "mujoco_version": __import__("mujoco").__version__,
    }
    if max_gap is not None:
        report["max_gap"] = float(max_gap)
        report["passed"] = bool(abs(report["relative_gap"]) <= max_gap)
    if write:
        (run_dir / "sim2sim.json").write_text(json.dumps(report, indent=1))
    return report


def format_report(report: dict) -> str:
    """A few lines for the console: returns per simulator and the relative gap."""
    lines = [f"sim2sim {report['env']}  policy={report['policy']}  episodes={report['episodes']}"]
    for side, name in (("mjx", "MJX (JAX impl)"), ("mujoco", "MuJoCo C")):
        rets = ", ".join(f"{r:.1f}" for r in report[f"{side}_returns"])
        lines.append(f"  {name:<17} mean return {report[f'{side}_mean_return']:9.2f}   [{rets}]")
    lines.append(f"  relative gap (C - MJX) / |MJX|: {report['relative_gap']:+.3f}   "
                 f"MuJoCo instability warnings: {report['mujoco_instability_warnings']}")
    if "passed" in report:
        lines.append(f"  {'PASSED' if report['passed'] else 'FAILED'}: |gap| "
                     f"{abs(report['relative_gap']):.3f} {'<=' if report['passed'] else '>'} max gap {report['max_gap']}")
    return "\n".join(lines)
