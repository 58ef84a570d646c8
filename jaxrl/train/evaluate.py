"""Deterministic evaluation on separate envs, fully on device."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from envs.wrappers import VecEnv


def make_evaluator(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """Returns jitted ``(agent_state, key) -> {'eval_return', 'eval_length'}``.

    Runs every eval env for exactly one episode (``episode_length`` steps under scan) and
    averages the first episode's return over envs; steps after an env's episode ended are
    masked out, so early terminations are scored correctly.
    """

    def evaluate(agent_state, key):
        k_reset, k_act = jax.random.split(key)
        state = env.reset(k_reset)

        def body(carry, k):
            s, alive, ret, length = carry
            s = env.step(s, act(agent_state, s.obs, k))
            ret = ret + s.reward * alive
            length = length + alive
            alive = alive * (1.0 - s.done.astype(jnp.float32))
            return (s, alive, ret, length), ()

        n = env.num_envs
        init = (state, jnp.ones((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
        (_, _, ret, length), _ = jax.lax.scan(body, init, jax.random.split(k_act, env.episode_length))
        return {"eval_return": ret.mean(), "eval_length": length.mean()}

    return jax.jit(evaluate)
