"""PegInsertion's four reset types (slow: the MJX compile of the peg model takes minutes on CPU)."""

import jax
import numpy as np
import pytest

import envs.omnireset as omr


@pytest.mark.slow
def test_peg_reset_types_build_and_revalidate():
    task = omr.make_task("PegInsertion")
    types = omr.default_reset_types(task, settle_steps=40)
    ds = omr.build_dataset(task, types, per_type=8, key=jax.random.PRNGKey(0), max_rounds=3)
    assert [t.name for t in types] == ["anywhere", "grasp_ready", "grasped", "near_goal"]
    for name, rate in ds.acceptance.items():
        assert 0.0 < rate <= 1.0, (name, rate)
    ok = omr.revalidate(task, ds, types, jax.random.PRNGKey(1))
    for name, flags in ok.items():
        assert flags.mean() >= 0.9, (name, flags)
    # near-goal states are partially inserted: peg bottom below the fixture top
    peg_z = ds.states("near_goal").qpos[:, 9]
    assert np.all(peg_z - 0.04 < 0.04)
