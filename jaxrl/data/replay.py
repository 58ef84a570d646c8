"""On-device circular replay buffer of pytrees: jit-able insert and uniform sample.

The buffer is a pytree (`ReplayState`) that lives in the training carry, so checkpointing the
carry checkpoints the buffer.  Capacity is in transitions; `init` estimates the bytes it will
allocate and refuses, with a clear error, when that will not fit in the device's memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class ReplayCapacityError(MemoryError):
    """The requested buffer does not fit in device memory."""


@struct.dataclass
class ReplayState:
    data: Any  # pytree, every leaf [capacity, ...]
    insert_pos: jax.Array  # [] int32, next row to write
    size: jax.Array  # [] int32, rows filled (<= capacity)

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def nbytes(example: Any, capacity: int) -> int:
    """Bytes a buffer of ``capacity`` rows shaped like ``example`` (one row, no batch axis) needs."""
    return int(
        sum(np.prod(np.shape(x)) * np.dtype(jnp.result_type(x)).itemsize for x in jax.tree.leaves(example))
        * capacity
    )


def device_memory_bytes(device=None) -> int | None:
    """Free-able memory of ``device``: GPU/TPU from memory_stats, CPU from the host's RAM."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may raise
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def peak_bytes(buffer_bytes: int, platform: str | None = None) -> int:
    """Memory a run really needs for a buffer of ``buffer_bytes``.  The chunk donates its carry,
    so the device holds one copy; on CPU the device IS host memory, and a checkpoint copies the
    buffer to host arrays while saving: two copies at the peak."""
    platform = platform or jax.default_backend()
    return int(buffer_bytes) * (2 if platform == "cpu" else 1)


def check_memory(example: Any, capacity: int, *, memory_fraction: float = 0.8,
                 other_bytes: int = 0, free_bytes: int | None = None,
                 platform: str | None = None) -> tuple[int, int | None]:
    """Raise `ReplayCapacityError` when the peak memory of a ``capacity``-row buffer (plus
    ``other_bytes``: networks, optimiser, env state) does not fit in ``memory_fraction`` of the
    device's free memory; returns (peak bytes, free bytes or None when unknown).

    ``free_bytes`` and ``platform`` default to the current device's; give them to ask about another
    device (e.g. a 24 GB GPU from a laptop: ``free_bytes=24 * 10**9, platform="gpu"``).
    """
    row = nbytes(example, 1)
    need = peak_bytes(row * int(capacity), platform) + int(other_bytes)
    have = device_memory_bytes() if free_bytes is None else int(free_bytes)
    if have is not None and need > memory_fraction * have:
        per_row = peak_bytes(row, platform)
        fit = max(0, int((memory_fraction * have - other_bytes) / max(per_row, 1)))
        rest = f" plus {other_bytes / 2**30:.2f} GiB for the rest of the run" if other_bytes else ""
        raise ReplayCapacityError(
            f"replay buffer of {int(capacity):,} transitions ({row:,} bytes each) needs "
            f"{peak_bytes(row * int(capacity), platform) / 2**30:.2f} GiB at its peak{rest}, but the "
            f"device has {have / 2**30:.2f} GiB free ({memory_fraction:.0%} usable): lower buffer_size "
            f"to at most {fit:,} transitions.  num_envs (env state, rows written per step) and "
            "batch_size x updates_per_step (rows sampled per step) take device memory too")
    return need, have


def init(example: Any, capacity: int, *, memory_fraction: float = 0.8,
         check: bool = True) -> ReplayState:
    """Allocate an empty buffer for rows shaped like ``example`` (a single transition, no batch
    axis).  ``check`` first refuses a buffer whose peak would not fit (`check_memory`); loops
    check once before compiling and build their carry with ``check=False`` (also when only
    tracing shapes, e.g. to export a GPU run's policy on a laptop)."""
    if int(capacity) < 1:
        raise ValueError(f"replay capacity must be >= 1 transition, got {capacity}")
    if check:
        check_memory(example, capacity, memory_fraction=memory_fraction)
    data = jax.tree.map(
        lambda x: jnp.zeros((int(capacity),) + tuple(np.shape(x)), jnp.result_type(x)), example
    )
    return ReplayState(data=data, insert_pos=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def insert(state: ReplayState, batch: Any) -> ReplayState:
    """Write a batch (leading axis B) at the insert position, wrapping around the end."""
    capacity = state.capacity
    b = jax.tree.leaves(batch)[0].shape[0]
    if b > capacity:
        raise ValueError(f"cannot insert {b} transitions at once into a buffer of capacity {capacity}")
    rows = (state.insert_pos + jnp.arange(b, dtype=jnp.int32)) % capacity
    data = jax.tree.map(lambda buf, x: buf.at[rows].set(x.astype(buf.dtype)), state.data, batch)
    return ReplayState(
        data=data,
        insert_pos=(state.insert_pos + b) % capacity,
        size=jnp.minimum(state.size + b, capacity),
    )


def sample(state: ReplayState, key: jax.Array, batch_size: int) -> Any:
    """Uniform sample (with replacement) of ``batch_size`` rows among the filled ones."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
    return jax.tree.map(lambda buf: buf[idx], state.data)
