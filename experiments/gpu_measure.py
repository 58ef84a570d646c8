"""The GPU measurements of ../shared/GPU.md, one subcommand each; every row is printed as JSON
the moment it exists (a call cut off by its time limit keeps what it measured) and the whole file
is written to ``--out`` (``experiments/results/gpu_*.json``) with device, JAX version and command.

    python experiments/gpu_measure.py raw   --tasks T1JoystickFlatTerrain G1JoystickFlatTerrain \
        --num-envs 1024 4096 8192 --out experiments/results/gpu_raw.json
    python experiments/gpu_measure.py loop  --task T1JoystickFlatTerrain \
        --runs flashsac:paper sac:lift ppo:paper --seconds 60 --out experiments/results/gpu_loop.json
    python experiments/gpu_measure.py learn --algo flashsac --preset paper \
        --task T1JoystickFlatTerrain --steps 20000000 --run-dir /tmp/run --out .../gpu_learn.json

``raw``: MJX env-steps/s with uniform random actions (the physical limit of a training loop).
``loop``: a trainer's preset for ``--seconds``: env-steps/s and gradient steps/s of steady chunks,
compile seconds, device memory peak (of the process so far), XLA's memory of each compiled
program (`jaxrl.train.memory`), and the ratio to ``raw`` at the same num_envs when given.
``learn``: `jaxrl.train.run.train` with evaluations (return vs minutes and env steps), then the
lifecycle on that machine: export to ONNX and `sim2sim` (MuJoCo C) on the exported file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before jax: no XLA log noise in the output

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import envs
from experiments.impl_speed import measure
from jaxrl.train import registry, run

_OUT: dict = {}  # "path" and "meta" of the results file, set by main


def emit(row: dict, rows: list) -> None:
    """Print ``row`` and rewrite the results file with it: `timeout`'s KILL, 20 s after its TERM,
    can land inside an XLA compile, where Python never reaches ``finally``."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if _OUT:
        write(rows)


def write(rows: list) -> None:
    tmp = _OUT["path"].with_name(_OUT["path"].name + ".tmp")
    tmp.write_text(json.dumps({"meta": _OUT["meta"], "rows": rows}, indent=1, default=str))
    os.replace(tmp, _OUT["path"])


def meta(args) -> dict:
    dev = jax.devices()[0]
    return {"device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
            "jax": jax.__version__, "machine": platform.machine(), "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def peak_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def raw(args, rows):
    for task in args.tasks:
        for n in args.num_envs:
            r = measure(task, args.impl, n, args.steps)
            emit({"kind": "raw", **r}, rows)


def grad_steps_per_iter(algo: str, cfg) -> tuple[int, int]:
    """(gradient steps, env steps) of one loop iteration."""
    if algo == "ppo":
        return cfg.num_epochs * cfg.num_minibatches, cfg.num_envs * cfg.unroll_length
    return cfg.updates_per_step, cfg.num_envs


def loop(args, rows):
    raw_sps = {}
    if args.raw_json and Path(args.raw_json).exists():
        for r in json.loads(Path(args.raw_json).read_text())["rows"]:
            if r.get("kind") == "raw" and r["task"] == args.task:
                raw_sps[r["num_envs"]] = r["env_steps_per_s"]
    for item in args.runs:
        algo, preset = item.split(":")
        spec = registry.get(algo)
        cfg = spec.preset(preset, args.task)
        env_kwargs = dict(getattr(cfg, "env_overrides", ()) or ())
        env = envs.make(args.task, num_envs=cfg.num_envs, seed=0, **env_kwargs)
        grads, per_iter = grad_steps_per_iter(algo, cfg)
        # A budget long enough never to end, split so that one chunk is ``--chunk-iters``.
        warm = math.ceil(getattr(cfg, "min_buffer", 0) / cfg.num_envs)
        evals = 10_000
        steps = (warm + args.chunk_iters * evals) * per_iter
        lp = spec.make_loop(cfg, env, None, steps, 0, evals)
        t0 = time.perf_counter()
        carry = lp.init_carry()
        jax.block_until_ready(carry)
        init_s = time.perf_counter() - t0
        chunks, steady_s = [], 0.0
        while steady_s < args.seconds:
            c0 = lp.compile_s
            carry, row = lp.run_chunk(carry)
            if lp.compile_s > c0:
                continue  # the warm-up or a compiling call: not a steady chunk
            chunks.append(row)
            steady_s += row["chunk_s"]
        secs = sum(r["chunk_s"] for r in chunks)
        iters = sum(r["sps"] * r["chunk_s"] for r in chunks) / per_iter
        sps = iters * per_iter / secs
        emit({"kind": "loop", "algo": algo, "preset": preset, "task": args.task,
              "num_envs": cfg.num_envs, "batch": getattr(cfg, "batch_size", None),
              "grad_steps_per_iter": grads, "env_steps_per_s": sps, "grad_steps_per_s": iters * grads / secs,
              "compile_s": lp.compile_s, "init_s": init_s, "steady_chunks": len(chunks),
              "steady_s": secs, "peak_mem_gib": peak_gib(), "program_bytes": lp.program_bytes,
              "raw_env_steps_per_s": raw_sps.get(cfg.num_envs),
              "loop_over_raw": sps / raw_sps[cfg.num_envs] if cfg.num_envs in raw_sps else None}, rows)
        del carry, lp


class OutOfTime(Exception):
    """``learn --minutes``: the device lease's share for learning is spent."""


def learn(args, rows):
    spec = registry.get(args.algo)
    cfg = spec.preset(args.preset, args.task)
    t0 = time.perf_counter()

    def show(row):
        keep = ("env_steps", "wall_s", "eval_return", "train_return", "sps", "compile_s")
        minutes = (time.perf_counter() - t0) / 60
        emit({"kind": "learn", "algo": args.algo, "preset": args.preset, "task": args.task,
              "minutes": minutes, **{k: row[k] for k in keep if k in row}}, rows)
        if args.minutes and minutes >= args.minutes:
            raise OutOfTime  # after this row's checkpoint: the lifecycle below exports it

    try:
        run.train(args.algo, args.task, cfg, steps=args.steps, seed=0, out_dir=args.run_dir,
                  num_evals=args.num_evals, progress=False, progress_fn=show, tensorboard=False,
                  checkpoint_every_s=0.0 if args.minutes else 120.0, save_buffer=False, overwrite=True)
        stopped = False
    except OutOfTime:
        stopped = True
    emit({"kind": "learn_done", "wall_min": (time.perf_counter() - t0) / 60,
          "stopped_at_minutes": args.minutes if stopped else None, "peak_mem_gib": peak_gib()}, rows)
    if args.lifecycle:
        from jaxrl.io import lifecycle, sim2sim

        t1 = time.perf_counter()
        onnx_path = lifecycle.export_run(args.run_dir, "onnx")
        report = sim2sim.sim2sim(args.run_dir, episodes=2, policy_file=onnx_path)
        emit({"kind": "lifecycle", "export": str(onnx_path), "sim2sim": report,
              "seconds": time.perf_counter() - t1}, rows)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("raw")
    a.add_argument("--tasks", nargs="+", default=["T1JoystickFlatTerrain", "G1JoystickFlatTerrain"])
    a.add_argument("--num-envs", nargs="+", type=int, default=[4096, 1024, 8192])  # the presets' size first
    a.add_argument("--impl", default="jax")
    a.add_argument("--steps", type=int, default=50)
    b = sub.add_parser("loop")
    b.add_argument("--task", default="T1JoystickFlatTerrain")
    b.add_argument("--runs", nargs="+", default=["flashsac:paper", "sac:lift", "ppo:paper"])
    b.add_argument("--seconds", type=float, default=60.0)
    b.add_argument("--chunk-iters", type=int, default=50)
    b.add_argument("--raw-json", default="experiments/results/gpu_raw.json")
    c = sub.add_parser("learn")
    c.add_argument("--algo", default="flashsac")
    c.add_argument("--preset", default="paper")
    c.add_argument("--task", default="T1JoystickFlatTerrain")
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--num-evals", type=int, default=20)
    c.add_argument("--run-dir", default="/tmp/gpu_run")
    c.add_argument("--lifecycle", action="store_true")
    c.add_argument("--minutes", type=float, default=0.0,
                   help="stop training at the first evaluation after this many minutes (0: no limit)")
    for q in (a, b, c):
        q.add_argument("--out", required=True)
    args = p.parse_args()
    rows: list = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _OUT.update(path=out, meta=meta(args))
    # `timeout` (experiments/gpu_session.sh) sends SIGTERM: leave through `finally`, so the rows
    # measured so far are written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    try:
        {"raw": raw, "loop": loop, "learn": learn}[args.cmd](args, rows)
    finally:
        write(rows)
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
