"""`make demo`: the embedded default job, on CPU in a few minutes.

Trains FlashSAC (cpu preset) on CartpoleBalance, then writes into ``--out``:
config.json, metrics.jsonl, TensorBoard events, checkpoints/, summary.json,
learning_curve.png, policy.onnx (+ policy.onnx.card.json) and sim2sim.json (the ONNX policy
run in MuJoCo C next to MJX).
``JAXRL_SMALL=1`` (set by the tests) shrinks the budget to a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jaxrl import flashsac
from jaxrl.io import lifecycle, sim2sim
from jaxrl.io.metrics import plot_learning_curve, read_jsonl


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--env", default="CartpoleBalance")
    p.add_argument("--steps", type=int, default=None, help="env steps (default: 40k, 4k when JAXRL_SMALL=1)")
    a = p.parse_args(argv)
    small = os.environ.get("JAXRL_SMALL") == "1"
    steps = a.steps or (4_000 if small else 40_000)
    cfg = flashsac.FlashSACConfig.cpu()
    out = Path(a.out)
    flashsac.train(a.env, cfg, steps=steps, seed=0, out_dir=out, num_evals=3 if small else 10,
                   checkpoint_every_s=120.0, overwrite=True)
    plot_learning_curve({f"FlashSAC {a.env}": read_jsonl(out / "metrics.jsonl")}, out / "learning_curve.png")
    policy = lifecycle.export_run(out, fmt="onnx")
    check = sim2sim.sim2sim(out, episodes=1 if small else 2, max_steps=200 if small else None)
    print(sim2sim.format_report(check))
    summary = json.loads((out / "summary.json").read_text())
    summary.update(learning_curve=str(out / "learning_curve.png"), policy=str(policy),
                   sim2sim_mjx_return=check["mjx_mean_return"],
                   sim2sim_mujoco_return=check["mujoco_mean_return"])
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
