"""FlashSAC policy and value heads on top of the norm-bounded trunk."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.nets.bounded import BoundedTrunk, UnitDense

LOG_2 = 0.6931471805599453


def _trunk(head: nn.Module) -> BoundedTrunk:
    """The shared trunk of a head, built from the head's own trunk fields (inside its compact call)."""
    return BoundedTrunk(head.width, head.num_blocks, head.train, head.expansion, head.bn_momentum,
                        head.bn_eps, head.rms_eps, head.dtype, name="trunk")


class TanhGaussianActor(nn.Module):
    """Trunk -> mean and log-std heads, each a unit-norm kernel (projected like the trunk) plus a
    free zero-init bias, as in the official FlashSAC.

    log sigma = log_std_min + (log_std_max - log_std_min) / 2 * (1 + tanh(raw)), so in
    [log_std_min, log_std_max] (= [-10, 2] by default, i.e. -10 + 6 (1 + tanh(raw))).
    Returns (mean [B, A], log_std [B, A]) of the Gaussian BEFORE the tanh squashing.
    """

    action_size: int
    width: int
    num_blocks: int
    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    rms_eps: float = 1e-6
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    dtype: Any = None  # `UnitDense.dtype` of every product, heads included (as autocast does)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = _trunk(self)(obs)
        mean = UnitDense(self.action_size, use_bias=True, name="mean", dtype=self.dtype)(z)
        raw = UnitDense(self.action_size, use_bias=True, name="log_std", dtype=self.dtype)(z)
        half_range = 0.5 * (self.log_std_max - self.log_std_min)
        log_std = self.log_std_min + half_range * (1.0 + jnp.tanh(raw))
        return mean, log_std


def pair_rows(current: jax.Array, following: jax.Array) -> jax.Array:
    """The rows of ``current`` and ``following`` [B, ...] as one batch [2B, ...] for cross-batch
    prediction, interleaved (c_0, f_0, c_1, f_1, ...).  BatchNorm sees the same rows as with a
    concatenation, but a batch split over devices stays split: each device's pairs are its own
    rows (a concatenation would move half of them to other devices)."""
    return jnp.stack([current, following], axis=1).reshape((-1,) + current.shape[1:])


def half_rows(z: jax.Array, half: int) -> jax.Array:
    """Rows of one half (0: current, 1: following) of a `pair_rows` batch: [2B, ...] -> [B, ...]."""
    return z.reshape((-1, 2) + z.shape[1:])[:, half]


class CategoricalCritic(nn.Module):
    """Trunk on [obs, action] -> logits over ``num_atoms`` value atoms (a unit-norm kernel plus a
    free zero-init bias: the bounded kernel keeps the logits' scale in check, the bias does not)."""

    num_atoms: int
    width: int
    num_blocks: int
    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    rms_eps: float = 1e-6
    # Cross-batch prediction feeds [current; next] rows but needs one half's values: with
    # half = 0 or 1 the trunk (and its BatchNorm statistics) sees every row, the head only that
    # half (same values, less work).  None: the head runs on every row.
    half: int | None = None
    dtype: Any = None  # `UnitDense.dtype` of every product, the logits included

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        z = _trunk(self)(jnp.concatenate([obs, action], -1))
        if self.half is not None:
            z = half_rows(z, self.half)
        return UnitDense(self.num_atoms, use_bias=True, name="logits", dtype=self.dtype)(z)  # [B, K]


def critic_ensemble(size: int) -> type[nn.Module]:
    """`CategoricalCritic` vmapped ``size`` times over params AND batch stats (output [E, B, K])."""
    return nn.vmap(
        CategoricalCritic,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=size,
    )


def sample_tanh_gaussian(
    key: jax.Array, mean: jax.Array, log_std: jax.Array, noise: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """a = tanh(mean + std * eps) and its log-prob with the tanh change-of-variables correction.

    ``noise`` (eps, [B, A]) overrides sampling, for held exploration noise.  Returns
    (action [B, A], log_prob [B]).
    """
    eps = jax.random.normal(key, mean.shape, mean.dtype) if noise is None else noise
    u = mean + jnp.exp(log_std) * eps
    gauss = -0.5 * jnp.square(eps) - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    log_det = 2.0 * (LOG_2 - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(gauss - log_det, -1)
