"""Our PPO against Brax's own PPO on one Playground dm_control task, same process, same budget.

Brax runs with Playground's tuned config (`envs.upstream.brax_ppo_kwargs`), changing only what
sets the budget and the evaluation: num_timesteps, num_envs (equal for both), num_evals,
num_resets_per_eval (0: else Brax's minimum budget is num_evals × 10 × ~1M steps),
num_eval_envs (equal for both) and deterministic_eval=True (ours evaluates deterministically).
Ours runs `PPOConfig.cpu(num_envs=...)` through the public API (`jaxrl.ppo.train`, which
evaluates on `jaxrl.train.run.NUM_EVAL_ENVS` = 16 envs after each of ``--our-evals`` chunks; it
has no evaluation at step 0).  Both curves are deterministic-policy returns of one full episode
per eval env.  On CPU only the wall-clock *ratio* and the returns at equal env
steps mean anything (DESIGN.md, "Measuring").

    python experiments/ppo_vs_brax.py --env CartpoleBalance --budget 1966080 --num-envs 256  # Brax: 2 × 983,040 steps

Writes experiments/results/ppo_vs_brax_<env>.json and .png.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import time

import jax
import numpy as np

from envs import upstream
from jaxrl import ppo
from jaxrl.train import run as run_mod

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def run_ours(env_name: str, budget: int, num_envs: int, num_evals: int, seed: int):
    cfg = ppo.PPOConfig.cpu(num_envs=num_envs)
    t = time.perf_counter()
    _, rows = ppo.train(
        env_name, cfg, steps=budget, seed=seed, num_evals=num_evals, progress=False,
        progress_fn=lambda r: print(f"[ours] {r['env_steps']:>9d} steps  return {r['eval_return']:7.1f}", flush=True),
    )
    wall = time.perf_counter() - t
    return {
        "steps": [r["env_steps"] for r in rows],
        "returns": [r["eval_return"] for r in rows],
        "wall_s": wall,
        "compile_s": rows[-1]["compile_s"],
        "eval_envs": run_mod.NUM_EVAL_ENVS,
        "config": {k: v for k, v in vars(cfg).items()},
    }


def brax_effective_budget(env_name: str, budget: int, num_evals: int) -> int:
    """Env steps Brax really takes: it rounds up to whole training steps per eval epoch."""
    kw = upstream.brax_ppo_kwargs(env_name)
    per_step = kw["batch_size"] * kw["num_minibatches"] * kw["unroll_length"] * kw.get("action_repeat", 1)
    return num_evals * math.ceil(budget / (num_evals * per_step)) * per_step


def run_brax(env_name: str, budget: int, num_envs: int, num_evals: int, eval_envs: int, seed: int,
             settings: dict | None = None):
    """Brax's PPO with Playground's config for ``env_name``; ``settings`` replaces entries of that
    config (``hidden`` sets both networks' hidden sizes), e.g. to run our preset's arithmetic."""
    import brax_compat  # experiments/, beside this script

    brax_compat.patch()  # jax.device_put_replicated, gone in JAX >= 0.10
    from brax.training.agents.ppo import networks as ppo_networks
    from brax.training.agents.ppo import train as brax_ppo
    from mujoco_playground import registry, wrapper

    kwargs = upstream.brax_ppo_kwargs(env_name)
    settings = dict(settings or {})
    if "hidden" in settings:
        hidden = tuple(settings.pop("hidden"))
        kwargs["network_factory"] = functools.partial(
            ppo_networks.make_ppo_networks, policy_hidden_layer_sizes=hidden, value_hidden_layer_sizes=hidden)
    kwargs.update(settings)
    overrides = {
        "num_timesteps": budget, "num_envs": num_envs, "num_evals": num_evals + 1,
        "num_resets_per_eval": 0,
        "num_eval_envs": eval_envs, "deterministic_eval": True, "seed": seed,
    }
    kwargs.update(overrides)
    steps, returns, times = [], [], []
    t = time.perf_counter()

    def progress(step, metrics):
        steps.append(int(step))
        returns.append(float(metrics["eval/episode_reward"]))
        times.append(time.perf_counter() - t)
        print(f"[brax] {int(step):>9d} steps  return {returns[-1]:7.1f}", flush=True)

    environment = registry.load(env_name, config_overrides={"impl": "jax"})
    brax_ppo.train(
        environment=environment, wrap_env_fn=wrapper.wrap_for_brax_training,
        progress_fn=progress, **kwargs,
    )
    wall = time.perf_counter() - t
    shown = {k: v for k, v in kwargs.items() if k != "network_factory"}
    return {"steps": steps, "returns": returns, "wall_s": wall, "eval_times_s": times,
            "config": shown, "overrides": overrides}


def at_steps(curve: dict, steps: list[int]) -> list[float]:
    """Return of a curve at given env steps (linear interpolation; no extrapolation)."""
    xs, ys = np.asarray(curve["steps"], float), np.asarray(curve["returns"], float)
    return [float(np.interp(s, xs, ys)) if xs[0] <= s <= xs[-1] else math.nan for s in steps]


def plot(ours: dict, brax: dict, env_name: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ours["steps"], ours["returns"], "o-", label=f"jaxrl PPO ({ours['wall_s']:.0f} s)")
    ax.plot(brax["steps"], brax["returns"], "s-", label=f"Brax PPO ({brax['wall_s']:.0f} s)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (deterministic)")
    ax.set_title(f"{env_name}: PPO, equal env-step budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="CartpoleBalance")
    p.add_argument("--budget", type=int, default=1_966_080,
                   help="env steps, rounded up to Brax's granularity (CartpoleBalance: 2 x 983,040)")
    p.add_argument("--num-envs", type=int, default=256)
    p.add_argument("--num-evals", type=int, default=2, help="Brax evals after the initial one")
    p.add_argument("--our-evals", type=int, default=8)
    p.add_argument("--eval-envs", type=int, default=run_mod.NUM_EVAL_ENVS,
                   help="Brax's eval envs (ours: always jaxrl.train.run.NUM_EVAL_ENVS)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    budget = brax_effective_budget(a.env, a.budget, a.num_evals)
    print(f"equal budget for both: {budget} env steps (Brax's granularity)", flush=True)
    ours = run_ours(a.env, budget, a.num_envs, a.our_evals, a.seed)
    brax = run_brax(a.env, budget, a.num_envs, a.num_evals, a.eval_envs, a.seed)
    common = sorted(set(brax["steps"]) | set(ours["steps"]))
    result = {
        "env": a.env,
        "budget": budget,
        "num_envs": a.num_envs,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "ours": ours,
        "brax": brax,
        "at_brax_eval_steps": {
            "steps": brax["steps"],
            "ours": at_steps(ours, brax["steps"]),
            "brax": brax["returns"],
        },
        "final": {
            "ours_steps": ours["steps"][-1], "ours_return": ours["returns"][-1],
            "brax_steps": brax["steps"][-1], "brax_return": brax["returns"][-1],
        },
        "wall_clock_ratio_brax_over_ours": brax["wall_s"] / ours["wall_s"],
        "common_steps": common,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ppo_vs_brax_{a.env}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    plot(ours, brax, a.env, RESULTS / f"ppo_vs_brax_{a.env}.png")
    print(json.dumps({k: result[k] for k in ("final", "wall_clock_ratio_brax_over_ours", "at_brax_eval_steps")}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
