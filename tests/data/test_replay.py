"""Replay buffer: wrap-around correctness, uniform sampling, memory estimate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.data import replay


def _example():
    return {"x": jnp.zeros((3,), jnp.float32), "i": jnp.zeros((), jnp.int32)}


def test_insert_wraps_around_like_a_python_ring():
    buf = replay.init(_example(), capacity=7)
    insert = jax.jit(replay.insert)
    ring = []  # reference: the last 7 rows written, computed another way
    counter = 0
    for b in (3, 3, 3, 2, 5):
        rows = np.arange(counter, counter + b)
        counter += b
        batch = {"x": jnp.asarray(np.stack([rows] * 3, 1), jnp.float32), "i": jnp.asarray(rows, jnp.int32)}
        buf = insert(buf, batch)
        ring = (ring + rows.tolist())[-7:]
    assert int(buf.size) == 7 and int(buf.insert_pos) == counter % 7
    assert sorted(np.asarray(buf.data["i"]).tolist()) == sorted(ring)
    np.testing.assert_array_equal(np.asarray(buf.data["x"])[:, 0], np.asarray(buf.data["i"]))


def test_sample_only_returns_filled_rows_uniformly():
    buf = replay.init(_example(), capacity=100)
    buf = replay.insert(buf, {"x": jnp.ones((10, 3)), "i": jnp.arange(10, dtype=jnp.int32) + 1})
    s = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.PRNGKey(0), 20000)
    vals = np.asarray(s["i"])
    assert vals.min() >= 1 and vals.max() <= 10  # never an empty (zero) row
    counts = np.bincount(vals, minlength=11)[1:]
    assert np.abs(counts / 20000 - 0.1).max() < 0.015


def test_buffer_that_cannot_fit_in_memory_is_refused_before_allocating():
    example = {"obs": jnp.zeros((1000,), jnp.float32)}
    with pytest.raises(replay.ReplayCapacityError, match="lower buffer_size"):
        replay.init(example, capacity=10**12)
    assert replay.nbytes(example, 10) == 40000


def test_bad_capacity_and_oversized_insert_are_refused():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        replay.init(_example(), capacity=0)
    buf = replay.init(_example(), capacity=2)
    with pytest.raises(ValueError, match="cannot insert 3"):
        replay.insert(buf, {"x": jnp.ones((3, 3)), "i": jnp.zeros((3,), jnp.int32)})
