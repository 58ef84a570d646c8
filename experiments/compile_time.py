"""Compile time per trainer with an EMPTY compilation cache, program by program.

    python experiments/compile_time.py --tasks CartpoleBalance CheetahRun \
        --out experiments/results/compile_time_cpu.json

Each (trainer, task) runs in a fresh Python process with a fresh cache folder: the cpu preset,
one device, one seed, a budget of one chunk (the off-policy warm-up, then two training
iterations; PPO: one iteration) and one evaluation.  `jax.monitoring` records every XLA backend
compile (program name, seconds) and the tracing / lowering seconds; the row gives their sums and
the programs over 0.5 s, plus the process's wall time to the end of the run (imports excluded).
The scale issue's target is "compile <= 30 s per trainer on dm_control tasks, empty cache";
compile time only means something on the machine it was measured on (named in the JSON).

``--before-tree DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/before HEAD~1``)
measures every row twice, alternating which tree goes first, the other run's code imported from
DIR: a before/after comparison on one machine in one session.  ``--reset-pool R`` likewise
measures every row with fresh resets and with R pooled start states per env (`envs.make`
``reset_pool``): the pool takes the task's reset physics out of the training chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGOS = ("flashsac", "ppo", "sac")


def child(algo: str, task: str, reset_pool: int = 0) -> dict:
    from jax import monitoring

    compiles: list[tuple[str, float]] = []
    trace = [0.0]

    def on_duration(event, secs, **kw):
        if event.endswith("backend_compile_duration"):
            compiles.append((kw.get("fun_name", "?"), secs))
        elif event.endswith(("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")):
            trace[0] += secs

    monitoring.register_event_duration_secs_listener(on_duration)
    import jax

    from jaxrl.train import registry, run

    spec = registry.get(algo)
    cfg = spec.preset("cpu", task)
    if algo == "ppo":
        steps = cfg.num_envs * cfg.unroll_length
    else:
        steps = cfg.min_buffer + 2 * cfg.num_envs
    from envs._runtime import FEW_STEPS

    # above it a run compiles as every real run does, not the quick way of a short run
    assert steps > FEW_STEPS, f"{algo} {task}: {steps} steps is a short run (envs._runtime.short_run_options)"
    t0 = time.perf_counter()
    run.train(algo, task, cfg, steps=steps, num_evals=1, progress=False, devices=1,
              env_kwargs={"reset_pool": reset_pool} if reset_pool else {})
    wall = time.perf_counter() - t0
    big = sorted(((n, round(s, 2)) for n, s in compiles if s >= 0.5), key=lambda x: -x[1])
    return {"algo": algo, "task": task, "steps": steps, "backend_compile_s": round(sum(s for _, s in compiles), 2),
            "tracing_s": round(trace[0], 2), "programs": big, "wall_s": round(wall, 2),
            "jax": jax.__version__, **({"reset_pool": reset_pool} if reset_pool else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["CartpoleBalance", "CheetahRun"])
    p.add_argument("--algos", nargs="+", default=list(ALGOS))
    p.add_argument("--out", default="experiments/results/compile_time_cpu.json")
    p.add_argument("--before-tree", metavar="DIR", help="also measure each row with the code of this checkout")
    p.add_argument("--reset-pool", type=int, default=0, metavar="R",
                   help="also measure each row with R pooled start states per env (envs.make reset_pool)")
    p.add_argument("--child", nargs=3, metavar=("ALGO", "TASK", "POOL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("ROW " + json.dumps(child(args.child[0], args.child[1], int(args.child[2]))), flush=True)
        return
    rows = []
    here = str(Path(__file__).resolve().parents[1])
    trees = {"after": here, "before": str(Path(args.before_tree).resolve())} if args.before_tree else {None: here}
    pools = [0, args.reset_pool] if args.reset_pool else [0]
    variants = [(t, r) for t in trees for r in pools]
    for i, (task, algo) in enumerate((t, a) for t in args.tasks for a in args.algos):
        for name, pool in (variants if i % 2 == 0 else variants[::-1]):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "JAXRL_COMPILATION_CACHE": cache, "JAXRL_CPU_DEVICES": "1",
                       "PYTHONPATH": os.pathsep.join([trees[name], os.environ.get("PYTHONPATH", "")])}
                out = subprocess.run([sys.executable, __file__, "--child", algo, task, str(pool)], env=env, check=True,
                                     capture_output=True, text=True, cwd=trees[name]).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("ROW "))[4:])
            row.update({"tree": name} if name else {})
            print(row, flush=True)
            rows.append(row)
    from _compare import (
        cpu_model,  # here: importing it imports envs (the cache settings) in this parent
    )

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "cpu_model": cpu_model(), "note": "empty compilation cache per row; tracing_s counts "
              "nested traces once per level (an upper bound)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
