"""The off-policy loop shared by FlashSAC and the large-batch SAC: collect -> insert -> K updates.

Everything a run needs to continue (agent, replay buffer, env state, RNG, counters) is one pytree,
`OffPolicyCarry`.  One host call runs a whole *chunk* — many iterations under ``lax.scan`` — and
the host only logs, evaluates, checkpoints and checks for NaNs between chunks.

An agent plugs in as an `OffPolicyAgent`: five pure functions with the algorithm's config bound.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.wrappers import VecEnv
from jaxrl.data import replay
from jaxrl.data.transition import Transition
from jaxrl.train import guards
from jaxrl.train.evaluate import make_evaluator


class OffPolicyAgent(NamedTuple):
    """An off-policy algorithm, config bound (see jaxrl.algos.flashsac.make_agent)."""

    init: Callable[[jax.Array], Any]  # key -> agent state
    explore: Callable[[Any, dict, jax.Array], tuple[jax.Array, Any]]  # (state, obs, key) -> (action, state)
    act: Callable[[Any, dict, jax.Array], jax.Array]  # deterministic action for evaluation
    observe: Callable[[Any, Transition], Any]  # per-step statistics (e.g. reward scaling)
    update: Callable[[Any, Transition, jax.Array], tuple[Any, dict]]  # one gradient step


@dataclasses.dataclass(frozen=True)
class OffPolicySettings:
    """Budget and data settings of the loop (the algorithm config supplies the values)."""

    total_steps: int  # env steps, warm-up included
    batch_size: int  # transitions per gradient step
    updates_per_step: int  # gradient steps per vector env step (UTD = this / num_envs)
    buffer_size: int  # replay capacity in transitions
    min_buffer: int  # warm-up transitions collected with uniform random actions
    num_evals: int = 10  # evaluations (and metrics rows) over the run

    def __post_init__(self):
        for f in ("total_steps", "batch_size", "updates_per_step", "buffer_size", "num_evals"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.min_buffer < 0:
            raise ValueError(f"min_buffer must be >= 0, got {self.min_buffer}")


@struct.dataclass
class OffPolicyCarry:
    agent: Any
    buffer: replay.ReplayState
    env_state: Any
    key: jax.Array
    iteration: jax.Array  # [] int32, vector env steps taken (warm-up included)


class OffPolicyLoop:
    """Builds the jitted warm-up and training chunks for one (env, agent, settings)."""

    def __init__(
        self,
        env: VecEnv,
        agent: OffPolicyAgent,
        settings: OffPolicySettings,
        eval_env: VecEnv | None = None,
        seed: int = 0,
    ):
        self.env, self.agent, self.s, self.seed = env, agent, settings, seed
        n = env.num_envs
        total = max(1, math.ceil(settings.total_steps / n))
        self.warmup_iters = min(total - 1, math.ceil(settings.min_buffer / n))
        # The budget is rounded up to whole chunks so that one compiled chunk serves the run.
        self.chunk_iters = max(1, math.ceil((total - self.warmup_iters) / settings.num_evals))
        self.total_iters = self.warmup_iters + self.chunk_iters * settings.num_evals
        self.num_updates = self.chunk_iters * settings.num_evals * settings.updates_per_step
        if settings.batch_size > settings.buffer_size:
            raise ValueError(
                f"batch_size {settings.batch_size} exceeds buffer_size {settings.buffer_size}: "
                "raise buffer_size or lower batch_size"
            )
        self.evaluate = make_evaluator(eval_env, agent.act) if eval_env is not None else None
        self._warmup = jax.jit(self._warmup_fn)
        self._chunk = jax.jit(self._chunk_fn)
        self.compile_s = 0.0
        self._compiled: dict[str, Any] = {}

    # ------------------------------------------------------------------ carry
    def init_carry(self) -> OffPolicyCarry:
        key = jax.random.PRNGKey(self.seed)
        k_agent, k_env, key = jax.random.split(key, 3)
        env_state = self.env.reset(k_env)
        example = Transition(
            obs=jax.tree.map(lambda x: x[0], env_state.obs),
            action=jnp.zeros((self.env.action_size,), jnp.float32),
            reward=jnp.zeros((), jnp.float32),
            next_obs=jax.tree.map(lambda x: x[0], env_state.obs),
            terminated=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
        )
        return OffPolicyCarry(
            agent=self.agent.init(k_agent),
            buffer=replay.init(example, self.s.buffer_size),
            env_state=env_state,
            key=key,
            iteration=jnp.zeros((), jnp.int32),
        )

    # ---------------------------------------------------------------- pieces
    def _env_step(self, carry: OffPolicyCarry, action: jax.Array, agent: Any) -> OffPolicyCarry:
        env_state = self.env.step(carry.env_state, action)
        tr = Transition(
            obs=carry.env_state.obs,
            action=action,
            reward=env_state.reward,
            next_obs=env_state.final_obs,
            terminated=env_state.terminated,
            truncated=env_state.truncated,
        )
        return carry.replace(
            agent=self.agent.observe(agent, tr),
            buffer=replay.insert(carry.buffer, tr),
            env_state=env_state,
            iteration=carry.iteration + 1,
        )

    def _warmup_fn(self, carry: OffPolicyCarry) -> OffPolicyCarry:
        def body(c, _):
            key, k = jax.random.split(c.key)
            c = c.replace(key=key)
            return self._env_step(c, self.env.random_action_fn(k), c.agent), ()

        return jax.lax.scan(body, carry, None, length=self.warmup_iters)[0]

    def _iteration(self, carry: OffPolicyCarry, _):
        key, k_act, k_upd = jax.random.split(carry.key, 3)
        action, agent = self.agent.explore(carry.agent, carry.env_state.obs, k_act)
        carry = self._env_step(carry.replace(key=key), action, agent)

        def one_update(agent, k):
            k_s, k_u = jax.random.split(k)
            batch = replay.sample(carry.buffer, k_s, self.s.batch_size)
            return self.agent.update(agent, batch, k_u)

        agent, metrics = jax.lax.scan(
            one_update, carry.agent, jax.random.split(k_upd, self.s.updates_per_step)
        )
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        return carry.replace(agent=agent), metrics

    def _chunk_fn(self, carry: OffPolicyCarry):
        stats0 = carry.env_state.stats
        carry, metrics = jax.lax.scan(self._iteration, carry, None, length=self.chunk_iters)
        stats1 = carry.env_state.stats
        done = stats1.completed - stats0.completed
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        metrics["train_return"] = jnp.where(
            done > 0, (stats1.return_sum - stats0.return_sum) / jnp.maximum(done, 1), jnp.nan
        )
        metrics["train_episodes"] = done
        return carry, metrics

    # -------------------------------------------------------------- resuming
    # Carry subtrees a checkpoint may leave out (too big for the disk); `refill` rebuilds them.
    optional_state = (".buffer",)

    def refill(self, carry: OffPolicyCarry) -> OffPolicyCarry:
        """After a restore without the replay buffer: collect ``min_buffer`` fresh transitions with
        uniform random actions (as the warm-up did) so updates never sample an empty buffer.  The
        budget counter is left where it was; the run is then no longer bit-identical to an
        uninterrupted one."""
        iteration = carry.iteration
        carry = self._timed_call("_warmup", carry)
        return carry.replace(iteration=iteration)

    # ------------------------------------------------------------------ host
    def env_steps(self, carry: OffPolicyCarry) -> int:
        return int(carry.iteration) * self.env.num_envs

    def finished(self, carry: OffPolicyCarry) -> bool:
        return int(carry.iteration) >= self.total_iters

    def run_chunk(self, carry: OffPolicyCarry) -> tuple[OffPolicyCarry, dict]:
        """Warm-up (first call) or one training chunk, then evaluation; returns a metrics row."""
        t0 = time.perf_counter()
        start_steps = self.env_steps(carry)
        if int(carry.iteration) < self.warmup_iters:
            carry = self._timed_call("_warmup", carry)
            metrics: dict[str, Any] = {}
        else:
            carry, metrics = self._timed_call("_chunk", carry)
        jax.block_until_ready(carry.iteration)
        steps = self.env_steps(carry)
        metrics = {k: np.asarray(v).item() for k, v in metrics.items()}
        # train_return is NaN when no episode ended during the chunk: that is not a failure.
        # Actions first: a NaN action is the root cause of the NaN losses that follow it.
        guards.check_actions(carry.env_state.nonfinite_actions, steps)
        guards.check_finite({k: v for k, v in metrics.items() if k != "train_return"}, steps)
        elapsed = time.perf_counter() - t0
        row = {"env_steps": steps, "chunk_s": elapsed, "sps": (steps - start_steps) / max(elapsed, 1e-9)}
        row.update(metrics)
        if self.evaluate is not None:
            key, k = jax.random.split(carry.key)
            carry = carry.replace(key=key)
            ev = self.evaluate(carry.agent, k)
            row["eval_return"] = float(ev["eval_return"])
            row["eval_length"] = float(ev["eval_length"])
            guards.check_finite({"eval_return": row["eval_return"]}, steps)
        return carry, row

    def _timed_call(self, name: str, carry):
        """Call a jitted chunk, compiling it ahead of time on first use to time compilation."""
        if name not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[name] = getattr(self, name).lower(carry).compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[name](carry)
