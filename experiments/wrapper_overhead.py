"""Our `VecEnv` (auto-reset, episode statistics, split observations, solver counters) against
Playground's bare ``vmap(env.step)`` on the same task, impl and num_envs: what the wrapper costs.

    python experiments/wrapper_overhead.py T1JoystickFlatTerrain:1024:50 CheetahRun:4096:20 \
        --out experiments/results/wrapper_overhead_gpu.json

Each ``TASK:NUM_ENVS:STEPS`` is timed both ways (random actions, MJX impl="jax", the second call
of a jitted ``lax.scan`` rollout).  Playground's side never resets (it has no auto-reset), so on
tasks whose episodes end early the comparison is conservative for us.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs
from envs import menagerie
from experiments.gpu_measure import meta


def rollout_fns(task: str, n: int, steps: int):
    """{'jaxrl': (fn, state), 'playground': (fn, state)}: jitted rollouts of ``steps`` steps."""
    from mujoco_playground import registry

    menagerie.prepare(task)
    pg = registry.load(task, config_overrides={"impl": "jax"})

    @jax.jit
    def pg_roll(s):
        def body(s, k):
            a = jax.random.uniform(k, (n, pg.action_size), minval=-1, maxval=1)
            return jax.vmap(pg.step)(s, a), ()
        return jax.lax.scan(body, s, jax.random.split(jax.random.PRNGKey(1), steps))[0]

    env = envs.make(task, num_envs=n, impl="jax")

    @jax.jit
    def our_roll(s):
        def body(s, k):
            return env.step(s, env.random_action_fn(k)), ()
        return jax.lax.scan(body, s, jax.random.split(jax.random.PRNGKey(1), steps))[0]

    pg_state = jax.jit(jax.vmap(pg.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    return {"playground": (pg_roll, pg_state), "jaxrl": (our_roll, env.reset(jax.random.PRNGKey(0)))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("specs", nargs="+", help="TASK:NUM_ENVS:STEPS")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = []
    for spec in args.specs:
        task, n, steps = spec.split(":")
        for name, (fn, state) in rollout_fns(task, int(n), int(steps)).items():
            t0 = time.perf_counter()
            state = jax.block_until_ready(fn(state))
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state))
            run_s = time.perf_counter() - t0
            row = {"task": task, "num_envs": int(n), "steps": int(steps), "side": name,
                   "first_call_s": first, "run_s": run_s, "env_steps_per_s": int(n) * int(steps) / run_s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"meta": meta(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
