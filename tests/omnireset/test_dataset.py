"""Reset-dataset generation, validation and storage."""

import dataclasses

import jax
import numpy as np
import pytest

import envs.omnireset as omr
from envs._runtime import few_steps_options, short_program_options
from envs.omnireset import dataset

# The session's PushToSlot dataset (conftest.push_dataset) is built once per worker: these tests
# and the omnireset notebook (which builds the same one) share a worker.
pytestmark = pytest.mark.xdist_group("push_dataset")


def test_acceptance_rates_are_in_unit_interval(push_dataset, push_types):
    assert set(push_dataset.acceptance) == {t.name for t in push_types}
    for name, rate in push_dataset.acceptance.items():
        assert 0.0 < rate <= 1.0, (name, rate)
    assert all(c == 32 for c in push_dataset.counts.values())


def test_small_builds_compile_the_quick_way_large_ones_as_xla_defaults():
    """The fixture's build (3 types × 64 candidates × 25 steps) compiles with `short_program_options`
    on CPU (jaxlib 0.12 has none: XLA's defaults); its re-validation (32 states × 25 steps per
    type, at most `FEW_STEPS` env steps) with `few_steps_options` (optimisation level 0 too); a
    build above `QUICK_VALIDATION_STEPS` per call with XLA's defaults."""
    from envs._runtime import FEW_STEPS, few_steps_options

    assert (short_program_options() is not None) == (jax.__version_info__ < (0, 12))
    assert dataset._validation_options(3 * 64, 25) == short_program_options()
    assert 32 * 25 <= FEW_STEPS and dataset._validation_options(32, 25) == few_steps_options(32 * 25)
    assert few_steps_options(32 * 25)["xla_backend_optimization_level"] == 0
    assert dataset._validation_options(3 * 2000, 25) is None


def test_kept_states_satisfy_limits_when_resimulated(push_task, push_dataset, push_types):
    ok = omr.revalidate(push_task, push_dataset, push_types, jax.random.PRNGKey(1))
    for name, flags in ok.items():
        assert flags.all(), f"{name}: {int((~flags).sum())} stored states fail re-validation"


def test_sampler_candidates_are_rejected_when_they_penetrate(push_task):
    # puck overlapping the pusher: rejected; the same two far apart: kept
    import jax.numpy as jnp

    sims = omr.SimState(
        qpos=jnp.array([[0.0, 0.0, 0.01, 0.0], [0.0, 0.0, 0.2, 0.0]]),
        qvel=jnp.zeros((2, 4)),
        ctrl=jnp.zeros((2, 2)),
    )
    lim = {
        k: jnp.full((2,), v)
        for k, v in {
            "max_qvel": 0.02,
            "max_penetration": 0.002,
            "max_drift": 0.02,
            "shake_amplitude": 0.0,
        }.items()
    }
    _, m = jax.jit(omr.simulate_and_check, static_argnums=(0, 4, 5), compiler_options=few_steps_options(50))(
        push_task, sims, lim, jax.random.PRNGKey(0), 25, 0
    )
    assert np.asarray(m["ok"]).tolist() == [False, True]


def test_save_load_round_trip(push_task, push_dataset, tmp_path):
    path = tmp_path / "push.npz"
    push_dataset.save(path)
    ds = omr.ResetDataset.load(path, push_task)
    assert ds.type_names == push_dataset.type_names
    assert ds.body_names == push_dataset.body_names
    assert ds.acceptance == pytest.approx(push_dataset.acceptance)
    for a, b in zip(
        ds.qpos + ds.qvel + ds.ctrl, push_dataset.qpos + push_dataset.qvel + push_dataset.ctrl
    ):
        np.testing.assert_array_equal(a, b)


def test_a_dataset_records_its_settle_time_and_loading_a_short_or_unknown_one_says_so(
        push_task, push_types, push_dataset, tmp_path, capsys):
    """The fixture's types settle 25 control steps at 50 Hz: 0.5 s, less than the paper's ~2 s,
    which loading the file reports; a file saved before settle times were recorded says that."""
    settle = push_types[0].limits.settle_steps * push_task.dt
    assert push_dataset.settle_seconds == pytest.approx(settle) and settle < omr.SETTLE_SECONDS
    path = tmp_path / "short.npz"
    push_dataset.save(path)
    capsys.readouterr()
    assert omr.ResetDataset.load(path).settle_seconds == push_dataset.settle_seconds
    assert f"candidates settled {settle:g} s before they were judged" in capsys.readouterr().err
    dataclasses.replace(push_dataset, settle_seconds=None).save(tmp_path / "unknown.npz")
    assert omr.ResetDataset.load(tmp_path / "unknown.npz").settle_seconds is None
    assert "saved without its settle time" in capsys.readouterr().err
    dataclasses.replace(push_dataset, settle_seconds=omr.SETTLE_SECONDS).save(tmp_path / "paper.npz")
    omr.ResetDataset.load(tmp_path / "paper.npz")
    assert "settle" not in capsys.readouterr().err


def test_loading_into_a_different_model_raises(push_dataset, tmp_path):
    path = tmp_path / "push.npz"
    push_dataset.save(path)
    peg = omr.make_task("PegInsertion")
    with pytest.raises(omr.DatasetMismatchError, match="nq=4.*nq=14"):
        omr.ResetDataset.load(path, peg)


def test_loading_with_other_body_names_raises(push_task, push_dataset, tmp_path):
    renamed = dataclasses.replace(
        push_dataset,
        body_names=tuple("block" if n == "puck" else n for n in push_dataset.body_names),
    )
    path = tmp_path / "renamed.npz"
    renamed.save(path)
    with pytest.raises(
        omr.DatasetMismatchError, match=r"only in dataset \['block'\].*only in model \['puck'\]"
    ):
        omr.ResetDataset.load(path, push_task)


def test_loading_another_version_raises(push_dataset, tmp_path):
    path = tmp_path / "old.npz"
    dataclasses.replace(push_dataset, version=0).save(path)
    with pytest.raises(omr.DatasetMismatchError, match="version 0"):
        omr.ResetDataset.load(path)


def test_build_and_save_returns_acceptance(tmp_path, push_types):
    """The CLI's path.  (32 per type, as the fixture: the same program, found in the compilation
    cache; only the key differs.)"""
    path = tmp_path / "cli.npz"
    rates = omr.build_and_save("PushToSlot", 32, path, seed=3, verbose=False,
                                settle_steps=push_types[0].limits.settle_steps)
    assert set(rates) == {"anywhere", "near_object", "near_goal"}
    assert omr.ResetDataset.load(path).counts == {"anywhere": 32, "near_object": 32, "near_goal": 32}


def test_default_types_settle_two_seconds_as_the_paper():
    """ALGORITHMS.md §3: every candidate is simulated ~2 s with zero action before it is judged."""
    for name in ("PushToSlot", "PegInsertion"):
        task = omr.make_task(name)
        for t in omr.default_reset_types(task):
            assert t.limits.settle_steps * task.dt == pytest.approx(2.0), (name, t.name)
        short = omr.default_reset_types(task, settle_steps=10)
        assert {t.limits.settle_steps for t in short} == {10}
        assert all(t.limits.shake_steps <= 5 for t in short)


def test_large_builds_run_in_rounds_of_at_most_max_candidates(push_task, push_types, monkeypatch):
    """A build asking for more candidates than ``max_candidates`` per round (10k per type would be
    20k per type in one simulation) simulates rounds of that many, until every type is full.  Here
    96 per type at 192 candidates a round: the fixture's round program (64 per type), several
    rounds."""
    traced = []
    real = dataset.simulate_and_check

    def spy(task, sims, *a, **k):
        traced.append(sims.qpos.shape[0])
        return real(task, sims, *a, **k)

    monkeypatch.setattr(dataset, "simulate_and_check", spy)
    ds = omr.build_dataset(push_task, push_types, per_type=96, key=jax.random.PRNGKey(5), max_candidates=192)
    assert traced == [192]  # one program, 3 types x 64 candidates
    assert ds.counts == {t.name: 96 for t in push_types}
    with pytest.raises(ValueError, match="max_candidates must be >= the number of reset types"):
        omr.build_dataset(push_task, push_types, per_type=4, key=jax.random.PRNGKey(0), max_candidates=2)
    with pytest.raises(ValueError, match="settle_steps must be >= 1"):
        omr.default_reset_types(push_task, settle_steps=0)
