"""OmniReset evidence on the cheap task: PPO with reset-mixture starts vs nominal starts.

    .venv/bin/python experiments/omnireset_evidence.py                # full run (5 seeds x 2 arms, ~20 min on 2 CPU cores)
    .venv/bin/python experiments/omnireset_evidence.py --seeds 0 --steps 500000   # quick probe

1. Build (or load, if present and compatible) a PushToSlot reset dataset of the three default
   reset types (anywhere / near_object / near_goal), reporting per-type acceptance rates.
2. For each seed, train PPO (``PPOConfig.cpu()``, same config and same env-step budget) twice:
   (a) ``omnireset``: auto-resets drawn uniformly from the mixture of reset types;
   (b) ``nominal``:   auto-resets from the task's own nominal start.
3. Evaluate every policy FROM THE NOMINAL START ONLY, at several points during training:
   ``--eval-envs`` nominal-start envs, deterministic policy, ``episode_length - 1`` steps (so no
   auto-reset happens).  Success rule: an episode succeeds iff ``metrics['success'] == 1`` (puck
   centre within 2 cm of the pocket's goal point) at the LAST step of that rollout.  Also
   reported: the mean return of those episodes.
4. Write experiments/results/omnireset_evidence.json and .png (nominal-start success vs env
   steps, mean and min/max over seeds, both arms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402
import envs.omnireset as omr  # noqa: E402
from jaxrl.algos import ppo  # noqa: E402
from jaxrl.train import onpolicy  # noqa: E402

TASK = "PushToSlot"
RESULTS = ROOT / "experiments" / "results"


def get_dataset(path: Path, per_type: int, seed: int, rebuild: bool):
    task = omr.make_task(TASK)
    if path.exists() and not rebuild:
        try:
            ds = omr.ResetDataset.load(path, task)
            if min(ds.counts.values()) > 0:
                print(f"loaded dataset {path}: counts {ds.counts} acceptance {ds.acceptance}")
                return ds, 0.0, "loaded"
        except Exception as e:  # incompatible/old file: rebuild
            print(f"could not reuse {path} ({e}); rebuilding")
    types = omr.default_reset_types(task)
    t0 = time.perf_counter()
    ds = omr.build_dataset(task, types, per_type, jax.random.PRNGKey(seed))
    build_s = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save(path)
    print(f"built dataset in {build_s:.1f}s: counts {ds.counts} acceptance {ds.acceptance}")
    return ds, build_s, "built"


def make_nominal_eval(eval_env, cfg):
    """Jitted (agent, key) -> (success rate, mean return, mean final pos_err) from the nominal
    start: deterministic policy, episode_length - 1 steps, success = metrics['success'] at the
    last step."""
    steps = eval_env.episode_length - 1

    def evaluate(agent, key):
        state = eval_env.reset(key)

        def body(c, _):
            s, ret = c
            a = ppo.act(agent, s.obs, key, cfg, deterministic=True)[0]
            s = eval_env.step(s, a)
            return (s, ret + s.reward), None

        (s, ret), _ = jax.lax.scan(body, (state, jnp.zeros(eval_env.num_envs)), None, length=steps)
        m = s.inner.metrics
        return m["success"].mean(), ret.mean(), m["pos_err"].mean()

    return jax.jit(evaluate)


def train_arm(arm, seed, cfg, steps, num_evals, ds, eval_env, evaluate):
    if arm == "omnireset":
        env = omr.make_mixture_env(TASK, ds, probs=None, num_envs=cfg.num_envs, seed=seed)
    else:
        env = envs.make(TASK, num_envs=cfg.num_envs)
    total_iters = math.ceil(steps / cfg.batch_size)
    ipc = max(1, math.ceil(total_iters / num_evals))
    n_chunks = math.ceil(total_iters / ipc)
    t0 = time.perf_counter()
    carry = onpolicy.init_carry(env, cfg, seed)
    chunk = onpolicy.make_train_chunk(env, cfg, ipc)
    eval_key = jax.random.PRNGKey(10_000 + seed)
    curve = []
    train_s = 0.0

    def log(carry, metrics):
        succ, ret, perr = (float(x) for x in evaluate(carry.agent, eval_key))
        row = {
            "env_steps": onpolicy.env_steps(carry, cfg),
            "nominal_success": succ,
            "nominal_eval_return": ret,
            "nominal_final_pos_err": perr,
            "wall_s": time.perf_counter() - t0,
        }
        if metrics is not None:
            row["train_return"] = float(metrics["train_return"])
            row["train_reward_per_step"] = float(metrics["reward"])
        curve.append(row)
        print(
            f"  [{arm:9s} seed {seed}] steps {row['env_steps']:>9d}  success {succ:.3f}  "
            f"return {ret:8.2f}  pos_err {perr:.3f}  train_ret {row.get('train_return', float('nan')):8.2f}  "
            f"wall {row['wall_s']:.0f}s",
            flush=True,
        )

    log(carry, None)
    for _ in range(n_chunks):
        t = time.perf_counter()
        carry, metrics = chunk(carry)
        metrics = jax.device_get(metrics)
        train_s += time.perf_counter() - t
        log(carry, metrics)
    wall = time.perf_counter() - t0
    final = curve[-1]
    return {
        "success_rate": final["nominal_success"],
        "eval_return": final["nominal_eval_return"],
        "final_pos_err": final["nominal_final_pos_err"],
        "env_steps": final["env_steps"],
        "wall_s": wall,
        "train_s_incl_compile": train_s,
        "curve": curve,
    }


def plot(results, seeds, out_png, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"omnireset": "tab:blue", "nominal": "tab:red"}
    for arm in ("omnireset", "nominal"):
        curves = [results[str(s)][arm]["curve"] for s in seeds]
        n = min(len(c) for c in curves)
        x = np.array([c["env_steps"] for c in curves[0][:n]]) / 1e6
        y = np.array([[c[i]["nominal_success"] for i in range(n)] for c in curves])
        ax.plot(x, y.mean(0), color=colors[arm], label=f"{arm} resets (mean of {len(seeds)})")
        ax.fill_between(x, y.min(0), y.max(0), color=colors[arm], alpha=0.2)
        for row in y:  # individual seeds
            ax.plot(x, row, color=colors[arm], lw=0.6, alpha=0.5)
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel("success rate from the nominal start")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"PushToSlot, PPO cpu preset, {budget / 1e6:.1f}M steps per run; "
                 "thin = seeds, band = min/max")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"wrote {out_png}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=3_000_000, help="env-step budget per seed-arm")
    p.add_argument("--num-evals", type=int, default=10)
    p.add_argument("--eval-envs", type=int, default=256)
    p.add_argument("--per-type", type=int, default=2000, help="reset states per type")
    p.add_argument("--dataset", default=str(RESULTS / "omnireset_pushtoslot_resets.npz"))
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--arms", nargs="+", default=["omnireset", "nominal"])
    p.add_argument("--out", default=str(RESULTS / "omnireset_evidence"))
    p.add_argument("--replot", action="store_true", help="only redraw the .png from the .json")
    args = p.parse_args()
    if args.replot:
        with open(args.out + ".json") as f:
            d = json.load(f)
        plot(d["results"], d["seeds"], args.out + ".png", d["budget_env_steps"])
        return

    ds, build_s, how = get_dataset(Path(args.dataset), args.per_type, 0, args.rebuild)
    cfg = ppo.PPOConfig.cpu()
    eval_env = envs.make(TASK, num_envs=args.eval_envs)
    evaluate = make_nominal_eval(eval_env, cfg)

    results = {}
    t_all = time.perf_counter()
    for seed in args.seeds:
        results[str(seed)] = {}
        for arm in args.arms:
            r = train_arm(arm, seed, cfg, args.steps, args.num_evals, ds, eval_env, evaluate)
            r["acceptance"] = dict(ds.acceptance)
            results[str(seed)][arm] = r
            print(f"seed {seed} {arm}: success {r['success_rate']:.3f} return {r['eval_return']:.2f} "
                  f"wall {r['wall_s']:.0f}s", flush=True)

    summary = {}
    for arm in args.arms:
        s = [results[str(sd)][arm]["success_rate"] for sd in args.seeds]
        summary[arm] = {"success_mean": float(np.mean(s)), "success_min": float(np.min(s)),
                        "success_max": float(np.max(s)), "per_seed": s}
    out = {
        "task": TASK,
        "episode_length": eval_env.episode_length,
        "budget_env_steps": args.steps,
        "seeds": args.seeds,
        "ppo_config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(cfg).items()},
        "reward_config": dataclasses.asdict(omr.make_task(TASK).reward_config),
        "dataset": {"path": os.path.relpath(args.dataset, ROOT), "how": how, "build_s": build_s,
                    "counts": dict(ds.counts), "acceptance": dict(ds.acceptance),
                    "mixture_probs": "uniform"},
        "eval": {"start": "nominal only", "num_envs": args.eval_envs,
                 "steps": eval_env.episode_length - 1, "policy": "deterministic (mean action)",
                 "success_rule": "metrics['success'] == 1 (puck within success_pos of goal) at the "
                                 "last step of an episode_length-1 step rollout (no auto-reset)"},
        "summary": summary,
        "results": results,
        "total_wall_s": time.perf_counter() - t_all,
        "platform": jax.devices()[0].platform,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}.json")
    print(f"\n{'seed':>4} {'arm':>10} {'success':>8} {'eval_return':>12} {'wall_s':>7}")
    for sd in args.seeds:
        for arm in args.arms:
            r = results[str(sd)][arm]
            print(f"{sd:>4} {arm:>10} {r['success_rate']:>8.3f} {r['eval_return']:>12.2f} {r['wall_s']:>7.0f}")
    print("acceptance:", ds.acceptance)
    print("summary:", json.dumps(summary))
    if set(args.arms) == {"omnireset", "nominal"}:
        plot(results, args.seeds, args.out + ".png", args.steps)


if __name__ == "__main__":
    main()
