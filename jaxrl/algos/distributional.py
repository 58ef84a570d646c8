"""Categorical (C51) value distributions: the atom grid and the projection onto it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def atoms(num_atoms: int, v_min: float, v_max: float) -> jax.Array:
    """The fixed support z_0 < ... < z_{K-1}, evenly spaced on [v_min, v_max]. [K]"""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def project(target_atoms: jax.Array, probs: jax.Array, v_min: float, v_max: float) -> jax.Array:
    """Project a distribution on shifted atoms back onto the fixed grid (C51, Bellemare 2017).

    target_atoms [B, K]: the shifted support T z_j (clipped here to [v_min, v_max]);
    probs [B, K]: their probabilities.  Each mass p_j is split between the two grid atoms
    around T z_j in proportion to closeness; total mass is preserved.  Returns [B, K] on the
    grid `atoms(K, v_min, v_max)`.  Vectorised: a [B, K, K] weight tensor, no loops.
    """
    k = probs.shape[-1]
    delta = (v_max - v_min) / (k - 1)
    tz = jnp.clip(target_atoms, v_min, v_max)
    grid = atoms(k, v_min, v_max)  # [K]
    # Triangular kernel: weight of source j on grid atom i = max(0, 1 - |Tz_j - z_i| / delta).
    # It is exactly the lower/upper split and puts all mass on z_i when Tz_j == z_i.
    w = jnp.clip(1.0 - jnp.abs(tz[..., None, :] - grid[:, None]) / delta, 0.0, 1.0)  # [B, K_i, K_j]
    return jnp.einsum("...ij,...j->...i", w, probs)


def expectation(probs: jax.Array, support: jax.Array) -> jax.Array:
    """E[Z] = sum_i p_i z_i over the last axis."""
    return jnp.sum(probs * support, -1)


def cross_entropy(target_probs: jax.Array, logits: jax.Array) -> jax.Array:
    """-sum_i target_i log softmax(logits)_i over the last axis (target is not differentiated)."""
    return -jnp.sum(jax.lax.stop_gradient(target_probs) * jax.nn.log_softmax(logits), -1)
