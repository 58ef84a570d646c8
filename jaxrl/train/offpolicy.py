"""The off-policy loop shared by FlashSAC and the large-batch SAC: collect -> insert -> K updates.

Everything a run needs to continue (agent, replay buffer, env state, RNG, counters) is one pytree,
`OffPolicyCarry`.  One host call runs a whole *chunk* — many iterations in one traced loop (`repeat`) — and
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
from jaxrl.train.loop import (
    COUNTERS,
    HostLoop,
    chunk_counters,
    chunk_ends,
    init_keys,
    iterations_to_next,
    notice,
    repeat,
    skip_when,
)


class OffPolicyAgent(NamedTuple):
    """An off-policy algorithm, config bound (see jaxrl.algos.flashsac.make_agent)."""

    init: Callable[[jax.Array], Any]  # key -> agent state
    explore: Callable[[Any, dict, jax.Array], tuple[jax.Array, Any]]  # (state, obs, key) -> (action, state)
    act: Callable[[Any, dict, jax.Array], jax.Array]  # deterministic action for evaluation
    observe: Callable[[Any, Transition], Any]  # per-step statistics (e.g. reward scaling)
    update: Callable[[Any, Transition, jax.Array], tuple[Any, dict]]  # one gradient step
    # Updates whose schedule repeats every ``period`` steps (FlashSAC: an actor step every 2nd)
    # can come as ``update_period(state, batches [P], keys [P]) -> (state, metrics [P])``: the
    # loop then scans whole periods, with no branch on the agent's step counter (under the seed
    # vmap such a branch becomes a select that computes both sides).
    period: int = 1
    update_period: Callable[[Any, Transition, jax.Array], tuple[Any, dict]] | None = None
    # agent-state paths with a leading env axis (e.g. FlashSAC's per-env return and held noise):
    # split over the devices with the envs instead of replicated
    per_env: tuple[str, ...] = ()
    # metrics measured only on some updates (FlashSAC's actor and temperature, every 2nd) and
    # zero on the others, and the 0/1 metric that marks those updates: a chunk reports their
    # mean over the updates that took them, not diluted by the zeros
    sparse_metrics: tuple[str, ...] = ()
    sparse_weight: str = "actor_updated"


def unsparse(metrics: dict, names: tuple[str, ...], weight: str) -> dict:
    """``metrics`` (means over updates) with each of ``names`` as its mean over the updates whose
    ``weight`` metric is 1: those metrics are zero on the other updates, so dividing by the
    weight's mean (the share of updates that measured them) removes the zeros' dilution.  A
    chunk without such an update reports 0."""
    if not names or weight not in metrics:
        return metrics
    share = metrics[weight]
    scale = jnp.where(share > 0, 1.0 / jnp.maximum(share, 1e-12), 0.0)
    return {k: v * scale if k in names else v for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class OffPolicySettings:
    """Budget and data settings of the loop (the algorithm config supplies the values)."""

    total_steps: int  # env steps, warm-up included
    batch_size: int  # transitions per gradient step
    updates_per_step: int  # gradient steps per vector env step (UTD = this / num_envs)
    buffer_size: int  # replay capacity in transitions
    min_buffer: int  # warm-up transitions collected before the first update
    num_evals: int = 10  # evaluations over the training part (at most one per iteration), plus one after the warm-up
    learner_precision: str | None = None  # matmul precision of the updates (None: JAX's default)
    # True: ONE uniform sample of batch_size x updates_per_step rows per iteration, reshaped to
    # [updates, batch] and scanned (Brax / LIFT SAC); False: a fresh sample per update (FlashSAC).
    sample_once: bool = False
    # Observations in replay: float32, or bfloat16 (half the memory; 3 significant digits).  The
    # agents then see bfloat16-rounded observations everywhere (acting, normaliser statistics,
    # export: `replay.as_stored`), not only in their updates.  Where the actor's `state` is the
    # first entries of the critic's `privileged_state` (flat tasks, Playground's locomotion tasks)
    # only the latter is stored and `state` is sliced from it when sampling.
    obs_dtype: str = "float32"
    # How the warm-up acts: "uniform" random actions within the bounds (FlashSAC; ALGORITHMS.md §2's
    # "random steps"), or "policy": the agent's own exploration with its initial parameters (Brax's
    # SAC prefill, and LIFT's code).
    warmup_actions: str = "uniform"

    def __post_init__(self):
        for f in ("total_steps", "batch_size", "updates_per_step", "buffer_size", "num_evals"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.min_buffer < 0:
            raise ValueError(f"min_buffer must be >= 0, got {self.min_buffer}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: "
                             "raise buffer_size or lower batch_size")
        if self.obs_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"obs_dtype must be 'float32' or 'bfloat16', got {self.obs_dtype!r}")
        if self.warmup_actions not in ("uniform", "policy"):
            raise ValueError(f"warmup_actions must be 'uniform' or 'policy', got {self.warmup_actions!r}")


@struct.dataclass
class OffPolicyCarry:
    agent: Any
    buffer: replay.ReplayState
    env_state: Any
    key: jax.Array
    iteration: jax.Array  # [] int32, vector env steps taken (warm-up included)


class OffPolicyLoop(HostLoop):
    """Builds the jitted chunk for one (env, agent, settings).

    The warm-up (``warmup_actions``, no updates, until ``min_buffer`` transitions) runs in
    the same compiled chunk as training: each iteration branches on its counter, so a run
    compiles and traces the env step, replay insert and agent once instead of twice (a second
    program cost ~7 s of compilation per run on CPU)."""

    # Carry subtrees a checkpoint may leave out (too big for the disk); `refill` rebuilds them.
    optional_state = (".buffer",)
    refill_note = "refilling it with fresh warm-up transitions"
    memory_knobs = ("batch_size or updates_per_step (the rows sampled per iteration and the update's "
                    "activations), or num_envs (the physics step's intermediates)")

    def __init__(
        self,
        env: VecEnv,
        agent: OffPolicyAgent,
        settings: OffPolicySettings,
        eval_env: VecEnv | None = None,
        seed: int = 0,
        *,
        devices: int | None = None,
        seeds: int = 1,
    ):
        super().__init__()
        self.setup(env, eval_env, seed, devices, seeds, {"batch_size": settings.batch_size})
        self.agent, self.s = agent, settings
        self.per_env_paths = tuple(".agent" + p for p in agent.per_env)
        self.warmup_iters, train_iters = self.budget(env.num_envs, settings)
        self.chunk_ends = chunk_ends(train_iters, settings.num_evals)  # training iterations after each
        if self.warmup_iters * env.num_envs < settings.min_buffer:
            notice(f"a budget of {settings.total_steps} env steps leaves room for a warm-up of only "
                   f"{self.warmup_iters * env.num_envs} of min_buffer={settings.min_buffer} transitions "
                   "(the first updates sample a smaller buffer): raise steps above min_buffer + num_envs "
                   "or lower min_buffer")
        self.total_iters = self.warmup_iters + train_iters
        self.num_updates = train_iters * settings.updates_per_step
        # Store privileged_state only when state is its prefix (see OffPolicySettings.obs_dtype).
        spec = env.spec.obs
        self._state_prefix = (spec["state"].shape[-1] if getattr(env, "state_in_privileged", False)
                              and "privileged_state" in spec else None)
        # the budget (in whole vector steps; the number of evaluations does not enter)
        budget = max(1, math.ceil(settings.total_steps / env.num_envs))
        self.quick_if_short(budget * env.num_envs,
                            (budget - self.warmup_iters) * settings.updates_per_step * settings.batch_size)
        self.make_evaluate(agent.act)
        self._chunk = self.program(self._chunk_fn, carry_out=False)

    @staticmethod
    def budget(num_envs: int, settings: OffPolicySettings) -> tuple[int, int]:
        """(warm-up iterations, training iterations) of a run: the env-step budget in vector steps
        (rounded up to whole ones), the warm-up's share and the rest (`chunk_ends` splits it)."""
        total = max(1, math.ceil(settings.total_steps / num_envs))
        warmup = min(total - 1, math.ceil(settings.min_buffer / num_envs))
        return warmup, total - warmup

    # ------------------------------------------------------------------ carry
    def _pack(self, tr: Transition) -> Transition:
        """A transition as replay stores it: ``state`` dropped when it is the first entries of
        ``privileged_state``; observations in ``obs_dtype``."""
        dtype = jnp.dtype(self.s.obs_dtype)

        def obs(o):
            o = {k: v for k, v in o.items() if not (k == "state" and self._state_prefix is not None)}
            return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, o)

        return tr._replace(obs=obs(tr.obs), next_obs=obs(tr.next_obs))

    def _unpack(self, tr: Transition) -> Transition:
        """`_pack` undone: float32 observations, ``state`` sliced back out."""
        def obs(o):
            o = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, o)
            if self._state_prefix is not None:
                o = {"state": o["privileged_state"][..., :self._state_prefix], **o}
            return o

        return tr._replace(obs=obs(tr.obs), next_obs=obs(tr.next_obs))

    def _example(self, obs: dict) -> Transition:
        """One stored transition without batch axis: the replay row layout."""
        return jax.eval_shape(self._pack, self._full_example(obs))

    def _full_example(self, obs: dict) -> Transition:
        """One transition as the env makes it and the learner reads it (every observation key)."""
        row = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), obs)
        return Transition(
            obs=row, action=jax.ShapeDtypeStruct((self.env.action_size,), jnp.float32),
            reward=jax.ShapeDtypeStruct((), jnp.float32), next_obs=row,
            terminated=jax.ShapeDtypeStruct((), jnp.bool_), truncated=jax.ShapeDtypeStruct((), jnp.bool_))

    def preflight(self) -> int:
        """Before compiling: say how much memory the replay buffer takes at its peak and how much
        the device has free, and refuse a buffer that cannot fit (naming the knobs); returns
        that peak (bytes per device)."""
        carry = jax.eval_shape(self._init, jax.random.PRNGKey(0))  # one seed, shapes only
        k = self.num_seeds
        agent = k * replay.nbytes(carry.agent, 1)  # replicated: whole on every device
        rest = k * replay.nbytes(carry.replace(buffer=None, agent=None), 1)
        if self.eval_env is not None:  # the evaluation's envs, as many bytes per env as training's
            unsplit = 1 if self.eval_split else self.devices  # counted whole on the device holding them
            # with a start-state pool only when they reset through the training envs' program
            state = carry.env_state if self.eval_env.resets_like(self.env) else carry.env_state.replace(start_pool=None)
            rest += (k * unsplit * replay.nbytes(state, 1) * self.eval_env.num_envs
                     // self.env.num_envs)
        # One iteration's sampled rows (batch x updates when sampled at once) live beside it:
        # as gathered (the buffer's layout) and twice unpacked (float32, ``state`` sliced back
        # out; then laid out [updates, batch]).  Not counted: XLA's temporaries (the update's
        # activations, the physics step's intermediates), known only after compiling, where
        # `HostLoop.check_memory` checks them.
        rows = self.s.batch_size * (self.s.updates_per_step if self.s.sample_once else 1)
        example = self._example(carry.env_state.obs)
        full = replay.nbytes(self._full_example(carry.env_state.obs), 1)
        rest += k * rows * (replay.nbytes(example, 1) + 2 * full)
        capacity = k * replay.time_rows(self.s.buffer_size, self.env.num_envs) * self.env.num_envs
        need, have = replay.check_memory(example, capacity, other_bytes=rest, devices=self.devices,
                                         replicated_bytes=agent)
        free = "unknown" if have is None else f"{have / 2**30:.2f} GiB"
        where = f" per device ({self.devices} devices)" if self.devices > 1 else ""
        seeds = f" x {k} seeds" if k > 1 else ""
        notice(f"replay buffer {self.s.buffer_size:,} transitions{seeds} ({replay.nbytes(example, 1):,} "
               f"bytes each) + agent, env states and sampled batch: {need / 2**30:.2f} GiB at peak"
               f"{where}; device free memory {free} (XLA's temporaries, the update's activations among them, are "
               "checked once the chunk compiles)")
        return need

    def _init_agent(self, key: jax.Array) -> Any:
        return self.agent.init(init_keys(key)[0])

    def _init(self, key: jax.Array, agent: Any = None, env_state: Any = None) -> OffPolicyCarry:
        k_agent, k_env, key = init_keys(key)
        env_state = self.env.reset(k_env) if env_state is None else env_state
        return OffPolicyCarry(
            agent=self.agent.init(k_agent) if agent is None else agent,
            buffer=replay.init(self._example(env_state.obs), self.s.buffer_size, self.env.num_envs,
                               check=False),
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
            buffer=replay.insert(carry.buffer, self._pack(tr)),
            env_state=env_state,
            iteration=carry.iteration + 1,
        )

    def _sample(self, buffer: replay.ReplayState, key: jax.Array, rows: int) -> Transition:
        """``rows`` uniform transitions (each device draws its share from its own envs')."""
        return self._unpack(replay.sample(buffer, key, rows, self.mesh))

    def _iteration(self, carry: OffPolicyCarry, warm: jax.Array):
        """One vector step and its updates; in the warm-up (``warm``): a uniform random action
        (or the agent's own, ``warmup_actions="policy"``) and no update (`lax.cond`: one program
        serves warm-up and training)."""
        key, k_act, k_upd = jax.random.split(carry.key, 3)
        if self.s.warmup_actions == "policy":
            action, agent = self.agent.explore(carry.agent, carry.env_state.obs, k_act)
        else:
            action, agent = jax.lax.cond(
                warm,
                lambda: (self.env.random_action_fn(k_act), carry.agent),
                lambda: self.agent.explore(carry.agent, carry.env_state.obs, k_act),
            )
        carry = self._env_step(carry.replace(key=key), action, agent)
        agent, metrics = skip_when(warm, self._updates, carry.agent, carry.buffer, k_upd)
        return carry.replace(agent=agent), metrics

    def _updates(self, agent: Any, buffer: replay.ReplayState, key: jax.Array) -> tuple[Any, dict]:
        """``updates_per_step`` gradient steps -> (agent, metrics averaged over them)."""
        agent, metrics = self._scan_updates(agent, buffer, key)
        return agent, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    def _scan_updates(self, agent: Any, buffer: replay.ReplayState, key: jax.Array) -> tuple[Any, dict]:
        """``updates_per_step`` = U gradient steps -> (agent, metrics of each [U, ...]).

        ``sample_once``: one uniform draw of U x B rows (with replacement) reshaped to [U, B] and
        scanned (Brax / LIFT); otherwise each update samples its own batch.  Updates run in whole
        periods (`OffPolicyAgent.update_period`) when U is a multiple of the agent's period."""
        u, b = self.s.updates_per_step, self.s.batch_size
        if self.s.sample_once:
            k_s, k_u = jax.random.split(key)
            rows = self._sample(buffer, k_s, u * b)
            # [U·B] -> [B, U] -> [U, B]: each update's batch keeps rows of every device.
            batches = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((b, u) + x.shape[1:]), 0, 1), rows)
            xs = (batches, jax.random.split(k_u, u))

            def draw(x):
                return x
        else:
            xs = jax.random.split(key, u)

            def draw(k):
                k_s, k_u = jax.random.split(k)
                return self._sample(buffer, k_s, b), k_u

        p = self.agent.period
        if p > 1 and u % p == 0 and self.agent.update_period is not None:
            def one_period(agent, group):
                pairs = [draw(jax.tree.map(lambda a, i=i: a[i], group)) for i in range(p)]
                batches, keys = jax.tree.map(lambda *a: jnp.stack(a), *pairs)
                return self.agent.update_period(agent, batches, keys)

            groups = jax.tree.map(lambda a: a.reshape((u // p, p) + a.shape[1:]), xs)
            agent, metrics = jax.lax.scan(one_period, agent, groups)
            return agent, jax.tree.map(lambda m: m.reshape((u,) + m.shape[2:]), metrics)
        return jax.lax.scan(lambda a, x: self.agent.update(a, *draw(x)), agent, xs)

    def _chunk_fn(self, carry: OffPolicyCarry, n: jax.Array, warm: jax.Array):
        before = carry.env_state
        # The learner's precision for acting and updating; the env step inside keeps 'highest'.
        with jax.default_matmul_precision(self.s.learner_precision):
            carry, metrics = repeat(lambda c: self._iteration(c, warm), carry, n)
        return carry, {**unsparse(metrics, self.agent.sparse_metrics, self.agent.sparse_weight),
                       **chunk_counters(before, carry.env_state)}

    # -------------------------------------------------------------- resuming
    def refill(self, carry: OffPolicyCarry) -> OffPolicyCarry:
        """After a restore without the replay buffer: collect ``min_buffer`` fresh transitions
        as the warm-up does (``warmup_actions``, no updates; "policy" now acts with the restored
        agent) so updates never sample an empty buffer.  The budget counter is left where it was;
        the run is then no longer bit-identical to an uninterrupted one."""
        iteration = self.counter(carry.iteration)  # host copy: the chunk donates the carry
        carry, _ = self.chunk(carry, self.warmup_iters, warm=True)
        return carry.replace(iteration=jnp.full_like(carry.iteration, iteration))

    # ------------------------------------------------------------------ host
    def env_steps(self, carry: OffPolicyCarry) -> int:
        return self.counter(carry.iteration) * self.env.num_envs

    def finished(self, carry: OffPolicyCarry) -> bool:
        return self.counter(carry.iteration) >= self.total_iters

    def _advance(self, carry: OffPolicyCarry) -> tuple[OffPolicyCarry, dict]:
        """Warm-up (first call: the chunk program run for the warm-up iterations) or one
        training chunk."""
        if self.counter(carry.iteration) < self.warmup_iters:
            carry, metrics = self.chunk(carry, self.chunk_length(carry), warm=True)
            # its row: the env's counters (no update ran, so no losses)
            return carry, {k: v for k, v in metrics.items() if k in COUNTERS}
        return self.chunk(carry, self.chunk_length(carry))

    def chunk_length(self, carry: OffPolicyCarry) -> int:
        """Iterations of the next chunk: the rest of the warm-up, or training's next (`chunk_ends`)."""
        done = self.counter(carry.iteration)
        if done < self.warmup_iters:
            return self.warmup_iters - done
        return iterations_to_next(self.chunk_ends, done - self.warmup_iters)
