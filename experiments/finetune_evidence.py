"""Does world-model finetuning adapt a pretrained policy to a changed world with few real steps?

    python experiments/finetune_evidence.py --task CartpoleSwingup --variant CartpoleSwingupHeavyPole \\
        --pretrain-steps 100000 --seeds 0 1 2 --out experiments/results/finetune_swingup_heavy.json

(CartpoleBalance is no test: its pretrained policy scores ~999.6 of 1000 with the pole 3, 10 or
30 times heavier and the motor gear halved or quartered — measured on this CPU.)

1. Pretrain (once): large-batch SAC, ``SACConfig.cpu()``, on the nominal ``--task``.
2. Per seed, three arms on the ``--variant`` task, return against REAL env steps (the
   deterministic policy evaluated on 16 envs of the variant; evaluation steps are not counted):
   * ``pretrained``: the policy unchanged;
   * ``sac``: plain SAC finetuning from the same checkpoint — stochastic actions in the target
     env, uniform random warm-up of ``--sac-warmup`` steps, everything but α loaded (α
     re-initialised as in world-model finetuning, so only the method differs);
   * ``world_model``: `jaxrl.train.finetune` (``FinetuneConfig.cpu()``): tanh(μ) only in the
     target env, exploration inside the physics-informed model.
Writes the JSON (every arm's curve per seed, means, the machine) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxrl.algos import sac
from jaxrl.io import lifecycle, runfolder
from jaxrl.train import run
from jaxrl.train.finetune import FINETUNE_PARTS, FinetuneConfig


def curve(rows: list[dict]) -> list[list[float]]:
    return [[r["env_steps"], r["eval_return"]] for r in rows if "eval_return" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="CartpoleSwingup")
    p.add_argument("--variant", default="CartpoleSwingupHeavyPole")
    p.add_argument("--pretrain-steps", type=int, default=100_000)
    p.add_argument("--real-steps", type=int, default=2_200, help="world-model arm's real-step budget")
    p.add_argument("--sac-steps", type=int, default=10_000, help="plain SAC arm's real-step budget")
    p.add_argument("--sac-warmup", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default="runs/finetune_evidence")
    p.add_argument("--out", default="experiments/results/finetune_swingup_heavy.json")
    a = p.parse_args()

    runs = Path(a.runs)
    pre = runs / f"pretrain_{a.task}"
    t0 = time.perf_counter()
    if not (pre / "summary.json").exists():
        run.train("sac", a.task, sac.SACConfig.cpu(), steps=a.pretrain_steps, num_evals=8, progress=False,
                  out_dir=pre, overwrite=True, tensorboard=False)
    pre_rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    results = {"task": a.task, "variant": a.variant, "pretrain_steps": a.pretrain_steps,
               "pretrain_final_return": pre_rows[-1]["eval_return"], "machine": f"{platform.processor() or 'cpu'}, "
               f"{jax.device_count()} device(s), jax {jax.__version__}", "seeds": {}}
    ft_cfg = FinetuneConfig.cpu(runfolder.config_from_dict(sac.SACConfig, run.read_record(pre)["config"]))
    results["world_model_config"] = runfolder.config_to_dict(ft_cfg)
    for seed in a.seeds:
        arms = {"pretrained": lifecycle.evaluate_run(pre, episodes=16, seed=seed + 1, env=a.variant,
                                                    write=False)["mean_return"]}
        t = time.perf_counter()
        _, rows = run.finetune(pre, a.variant, real_steps=a.real_steps, config=ft_cfg, seed=seed,
                               out_dir=runs / f"wm_{seed}", overwrite=True, num_evals=ft_cfg.epochs(a.real_steps),
                               progress=False, tensorboard=False)
        arms["world_model"] = curve(rows)
        arms["world_model_model_error"] = [r.get("model_val_error") for r in rows if "eval_return" in r]
        arms["world_model_s"] = time.perf_counter() - t
        sac_cfg = ft_cfg.sac.replace(min_buffer=a.sac_warmup)
        t = time.perf_counter()
        _, rows = run.train("sac", a.variant, sac_cfg, steps=a.sac_steps, seed=seed, init_from=pre,
                            init_parts=list(FINETUNE_PARTS), out_dir=runs / f"sac_{seed}", overwrite=True,
                            num_evals=10, progress=False, tensorboard=False)
        arms["sac"] = curve(rows)
        arms["sac_s"] = time.perf_counter() - t
        results["seeds"][str(seed)] = arms
        print(seed, json.dumps({k: v for k, v in arms.items() if not isinstance(v, list)}),
              "wm", arms["world_model"][-1], "sac", arms["sac"][-1], flush=True)
        results["wall_s"] = time.perf_counter() - t0
        write(results, Path(a.out))  # after every seed: a long run interrupted keeps what it measured
    print(a.out)


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in (("world_model", "C0"), ("sac", "C1")):
        for i, arms in enumerate(results["seeds"].values()):
            c = np.asarray(arms[arm])
            ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.7, label=arm.replace("_", " ") if i == 0 else None)
    pre = [arms["pretrained"] for arms in results["seeds"].values()]
    ax.axhline(float(np.mean(pre)), color="k", ls="--", label="pretrained, unchanged")
    ax.set_xlabel("real env steps in the target env")
    ax.set_ylabel("eval return (deterministic)")
    ax.set_title(f"{results['task']} → {results['variant']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
