"""Categorical (C51) value distributions: the atom grid and the projection onto it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def atoms(num_atoms: int, v_min: float, v_max: float) -> jax.Array:
    """The fixed support z_0 < ... < z_{K-1}, evenly spaced on [v_min, v_max]. [K]"""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def project(target_atoms: jax.Array, probs: jax.Array, v_min: float, v_max: float) -> jax.Array:
    """Project a distribution on shifted atoms back onto the fixed grid (C51, Bellemare 2017).

    target_atoms [..., K]: the shifted support T z_j (clipped here to [v_min, v_max]);
    probs [..., K]: their probabilities.  Each mass p_j is split between the two grid atoms
    around T z_j in proportion to closeness; total mass is preserved.  Returns [..., K] on the
    grid `atoms(K, v_min, v_max)`.  O(B·K): one scatter-add onto the lower and upper
    neighbours (a dense [B, K, K] weight tensor costs K times more; see the tests' reference).
    """
    k = probs.shape[-1]
    lead = probs.shape[:-1]
    scale = (k - 1) / (v_max - v_min)  # grid steps per unit value (a Python float: exact here)
    pos = jnp.clip((target_atoms - v_min) * scale, 0.0, k - 1.0)  # fractional grid index
    # lower in 0..K-2 so upper = lower + 1 always exists; T z_j == v_max gives frac 1 on K-1.
    lower = jnp.clip(jnp.floor(pos), 0.0, k - 2.0)
    frac = pos - lower
    p = probs.reshape(-1, k)
    lower = lower.reshape(-1, k).astype(jnp.int32)
    frac = frac.reshape(-1, k)

    def one_row(p, lower, frac):  # vmapped: a scatter per row, local to a batch split over devices
        return jnp.zeros_like(p).at[lower].add(p * (1.0 - frac)).at[lower + 1].add(p * frac)

    return jax.vmap(one_row)(p, lower, frac).reshape(*lead, k)


def expectation(probs: jax.Array, support: jax.Array) -> jax.Array:
    """E[Z] = sum_i p_i z_i over the last axis."""
    return jnp.sum(probs * support, -1)


def cross_entropy(target_probs: jax.Array, logits: jax.Array) -> jax.Array:
    """-sum_i target_i log softmax(logits)_i over the last axis (target is not differentiated)."""
    return -jnp.sum(jax.lax.stop_gradient(target_probs) * jax.nn.log_softmax(logits), -1)
