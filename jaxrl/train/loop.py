"""The host side every training loop shares, and the protocol `jaxrl.train.run` drives.

A loop (`OffPolicyLoop`, `OnPolicyLoop`, the finetuning loop) is a `HostLoop`:

    init_carry() -> carry            everything the run needs to continue, one pytree
    run_chunk(carry) -> carry, row   one jitted chunk (+ evaluation) and its metrics row
    finished(carry) -> bool          the budget is spent
    env_steps(carry) -> int          env steps so far (host int: no int32 overflow)
    compile_s                        seconds spent compiling so far
    optional_state / refill(carry)   carry subtrees a checkpoint may leave out, and how to rebuild them

This module holds the pieces each loop would otherwise repeat: compile-and-time with a donated
carry, the NaN guards, the metrics row, the training-episode statistics of a chunk, the budget ->
chunk rounding and the evaluation key stream (its own, so evaluating never changes training).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs.wrappers import EnvState
from jaxrl.train import guards

# Salt of the evaluation key stream: evaluation keys never come from the training carry.
_EVAL_STREAM = 0xE7A1


def chunk_plan(total_iters: int, num_chunks: int) -> tuple[int, int]:
    """(iterations per chunk, iterations in all) for a budget of ``total_iters`` split into
    ``num_chunks`` equal chunks, rounded up so that one compiled chunk serves the whole run."""
    if num_chunks < 1:
        raise ValueError(f"num_evals must be >= 1, got {num_chunks}")
    per_chunk = max(1, math.ceil(max(total_iters, 1) / num_chunks))
    return per_chunk, per_chunk * num_chunks


def episode_metrics(before: Any, after: Any) -> dict:
    """Training episodes that ended between two `EpisodeStats` and their mean return
    (NaN when none ended: "no value", not a failure).  Traced inside a chunk."""
    done = after.completed - before.completed
    return {
        "train_episodes": done,
        "train_return": jnp.where(done > 0, (after.return_sum - before.return_sum)
                                  / jnp.maximum(done, 1), jnp.nan),
    }


def chunk_counters(before: EnvState, after: EnvState) -> dict:
    """Per-chunk metrics every loop reports from the env state: episodes, return, solver limits."""
    return {**episode_metrics(before.stats, after.stats),
            "solver_limit_hits": after.solver_limit_hits - before.solver_limit_hits}


def eval_key(seed: int, env_steps: int) -> jax.Array:
    """The key of the evaluation at ``env_steps``: a stream of its own, derived from the run's
    seed, so the number of evaluations (or none) never changes the training trajectory."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _EVAL_STREAM)
    return jax.random.fold_in(base, env_steps % (2**31 - 1))


def notice(text: str) -> None:
    print(f"jaxrl: {text}", file=sys.stderr, flush=True)


class HostLoop:
    """Base of the loops: compile-and-time, guards, metrics row, evaluation.

    Subclasses set ``self.env`` (the training `VecEnv`), ``self.seed``, ``self.evaluate``
    (jitted ``(agent, key) -> {'eval_return', ...}`` or None) and implement ``init_carry``,
    ``finished``, ``env_steps`` and ``_advance(carry) -> (carry, metrics)``.
    """

    optional_state: tuple[str, ...] = ()  # carry paths a checkpoint may leave out (see refill)
    env: Any
    seed: int
    evaluate: Callable | None = None

    def __init__(self) -> None:
        self.compile_s = 0.0
        self._compiled: dict[str, Any] = {}

    # ------------------------------------------------------------------ protocol
    def init_carry(self) -> Any:
        raise NotImplementedError

    def finished(self, carry: Any) -> bool:
        raise NotImplementedError

    def env_steps(self, carry: Any) -> int:
        raise NotImplementedError

    def refill(self, carry: Any) -> Any:
        return carry

    def _advance(self, carry: Any) -> tuple[Any, dict]:
        """One jitted chunk (through `_call`); returns device metrics."""
        raise NotImplementedError

    def run_chunk(self, carry: Any) -> tuple[Any, dict]:
        """One chunk, the NaN guards, then evaluation; returns (carry, metrics row)."""
        t0 = time.perf_counter()
        start = self.env_steps(carry)
        carry, metrics = self._advance(carry)
        metrics = {k: np.asarray(v).item() for k, v in metrics.items()}  # blocks on the chunk
        steps = self.env_steps(carry)
        # Actions first: a NaN action is the root cause of the NaN losses that follow it.
        guards.check_actions(carry.env_state.nonfinite_actions, steps)
        guards.check_finite({k: v for k, v in metrics.items() if k != "train_return"}, steps)
        elapsed = time.perf_counter() - t0
        row = {"env_steps": steps, "chunk_s": elapsed, "sps": (steps - start) / max(elapsed, 1e-9),
               **metrics}
        if self.evaluate is not None:
            ev = self._call("evaluate", self.evaluate, carry.agent, eval_key(self.seed, steps))
            row.update({k: float(v) for k, v in ev.items()})
            guards.check_finite({"eval_return": row["eval_return"]}, steps)
        return carry, row

    # ------------------------------------------------------------------ helpers
    def _call(self, name: str, fn: Callable, *args):
        """Call jitted ``fn``, compiling it ahead of time on first use to time compilation.
        Chunks are `donating_jit`s: the carry's buffers (replay buffer, env state) are updated
        in place instead of copied."""
        args = (unalias(args[0]),) + args[1:]
        if name not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[name] = fn.lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[name](*args)

    def lower_chunk(self, carry: Any) -> Any:
        """The training chunk lowered for ``carry`` (real or `jax.ShapeDtypeStruct`s): lets tests
        and tools trace GPU-sized presets on abstract shapes without allocating them."""
        raise NotImplementedError


def _buffer_id(x: jax.Array) -> tuple:
    try:
        return tuple(s.data.unsafe_buffer_pointer() for s in x.addressable_shards)
    except Exception:  # noqa: BLE001 - backends without raw pointers: object identity
        return (id(x),)


def unalias(tree: Any) -> Any:
    """``tree`` with every leaf that shares its device buffer with an earlier leaf copied.

    A jitted function returning the same value twice (flat tasks: ``obs['state']`` IS
    ``obs['privileged_state']``) may hand back one buffer for both; donating that carry would
    donate the buffer twice, which XLA refuses.  The copies are observation-sized, not buffers."""
    seen: set = set()

    def fix(x):
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or x.is_deleted():
            return x
        ident = _buffer_id(x)
        if ident in seen:
            return jnp.copy(x)
        seen.add(ident)
        return x

    return jax.tree.map(fix, tree)


def donating_jit(fn: Callable) -> Callable:
    """``jax.jit`` that donates its first argument (the carry)."""
    return jax.jit(fn, donate_argnums=0)
