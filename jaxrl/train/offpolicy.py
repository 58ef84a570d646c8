"""The off-policy loop shared by FlashSAC and the large-batch SAC: collect -> insert -> K updates.

Everything a run needs to continue (agent, replay buffer, env state, RNG, counters) is one pytree,
`OffPolicyCarry`.  One host call runs a whole *chunk* — many iterations under ``lax.scan`` — and
the host only logs, evaluates, checkpoints and checks for NaNs between chunks.

An agent plugs in as an `OffPolicyAgent`: five pure functions with the algorithm's config bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from envs.wrappers import VecEnv
from jaxrl.data import replay
from jaxrl.data.transition import Transition
from jaxrl.train.evaluate import make_evaluator
from jaxrl.train.loop import HostLoop, chunk_counters, chunk_plan, donating_jit, notice


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
    learner_precision: str | None = None  # matmul precision of the updates (None: JAX's default)
    # True: ONE uniform sample of batch_size x updates_per_step rows per iteration, reshaped to
    # [updates, batch] and scanned (Brax / LIFT SAC); False: a fresh sample per update (FlashSAC).
    sample_once: bool = False

    def __post_init__(self):
        for f in ("total_steps", "batch_size", "updates_per_step", "buffer_size", "num_evals"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.min_buffer < 0:
            raise ValueError(f"min_buffer must be >= 0, got {self.min_buffer}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: "
                             "raise buffer_size or lower batch_size")


@struct.dataclass
class OffPolicyCarry:
    agent: Any
    buffer: replay.ReplayState
    env_state: Any
    key: jax.Array
    iteration: jax.Array  # [] int32, vector env steps taken (warm-up included)


class OffPolicyLoop(HostLoop):
    """Builds the jitted warm-up and training chunks for one (env, agent, settings)."""

    # Carry subtrees a checkpoint may leave out (too big for the disk); `refill` rebuilds them.
    optional_state = (".buffer",)

    def __init__(
        self,
        env: VecEnv,
        agent: OffPolicyAgent,
        settings: OffPolicySettings,
        eval_env: VecEnv | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.env, self.agent, self.s, self.seed = env, agent, settings, seed
        n = env.num_envs
        total = max(1, math.ceil(settings.total_steps / n))
        self.warmup_iters = min(total - 1, math.ceil(settings.min_buffer / n))
        self.chunk_iters, train_iters = chunk_plan(total - self.warmup_iters, settings.num_evals)
        self.total_iters = self.warmup_iters + train_iters
        self.num_updates = train_iters * settings.updates_per_step
        self.evaluate = make_evaluator(eval_env, agent.act) if eval_env is not None else None
        self._warmup = donating_jit(self._warmup_fn)
        self._chunk = donating_jit(self._chunk_fn)

    # ------------------------------------------------------------------ carry
    def _example(self, obs: dict) -> Transition:
        """One transition without batch axis: the replay row layout."""
        row = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), obs)
        return Transition(
            obs=row, action=jax.ShapeDtypeStruct((self.env.action_size,), jnp.float32),
            reward=jax.ShapeDtypeStruct((), jnp.float32), next_obs=row,
            terminated=jax.ShapeDtypeStruct((), jnp.bool_), truncated=jax.ShapeDtypeStruct((), jnp.bool_))

    def preflight(self) -> None:
        """Before compiling: say how much memory the replay buffer takes at its peak and how much
        the device has free, and refuse a buffer that cannot fit (naming the knobs)."""
        carry = jax.eval_shape(self.init_carry)  # shapes only: nothing is allocated
        rest = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(carry.replace(buffer=None)))
        # One iteration's sampled rows (batch x updates when sampled at once) live beside it.
        rows = self.s.batch_size * (self.s.updates_per_step if self.s.sample_once else 1)
        example = self._example(carry.env_state.obs)
        rest += rows * replay.nbytes(example, 1)
        need, have = replay.check_memory(example, self.s.buffer_size, other_bytes=rest)
        free = "unknown" if have is None else f"{have / 2**30:.2f} GiB"
        notice(f"replay buffer {self.s.buffer_size:,} transitions + agent, env state and sampled "
               f"batch: {need / 2**30:.2f} GiB at peak; device free memory {free}")

    def init_carry(self) -> OffPolicyCarry:
        key = jax.random.PRNGKey(self.seed)
        k_agent, k_env, key = jax.random.split(key, 3)
        env_state = self.env.reset(k_env)
        return OffPolicyCarry(
            agent=self.agent.init(k_agent),
            buffer=replay.init(self._example(env_state.obs), self.s.buffer_size, check=False),
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

        if self.s.sample_once:
            agent, metrics = self._updates_from_one_sample(carry, k_upd)
        else:
            def one_update(agent, k):
                k_s, k_u = jax.random.split(k)
                batch = replay.sample(carry.buffer, k_s, self.s.batch_size)
                return self.agent.update(agent, batch, k_u)

            agent, metrics = jax.lax.scan(
                one_update, carry.agent, jax.random.split(k_upd, self.s.updates_per_step)
            )
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        return carry.replace(agent=agent), metrics

    def _updates_from_one_sample(self, carry: OffPolicyCarry, key: jax.Array):
        """``sample_once``: one uniform draw of U x B rows (with replacement), reshaped to
        [U, B, ...], then U updates scanned over its slices."""
        u, b = self.s.updates_per_step, self.s.batch_size
        k_s, k_u = jax.random.split(key)
        rows = replay.sample(carry.buffer, k_s, u * b)
        batches = jax.tree.map(lambda x: x.reshape((u, b) + x.shape[1:]), rows)

        def one_update(agent, xs):
            batch, k = xs
            return self.agent.update(agent, batch, k)

        return jax.lax.scan(one_update, carry.agent, (batches, jax.random.split(k_u, u)))

    def _chunk_fn(self, carry: OffPolicyCarry):
        before = carry.env_state
        # The learner's precision for acting and updating; the env step inside keeps 'highest'.
        with jax.default_matmul_precision(self.s.learner_precision):
            carry, metrics = jax.lax.scan(self._iteration, carry, None, length=self.chunk_iters)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        return carry, {**metrics, **chunk_counters(before, carry.env_state)}

    def lower_chunk(self, carry):
        return self._chunk.lower(carry)

    # -------------------------------------------------------------- resuming
    def refill(self, carry: OffPolicyCarry) -> OffPolicyCarry:
        """After a restore without the replay buffer: collect ``min_buffer`` fresh transitions with
        uniform random actions (as the warm-up did) so updates never sample an empty buffer.  The
        budget counter is left where it was; the run is then no longer bit-identical to an
        uninterrupted one."""
        iteration = int(carry.iteration)  # host copy: the warm-up donates the carry
        carry = self._call("warmup", self._warmup, carry)
        return carry.replace(iteration=jnp.asarray(iteration, jnp.int32))

    # ------------------------------------------------------------------ host
    def env_steps(self, carry: OffPolicyCarry) -> int:
        return int(carry.iteration) * self.env.num_envs

    def finished(self, carry: OffPolicyCarry) -> bool:
        return int(carry.iteration) >= self.total_iters

    def _advance(self, carry: OffPolicyCarry) -> tuple[OffPolicyCarry, dict]:
        """Warm-up (first call) or one training chunk."""
        if int(carry.iteration) < self.warmup_iters:
            return self._call("warmup", self._warmup, carry), {}
        return self._call("chunk", self._chunk, carry)
