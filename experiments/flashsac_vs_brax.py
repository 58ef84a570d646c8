"""FlashSAC vs Brax's own SAC on the same tasks, budget, batch, update count and machine.

    python experiments/flashsac_vs_brax.py --tasks CartpoleSwingup CheetahRun CartpoleBalance \
        --steps 100000 --out experiments/results/flashsac_vs_brax_cpu

Brax SAC runs with MuJoCo Playground's tuned `brax_sac_config` (via `envs.upstream`, which
drops the `num_resets_per_eval` key Brax rejects); the settings that decide cost — num_envs,
batch size, gradient updates per env step, replay sizes, eval envs — are set equal for both.
Writes `<out>.json` (returns at equal env steps, wall-clock and env-steps/s ratios) and
`<out>.png` (both learning curves per task).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

import envs
from envs import upstream
from jaxrl import flashsac
from jaxrl.io.metrics import plot_learning_curve


def run_brax(task: str, cfg: flashsac.FlashSACConfig, steps: int, seed: int, num_evals: int) -> dict:
    from brax.training.agents.sac import train as sac
    from mujoco_playground import registry, wrapper

    kw = upstream.brax_sac_kwargs(task)
    kw.update(num_timesteps=steps, num_envs=cfg.num_envs, batch_size=cfg.batch_size,
              grad_updates_per_step=cfg.updates_per_step, min_replay_size=cfg.min_buffer,
              max_replay_size=cfg.buffer_size, num_evals=num_evals + 1, num_eval_envs=16, seed=seed)
    kw.pop("episode_length", None)
    env = registry.load(task, config_overrides={"impl": envs.default_impl(task) or "jax"})
    rows, t0 = [], time.perf_counter()

    def progress(step, metrics):
        rows.append({"env_steps": int(step), "eval_return": float(metrics["eval/episode_reward"]),
                     "wall_s": time.perf_counter() - t0})

    sac.train(environment=env, eval_env=env, wrap_env_fn=wrapper.wrap_for_brax_training,
              progress_fn=progress, episode_length=1000, **kw)
    return {"rows": rows, "wall_s": time.perf_counter() - t0, "settings": {k: v for k, v in kw.items() if k != "network_factory"}}


def run_ours(task: str, cfg: flashsac.FlashSACConfig, steps: int, seed: int, num_evals: int) -> dict:
    t0 = time.perf_counter()
    _, rows = flashsac.train(task, cfg, steps=steps, seed=seed, num_evals=num_evals, progress=False)
    wall = time.perf_counter() - t0
    return {"rows": [{k: r[k] for k in ("env_steps", "eval_return", "wall_s", "sps") if k in r} for r in rows],
            "wall_s": wall, "compile_s": rows[-1]["compile_s"] if rows else None}


def at_equal_steps(rows: list[dict], steps: int) -> float | None:
    """Eval return of the last evaluation at or before ``steps`` env steps."""
    ok = [r["eval_return"] for r in rows if r["env_steps"] <= steps and "eval_return" in r]
    return ok[-1] if ok else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["CartpoleSwingup", "CheetahRun", "CartpoleBalance"])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-evals", type=int, default=5)
    p.add_argument("--out", default="experiments/results/flashsac_vs_brax_cpu")
    a = p.parse_args()
    cfg = flashsac.FlashSACConfig.cpu()
    results = {"meta": {"backend": jax.default_backend(), "machine": platform.machine(), "jax": jax.__version__,
                        "steps": a.steps, "seed": a.seed, "flashsac_config": "FlashSACConfig.cpu()"},
               "tasks": {}}
    curves = {}
    for task in a.tasks:
        ours = run_ours(task, cfg, a.steps, a.seed, a.num_evals)
        brax = run_brax(task, cfg, a.steps, a.seed, a.num_evals)
        final = min(ours["rows"][-1]["env_steps"], brax["rows"][-1]["env_steps"])
        res = {
            "flashsac": ours, "brax_sac": brax, "compared_at_env_steps": final,
            "flashsac_return": at_equal_steps(ours["rows"], final),
            "brax_sac_return": at_equal_steps(brax["rows"], final),
            "wall_ratio_brax_over_flashsac": brax["wall_s"] / ours["wall_s"],
        }
        results["tasks"][task] = res
        print(json.dumps({k: v for k, v in res.items() if k not in ("flashsac", "brax_sac")} | {"task": task}), flush=True)
        curves[f"{task} FlashSAC"] = ours["rows"]
        curves[f"{task} Brax SAC"] = brax["rows"]
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(results, indent=1, default=float))
    plot_learning_curve(curves, f"{a.out}.png")


if __name__ == "__main__":
    main()
