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

Each row also carries XLA's cost analysis of the piece (flops, bytes accessed) and the piece's
matrix-multiply work counted from its jaxpr (``matmul_gflop``, 2·M·N·K per dot_general, times the
trip count of every scan around it) with the rate it ran at (``matmul_gflop_per_s``).  XLA's cost
analysis counts a loop's body once, not once per trip, so its ``gflop`` of a scanned piece (the
updates, a rollout) is one trip's work; ``matmul_gflop`` is the whole piece's.  The times
themselves only mean something as ratios on this machine (DESIGN.md, "Measuring").

``--ops`` also traces each piece (`jax.profiler`) and sums XLA's per-op thread time by kind —
matrix multiplies, fused elementwise kernels, copies, reductions, the rest — per call
(``ops_ms``, ``ops_count``): whether a piece is arithmetic or per-kernel overhead.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import _compare  # experiments/, beside this script
import jax
import jax.numpy as jnp

from jaxrl.train import registry, run

REPEATS = 5


def matmul_flops(fn, *args) -> dict:
    """2·M·N·K summed over every dot_general ``fn(*args)`` runs (``matmul_gflop``).

    Scans multiply their body by their length.  A cond on a constant counts the branch taken;
    on a traced value the costlier branch (``matmul_gflop_is_upper_bound``).  A while loop
    (data-dependent trip count: MJX's solver) counts its body once
    (``matmul_gflop_is_lower_bound``).  Nested calls (jit, custom_jvp / custom_vjp, remat,
    shard_map) are followed."""
    flags = {"lower": False, "upper": False}

    def sub_jaxprs(params):
        for v in params.values():
            for x in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(x, jax.extend.core.ClosedJaxpr):
                    yield x.jaxpr
                elif isinstance(x, jax.extend.core.Jaxpr):
                    yield x

    def count(jaxpr) -> float:
        total = 0.0
        for e in jaxpr.eqns:
            name = e.primitive.name
            if name == "dot_general":
                (contract, _), _ = e.params["dimension_numbers"]
                lhs = e.invars[0].aval.shape
                total += 2.0 * math.prod(e.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
            elif name == "scan":
                total += e.params["length"] * count(e.params["jaxpr"].jaxpr)
            elif name == "cond":
                branches = [count(b.jaxpr) for b in e.params["branches"]]
                index = e.invars[0]
                if isinstance(index, jax.extend.core.Literal):
                    total += branches[int(index.val)]
                else:
                    flags["upper"] |= len(set(branches)) > 1
                    total += max(branches)
            else:
                flags["lower"] |= name == "while"
                total += sum(count(j) for j in sub_jaxprs(e.params))
        return total

    gflop = count(jax.make_jaxpr(fn)(*args).jaxpr) / 1e9
    return {"matmul_gflop": gflop, "matmul_gflop_is_lower_bound": flags["lower"],
            "matmul_gflop_is_upper_bound": flags["upper"]}


# Trace events that contain other ops (executor, loop and branch thunks) rather than being one.
_CONTAINERS = re.compile(r"^(ThunkExecutor|ThreadpoolListener|end: |while|conditional|call|\$)")


def op_kind(name: str) -> str:
    """The kind of an XLA:CPU trace event: matmul, copy (copies, concatenations, slices),
    reduction, fusion (fused elementwise kernels) or other."""
    if name.startswith(("dot", "wrapped_dot")):
        return "matmul"
    if re.search(r"copy|concatenate|slice", name):
        return "copy"
    if "reduce" in name:
        return "reduction"
    return "fusion" if "fusion" in name else "other"


def op_breakdown(compiled, *args) -> dict:
    """Thread time per call by `op_kind`, summed over XLA's threads (ops of one call may run on
    several at once), from a `jax.profiler` trace of REPEATS calls."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(REPEATS):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (path,) = Path(d).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(path))
    ms, count = {}, {}
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if _CONTAINERS.match(ev.name):
                    continue
                k = op_kind(ev.name)
                ms[k] = ms.get(k, 0.0) + ev.duration_ns / 1e6 / REPEATS
                count[k] = count.get(k, 0) + 1 / REPEATS
    return {"ops_ms": ms, "ops_count": {k: round(v) for k, v in count.items()}}


def _timed(fn, *args, ops: bool = False) -> dict:
    """Compile, one warm-up call, then the best of REPEATS calls (seconds) and cost analysis;
    with ``ops`` the `op_breakdown` as well."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t0)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    mm = matmul_flops(fn, *args)
    return {"s": best, "gflop": cost.get("flops", float("nan")) / 1e9,
            "gbytes_accessed": cost.get("bytes accessed", float("nan")) / 1e9,
            **mm, "matmul_gflop_per_s": mm["matmul_gflop"] / best,
            **(op_breakdown(compiled, *args) if ops else {})}


def _loop(name: str, task: str, cfg):
    train_env, _, _ = run.make_envs(task, cfg.num_envs, 0, {})
    loop = registry.get(name).make_loop(cfg, train_env, None, 10**6, 0, 1, devices=1, seeds=1)
    return loop, loop.init_carry()


def profile_ppo(task: str, ops: bool = False) -> dict:
    from jaxrl.algos import ppo
    from jaxrl.train import onpolicy

    timed = functools.partial(_timed, ops=ops)
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
        "env_steps": timed(env_only, carry.env_state, key),
        "rollout": timed(rollout, carry.agent, carry.env_state, key),
        "update": timed(update, carry.agent, batch, key),
        "iteration": timed(lambda c: loop._chunk_fn(c, 1, False), carry),
    }
    steps = cfg.unroll_length * cfg.num_envs
    return _shares(rows, steps, {"unroll_length": cfg.unroll_length, "num_envs": cfg.num_envs,
                                 "epochs": cfg.num_epochs, "minibatches": cfg.num_minibatches,
                                 "hidden": list(cfg.hidden)})


def profile_offpolicy(name: str, task: str, ops: bool = False) -> dict:
    timed = functools.partial(_timed, ops=ops)
    cfg = registry.get(name).config.cpu()
    loop, carry = _loop(name, task, cfg)
    env, key = loop.env, jax.random.PRNGKey(1)
    # Fill the buffer past min_buffer so the updates sample real rows.
    fill = -(-loop.s.min_buffer // cfg.num_envs)
    carry, _ = loop.chunk(carry, fill, warm=True)

    rows = {
        "env_steps": timed(lambda s, k: env.step(s, env.random_action_fn(k)), carry.env_state, key),
        "warmup_iteration": timed(lambda c: loop._iteration(c, jnp.bool_(True)), carry),
        "updates": timed(lambda a, b, k: loop._updates(a, b, k), carry.agent, carry.buffer, key),
        "iteration": timed(lambda c: loop._iteration(c, jnp.bool_(False)), carry),
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
    p.add_argument("--ops", action="store_true", help="also trace each piece: thread time by kind of op")
    a = p.parse_args()
    out = {"meta": _compare.meta(repeats=REPEATS, command=" ".join(sys.argv)), "rows": {}}
    for task in a.tasks:
        for trainer in a.trainers:
            res = profile_ppo(task, a.ops) if trainer == "ppo" else profile_offpolicy(trainer, task, a.ops)
            out["rows"][f"{trainer}/{task}"] = res
            pieces = ", ".join(f"{k} {v['s'] * 1e3:.2f} ms ({v['share_of_iteration']:.0%}, "
                               f"{v['matmul_gflop_per_s']:.1f} matmul GFLOP/s)"
                               for k, v in res["pieces"].items())
            print(f"{trainer:9s} {task:16s} loop {res['loop_env_steps_per_s']:,.0f} / raw "
                  f"{res['raw_env_steps_per_s']:,.0f} env-steps/s; {pieces}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
