"""Where a training iteration's time goes: each piece of one iteration jitted and timed alone.

    python experiments/profile_loop.py --tasks CartpoleBalance CheetahRun \
        --out experiments/results/profile_loop_cpu.json

Per trainer (cpu presets, one device, one seed) and task, the pieces of ONE loop iteration, each
its own jitted program run on the same state, steady time after a warm-up call:

* PPO: the env steps alone (random actions, ``unroll_length`` × num_envs), the rollout (policy,
  value of the next observation, observation statistics and the same env steps), the update
  (GAE, epochs × minibatches of gradient steps) on that rollout, and the whole iteration;
* off-policy (FlashSAC, SAC): one env step with a random action, the warm-up iteration (random
  action, env step, replay insert), the ``updates_per_step`` updates alone, the whole training
  iteration.

Each row also carries XLA's cost analysis of the piece (flops, bytes accessed) so the shares can
be read as "simulation" vs "learning" on any machine; the times themselves only mean something
as ratios on this machine (DESIGN.md, "Measuring").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxrl.train import registry, run

REPEATS = 5


def _timed(fn, *args) -> dict:
    """Compile, one warm-up call, then the best of REPEATS calls (seconds) and cost analysis."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    return {"s": best, "gflop": cost.get("flops", float("nan")) / 1e9,
            "gbytes_accessed": cost.get("bytes accessed", float("nan")) / 1e9}


def _loop(name: str, task: str, cfg):
    train_env, _, _ = run.make_envs(task, cfg.num_envs, 0, {})
    loop = registry.get(name).make_loop(cfg, train_env, None, 10**6, 0, 1, devices=1, seeds=1)
    return loop, loop.init_carry()


def profile_ppo(task: str) -> dict:
    from jaxrl.algos import ppo
    from jaxrl.train import onpolicy

    cfg = ppo.PPOConfig.cpu(num_envs=256)
    loop, carry = _loop("ppo", task, cfg)
    env, key = loop.env, jax.random.PRNGKey(1)

    def env_only(state, k):
        def body(s, kk):
            return env.step(s, env.random_action_fn(kk)), ()
        return jax.lax.scan(body, state, jax.random.split(k, cfg.unroll_length))[0]

    def rollout(agent, state, k):
        with jax.default_matmul_precision(cfg.matmul_precision):
            return onpolicy._rollout(env, cfg, agent, state, k)

    _, _, batch = jax.jit(rollout)(carry.agent, carry.env_state, key)

    def update(agent, r, k):
        with jax.default_matmul_precision(cfg.matmul_precision):
            return ppo.update(agent, r, k, cfg, shards=1)

    rows = {
        "env_steps": _timed(env_only, carry.env_state, key),
        "rollout": _timed(rollout, carry.agent, carry.env_state, key),
        "update": _timed(update, carry.agent, batch, key),
        "iteration": _timed(lambda c: loop._chunk_fn(c, 1, False), carry),
    }
    steps = cfg.unroll_length * cfg.num_envs
    return _shares(rows, steps, {"unroll_length": cfg.unroll_length, "num_envs": cfg.num_envs,
                                 "epochs": cfg.num_epochs, "minibatches": cfg.num_minibatches,
                                 "hidden": list(cfg.hidden)})


def profile_offpolicy(name: str, task: str) -> dict:
    cfg = registry.get(name).config.cpu()
    loop, carry = _loop(name, task, cfg)
    env, key = loop.env, jax.random.PRNGKey(1)
    # Fill the buffer past min_buffer so the updates sample real rows.
    fill = -(-loop.s.min_buffer // cfg.num_envs)
    carry, _ = loop.chunk(carry, fill, warm=True)

    rows = {
        "env_steps": _timed(lambda s, k: env.step(s, env.random_action_fn(k)), carry.env_state, key),
        "warmup_iteration": _timed(lambda c: loop._iteration(c, jnp.bool_(True)), carry),
        "updates": _timed(lambda a, b, k: loop._updates(a, b, k), carry.agent, carry.buffer, key),
        "iteration": _timed(lambda c: loop._iteration(c, jnp.bool_(False)), carry),
    }
    return _shares(rows, cfg.num_envs, {"num_envs": cfg.num_envs, "batch_size": loop.s.batch_size,
                                        "updates_per_step": loop.s.updates_per_step})


def _shares(rows: dict, env_steps: int, settings: dict) -> dict:
    total = rows["iteration"]["s"]
    for r in rows.values():
        r["share_of_iteration"] = r["s"] / total
    return {"settings": settings, "env_steps_per_iteration": env_steps,
            "loop_env_steps_per_s": env_steps / total,
            "raw_env_steps_per_s": env_steps / rows["env_steps"]["s"], "pieces": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["CartpoleBalance", "CheetahRun"])
    p.add_argument("--trainers", nargs="+", default=["ppo", "flashsac", "sac"])
    p.add_argument("--out", default="experiments/results/profile_loop_cpu.json")
    a = p.parse_args()
    out = {"meta": {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()[:1]],
                    "jax": jax.__version__, "machine": platform.machine(), "repeats": REPEATS},
           "rows": {}}
    for task in a.tasks:
        for trainer in a.trainers:
            res = profile_ppo(task) if trainer == "ppo" else profile_offpolicy(trainer, task)
            out["rows"][f"{trainer}/{task}"] = res
            pieces = ", ".join(f"{k} {v['s'] * 1e3:.2f} ms ({v['share_of_iteration']:.0%})"
                               for k, v in res["pieces"].items())
            print(f"{trainer:9s} {task:16s} loop {res['loop_env_steps_per_s']:,.0f} / raw "
                  f"{res['raw_env_steps_per_s']:,.0f} env-steps/s; {pieces}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
