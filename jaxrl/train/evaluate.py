"""Deterministic evaluation on separate envs, fully on device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from envs.wrappers import EnvState, VecEnv


def episode_rollout(env: VecEnv, policy: Callable[[dict, jax.Array], jax.Array], state: EnvState,
                    key: jax.Array, record: Callable[[EnvState], Any] | None = None):
    """Every env of ``env`` for exactly one episode from ``state`` (traceable).

    Scans ``episode_length`` steps of ``policy(obs, key) -> actions`` with the env's auto-reset
    off (`VecEnv.without_auto_reset`: the program then compiles the task's reset physics once, not
    twice); steps after an env's episode ended are masked out (``where``, so a diverged finished
    episode cannot leak NaN), and early terminations are scored correctly.  Returns
    ``(returns [N], lengths [N], recorded)`` where ``recorded`` stacks ``record(state)`` of the
    state *before* each step ([T, ...]; ``()`` without ``record``).
    """
    env = env.without_auto_reset()

    def body(carry, k):
        s, alive, ret, length = carry
        seen = record(s) if record is not None else ()
        s = env.step(s, policy(s.obs, k))
        ret, length = ret + jnp.where(alive > 0, s.reward, 0.0), length + alive
        alive = alive * (1.0 - s.done.astype(jnp.float32))
        return (s, alive, ret, length), seen

    n = env.num_envs
    init = (state, jnp.ones((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
    (_, _, ret, length), recorded = jax.lax.scan(body, init, jax.random.split(key, env.episode_length))
    return ret, length, recorded


def evaluation(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """``(agent_state, key) -> {'eval_return', 'eval_length'}`` (pure, traceable): the mean over
    envs of one deterministic episode each (`episode_rollout`)."""

    def evaluate(agent_state, key):
        k_reset, k_act = jax.random.split(key)
        ret, length, _ = episode_rollout(env, lambda obs, k: act(agent_state, obs, k),
                                         env.reset(k_reset), k_act)
        return {"eval_return": ret.mean(), "eval_length": length.mean()}

    return evaluate


def make_evaluator(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """`evaluation`, jitted."""
    return jax.jit(evaluation(env, act))
