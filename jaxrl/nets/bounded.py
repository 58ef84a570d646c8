"""Norm-bounded building blocks of FlashSAC (and SimbaV2-style nets).

Every parameter whose norm the algorithm bounds carries a distinctive LEAF NAME, so that one
function, `project`, can find and re-project all of them in any params pytree (also inside
`nn.vmap` ensembles, where every leaf has extra leading axes):

==============================  ==============================================================
leaf name                       projection (``d`` = feature size, the last axis)
==============================  ==============================================================
``unit_kernel`` [..., in, out]  every output unit's weight vector (a column) to L2 norm 1
``bn_scale`` + ``bn_bias`` [d]  the concatenated (scale, bias) to L2 norm sqrt(d)
``rms_scale`` [d]               to L2 norm sqrt(d)
==============================  ==============================================================

Anything else passes through, in particular the free ``bias`` of a head's `UnitDense`.

Call `project` right after EVERY optimiser step (not on a Polyak-averaged target network).

Mixed precision (``dtype="bfloat16"``, the official code's ``use_amp``): every `UnitDense`
product -- forward and both backward products -- multiplies bfloat16 copies of its operands and
accumulates in float32 (`low_precision_matmul`); parameters, norms, activations, heads' outputs,
losses and gradients stay float32.  bfloat16 keeps float32's exponent range, so the official
fp16 GradScaler has no counterpart here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

UNIT_KERNEL = "unit_kernel"
BN_SCALE, BN_BIAS = "bn_scale", "bn_bias"
RMS_SCALE = "rms_scale"
BIAS = "bias"  # a head's free bias: never projected
KERNEL_EPS = 1e-8  # guards the column normalisation against an all-zero column


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def low_precision_matmul(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """x [..., in] @ kernel [in, out] with both operands rounded to ``dtype`` and a float32
    product.  Its gradients are float32 products of ``dtype`` operands too: JAX's own transpose
    of a mixed dot multiplies float32 cotangents by the ``dtype`` copies (a float32 product,
    so no speed-up) and rounds the gradients to ``dtype``."""
    return _lpm_fwd(x, kernel, dtype)[0]


def _lpm_fwd(x, kernel, dtype):
    xl, kl = x.astype(dtype), kernel.astype(dtype)
    return jnp.matmul(xl, kl, preferred_element_type=jnp.float32), (xl, kl)


def _lpm_bwd(dtype, res, g):
    # Written as dot_generals on the operands' own layouts: on XLA:CPU a bfloat16 dot whose
    # kernel contracts its LAST axis runs on the fast (AMX) path, `g @ kernel.T` does not; dk's
    # contraction over the rows XLA:CPU widens to float32 (same values; GPUs keep bfloat16).
    xl, kl = res
    gl = g.astype(dtype)
    dx = jax.lax.dot_general(gl, kl, (((gl.ndim - 1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    x2, g2 = xl.reshape(-1, xl.shape[-1]), gl.reshape(-1, gl.shape[-1])
    dk = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx, dk


low_precision_matmul.defvjp(_lpm_fwd, _lpm_bwd)


class UnitDense(nn.Module):
    """Dense layer whose kernel columns are kept at unit L2 norm by `project`.

    Trunk layers have no bias, as the official code's: a BatchNorm follows the block layers, and
    the embedding feeds the residual stream that RMSNorm rescales.  Output heads set ``use_bias``: a
    zero-init bias that `project` leaves FREE, so a head can shift its outputs (the action mean,
    the log-std, the value logits) without un-bounding the kernel.
    """

    features: int
    use_bias: bool = False
    kernel_init: Callable = nn.initializers.orthogonal()
    dtype: Any = None  # product dtype: None / float32 exact, bfloat16 = `low_precision_matmul`

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(UNIT_KERNEL, self.kernel_init, (x.shape[-1], self.features))
        if self.dtype is None or jnp.dtype(self.dtype) == jnp.float32:
            y = x @ kernel  # [B, out]; the kernel is (in, out)
        else:
            y = low_precision_matmul(x, kernel, jnp.dtype(self.dtype))
        if self.use_bias:
            y = y + self.param(BIAS, nn.initializers.zeros, (self.features,))
        return y


class BoundedBatchNorm(nn.Module):
    """BatchNorm over the batch axis whose (scale, bias) is projected to norm sqrt(d).

    ``momentum`` follows flax: running = momentum * running + (1 - momentum) * batch.
    In train mode it normalises with the batch statistics (biased variance) and updates
    ``batch_stats``; the running variance takes the unbiased batch variance (× n/(n−1)), as
    PyTorch's BatchNorm and the official FlashSAC layer do.
    """

    train: bool
    momentum: float = 0.99
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param(BN_SCALE, nn.initializers.ones, (d,))
        bias = self.param(BN_BIAS, nn.initializers.zeros, (d,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((d,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((d,), jnp.float32))
        if self.train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                n = x.size // d  # rows in the batch (all devices' under a sharded batch)
                ra_var.value = m * ra_var.value + (1.0 - m) * var * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class BoundedRMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, with ``scale`` projected to norm sqrt(d)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(RMS_SCALE, nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps) * scale


class InvertedResidualBlock(nn.Module):
    """h + ReLU(BN(W2 · ReLU(BN(W1 · h)))), W1: d -> expansion*d, W2: back to d; both unit."""

    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    dtype: Any = None  # `UnitDense.dtype`

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        d = h.shape[-1]
        bn = {"train": self.train, "momentum": self.bn_momentum, "eps": self.bn_eps}
        y = UnitDense(self.expansion * d, name="up", dtype=self.dtype)(h)
        y = nn.relu(BoundedBatchNorm(**bn, name="up_bn")(y))
        y = UnitDense(d, name="down", dtype=self.dtype)(y)
        y = nn.relu(BoundedBatchNorm(**bn, name="down_bn")(y))
        return h + y


class BoundedTrunk(nn.Module):
    """BN(input) -> UnitDense(width) -> num_blocks residual blocks -> RMSNorm.

    The input BatchNorm replaces an observation normaliser.
    """

    width: int
    num_blocks: int
    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    rms_eps: float = 1e-6
    dtype: Any = None  # `UnitDense.dtype` of every product

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BoundedBatchNorm(self.train, self.bn_momentum, self.bn_eps, name="input_bn")(x)
        h = UnitDense(self.width, name="embed", dtype=self.dtype)(x)
        for i in range(self.num_blocks):
            h = InvertedResidualBlock(
                self.train, self.expansion, self.bn_momentum, self.bn_eps, self.dtype,
                name=f"block_{i}")(h)
        return BoundedRMSNorm(self.rms_eps, name="out_rms")(h)


# ----------------------------------------------------------------------------- projection
def _unit_columns(kernel: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(kernel, axis=-2, keepdims=True)  # over `in`; leading ensemble axes ok
    return kernel / (norm + KERNEL_EPS)


def _to_norm_sqrt_d(parts: list[jax.Array]) -> list[jax.Array]:
    """Rescale the concatenation of ``parts`` (along the last axis) to L2 norm sqrt(d)."""
    d = parts[0].shape[-1]
    sq = sum(jnp.sum(jnp.square(p), -1, keepdims=True) for p in parts)
    factor = jnp.sqrt(d / jnp.maximum(sq, KERNEL_EPS))
    return [p * factor for p in parts]


def project(params: Any) -> Any:
    """Re-project every norm-bounded parameter of a flax params pytree (see module docstring).

    Leaves not named there (head biases, plain dense layers) pass through unchanged.  A BatchNorm with
    only one of ``bn_scale`` / ``bn_bias`` is an error: the pair is bounded jointly.
    """
    if not isinstance(params, Mapping):
        return params
    out = {k: project(v) for k, v in params.items()}
    if UNIT_KERNEL in out:
        out[UNIT_KERNEL] = _unit_columns(out[UNIT_KERNEL])
    if (BN_SCALE in out) != (BN_BIAS in out):
        raise ValueError(
            f"a BatchNorm needs both {BN_SCALE!r} and {BN_BIAS!r} to be projected; got keys "
            f"{sorted(out)}"
        )
    if BN_SCALE in out:
        out[BN_SCALE], out[BN_BIAS] = _to_norm_sqrt_d([out[BN_SCALE], out[BN_BIAS]])
    if RMS_SCALE in out:
        (out[RMS_SCALE],) = _to_norm_sqrt_d([out[RMS_SCALE]])
    return type(params)(out) if not isinstance(params, dict) else out


def bounded_leaves(params: Any, path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map '/'-joined module path -> kind ('unit', 'bn', 'rms') of every bounded module."""
    found: dict[str, Any] = {}
    if not isinstance(params, Mapping):
        return found
    kinds = {UNIT_KERNEL: "unit", BN_SCALE: "bn", RMS_SCALE: "rms"}
    for leaf, kind in kinds.items():
        if leaf in params:
            found["/".join(path)] = kind
    for k, v in params.items():
        found.update(bounded_leaves(v, path + (str(k),)))
    return found
