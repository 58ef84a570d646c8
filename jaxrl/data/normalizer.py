"""Running mean / variance of observations, as a pytree that lives in the train state.

The update merges the statistics of a whole batch into the running ones with the parallel
(Chan et al.) form of Welford's algorithm:

    n = n_a + n_b,  δ = μ_b − μ_a,
    μ = μ_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n

which stays accurate in float32 over long streams (no sum of squares that grows without bound,
no catastrophic cancellation ``E[x²] − E[x]²``; tests/algos/test_sac.py checks 10M samples of
mean 1e3, std 1e-2 against float64).  The count is kept in float32 as well; only the ratio
``n_b / n`` enters the update.  Limits of float32: a batch smaller than about count·2⁻²⁴ no longer
moves the count (batches of 4,096 envs: past ~7·10¹⁰ samples; one env at a time: past 2²⁴ ≈
1.7·10⁷), and its share of the mean and M2 is lost alike, so the statistics freeze rather than
drift; late in a run a mean shift under half an ulp of the mean is not absorbed.

    stats = normalizer.init((obs_dim,))
    stats = normalizer.update(stats, obs)          # obs [..., obs_dim]
    z = normalizer.normalize(stats, obs, clip=5.0)
    z = normalizer.normalize(stats, obs, clip=None, eps=1e-2)   # rsl_rl's (x − μ) / (σ + 0.01)
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


def divisor(stats: RunningStats, eps: float | None = None) -> jax.Array:
    """What ``normalize`` divides by: ``std`` (variance floored at EPS) for ``eps=None``, else
    ``sqrt(var) + eps`` (rsl_rl's EmpiricalNormalization form, eps 1e-2 there)."""
    if eps is None:
        return stats.std
    return jnp.sqrt(jnp.maximum(stats.var, 0.0)) + eps


def normalize(
    stats: RunningStats, x: jax.Array, clip: float | None = 5.0, eps: float | None = None
) -> jax.Array:
    """(x − mean) / std (``eps=None``) or (x − mean) / (std + eps), then clipped to
    ``[−clip, clip]`` (no clip for ``None``)."""
    _check(stats, jnp.asarray(x))
    z = (x - stats.mean) / divisor(stats, eps)
    if clip is not None:
        z = jnp.clip(z, -clip, clip)
    return z


def affine(stats: RunningStats, eps: float | None = None) -> tuple[jax.Array, jax.Array]:
    """(scale, shift) with ``normalize(x, clip=None, eps=eps) == x * scale + shift`` (for export)."""
    scale = 1.0 / divisor(stats, eps)
    return scale, -stats.mean * scale


# --------------------------------------------------------------------------- clipped-std form
# Brax / acme-style normalisation (the large-batch SAC, ALGORITHMS.md §2): the standard deviation
# is clipped to [std_min, std_max] instead of flooring the variance, and values are not clipped.
STD_MIN, STD_MAX = 1e-6, 1e6


def clipped_std(stats: RunningStats, std_min: float = STD_MIN, std_max: float = STD_MAX) -> jax.Array:
    """sqrt(var) clipped to ``[std_min, std_max]`` (1 before any sample)."""
    return jnp.clip(jnp.sqrt(jnp.maximum(stats.var, 0.0)), std_min, std_max)


def standardize(stats: RunningStats, x: jax.Array, std_min: float = STD_MIN,
                std_max: float = STD_MAX) -> jax.Array:
    """(x − mean) / clip(std, std_min, std_max), no value clip."""
    _check(stats, jnp.asarray(x))
    return (x - stats.mean) / clipped_std(stats, std_min, std_max)


def standardize_affine(stats: RunningStats, std_min: float = STD_MIN,
                       std_max: float = STD_MAX) -> tuple[jax.Array, jax.Array]:
    """(scale, shift) with ``standardize(x) == x * scale + shift`` (for export)."""
    scale = 1.0 / clipped_std(stats, std_min, std_max)
    return scale, -stats.mean * scale
