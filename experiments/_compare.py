"""What the ``*sac_vs_brax.py`` experiments share: Brax's own SAC at our budget, our trainer's run,
returns at equal env steps, timing, and the JSON / PNG writing.

Brax SAC runs with MuJoCo Playground's tuned `brax_sac_config` (via `envs.upstream`); the
settings that decide cost — num_envs, batch size, gradient updates per env step, replay sizes,
eval envs — come from our config, so both sides spend the same data and compute budget.
Compilation is timed the same way for both: the seconds JAX reports for tracing, lowering and
compiling (``jax.monitoring`` events) while a run is in progress.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax

import envs
from envs import upstream
from jaxrl.io.metrics import plot_learning_curve

EVAL_ENVS = 16  # = jaxrl.train.run.NUM_EVAL_ENVS: Brax evaluates on as many envs as ours
_COMPILE_EVENTS = "/jax/core/compile/"  # jaxpr trace, MLIR lowering, backend compile
_compile_s = [0.0]


def _on_duration(event: str, seconds: float, **_) -> None:
    if event.startswith(_COMPILE_EVENTS):
        _compile_s[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
    """Seconds JAX has spent tracing, lowering and compiling in this process so far."""
    return _compile_s[0]


def cold_compilation_cache() -> None:
    """Both sides of a comparison compile cold, in an empty compilation cache of this process's
    own (removed at exit), unless ``$JAXRL_COMPILATION_CACHE`` names one: with the shared warm
    cache the compile-inclusive ratios depended on which side's programs earlier runs had left
    there (stop 28's seeds 1 and 2 compiled in 9-16 s, seed 0 in 71-184 s)."""
    import atexit
    import shutil

    if os.environ.get("JAXRL_COMPILATION_CACHE"):
        return
    cache = tempfile.mkdtemp(prefix="jaxrl_compare_cache_")
    jax.config.update("jax_compilation_cache_dir", cache)
    atexit.register(shutil.rmtree, cache, ignore_errors=True)


def parse_args(doc: str, tasks: list[str], steps: int, out: str, seeds: bool = False,
               brax_choices: bool = False) -> argparse.Namespace:
    """The command line every comparison script takes (--tasks --steps --seed --num-evals --out;
    ``seeds``: also --seeds K, seeds per side; ``brax_choices``: also --brax-choices and
    --brax-from FILE, see sac_vs_brax.py), in a process that compiles cold (`cold_compilation_cache`)."""
    cold_compilation_cache()
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=tasks)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-evals", type=int, default=5)
    p.add_argument("--out", default=out)
    if seeds:
        p.add_argument("--seeds", type=int, default=1, help="seeds per side (>= 2: means and intervals)")
    if brax_choices:
        p.add_argument("--brax-choices", action="store_true", help="ours with Brax's three SAC choices")
        p.add_argument("--brax-from", help="reuse Brax's side of an earlier --seeds results JSON")
    a = p.parse_args()
    if seeds and a.seeds < 1:
        p.error(f"--seeds {a.seeds}: give K >= 1")
    return a


def run_ours(train: Callable, task: str, cfg, steps: int, seed: int, num_evals: int) -> dict:
    """One run of our ``train(task, cfg, steps=..., ...)`` (`jaxrl.sac.train`, `jaxrl.flashsac.train`)."""
    t0, c0 = time.perf_counter(), compile_seconds()
    _, rows = train(task, cfg, steps=steps, seed=seed, num_evals=num_evals, progress=False)
    wall = time.perf_counter() - t0
    return {"rows": [{k: r[k] for k in ("env_steps", "eval_return", "wall_s", "sps") if k in r} for r in rows],
            "wall_s": wall, "compile_s": rows[-1]["compile_s"] if rows else None,
            "jax_compile_s": compile_seconds() - c0}


def brax_network(kw: dict) -> dict:
    """The Brax SAC network settings ``kw['network_factory']`` builds with (its defaults + Playground's)."""
    factory = kw["network_factory"]
    params = inspect.signature(factory.func).parameters
    net = {k: p.default for k, p in params.items()
           if p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, str, tuple, bool))}
    net["activation"] = getattr(params["activation"].default, "__name__", str(params["activation"].default))
    return net | dict(factory.keywords)


def brax_sac_steps(steps: int, num_envs: int, min_buffer: int, num_evals: int) -> int:
    """Env steps Brax's ``sac.train`` really takes when asked for ``steps`` with ``num_evals``
    evaluations after its first (`run_brax`): its prefill in whole vector steps, then training
    rounded up to whole epochs of vector steps (brax/training/agents/sac/train.py).  Our run is
    given this budget (it splits a budget exactly since stop 51), so both end at the same env step:
    40,000 asked with 16 envs, 5 evaluations and a 2,048 prefill is 40,048 for both."""
    prefill = -(-min_buffer // num_envs) * num_envs
    per_epoch = -(-(steps - prefill) // (max(num_evals, 1) * num_envs))
    return prefill + max(num_evals, 1) * per_epoch * num_envs


def run_brax(task: str, cfg, steps: int, seed: int, num_evals: int) -> dict:
    """Brax's ``sac.train`` with Playground's config for ``task``, but num_envs, batch size,
    updates per env step and replay sizes from ``cfg`` and `EVAL_ENVS` eval envs."""
    import brax_compat  # experiments/, beside this module

    brax_compat.patch()  # jax.device_put_replicated / _sharded, gone in JAX >= 0.10
    from brax.training.agents.sac import train as sac
    from mujoco_playground import registry, wrapper

    kw = upstream.brax_sac_kwargs(task)
    kw.update(num_timesteps=steps, num_envs=cfg.num_envs, batch_size=cfg.batch_size,
              grad_updates_per_step=cfg.updates_per_step, min_replay_size=cfg.min_buffer,
              max_replay_size=cfg.buffer_size, num_evals=num_evals + 1, num_eval_envs=EVAL_ENVS, seed=seed)
    kw.pop("episode_length", None)
    env = registry.load(task, config_overrides={"impl": envs.default_impl(task) or "jax"})
    rows, t0, c0 = [], time.perf_counter(), compile_seconds()

    def progress(step, metrics):
        rows.append({"env_steps": int(step), "eval_return": float(metrics["eval/episode_reward"]),
                     "wall_s": time.perf_counter() - t0})

    sac.train(environment=env, eval_env=env, wrap_env_fn=wrapper.wrap_for_brax_training,
              progress_fn=progress, episode_length=1000, **kw)
    settings = {k: v for k, v in kw.items() if k != "network_factory"} | {"network": brax_network(kw)}
    return {"rows": rows, "wall_s": time.perf_counter() - t0, "settings": settings,
            "jax_compile_s": compile_seconds() - c0}


def at_equal_steps(rows: list[dict], steps: int) -> float | None:
    """Eval return of the last evaluation at or before ``steps`` env steps."""
    ok = [r["eval_return"] for r in rows if r["env_steps"] <= steps and "eval_return" in r]
    return ok[-1] if ok else None


def timing(ours: dict, brax: dict) -> dict:
    """Wall time per env step (ms) and env steps/s of both, with and without compilation, and
    the ratios ours / Brax of the time per env step (< 1: ours is faster)."""
    out = {}
    for name, run in (("ours", ours), ("brax", brax)):
        steps = run["rows"][-1]["env_steps"]
        out[f"{name}_env_steps"] = steps
        out[f"{name}_compile_s"] = run["jax_compile_s"]
        out[f"{name}_ms_per_env_step"] = 1e3 * run["wall_s"] / steps
        out[f"{name}_ms_per_env_step_no_compile"] = 1e3 * (run["wall_s"] - run["jax_compile_s"]) / steps
        out[f"{name}_env_steps_per_s"] = steps / run["wall_s"]
        out[f"{name}_env_steps_per_s_no_compile"] = steps / (run["wall_s"] - run["jax_compile_s"])
    for suffix in ("", "_no_compile"):
        out[f"ratio_ours_over_brax_per_env_step{suffix}"] = (
            out[f"ours_ms_per_env_step{suffix}"] / out[f"brax_ms_per_env_step{suffix}"])
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def meta(**extra) -> dict:
    """Backend, machine and library versions of this process, plus ``extra``."""
    from importlib.metadata import version

    return {"backend": jax.default_backend(), "machine": platform.machine(), "jax": jax.__version__,
            **extra, "brax": version("brax"), "mujoco_playground": version("playground"),
            "processor": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "devices": [str(d) for d in jax.devices()],
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir}


def compare_tasks(tasks: list[str], label: str, curve_label: str, ours_fn: Callable[[str], dict],
                  brax_fn: Callable[[str], dict], results: dict, out: str,
                  extra: Callable[[dict, dict], dict] | None = None) -> dict:
    """Run ours then Brax on each task (one at a time), record ``results['tasks'][task]`` with the
    returns at equal env steps (and ``extra(ours, brax)``), rewrite ``<out>.json`` after every
    task, and plot both learning curves of every task to ``<out>.png``."""
    curves = {}
    for task in tasks:
        ours = ours_fn(task)
        brax = brax_fn(task)
        final = min(ours["rows"][-1]["env_steps"], brax["rows"][-1]["env_steps"])
        res = {
            label: ours, "brax_sac": brax, "compared_at_env_steps": final,
            f"{label}_return": at_equal_steps(ours["rows"], final),
            "brax_sac_return": at_equal_steps(brax["rows"], final),
            f"wall_ratio_brax_over_{label}": brax["wall_s"] / ours["wall_s"],
        } | (extra(ours, brax) if extra else {})
        results["tasks"][task] = res
        print(json.dumps({k: v for k, v in res.items() if k not in (label, "brax_sac")} | {"task": task},
                         default=float), flush=True)
        curves[f"{task} {curve_label}"] = ours["rows"]
        curves[f"{task} Brax SAC"] = brax["rows"]
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{path}.json").write_text(json.dumps(results, indent=1, default=float))
    plot_learning_curve(curves, f"{out}.png")
    return results
