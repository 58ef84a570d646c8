"""OmniReset evidence on the cheap task: PPO with reset-mixture starts vs nominal starts.

    .venv/bin/python experiments/omnireset_evidence.py                # full run (5 seeds x 2 arms)
    .venv/bin/python experiments/omnireset_evidence.py --seeds 0 --steps 500000   # quick probe

1. Build (or load, if present and compatible) a PushToSlot reset dataset of the three default
   reset types (anywhere / near_object / near_goal), reporting per-type acceptance rates.
2. For each seed, train PPO (``PPOConfig.cpu()``, same config and same env-step budget) twice
   through the public API ``jaxrl.ppo.train``:
   (a) ``omnireset``: auto-resets drawn uniformly from the mixture of reset types;
   (b) ``nominal``:   auto-resets from the task's own nominal start.
   The learning curve is the rows' ``eval_return`` (deterministic policy, 16 envs): since stop 35
   arm (a) evaluates from "anywhere" states (`envs.omnireset.scratch_env`), arm (b) from the
   nominal start; the results file in the repo predates that (both arms nominal).
3. Evaluate every final policy (deterministic: the mean action) on two starts, ``--eval-envs``
   envs each, ``episode_length`` steps with the auto-reset off (before stop 49 one step fewer, the
   table in README among them: the auto-reset replaced the last step's state):
   - ``nominal``:  the task's nominal start (pusher in one corner, puck in the middle);
   - ``anywhere``: OmniReset's reset type (1), the whole task from scratch — states drawn from
     the dataset's "anywhere" type alone (puck and pusher anywhere; the paper's evaluation).
   Success rule: an episode succeeds iff ``metrics['success'] == 1`` (puck centre within 2 cm of
   the pocket's goal point) at the LAST step of that rollout (`envs.omnireset.success_by_type`).
4. Write experiments/results/omnireset_evidence.json and .png (eval return vs env steps;
   final success on both starts, per seed and mean, both arms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import envs
import envs.omnireset as omr
from jaxrl import ppo
from jaxrl.algos import ppo as ppo_algo

TASK = "PushToSlot"
RESULTS = ROOT / "experiments" / "results"
ARMS = ("omnireset", "nominal")
STARTS = ("nominal", "anywhere")


def get_dataset(path: Path, per_type: int, seed: int, rebuild: bool):
    task = omr.make_task(TASK)
    if path.exists() and not rebuild:
        try:
            ds = omr.ResetDataset.load(path, task)
            if min(ds.counts.values()) > 0:
                print(f"loaded dataset {path}: counts {ds.counts} acceptance {ds.acceptance}")
                return ds, 0.0, "loaded"
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:  # incompatible/old file: rebuild
            print(f"could not reuse {path} ({e}); rebuilding")
    types = omr.default_reset_types(task)
    t0 = time.perf_counter()
    ds = omr.build_dataset(task, types, per_type, jax.random.PRNGKey(seed))
    build_s = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save(path)
    print(f"built dataset in {build_s:.1f}s: counts {ds.counts} acceptance {ds.acceptance}")
    return ds, build_s, "built"


def make_success_eval(ds, cfg, eval_envs: int):
    """(agent, key) -> {'nominal': rate, 'anywhere': rate}: the deterministic policy from the
    nominal start and from OmniReset's "anywhere" reset type alone (compiled once per start)."""
    onehot = [1.0 if n == "anywhere" else 0.0 for n in ds.type_names]
    starts = {
        "nominal": envs.make(TASK, num_envs=eval_envs, seed=123),
        "anywhere": omr.make_mixture_env(TASK, ds, probs=onehot, num_envs=eval_envs, seed=123),
    }

    def policy(agent, obs, key):
        return ppo_algo.act(agent, obs, key, cfg, deterministic=True)[0]

    def evaluate(agent, key):
        return {name: omr.success_by_type(env, policy, key, params=agent)[name]
                for name, env in starts.items()}

    return evaluate, starts["nominal"].episode_length


def train_arm(arm: str, seed: int, cfg, steps: int, num_evals: int, ds, evaluate) -> dict:
    env = omr.make_mixture_env(TASK, ds, probs=None, num_envs=cfg.num_envs, seed=seed) \
        if arm == "omnireset" else TASK
    t0 = time.perf_counter()
    agent, rows = ppo.train(env, cfg, steps=steps, seed=seed, num_evals=num_evals, progress=False)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    success = evaluate(agent, jax.random.PRNGKey(10_000 + seed))
    eval_s = time.perf_counter() - t1
    curve = [{k: r[k] for k in ("env_steps", "wall_s", "eval_return", "train_return", "sps")
              if k in r} for r in rows]
    for r in curve:
        print(f"  [{arm:9s} seed {seed}] steps {r['env_steps']:>9d}  eval_return "
              f"{r['eval_return']:8.2f}  wall {r['wall_s']:.0f}s")
    return {
        "success_nominal": success["nominal"],
        "success_anywhere": success["anywhere"],
        "eval_return": rows[-1]["eval_return"],
        "env_steps": rows[-1]["env_steps"],
        "wall_s": train_s + eval_s,
        "train_s_incl_compile": train_s,
        "compile_s": rows[-1].get("compile_s"),
        "success_eval_s": eval_s,
        "curve": curve,
    }


def plot(results, seeds, out_png, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"omnireset": "tab:blue", "nominal": "tab:red"}
    for arm in ARMS:
        curves = [results[str(s)][arm]["curve"] for s in seeds]
        n = min(len(c) for c in curves)
        x = np.array([c["env_steps"] for c in curves[0][:n]]) / 1e6
        y = np.array([[c[i]["eval_return"] for i in range(n)] for c in curves])
        ax.plot(x, y.mean(0), color=colors[arm], label=f"{arm} resets (mean of {len(seeds)})")
        ax.fill_between(x, y.min(0), y.max(0), color=colors[arm], alpha=0.2)
        for row in y:  # individual seeds
            ax.plot(x, row, color=colors[arm], lw=0.6, alpha=0.5)
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel("eval return, 16 envs (omnireset: from 'anywhere'; nominal: nominal start)")
    ax.set_title(f"PushToSlot, PPO cpu preset, {budget / 1e6:.1f}M steps per run; "
                 "thin = seeds, band = min/max")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    width = 0.38
    for i, arm in enumerate(ARMS):
        for j, start in enumerate(STARTS):
            vals = np.array([results[str(s)][arm][f"success_{start}"] for s in seeds])
            pos = j + (i - 0.5) * width
            bx.bar(pos, vals.mean(), width * 0.9, color=colors[arm], alpha=0.6,
                   label=f"{arm} resets" if j == 0 else None)
            bx.scatter(np.full(len(vals), pos), vals, color=colors[arm], s=12, zorder=3)
    bx.set_xticks(range(len(STARTS)), [f"from the {s} start" if s == "nominal" else "anywhere (type 1)"
                                       for s in STARTS])
    bx.set_ylabel("final success rate (bar: mean, dots: seeds)")
    bx.set_ylim(-0.02, 1.02)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"wrote {out_png}")


def summarise(results, seeds, arms) -> dict:
    out = {}
    for arm in arms:
        out[arm] = {}
        for start in STARTS:
            s = [results[str(sd)][arm][f"success_{start}"] for sd in seeds]
            out[arm][start] = {"success_mean": float(np.mean(s)), "success_min": float(np.min(s)),
                               "success_max": float(np.max(s)), "per_seed": s}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=3_000_000, help="env-step budget per seed-arm")
    p.add_argument("--num-evals", type=int, default=10)
    p.add_argument("--eval-envs", type=int, default=256)
    p.add_argument("--per-type", type=int, default=2000, help="reset states per type")
    p.add_argument("--dataset", default=str(RESULTS / "omnireset_pushtoslot_resets.npz"))
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
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
    evaluate, episode_length = make_success_eval(ds, cfg, args.eval_envs)

    results = {}
    t_all = time.perf_counter()
    for seed in args.seeds:
        results[str(seed)] = {}
        t_seed = time.perf_counter()
        for arm in args.arms:
            r = train_arm(arm, seed, cfg, args.steps, args.num_evals, ds, evaluate)
            results[str(seed)][arm] = r
            print(f"seed {seed} {arm}: success nominal {r['success_nominal']:.3f} anywhere "
                  f"{r['success_anywhere']:.3f} eval_return {r['eval_return']:.2f} "
                  f"wall {r['wall_s']:.0f}s", flush=True)
        seed_s = time.perf_counter() - t_seed
        left = len(args.seeds) - len(results)
        print(f"seed {seed} took {seed_s:.0f}s; about {left * seed_s / 60:.0f} min left", flush=True)

    out = {
        "task": TASK,
        "episode_length": episode_length,
        "budget_env_steps": args.steps,
        "seeds": args.seeds,
        "ppo_config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(cfg).items()},
        "reward_config": dataclasses.asdict(omr.make_task(TASK).reward_config),
        "dataset": {"path": os.path.relpath(args.dataset, ROOT), "how": how, "build_s": build_s,
                    "counts": dict(ds.counts), "acceptance": dict(ds.acceptance),
                    "mixture_probs": "uniform"},
        "training": "jaxrl.ppo.train(env, PPOConfig.cpu(), steps, seed, num_evals); curve rows: "
                    "eval_return of the deterministic policy on 16 envs: the omnireset arm from "
                    "the dataset's 'anywhere' states, the nominal arm from the nominal start",
        "eval": {"starts": {"nominal": "the task's nominal start",
                            "anywhere": "reset type 'anywhere' of the dataset alone (OmniReset's "
                                        "evaluation: the whole task from scratch)"},
                 "num_envs": args.eval_envs, "steps": episode_length,
                 "policy": "deterministic (mean action)",
                 "success_rule": "metrics['success'] == 1 (puck within success_pos of goal) after the "
                                 "last step of an episode_length step rollout (auto-reset off)"},
        "summary": summarise(results, args.seeds, args.arms),
        "results": results,
        "total_wall_s": time.perf_counter() - t_all,
        "platform": jax.devices()[0].platform,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}.json")
    print(f"\n{'seed':>4} {'arm':>10} {'nominal':>8} {'anywhere':>9} {'eval_return':>12} {'wall_s':>7}")
    for sd in args.seeds:
        for arm in args.arms:
            r = results[str(sd)][arm]
            print(f"{sd:>4} {arm:>10} {r['success_nominal']:>8.3f} {r['success_anywhere']:>9.3f} "
                  f"{r['eval_return']:>12.2f} {r['wall_s']:>7.0f}")
    print("acceptance:", ds.acceptance)
    print("summary:", json.dumps(out["summary"]))
    if set(args.arms) == set(ARMS):
        plot(results, args.seeds, args.out + ".png", args.steps)


if __name__ == "__main__":
    main()
