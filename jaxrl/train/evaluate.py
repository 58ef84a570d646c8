"""Deterministic evaluation on separate envs, fully on device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from envs.wrappers import EnvState, VecEnv


class Episodes(NamedTuple):
    """One episode per env (`episode_rollout`)."""

    returns: jax.Array  # [N]
    lengths: jax.Array  # [N] steps until the episode ended
    # [N] the task's ``metrics['success']`` after each episode's last step (OmniReset's success:
    # at the end, not at any point); None for tasks that report no success
    success: jax.Array | None
    # record(state) of the start and of the state after each step, [T + 1, ...] (frame t is the
    # state after t steps, so frame `lengths` is an episode's last: a fall, a success); ()
    # without record
    recorded: Any


def task_success(state: EnvState) -> jax.Array | None:
    """The task's per-env ``metrics['success']`` ([N]), or None if it has none."""
    metrics = getattr(state.inner, "metrics", None)
    return metrics.get("success") if isinstance(metrics, dict) else None


def episode_rollout(env: VecEnv, policy: Callable[[dict, jax.Array], jax.Array], state: EnvState,
                    key: jax.Array, record: Callable[[EnvState], Any] | None = None) -> Episodes:
    """Every env of ``env`` for exactly one episode from ``state`` (traceable).

    Scans ``episode_length`` steps of ``policy(obs, key) -> actions`` with the env's auto-reset
    off (`VecEnv.without_auto_reset`: the program then compiles the task's reset physics once, not
    twice); steps after an env's episode ended are masked out (``where``, so a diverged finished
    episode cannot leak NaN), and early terminations are scored correctly.
    """
    env = env.without_auto_reset()
    scores_success = task_success(state) is not None

    def body(carry, k):
        s, alive, ret, length, success = carry
        s = env.step(s, policy(s.obs, k))
        ret, length = ret + jnp.where(alive > 0, s.reward, 0.0), length + alive
        if scores_success:
            success = jnp.where(alive > 0, task_success(s).astype(jnp.float32), success)
        alive = alive * (1.0 - s.done.astype(jnp.float32))
        return (s, alive, ret, length, success), (record(s) if record is not None else ())

    n = env.num_envs
    init = (state, jnp.ones((n,)), jnp.zeros((n,)), jnp.zeros((n,)), jnp.zeros((n,)))
    (_, _, ret, length, success), recorded = jax.lax.scan(
        body, init, jax.random.split(key, env.episode_length))
    if record is not None:
        recorded = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), record(state), recorded)
    return Episodes(ret, length, success if scores_success else None, recorded)


def evaluation(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """``(agent_state, key) -> {'eval_return', 'eval_length'}`` (pure, traceable; plus
    ``eval_success``, the fraction of episodes ending in success, for tasks that report one:
    OmniReset's manipulation tasks): the mean over envs of one deterministic episode each (`episode_rollout`), from ``env.reset`` of the first
    of `eval_keys`.  One program holding the reset physics; the training loops use
    `evaluation_from` instead, with the reset as a program of its own.  An env with a
    ``reset_pool`` resets without drawing the pool: one episode needs no other start."""
    rollout = evaluation_from(env, act)
    once = env.without_auto_reset()

    def evaluate(agent_state, key):
        k_reset, k_act = eval_keys(key)
        return rollout(agent_state, once.reset(k_reset), k_act)

    return evaluate


def eval_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(reset key, action key) of the evaluation keyed ``key`` (a tuple, so that under a seed
    vmap each is a batch of keys)."""
    k = jax.random.split(key)
    return k[0], k[1]


def evaluation_from(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """``(agent_state, env_state, key) -> {'eval_return', 'eval_length'}``: `evaluation` from an
    env state made outside.  Why: the training loops then make it with the program of the
    training envs' first reset when the eval envs reset like them (`HostLoop._evaluation`), so an
    evaluation compiles no reset physics -- seconds per agent configuration on CPU, most of an
    evaluation's compile on tasks that settle their start pose (CheetahRun)."""

    def evaluate(agent_state, env_state, key):
        ep = episode_rollout(env, lambda obs, k: act(agent_state, obs, k), env_state, key)
        out = {"eval_return": ep.returns.mean(), "eval_length": ep.lengths.mean()}
        if ep.success is not None:
            out["eval_success"] = ep.success.mean()
        return out

    return evaluate


def make_evaluator(env: VecEnv, act: Callable[[Any, dict, jax.Array], jax.Array]):
    """`evaluation`, jitted: one program (a reset compiled apart costs more unless it is shared,
    as the training loops share it: `HostLoop._evaluation`)."""
    return jax.jit(evaluation(env, act))
