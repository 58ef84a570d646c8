"""What pooled start states (`envs.make(..., reset_pool=R)`) save, measured in ONE process.

    python experiments/reset_pool.py --task CheetahRun --out experiments/results/reset_pool_cpu.json

Two comparisons, each alternating its variants so that the machine's drift hits all of them alike
(separate processes on this 2-core machine scattered by up to 25% from run to run):

* **rollouts**: random actions at 256 envs over windows of one episode length (so every window
  holds one episode end and its resets), best of ``--repeats``: our `VecEnv` with fresh resets,
  with ``reset_pool=R``, and Playground's `wrap_for_brax_training` (Brax's auto-reset: each env
  restarts from its first state);
* **PPO's training chunk** (cpu preset at 256 envs, one device, one seed): ``--iterations``
  iterations per chunk (32 × 8,192 env steps ≈ one CheetahRun episode), median chunk time of
  ``--repeats`` chunks per variant, fresh resets against ``reset_pool=R``.

Rates are best of the repeats (``*_median`` beside them): noise on this machine only slows a run.

Plus the first call of each rollout program (compile + one window), empty compilation cache.
Absolute numbers mean little on CPU (DESIGN.md, "Measuring"): read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAXRL_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jaxrl_pool_cache_"))

import jax

import envs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _compare  # experiments/, beside this script


def timed(fn, state, key):
    t = time.perf_counter()
    state = jax.block_until_ready(fn(state, key))
    return state, time.perf_counter() - t


def rollouts(task: str, num_envs: int, pool: int, repeats: int) -> dict:
    from mujoco_playground import registry, wrapper

    ours = {r: envs.make(task, num_envs=num_envs, reset_pool=r) for r in (0, pool)}
    length = ours[0].episode_length
    brax_task = registry.load(task, config_overrides={"impl": "jax"})
    brax = wrapper.wrap_for_brax_training(brax_task, episode_length=length, action_repeat=1)
    variants = {f"ours, reset_pool={r}": (env.reset, env.step, env.action_size) for r, env in ours.items()}
    variants["Playground's wrap_for_brax_training"] = (
        lambda k: brax.reset(jax.random.split(k, num_envs)), brax.step, brax_task.action_size)
    programs, states, first, times = {}, {}, {}, {}
    for name, (reset, step, size) in variants.items():
        def window(state, key, step=step, size=size):
            def body(s, k):
                return step(s, jax.random.uniform(k, (num_envs, size), minval=-1, maxval=1)), None
            return jax.lax.scan(body, state, jax.random.split(key, length))[0]
        programs[name] = jax.jit(window)
        states[name], first[name] = timed(programs[name], jax.jit(reset)(jax.random.PRNGKey(0)),
                                          jax.random.PRNGKey(1))
        # a second untimed call: a stepped state may differ from a reset one in weak types, and
        # Brax's wrapper then compiles the window again (a 27 s "window" otherwise)
        states[name], _ = timed(programs[name], states[name], jax.random.PRNGKey(10**6))
        times[name] = []
    for i in range(repeats):
        for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
            states[name], t = timed(programs[name], states[name], jax.random.PRNGKey(2 + i))
            times[name].append(t)
    return {name: {"env_steps_per_s": num_envs * length / min(times[name]),
                   "env_steps_per_s_median": num_envs * length / statistics.median(times[name]),
                   "window_s": times[name],
                   "first_call_s": first[name]} for name in variants}


def ppo_chunks(task: str, num_envs: int, pool: int, iterations: int, repeats: int) -> dict:
    from jaxrl.algos.ppo import PPOConfig
    from jaxrl.train import registry

    cfg = PPOConfig.cpu(num_envs=num_envs)
    loops = {}
    for r in (0, pool):
        env = envs.make(task, num_envs=num_envs, reset_pool=r)
        loop = registry.get("ppo").make_loop(cfg, env, None, 10**9, 0, 1, devices=1, seeds=1)
        carry, first = timed(lambda c, n, loop=loop: loop.chunk(c, n)[0], loop.init_carry(), iterations)
        loops[r] = [loop, carry, [], first]
    for i in range(repeats):
        for r in ((0, pool) if i % 2 == 0 else (pool, 0)):
            loop, carry, ts, _ = loops[r]
            loops[r][1], t = timed(lambda c, n, loop=loop: loop.chunk(c, n)[0], carry, iterations)
            ts.append(t)
    steps = iterations * cfg.num_envs * cfg.unroll_length
    return {f"reset_pool={r}": {"env_steps_per_s": steps / min(ts),
                                "env_steps_per_s_median": steps / statistics.median(ts), "chunk_s": ts,
                                "first_chunk_s": first, "env_steps_per_chunk": steps}
            for r, (_, _, ts, first) in loops.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="CheetahRun")
    p.add_argument("--num-envs", type=int, default=256)
    p.add_argument("--reset-pool", type=int, default=1, metavar="R")
    p.add_argument("--iterations", type=int, default=32, help="PPO iterations per chunk")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--out", default="experiments/results/reset_pool_cpu.json")
    a = p.parse_args()
    if a.reset_pool < 1 or a.repeats < 1 or a.iterations < 1:
        p.error("--reset-pool, --repeats and --iterations must be >= 1")
    result = {"meta": _compare.meta(command="experiments/reset_pool.py " + " ".join(sys.argv[1:]),
                                    task=a.task, num_envs=a.num_envs)}
    result["rollouts"] = rollouts(a.task, a.num_envs, a.reset_pool, a.repeats)
    print(json.dumps(result["rollouts"], indent=1), flush=True)
    result["ppo_chunks"] = ppo_chunks(a.task, a.num_envs, a.reset_pool, a.iterations, a.repeats)
    print(json.dumps(result["ppo_chunks"], indent=1), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
