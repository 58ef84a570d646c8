"""Shim that lets Brax's own trainers (our benchmark anchor, never a library dependency) run on JAX >= 0.10.

Brax 0.14's ``sac.train`` / ``ppo.train`` call ``jax.device_put_replicated`` and
``jax.device_put_sharded``, which JAX 0.10 removed.  Both only build a leading device axis for
``pmap``; stacking the copies and letting ``pmap`` place them does the same.  `patch()` adds the
two functions back when (and only when) JAX lacks them.  Import this from experiments only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _device_put_replicated(x, devices):
    n = len(devices)
    return jax.tree.map(lambda a: jax.device_put(jnp.stack([jnp.asarray(a)] * n)), x)


def _device_put_sharded(shards, devices):
    return jax.tree.map(lambda *xs: jax.device_put(jnp.stack([jnp.asarray(a) for a in xs])), *shards)


def patch() -> bool:
    """Install the shims on the ``jax`` module if missing; True when something was added."""
    added = False
    if not hasattr(jax, "device_put_replicated"):
        jax.device_put_replicated = _device_put_replicated
        added = True
    if not hasattr(jax, "device_put_sharded"):
        jax.device_put_sharded = _device_put_sharded
        added = True
    return added
