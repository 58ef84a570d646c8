"""PPO's update and loop iteration with each form the CPU changes took, timed interleaved in one
process (so a noisy machine slows all alike):

* ``jax``: `jax.random.permutation` per epoch (two sorts of (random word, index)) and flax's
  ``nn.elu`` (expm1) -- before stop 30;
* ``two_words``: one sort of (two random words, index) and `jaxrl.nets.mlp.elu` (eˣ − 1) --
  stop 30;
* ``packed``: `jaxrl.algos.ppo.permutation` (rounds of plain uint32 sorts, random high bits and
  the position in the low bits) and `jaxrl.nets.mlp.elu` -- stop 32.

    JAXRL_CPU_DEVICES=1 python experiments/ppo_update_ab.py --out experiments/results/ppo_update_ab_cpu.json

cpu preset at 256 envs × 32 steps on ``--task``; best of ``--repeats`` rounds of 5 calls each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _compare  # experiments/, beside this script
import flax.linen as nn
import jax
import jax.numpy as jnp
import profile_loop

from jaxrl.algos import ppo
from jaxrl.nets import mlp
from jaxrl.train import onpolicy


def compiled_pieces(task: str, cfg: ppo.PPOConfig) -> list:
    """[(compiled update, args), (compiled whole iteration, args)] with the current functions."""
    loop, carry = profile_loop._loop("ppo", task, cfg)
    env, key = loop.env, jax.random.PRNGKey(1)

    def rollout(agent, state, k):
        with jax.default_matmul_precision(cfg.matmul_precision):
            return onpolicy._rollout(env, cfg, agent, state, k)

    def update(agent, r, k):
        with jax.default_matmul_precision(cfg.matmul_precision):
            return ppo.update(agent, r, k, cfg, shards=1)

    _, _, batch = jax.jit(rollout)(carry.agent, carry.env_state, key)
    pieces = [(jax.jit(update).lower(carry.agent, batch, key).compile(), (carry.agent, batch, key)),
              (jax.jit(lambda c: loop._chunk_fn(c, 1, False)).lower(carry).compile(), (carry,))]
    for fn, args in pieces:
        jax.block_until_ready(fn(*args))
    return pieces


def two_word_permutation(key: jax.Array, n: int) -> jax.Array:
    """Stop 30's `ppo.permutation`: ONE sort of (two random 32-bit words, index)."""
    words = jax.random.bits(key, (2, n), jnp.uint32)
    return jax.lax.sort((words[0], words[1], jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="CartpoleBalance")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="experiments/results/ppo_update_ab_cpu.json")
    a = p.parse_args()
    cfg = ppo.PPOConfig.cpu(num_envs=256)
    after = (ppo.permutation, mlp.ACTIVATIONS["elu"])
    variants = {"jax": (jax.random.permutation, nn.elu), "two_words": (two_word_permutation, after[1]),
                "packed": after}
    pieces = {}
    for name, (perm, elu) in variants.items():  # traced with the variant's functions
        ppo.permutation, mlp.ACTIVATIONS["elu"] = perm, elu
        pieces[name] = compiled_pieces(a.task, cfg)
    ppo.permutation, mlp.ACTIVATIONS["elu"] = after
    best = {name: [float("inf")] * 2 for name in variants}
    for _ in range(a.repeats):
        for name, fns in pieces.items():
            for j, (fn, args) in enumerate(fns):
                t0 = time.perf_counter()
                for _ in range(5):
                    out = fn(*args)
                jax.block_until_ready(out)
                best[name][j] = min(best[name][j], (time.perf_counter() - t0) / 5)
    steps = cfg.unroll_length * cfg.num_envs
    res = {"meta": _compare.meta(task=a.task, num_envs=cfg.num_envs, unroll_length=cfg.unroll_length,
                                 command=" ".join(sys.argv)),
           **{name: {"update_ms": u * 1e3, "iteration_ms": it * 1e3, "loop_env_steps_per_s": steps / it}
              for name, (u, it) in best.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
