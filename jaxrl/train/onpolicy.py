"""The on-policy loop: rollout → GAE → PPO update, many iterations per jitted host call.

    state, rows = onpolicy.train(env, PPOConfig.cpu(), total_steps=500_000, eval_env=eval_env)

One *chunk* is ``lax.scan`` over ``iterations_per_chunk`` iterations, each a scanned rollout of
``unroll_length`` steps on all envs followed by ``ppo.update``.  Between chunks the host only
checks for NaNs, evaluates the deterministic policy and logs one row.  Everything the run needs to
continue is one pytree, `OnPolicyCarry`: checkpoint it between chunks and `train_chunk` resumes
bit-exactly.

A lifecycle layer drives the pieces itself:

    carry = init_carry(env, cfg, seed)
    chunk = make_train_chunk(env, cfg, iterations)     # jitted carry -> (carry, metrics)
    carry, metrics = chunk(carry)                       # or train_chunk(carry, env, cfg, iterations)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.algos import ppo
from jaxrl.train.evaluate import episode_rollout
from jaxrl.train.guards import check_actions, check_finite

LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "lr", "clip_fraction", "grad_norm", "std")


@struct.dataclass
class OnPolicyCarry:
    """The whole state of an on-policy run (checkpoint this to resume exactly)."""

    agent: ppo.PPOState
    env_state: Any  # envs.EnvState
    key: jax.Array
    iteration: jax.Array  # [] int32, PPO iterations done (env steps = iteration × batch_size)


def env_steps(carry: OnPolicyCarry, cfg: ppo.PPOConfig) -> int:
    """Env steps taken so far (host int; no int32 overflow at billions of steps)."""
    return int(carry.iteration) * cfg.batch_size


def _check_env(env, cfg: ppo.PPOConfig) -> None:
    if env.num_envs != cfg.num_envs:
        raise ValueError(
            f"env has num_envs={env.num_envs} but cfg.num_envs={cfg.num_envs}; "
            "make the env with num_envs=cfg.num_envs"
        )


def init_carry(env, cfg: ppo.PPOConfig, seed: int = 0) -> OnPolicyCarry:
    """Fresh agent and env state from one seed."""
    _check_env(env, cfg)
    k_agent, k_env, k_loop = jax.random.split(jax.random.PRNGKey(seed), 3)
    return OnPolicyCarry(
        agent=ppo.init(k_agent, env.spec, cfg),
        env_state=env.reset(k_env),
        key=k_loop,
        iteration=jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------- one iteration
def _rollout(env, cfg: ppo.PPOConfig, agent: ppo.PPOState, env_state, key):
    """unroll_length stochastic steps on all envs -> (env_state, ppo.Rollout)."""
    keys_used = sorted({cfg.actor_obs_key, cfg.critic_obs_key})

    def step(env_state, k):
        action, ex = ppo.act(agent, env_state.obs, k, cfg)
        nxt = env.step(env_state, action)
        next_value = ppo.value(agent.params, agent, nxt.final_obs, cfg)
        out = ppo.Rollout(
            obs={name: env_state.obs[name] for name in keys_used},
            raw_action=ex["raw_action"],
            log_prob=ex["log_prob"],
            mean=ex["mean"],
            std=ex["std"],
            value=ex["value"],
            next_value=next_value,
            reward=nxt.reward,
            terminated=nxt.terminated,
            truncated=nxt.truncated,
        )
        return nxt, out

    return jax.lax.scan(step, env_state, jax.random.split(key, cfg.unroll_length))


def _iteration(env, cfg: ppo.PPOConfig, carry: OnPolicyCarry, _) -> tuple[OnPolicyCarry, dict]:
    key, k_roll, k_upd = jax.random.split(carry.key, 3)
    env_state, rollout = _rollout(env, cfg, carry.agent, carry.env_state, k_roll)
    agent, metrics = ppo.update(carry.agent, rollout, k_upd, cfg)
    metrics["reward"] = rollout.reward.mean()
    new = OnPolicyCarry(agent=agent, env_state=env_state, key=key, iteration=carry.iteration + 1)
    return new, metrics


def _chunk(env, cfg: ppo.PPOConfig, iterations: int, carry: OnPolicyCarry):
    before = carry.env_state.stats
    carry, metrics = jax.lax.scan(
        functools.partial(_iteration, env, cfg), carry, None, length=iterations
    )
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["lr"] = carry.agent.lr
    after = carry.env_state.stats
    episodes = after.completed - before.completed
    metrics["train_episodes"] = episodes
    metrics["train_return"] = jnp.where(
        episodes > 0, (after.return_sum - before.return_sum) / jnp.maximum(episodes, 1), jnp.nan
    )
    return carry, metrics


def make_train_chunk(env, cfg: ppo.PPOConfig, iterations: int) -> Callable:
    """Jitted ``carry -> (carry, metrics)`` running ``iterations`` PPO iterations.

    metrics are chunk means of the update metrics plus ``lr`` (final), ``reward`` (mean per
    step), ``train_episodes`` and ``train_return`` (mean return of the training episodes that
    finished in the chunk, from EnvState.stats; NaN if none did).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    _check_env(env, cfg)
    return jax.jit(functools.partial(_chunk, env, cfg, int(iterations)))


@functools.lru_cache(maxsize=16)
def _cached_chunk(env, cfg, iterations):
    return make_train_chunk(env, cfg, iterations)


def train_chunk(carry: OnPolicyCarry, env, cfg: ppo.PPOConfig, iterations: int):
    """Run one chunk (the jitted function is cached per (env, cfg, iterations))."""
    return _cached_chunk(env, cfg, int(iterations))(carry)


# ----------------------------------------------------------------------------- evaluation
def make_evaluate(eval_env, cfg: ppo.PPOConfig) -> Callable:
    """Jitted ``(agent, key) -> mean return`` of one full deterministic episode per eval env."""

    def evaluate(agent: ppo.PPOState, key: jax.Array):
        def policy(obs, _):
            return ppo.act(agent, obs, key, cfg, deterministic=True)[0]

        ret, _, _ = episode_rollout(eval_env, policy, eval_env.reset(key), key)
        return ret.mean()

    return jax.jit(evaluate)


# ----------------------------------------------------------------------------- the loop
def _to_host(metrics: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def train(
    env,
    cfg: ppo.PPOConfig,
    *,
    total_steps: int,
    seed: int = 0,
    eval_env=None,
    num_evals: int = 10,
    progress_fn: Callable[[dict], None] | None = None,
    iterations_per_chunk: int | None = None,
    carry: OnPolicyCarry | None = None,
) -> tuple[ppo.PPOState, list[dict]]:
    """Train PPO for at least ``total_steps`` env steps; returns (agent state, metric rows).

    The run is ``num_evals`` chunks of ``iterations_per_chunk`` iterations (default: the budget
    split evenly, rounded up to whole iterations of num_envs × unroll_length steps).  Rows: one at
    env step 0 (initial policy), then one after each chunk, with env_steps, wall_s (since start,
    compile included), sps (training steps per second of the chunk, compile excluded),
    eval_return (deterministic policy, one full episode on each env of ``eval_env``, default
    ``env``), train_return and the PPO losses.  The first row also has compile_s.  ``carry``
    continues a checkpointed run instead of starting from ``seed``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if num_evals < 1:
        raise ValueError(f"num_evals must be >= 1, got {num_evals}")
    _check_env(env, cfg)
    eval_env = env if eval_env is None else eval_env
    total_iters = math.ceil(total_steps / cfg.batch_size)
    ipc = iterations_per_chunk or max(1, math.ceil(total_iters / num_evals))
    num_chunks = math.ceil(total_iters / ipc)

    start = time.perf_counter()
    carry = init_carry(env, cfg, seed) if carry is None else carry
    eval_key = jax.random.PRNGKey(seed ^ 0x0E7A1)
    t0 = time.perf_counter()
    chunk_fn = make_train_chunk(env, cfg, ipc).lower(carry).compile()
    evaluate = make_evaluate(eval_env, cfg).lower(carry.agent, eval_key).compile()
    compile_s = time.perf_counter() - t0

    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        if progress_fn is not None:
            progress_fn(row)

    first = {k: float("nan") for k in LOSS_KEYS + ("train_return",)}
    first.update(
        env_steps=env_steps(carry, cfg),
        wall_s=time.perf_counter() - start,
        eval_return=float(evaluate(carry.agent, eval_key)),
        sps=float("nan"),
        compile_s=compile_s,
    )
    emit(first)
    for _ in range(num_chunks):
        t = time.perf_counter()
        carry, metrics = chunk_fn(carry)
        metrics = _to_host(metrics)  # blocks until the chunk is done
        chunk_s = time.perf_counter() - t
        steps = env_steps(carry, cfg)
        check_finite({k: v for k, v in metrics.items() if k != "train_return"}, steps)
        check_actions(carry.env_state.nonfinite_actions, steps)
        eval_key, k = jax.random.split(eval_key)
        row = {
            "env_steps": steps,
            "eval_return": float(evaluate(carry.agent, k)),
            "sps": ipc * cfg.batch_size / chunk_s,
            **metrics,
        }
        row["wall_s"] = time.perf_counter() - start
        emit(row)
    return carry.agent, rows
