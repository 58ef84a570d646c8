"""The on-policy loop: rollout -> GAE -> PPO update, many iterations per jitted host call.

One *chunk* is a share of the iterations (`chunk_ends`; `repeat`: a traced count, one program for any), each a scanned rollout of
``unroll_length`` steps on all envs followed by ``ppo.update``.  The observation normaliser is
updated at every rollout step, before acting (rsl_rl's order, ALGORITHMS.md §3).  Between chunks
the host only checks for NaNs, evaluates the deterministic policy and logs one row
(`jaxrl.train.loop.HostLoop`).  Everything the run needs to continue is one pytree,
`OnPolicyCarry`: checkpoint it between chunks and the run resumes bit-exactly.

    loop = OnPolicyLoop(cfg, env, eval_env, steps=1_000_000, seed=0)
    carry = loop.init_carry()
    while not loop.finished(carry):
        carry, row = loop.run_chunk(carry)

`jaxrl.ppo.train` / `jaxrl.train.run.train` drive it with metrics files and checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs.wrappers import VecEnv
from jaxrl.algos import ppo
from jaxrl.train.loop import (
    HostLoop,
    chunk_counters,
    chunk_ends,
    init_keys,
    iterations_to_next,
    repeat,
)

# Salt of the random episode starts' key (`PPOConfig.random_episode_start`), apart from the reset's.
_EPISODE_START_STREAM = 0x5E7A57


@struct.dataclass
class OnPolicyCarry:
    """The whole state of an on-policy run (checkpoint this to resume exactly)."""

    agent: ppo.PPOState
    env_state: Any  # envs.EnvState
    key: jax.Array
    iteration: jax.Array  # [] int32, PPO iterations done (env steps = iteration × batch_size)


def _rollout(env: VecEnv, cfg: ppo.PPOConfig, agent: ppo.PPOState, env_state, key):
    """unroll_length stochastic steps on all envs -> (agent, env_state, ppo.Rollout); the agent
    changes only in its observation statistics (updated at every step, before acting)."""
    keys_used = sorted({cfg.actor_obs_key, cfg.critic_obs_key})

    def step(c, k):
        agent, env_state = c
        agent = ppo.observe(agent, env_state.obs, cfg)
        action, ex = ppo.act(agent, env_state.obs, k, cfg)
        nxt = env.step(env_state, action)
        out = ppo.Rollout(
            obs={name: env_state.obs[name] for name in keys_used},
            raw_action=ex["raw_action"],
            log_prob=ex["log_prob"],
            mean=ex["mean"],
            std=ex["std"],
            value=ex["value"],
            next_value=ppo.value(agent.params, agent, nxt.final_obs, cfg),
            reward=nxt.reward,
            terminated=nxt.terminated,
            truncated=nxt.truncated,
        )
        return (agent, nxt), out

    (agent, env_state), rollout = jax.lax.scan(step, (agent, env_state),
                                               jax.random.split(key, cfg.unroll_length))
    return agent, env_state, rollout


class OnPolicyLoop(HostLoop):
    """`jaxrl.train.run`'s protocol over the jitted PPO chunk."""

    memory_knobs = ("num_envs or unroll_length (the rollout the update reads), or raise num_minibatches "
                    "(the update's activations)")

    def __init__(self, cfg: ppo.PPOConfig, env: VecEnv, eval_env: VecEnv | None, steps: int,
                 seed: int, num_evals: int = 10, *, devices: int | None = None, seeds: int = 1):
        super().__init__()
        if env.num_envs != cfg.num_envs:
            raise ValueError(f"env has num_envs={env.num_envs} but cfg.num_envs={cfg.num_envs}; "
                             "make the env with num_envs=cfg.num_envs")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        # Each device takes an equal share of every minibatch (ppo.minibatches).
        self.setup(env, eval_env, seed, devices, seeds,
                   {"minibatch (num_envs*unroll_length/num_minibatches)": cfg.batch_size // cfg.num_minibatches})
        self.cfg = cfg
        iters = math.ceil(steps / cfg.batch_size)
        self.chunk_ends, self.total_iters = chunk_ends(iters, num_evals), iters
        # the budget (whole iterations; the number of evaluations does not enter); every epoch
        # passes over the whole batch
        self.quick_if_short(iters * cfg.batch_size, iters * cfg.num_epochs * cfg.batch_size)
        self._chunk = self.program(self._chunk_fn, carry_out=False)

        def act(state, obs, key):  # evaluation acts at the learner's precision, as its rollouts do
            with jax.default_matmul_precision(cfg.matmul_precision):
                return ppo.act(state, obs, key, cfg, deterministic=True)[0]

        self.make_evaluate(act)

    def _init_agent(self, key: jax.Array) -> ppo.PPOState:
        return ppo.init(init_keys(key)[0], self.env.spec, self.cfg)

    def _init(self, key: jax.Array, agent: ppo.PPOState | None = None, env_state: Any = None) -> OnPolicyCarry:
        k_agent, k_env, k_loop = init_keys(key)
        if agent is None:
            agent = ppo.init(k_agent, self.env.spec, self.cfg)
        env_state = self.env.reset(k_env) if env_state is None else env_state
        if self.cfg.random_episode_start:  # rsl_rl's init_at_random_ep_len: envs out of lockstep
            # (a stream of its own: fold_in(k_env, 1) was the key the reset split into the envs' keys)
            steps = jax.random.randint(jax.random.fold_in(k_env, _EPISODE_START_STREAM),
                                       env_state.episode_step.shape, 0, self.env.episode_length, jnp.int32)
            env_state = env_state.replace(episode_step=steps)
        return OnPolicyCarry(agent=agent, env_state=env_state, key=k_loop, iteration=jnp.zeros((), jnp.int32))

    def _iteration(self, carry: OnPolicyCarry, _):
        cfg = self.cfg
        key, k_roll, k_upd = jax.random.split(carry.key, 3)
        agent, env_state, rollout = _rollout(self.env, cfg, carry.agent, carry.env_state, k_roll)
        agent, metrics = ppo.update(agent, rollout, k_upd, cfg, shards=self.devices)
        metrics["reward"] = rollout.reward.mean()
        return OnPolicyCarry(agent=agent, env_state=env_state, key=key,
                             iteration=carry.iteration + 1), metrics

    def _chunk_fn(self, carry: OnPolicyCarry, n: jax.Array, warm: jax.Array):
        del warm  # PPO has no warm-up
        before = carry.env_state
        # The learner's precision for acting and updating; the env step inside keeps 'highest'.
        with jax.default_matmul_precision(self.cfg.matmul_precision):
            carry, metrics = repeat(lambda c: self._iteration(c, None), carry, n)
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["lr"] = carry.agent.lr
        return carry, {**metrics, **chunk_counters(before, carry.env_state)}

    def _advance(self, carry):
        return self.chunk(carry, self.chunk_length(carry))

    def chunk_length(self, carry: OnPolicyCarry) -> int:
        """Iterations of the next chunk (`chunk_ends`)."""
        return iterations_to_next(self.chunk_ends, self.counter(carry.iteration))

    def env_steps(self, carry: OnPolicyCarry) -> int:
        """Env steps taken so far (host int; no int32 overflow at billions of steps)."""
        return self.counter(carry.iteration) * self.cfg.batch_size

    def finished(self, carry: OnPolicyCarry) -> bool:
        return self.counter(carry.iteration) >= self.total_iters
