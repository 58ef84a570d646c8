"""Which of Brax's three SAC choices matters: `SACConfig.cpu()` with only some of them switched on,
K seeds as one vmapped program, the same budget and seeds as `sac_vs_brax.py --seeds`.

    JAXRL_CPU_DEVICES=1 python experiments/sac_switch_ablation.py --task CartpoleSwingup \
        --switch std_head=softplus --out experiments/results/sac_ablation_swingup_softplus.json

``--algo flashsac`` switches fields of `FlashSACConfig.cpu()` instead (e.g. ``compute_dtype=bfloat16``;
numbers are parsed, so ``tau=0.01`` works too).

Writes the mean return at each evaluation and every seed's final return (compare with the `cpu`
and `brax` rows of the sac_vs_brax results files).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxrl import flashsac, sac


def _value(v: str):
    """A switch's value: a number when it reads as one, else the string."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="CartpoleSwingup")
    p.add_argument("--algo", choices=("sac", "flashsac"), default="sac")
    p.add_argument("--switch", nargs="+", required=True, help="SACConfig field=value, e.g. std_head=softplus")
    p.add_argument("--steps", type=int, default=40_000)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--num-evals", type=int, default=5)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    switches = {k: _value(v) for k, v in (kv.split("=", 1) for kv in a.switch)}
    algo = {"sac": (sac, sac.SACConfig), "flashsac": (flashsac, flashsac.FlashSACConfig)}
    module, config = algo[a.algo]
    cfg = config.cpu().replace(**switches)  # a bad field or value fails here, before compiling
    t0 = time.perf_counter()
    _, rows = module.train(a.task, cfg, steps=a.steps, seed=0, seeds=a.seeds, num_evals=a.num_evals, progress=False)
    ev = [r for r in rows if "eval_return" in r]
    out = {"algo": a.algo, "task": a.task, "switches": switches, "steps": a.steps, "seeds": a.seeds, "wall_s": time.perf_counter() - t0,
           "env_steps": [r["env_steps"] for r in ev], "means": [r["eval_return"] for r in ev],
           "final": [ev[-1][f"seed{i}/eval_return"] for i in range(a.seeds)]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
