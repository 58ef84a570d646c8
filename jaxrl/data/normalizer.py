"""Running mean / variance of observations, as a pytree that lives in the train state.

The update merges the statistics of a whole batch into the running ones with the parallel
(Chan et al.) form of Welford's algorithm:

    n = n_a + n_b,  δ = μ_b − μ_a,
    μ = μ_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n

which stays accurate in float32 over billions of samples (no sum of squares that grows without
bound, no catastrophic cancellation ``E[x²] − E[x]²``).  The count is kept in float32 as well;
only the ratio ``n_b / n`` enters the mean update, so its rounding error is harmless.

    stats = normalizer.init((obs_dim,))
    stats = normalizer.update(stats, obs)          # obs [..., obs_dim]
    z = normalizer.normalize(stats, obs, clip=5.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

# Variance floor: a constant feature (e.g. a padded zero) must not divide by zero.
EPS = 1e-8


@struct.dataclass
class RunningStats:
    """Running statistics of a stream of arrays of shape ``mean.shape``."""

    count: jax.Array  # [] float32, samples seen
    mean: jax.Array  # [*shape] float32
    m2: jax.Array  # [*shape] float32, sum of squared deviations from the mean

    @property
    def var(self) -> jax.Array:
        """Population variance (1 before any sample, so that normalise is the identity)."""
        return jnp.where(self.count > 0, self.m2 / jnp.maximum(self.count, 1.0), 1.0)

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(jnp.maximum(self.var, EPS))


def init(shape: tuple[int, ...] | int) -> RunningStats:
    """Empty statistics for samples of ``shape`` (normalise is the identity until updated)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return RunningStats(
        count=jnp.zeros((), jnp.float32),
        mean=jnp.zeros(shape, jnp.float32),
        m2=jnp.zeros(shape, jnp.float32),
    )


def _check(stats: RunningStats, x: jax.Array) -> int:
    """Number of leading batch axes of ``x``; a ValueError when its trailing shape is wrong."""
    shape = tuple(stats.mean.shape)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        raise ValueError(
            f"normalizer expects arrays of shape [..., {', '.join(map(str, shape))}], "
            f"got {tuple(x.shape)}"
        )
    return x.ndim - k


def update(stats: RunningStats, x: jax.Array, mask: jax.Array | None = None) -> RunningStats:
    """Merge a batch ``x`` [..., *shape] into ``stats``; ``mask`` [...] keeps only some rows."""
    x = jnp.asarray(x, jnp.float32)
    nb = _check(stats, x)
    axes = tuple(range(nb))
    if mask is None:
        w = jnp.ones(x.shape[:nb], jnp.float32)
    else:
        w = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape[:nb])
    wx = w.reshape(w.shape + (1,) * (x.ndim - nb))
    n_b = jnp.sum(w)
    mean_b = jnp.sum(wx * x, axis=axes) / jnp.maximum(n_b, 1.0)
    m2_b = jnp.sum(wx * jnp.square(x - mean_b), axis=axes)

    n = stats.count + n_b
    frac = jnp.where(n > 0, n_b / jnp.maximum(n, 1.0), 0.0)
    delta = mean_b - stats.mean
    mean = stats.mean + delta * frac
    m2 = stats.m2 + m2_b + jnp.square(delta) * stats.count * frac
    return RunningStats(count=n, mean=mean, m2=m2)


def normalize(stats: RunningStats, x: jax.Array, clip: float | None = 5.0) -> jax.Array:
    """(x − mean) / std, clipped to ``[−clip, clip]`` (no clip for ``None``)."""
    _check(stats, jnp.asarray(x))
    z = (x - stats.mean) / stats.std
    if clip is not None:
        z = jnp.clip(z, -clip, clip)
    return z


def affine(stats: RunningStats) -> tuple[jax.Array, jax.Array]:
    """(scale, shift) with ``normalize(x, clip=None) == x * scale + shift`` (for export)."""
    scale = 1.0 / stats.std
    return scale, -stats.mean * scale
