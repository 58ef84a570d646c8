"""Replay buffer: wrap-around correctness, uniform sampling, the [time, env] layout split over
devices, memory estimate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.data import replay
from jaxrl.train import parallel


def _example():
    return {"x": jnp.zeros((3,), jnp.float32), "i": jnp.zeros((), jnp.int32)}


def _step(values):
    values = np.asarray(values)
    return {"x": jnp.asarray(np.stack([values] * 3, 1), jnp.float32), "i": jnp.asarray(values, jnp.int32)}


def test_insert_wraps_around_like_a_python_ring():
    buf = replay.init(_example(), capacity=14, num_envs=2)  # 7 time rows of 2 envs
    assert (buf.rows, buf.num_envs, buf.capacity) == (7, 2, 14)
    insert = jax.jit(replay.insert)
    ring = []  # reference: the last 7 vector steps written, computed another way
    for t in range(17):
        buf = insert(buf, _step([10 * t, 10 * t + 1]))
        ring = (ring + [[10 * t, 10 * t + 1]])[-7:]
    assert int(buf.size) == 7 and int(buf.insert_pos) == 17 % 7
    assert sorted(map(tuple, np.asarray(buf.data["i"]).tolist())) == sorted(map(tuple, ring))
    np.testing.assert_array_equal(np.asarray(buf.data["x"])[..., 0], np.asarray(buf.data["i"]))
    # capacity in transitions is rounded up to whole vector steps
    assert replay.init(_example(), capacity=15, num_envs=2).rows == 8


def test_sample_only_returns_filled_rows_uniformly():
    buf = replay.init(_example(), capacity=100, num_envs=2)
    for t in range(5):
        buf = replay.insert(buf, _step([2 * t + 1, 2 * t + 2]))
    s = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.PRNGKey(0), 20000)
    vals = np.asarray(s["i"])
    assert vals.min() >= 1 and vals.max() <= 10  # never an empty (zero) row
    counts = np.bincount(vals, minlength=11)[1:]
    assert np.abs(counts / 20000 - 0.1).max() < 0.015


def test_sample_on_two_devices_draws_each_share_from_its_own_envs():
    """With the env axis split over 2 devices, each device's half of the batch comes from its own
    envs (no cross-device gather: the sampled rows of device d are its envs' values), the union is
    uniform over all filled rows, and nothing but the batch is all-gathered or moved."""
    mesh = parallel.make_mesh(2)
    buf = replay.init(_example(), capacity=400, num_envs=4)
    for t in range(25):
        buf = replay.insert(buf, _step(np.arange(4) + 4 * t))  # env e holds values = e (mod 4)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, parallel.AXIS))
    buf = buf.replace(data=jax.device_put(buf.data, spec))
    sample = jax.jit(lambda b, k: replay.sample(b, k, 4000, mesh))
    rows = sample(buf, jax.random.PRNGKey(1))
    shards = sorted(rows["i"].addressable_shards, key=lambda s: s.index[0].start or 0)
    assert [s.data.shape[0] for s in shards] == [2000, 2000]
    assert set(np.asarray(shards[0].data) % 4) == {0, 1}  # device 0 holds envs 0, 1
    assert set(np.asarray(shards[1].data) % 4) == {2, 3}
    counts = np.bincount(np.asarray(rows["i"]), minlength=100)
    assert counts.min() > 0 and np.abs(counts / 4000 - 0.01).max() < 0.01
    hlo = sample.lower(buf, jax.random.PRNGKey(1)).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo and "collective-permute" not in hlo
    with pytest.raises(ValueError, match="cannot be split over 2 devices"):
        replay.sample(buf, jax.random.PRNGKey(1), 3, mesh)


def test_buffer_that_cannot_fit_in_memory_is_refused_before_allocating():
    example = {"obs": jnp.zeros((1000,), jnp.float32)}
    with pytest.raises(replay.ReplayCapacityError, match="lower buffer_size"):
        replay.init(example, capacity=10**12)
    assert replay.nbytes(example, 10) == 40000
    # CPU devices share the host's RAM: a buffer that does not fit on one does not fit on two
    # either (each holding half), while two GPUs each bring their own memory
    row = {"obs": np.zeros((250,), np.float32)}  # 1,000 bytes: 10^6 rows = 1 GB, 2 GB at the CPU peak
    for devices in (1, 2):
        with pytest.raises(replay.ReplayCapacityError, match="lower buffer_size to at most 800,000"):
            replay.check_memory(row, 10**6, free_bytes=2 * 10**9, platform="cpu", devices=devices)
    need, _ = replay.check_memory(row, 10**6, free_bytes=2 * 10**9, platform="gpu", devices=2)
    assert need == 5 * 10**8


def test_bad_capacity_and_wrong_sized_insert_are_refused():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        replay.init(_example(), capacity=0)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        replay.init(_example(), capacity=4, num_envs=0)
    buf = replay.init(_example(), capacity=4, num_envs=2)
    with pytest.raises(ValueError, match="one vector env step of 2 transitions"):
        replay.insert(buf, _step([1, 2, 3]))
