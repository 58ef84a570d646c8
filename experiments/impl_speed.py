"""Measure env-steps/s of MJX impl="jax" vs impl="warp" per task on this machine.

    python experiments/impl_speed.py --tasks CartpoleBalance CheetahRun T1JoystickFlatTerrain \
        --num-envs 128 --steps 100 --out experiments/results/impl_speed_cpu.json

The default impl per task and platform in envs/registry.py comes from these numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

import envs


def measure(task: str, impl: str, num_envs: int, steps: int) -> dict:
    env = envs.make(task, num_envs=num_envs, impl=impl)

    @jax.jit
    def rollout(state, key):
        def body(s, k):
            return env.step(s, env.random_action_fn(k)), ()

        state, _ = jax.lax.scan(body, state, jax.random.split(key, steps))
        return state

    state = env.reset(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    state = jax.block_until_ready(rollout(state, jax.random.PRNGKey(1)))
    compile_and_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = jax.block_until_ready(rollout(state, jax.random.PRNGKey(2)))
    run = time.perf_counter() - t0
    return {
        "task": task, "impl": impl, "num_envs": num_envs, "steps": steps,
        "first_call_s": compile_and_run, "run_s": run, "env_steps_per_s": num_envs * steps / run,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=["CartpoleBalance", "CheetahRun", "T1JoystickFlatTerrain"])
    p.add_argument("--impls", nargs="+", default=["jax", "warp"])
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="experiments/results/impl_speed_cpu.json")
    a = p.parse_args()
    rows = []
    for task in a.tasks:
        for impl in a.impls:
            r = measure(task, impl, a.num_envs, a.steps)
            print(json.dumps(r), flush=True)
            rows.append(r)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "machine": platform.machine(),
            "cpu_count": __import__("os").cpu_count(), "jax": jax.__version__}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
