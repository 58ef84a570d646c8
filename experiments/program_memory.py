"""XLA's memory of GPU-sized training chunks, from abstract shapes: nothing is allocated, so a
laptop can ask whether the lift preset (4,096 envs, 1M transitions, 16 x 16,384 rows sampled per
iteration) fits a 24 GB GPU.

Each preset's loop is built as a run builds it, its carry traced with `jax.eval_shape`, its
chunk lowered and compiled for this machine's backend, and the compiled program's
`memory_analysis()` read: arguments (the carry: replay buffer, env state, agent), temporaries
(the sampled rows, the update's activations, the physics step's intermediates) and the results
that are not written back into the donated carry.  The run's own preflight estimate (made before
compiling, `OffPolicyLoop.preflight`, asked as for a GPU with 24 GB free: one copy of the buffer,
where a CPU run counts two since a checkpoint copies it to host memory) is recorded beside it.  A CPU's buffer assignment is not a
GPU's (fusion differs), but the large arrays are the same; on a GPU the same command gives that
device's numbers.

    python experiments/program_memory.py --runs sac:lift flashsac:paper ppo:paper \
        --tasks T1JoystickFlatTerrain G1JoystickFlatTerrain --impl jax
        # -> experiments/results/program_memory_<platform>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import envs
from jaxrl.data import replay
from jaxrl.train import memory, registry

GIB = 2**30


def measure(algo: str, preset: str, task: str, impl: str | None) -> dict:
    spec = registry.get(algo)
    cfg = spec.preset(preset, task)
    env_kwargs = dict(getattr(cfg, "env_overrides", ()) or ())
    env = envs.make(task, num_envs=cfg.num_envs, impl=impl, **env_kwargs)
    eval_envs = getattr(cfg, "num_eval_envs", None)
    eval_env = env.with_num_envs(eval_envs, 1) if eval_envs else None
    loop = spec.make_loop(cfg, env, eval_env, 10**9, 0, 10, devices=1)
    preflight = refused = None
    if hasattr(loop, "preflight"):  # the run's own estimate, against 24 GB whatever this machine has
        import unittest.mock

        as_gpu = replay.peak_bytes

        with (unittest.mock.patch.object(replay, "device_memory_bytes", lambda *a, **k: 24 * 10**9),
              unittest.mock.patch.object(replay, "peak_bytes", lambda b, platform=None: as_gpu(b, "gpu"))):
            try:
                preflight = loop.preflight()
            except replay.ReplayCapacityError as e:  # the run would stop here; measure the chunk anyway
                refused = str(e)
    carry = jax.eval_shape(loop.init_carry)
    t0 = time.perf_counter()
    compiled = loop.lower_chunk(carry).compile()
    sizes = memory.program_memory("chunk", compiled)
    row = {"algo": algo, "preset": preset, "task": task, "impl": env.impl if hasattr(env, "impl") else impl,
           "num_envs": cfg.num_envs, "batch_size": getattr(cfg, "batch_size", None),
           "updates_per_step": getattr(cfg, "updates_per_step", None),
           "buffer_size": getattr(cfg, "buffer_size", None), "compile_s": time.perf_counter() - t0,
           "preflight_gib": None if preflight is None else preflight / GIB, "preflight_refused": refused}
    if sizes is not None:
        row.update({f"{k}_gib": v / GIB for k, v in sizes.as_dict().items()})
        row["total_gib"] = (sizes.arguments + sizes.new) / GIB
        row["fits_24gb"] = sizes.arguments + sizes.new <= 24 * 10**9
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["sac:lift"], help="algo:preset pairs")
    p.add_argument("--tasks", nargs="+", default=["T1JoystickFlatTerrain", "G1JoystickFlatTerrain"])
    p.add_argument("--impl", default="jax", help="MJX implementation (jax: XLA sees every intermediate)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dev = jax.devices()[0]
    out = Path(args.out or Path(__file__).parent / "results" / f"program_memory_{jax.default_backend()}.json")
    rows = []
    for task in args.tasks:
        for item in args.runs:
            algo, preset = item.split(":")
            rows.append(measure(algo, preset, task, args.impl))
            print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps({
        "device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
        "jax": jax.__version__, "machine": platform.machine(), "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
