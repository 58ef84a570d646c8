"""Running observation normaliser: parallel Welford merge, float32 stability, shape checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.data import normalizer


def _two_pass(x):
    """Reference statistics computed another way: float64 two-pass over all samples."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.mean(0), x.var(0)


def test_merged_batches_equal_all_at_once_and_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 5)).astype(np.float32)
    merged = normalizer.init(5)
    for lo, hi in [(0, 1), (1, 100), (100, 537), (537, 1000)]:  # uneven batches, one of size 1
        merged = normalizer.update(merged, x[lo:hi])
    once = normalizer.update(normalizer.init((5,)), x)
    mean, var = _two_pass(x)
    for s in (merged, once):
        assert float(s.count) == 1000
        np.testing.assert_allclose(s.mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.var, var, rtol=1e-4)
    np.testing.assert_allclose(merged.mean, once.mean, rtol=1e-5, atol=1e-5)


def test_multi_axis_batches_are_flattened():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 16, 3)).astype(np.float32)  # [T, N, D]
    s = normalizer.update(normalizer.init(3), x)
    mean, var = _two_pass(x)
    np.testing.assert_allclose(s.mean, mean, atol=1e-5)
    np.testing.assert_allclose(s.var, var, rtol=1e-4)


def test_float32_stable_with_large_offset_and_many_batches():
    """E[x²]−E[x]² in float32 would lose the variance entirely at an offset of 1e4."""
    rng = np.random.default_rng(2)
    x = (1e4 + rng.normal(0.0, 0.1, size=(200, 64, 2))).astype(np.float32)
    s = normalizer.init(2)
    for batch in x:
        s = normalizer.update(s, batch)
    mean, var = _two_pass(x)
    np.testing.assert_allclose(s.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(s.var, var, rtol=2e-2)


def test_mask_ignores_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 2)).astype(np.float32)
    mask = np.arange(10) % 3 == 0
    s = normalizer.update(normalizer.init(2), x, mask=mask)
    mean, var = _two_pass(x[mask])
    np.testing.assert_allclose(s.mean, mean, atol=1e-6)
    np.testing.assert_allclose(s.var, var, rtol=1e-5)


def test_normalize_identity_before_update_then_standardises_and_clips():
    s = normalizer.init(2)
    x = jnp.array([[1.0, -2.0]])
    np.testing.assert_allclose(normalizer.normalize(s, x, clip=None), x)
    s = normalizer.update(s, jnp.array([[0.0, 0.0], [2.0, 4.0]]))  # mean (1, 2), std (1, 2)
    np.testing.assert_allclose(normalizer.normalize(s, jnp.array([[3.0, 2.0]]), clip=None), [[2.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(normalizer.normalize(s, jnp.array([[100.0, 2.0]]), clip=5.0), [[5.0, 0.0]], atol=1e-6)
    scale, shift = normalizer.affine(s)
    np.testing.assert_allclose(np.array([3.0, 2.0]) * scale + shift, [2.0, 0.0], atol=1e-6)


def test_constant_feature_does_not_divide_by_zero():
    s = normalizer.update(normalizer.init(1), jnp.ones((5, 1)))
    assert np.isfinite(np.asarray(normalizer.normalize(s, jnp.ones((1, 1))))).all()


def test_shape_mismatch_raises():
    s = normalizer.init(3)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3\].*\(4, 2\)"):
        normalizer.update(s, jnp.zeros((4, 2)))
    with pytest.raises(ValueError):
        normalizer.normalize(s, jnp.zeros((4,)))


def test_eps_form_is_rsl_rl_empirical_normalization_and_affine_matches():
    """eps=1e-2: (x − mean) / (sqrt(var) + 1e-2), unclipped with clip=None, against numpy; the
    export affine with the same eps is the same map; the default form is unchanged."""
    rng = np.random.default_rng(4)
    data = rng.normal(1.0, [0.001, 0.5, 7.0], size=(300, 3)).astype(np.float32)  # tiny std: eps matters
    s = normalizer.update(normalizer.init(3), data)
    mean, var = _two_pass(data)
    x = rng.normal(1.0, 50.0, size=(20, 3)).astype(np.float32)
    want = (x - mean) / (np.sqrt(var) + 1e-2)
    got = normalizer.normalize(s, x, clip=None, eps=1e-2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.abs(np.asarray(got)).max() > 100.0  # nothing clipped
    scale, shift = normalizer.affine(s, eps=1e-2)
    np.testing.assert_allclose(x * scale + shift, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(normalizer.normalize(s, x, clip=None), (x - mean) / np.sqrt(var), rtol=1e-3)


def test_a_float32_count_past_its_resolution_freezes_the_statistics_instead_of_drifting():
    """The module docstring's limit: at a count of 2^25 one more sample is under half an ulp of the
    count (and its share of the mean and M2 under half an ulp of theirs), so nothing moves; the
    variance does not grow from M2 alone (m2 / count stays put)."""
    stats = normalizer.RunningStats(count=jnp.float32(2**25), mean=jnp.full((3,), 2.0, jnp.float32),
                                    m2=jnp.full((3,), 2.0**25 * 0.25, jnp.float32))
    after = normalizer.update(stats, jnp.asarray([[2.5, 1.5, 2.0]], jnp.float32))
    assert float(after.count) == 2**25
    np.testing.assert_array_equal(np.asarray(after.mean), np.asarray(stats.mean))
    np.testing.assert_array_equal(np.asarray(after.var), np.asarray(stats.var))
    # a batch of 4 (= count·2⁻²³, one ulp) still moves the count; the mean is float64's within rounding
    batch = jnp.asarray(np.full((4, 3), [3.0, 1.0, 2.0]), jnp.float32)
    moved = normalizer.update(stats, batch)
    assert float(moved.count) == 2**25 + 4
    want = (2.0 * 2**25 + np.array([3.0, 1.0, 2.0]) * 4) / (2**25 + 4)
    np.testing.assert_allclose(np.asarray(moved.mean), want, rtol=0, atol=2 * np.spacing(np.float32(2.0)))
