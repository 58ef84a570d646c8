"""On-device circular replay buffer of pytrees: jit-able insert and uniform sample.

The buffer is a pytree (`ReplayState`) that lives in the training carry, so checkpointing the
carry checkpoints the buffer.  Rows are laid out [time, env, ...]: one `insert` writes the N
transitions of one vector env step as one time row.  Why not a flat ring of transitions: with the
envs split over devices (`jaxrl.train.parallel`), the env axis of the buffer is split the same
way, so each device stores exactly the transitions its own envs produced and `sample` draws from
them without moving data between devices — and the layout does not depend on the device count,
so a checkpoint restores onto any number of devices.

Capacity is in transitions (rounded up to whole time rows); `init` estimates the bytes it will
allocate and refuses, with a clear error, when that will not fit in the device's memory.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class ReplayCapacityError(MemoryError):
    """The requested buffer does not fit in device memory."""


@struct.dataclass
class ReplayState:
    data: Any  # pytree, every leaf [time rows, num_envs, ...]
    insert_pos: jax.Array  # [] int32, next time row to write
    size: jax.Array  # [] int32, time rows filled (<= time rows)

    @property
    def rows(self) -> int:
        """Time rows (inserts) the buffer holds."""
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def num_envs(self) -> int:
        """Transitions per time row."""
        return jax.tree.leaves(self.data)[0].shape[1]

    @property
    def capacity(self) -> int:
        """Capacity in transitions."""
        return self.rows * self.num_envs


def as_stored(x: jax.Array, dtype: str) -> jax.Array:
    """Observations as a replay storing them in ``dtype`` gives them back: rounded to bfloat16 and
    returned as float32, or unchanged for "float32".

    An agent whose replay stores bfloat16 observations sees them so everywhere, not only in its
    updates: acting, the observation normaliser's statistics and the exported policy (export op
    ``round_bf16``).  Else a feature with a tiny spread beside a large value (a constant 0.3, std
    clipped to 1e-6) normalises to 0 when acting but to (bf16(0.3) − 0.3)/1e-6 ≈ 781 in training."""
    if jnp.dtype(dtype) == jnp.float32 or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x.astype(dtype).astype(jnp.float32)


def time_rows(capacity: int, num_envs: int) -> int:
    """Time rows a buffer of ``capacity`` transitions filled ``num_envs`` at a time needs."""
    return max(1, math.ceil(int(capacity) / max(int(num_envs), 1)))


def nbytes(example: Any, capacity: int) -> int:
    """Bytes a buffer of ``capacity`` rows shaped like ``example`` (one row, no batch axis) needs."""
    return int(
        sum(np.prod(np.shape(x)) * np.dtype(jnp.result_type(x)).itemsize for x in jax.tree.leaves(example))
        * capacity
    )


def device_memory_bytes(device=None) -> int | None:
    """Free-able memory of ``device``: GPU/TPU from memory_stats (limit - in use; None when
    its allocator reports none, e.g. ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``), CPU from the
    host's available RAM (Linux's MemAvailable: free pages would miss the droppable page cache
    and refuse a run that fits)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may raise
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if getattr(device, "platform", "cpu") != "cpu":  # an accelerator's memory is not the host's RAM
        return None
    try:  # Linux: what the kernel can hand out, the page cache it would drop included
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # elsewhere: free pages only (a lower bound)
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
                 platform: str | None = None, devices: int = 1,
                 replicated_bytes: int = 0) -> tuple[int, int | None]:
    """Raise `ReplayCapacityError` when the peak memory of a ``capacity``-row buffer (plus
    ``other_bytes``: networks, optimiser, env state) does not fit in ``memory_fraction`` of the
    device's free memory; returns (peak bytes per device, free bytes or None when unknown).

    With ``devices`` > 1 the buffer and ``other_bytes`` are split evenly over that many devices
    (each device holds its share of the envs and of the batch); ``replicated_bytes`` (the agent:
    networks, optimiser, normalisers) sit whole on every device.  CPU devices share the host's
    free memory, so there all ``devices`` shares must fit in it together.
    ``free_bytes`` and ``platform`` default to the current device's; give them to ask about
    another device (e.g. a 24 GB GPU from a laptop: ``free_bytes=24 * 10**9, platform="gpu"``).
    """
    platform = platform or jax.default_backend()
    row = nbytes(example, 1)
    devices = max(int(devices), 1)
    need = (peak_bytes(row * int(capacity), platform) + int(other_bytes)) // devices + int(replicated_bytes)
    have = device_memory_bytes() if free_bytes is None else int(free_bytes)
    # CPU devices are one host's RAM: all this host's shares draw on the same free bytes
    sharing = min(devices, len(jax.local_devices(backend="cpu"))) if platform == "cpu" else 1
    if have is not None and sharing * need > memory_fraction * have:
        per_row = peak_bytes(row, platform) / devices
        fit = max(0, int((memory_fraction * have / sharing - other_bytes / devices - replicated_bytes)
                         / max(per_row, 1e-9)))
        others = other_bytes + replicated_bytes * devices
        rest = f" plus {others / 2**30:.2f} GiB for the rest of the run" if others else ""
        split = (f" over {devices} devices" + (" sharing this host's memory" if sharing > 1 else "")
                 if devices > 1 else "")
        raise ReplayCapacityError(
            f"replay buffer of {int(capacity):,} transitions ({row:,} bytes each) needs "
            f"{peak_bytes(row * int(capacity), platform) / 2**30:.2f} GiB at its peak{rest}{split}, "
            f"but the device has {have / 2**30:.2f} GiB free ({memory_fraction:.0%} usable): lower "
            f"buffer_size to at most {fit:,} transitions.  num_envs (env state, rows written per step) "
            "and batch_size x updates_per_step (rows sampled per step) take device memory too")
    return need, have


def init(example: Any, capacity: int, num_envs: int = 1, *, memory_fraction: float = 0.8,
         check: bool = True) -> ReplayState:
    """Allocate an empty buffer for transitions shaped like ``example`` (a single transition, no
    batch axis), filled ``num_envs`` at a time, holding at least ``capacity`` of them.  ``check``
    first refuses a buffer whose peak would not fit (`check_memory`); loops check once before
    compiling and build their carry with ``check=False`` (also when only tracing shapes, e.g.
    to export a GPU run's policy on a laptop)."""
    if int(capacity) < 1:
        raise ValueError(f"replay capacity must be >= 1 transition, got {capacity}")
    if int(num_envs) < 1:
        raise ValueError(f"replay num_envs must be >= 1, got {num_envs}")
    rows = time_rows(capacity, num_envs)
    if check:
        check_memory(example, rows * int(num_envs), memory_fraction=memory_fraction)
    data = jax.tree.map(
        lambda x: jnp.zeros((rows, int(num_envs)) + tuple(np.shape(x)), jnp.result_type(x)), example
    )
    return ReplayState(data=data, insert_pos=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def insert(state: ReplayState, batch: Any) -> ReplayState:
    """Write one vector env step (every leaf [num_envs, ...]) as the next time row, wrapping
    around the end (the oldest row is overwritten)."""
    n = jax.tree.leaves(batch)[0].shape[0]
    if n != state.num_envs:
        raise ValueError(f"insert takes one vector env step of {state.num_envs} transitions "
                         f"(the buffer's num_envs), got {n}")
    pos = state.insert_pos
    data = jax.tree.map(lambda buf, x: buf.at[pos].set(x.astype(buf.dtype)), state.data, batch)
    return ReplayState(
        data=data,
        insert_pos=(pos + 1) % state.rows,
        size=jnp.minimum(state.size + 1, state.rows),
    )


def _sample_local(data: Any, size: jax.Array, key: jax.Array, batch_size: int) -> Any:
    """``batch_size`` rows uniform over the filled time rows x the envs of ``data``.  An empty
    buffer (``size`` 0) gives its zero-filled first row: inside a compiled program there is no
    raising, so callers insert before they sample (the loops' warm-up does)."""
    envs = jax.tree.leaves(data)[0].shape[1]
    k_t, k_e = jax.random.split(key)
    t = jax.random.randint(k_t, (batch_size,), 0, jnp.maximum(size, 1))
    e = jax.random.randint(k_e, (batch_size,), 0, envs)
    return jax.tree.map(lambda buf: buf[t, e], data)


def sample(state: ReplayState, key: jax.Array, batch_size: int, mesh: Any = None) -> Any:
    """Uniform sample (with replacement) of ``batch_size`` transitions among the filled ones.

    With ``mesh`` (the env axis of the buffer split over its devices), each device draws
    ``batch_size / devices`` rows from its own envs' transitions (every device holds as many, so
    the union is still uniform) and the batch comes back split on its leading axis: nothing of
    the buffer leaves its device."""
    if mesh is None or mesh.size == 1:
        return _sample_local(state.data, state.size, jax.random.fold_in(key, 0), batch_size)
    devices = mesh.size
    if batch_size % devices:
        raise ValueError(f"batch of {batch_size} cannot be split over {devices} devices; "
                         f"use a multiple of {devices}")
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]

    def local(data, size, key):
        return _sample_local(data, size, jax.random.fold_in(key, jax.lax.axis_index(axis)),
                             batch_size // devices)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis), P(), P()), out_specs=P(axis),
                         check_vma=False)(state.data, state.size, key)
