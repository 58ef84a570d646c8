"""Checkpoints: exact round trip, corruption detected, retention, atomic writes (real files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxrl.io.checkpoint import CheckpointError, CheckpointManager, CheckpointMismatchError

META = {"algo": "sac", "env": "CartpoleBalance", "config": {"lr": 3e-4, "batch_size": 256}}


class Normaliser(NamedTuple):
    mean: jax.Array  # [D]
    count: jax.Array  # int


@struct.dataclass
class State:
    params: dict
    obs_normaliser: Normaliser
    key: jax.Array  # uint32 [2]
    dones: jax.Array  # bool [E]
    step: jax.Array  # int32


def make_state(seed: int, obs_dim: int = 17) -> State:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return State(
        params={
            "actor": {"kernel": jax.random.normal(k1, (obs_dim, 64)), "bias": jnp.zeros(64)},
            "layers": [jax.random.normal(k2, (64,)), jnp.arange(5, dtype=jnp.int32)],
        },
        obs_normaliser=Normaliser(jnp.full((obs_dim,), seed, jnp.float32), jnp.array(seed)),
        key=jax.random.PRNGKey(seed + 100),
        dones=jnp.array([True, False, seed % 2 == 0]),
        step=jnp.array(seed * 1000, jnp.int32),
    )


def assert_bit_exact(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def data_file(mgr: CheckpointManager, step: int) -> Path:
    """The largest array file orbax wrote for ``step``."""
    files = [p for p in (mgr._step_dir(step) / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture
def two_saved(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    states = {step: make_state(step) for step in (1, 2)}
    for step, state in states.items():
        assert mgr.save(step, state, META, force=True)
    return mgr, states


def test_round_trip_is_bit_exact_for_float_int_uint32_and_bool_leaves(tmp_path):
    mgr = CheckpointManager(tmp_path)
    state = make_state(3)
    assert mgr.save(7, state, META, eval_return=1.5, force=True)
    restored, metadata, step = mgr.restore(make_state(0))
    assert step == 7 and metadata == META
    assert_bit_exact(restored, state)
    assert restored.key.dtype == jnp.uint32
    assert mgr.steps() == [7] and mgr.latest_step() == 7 and mgr.best_step() == 7
    structure = json.loads((mgr._step_dir(7) / "structure.json").read_text())
    assert {"path": "obs_normaliser.mean", "shape": [17], "dtype": "float32"} in structure


def test_random_bytes_in_a_data_file_are_detected_and_the_previous_step_used(two_saved):
    mgr, states = two_saved
    path = data_file(mgr, 2)
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    start = len(raw) // 2
    raw[start : start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=rf"step 2: file {path.relative_to(mgr._step_dir(2))}"):
        restored, _, step = mgr.restore(make_state(0))
    assert step == 1
    assert_bit_exact(restored, states[1])


def test_truncated_file_is_detected_and_the_previous_step_used(two_saved):
    mgr, states = two_saved
    path = data_file(mgr, 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="step 2: .*truncated"):
        restored, _, step = mgr.restore(make_state(0))
    assert step == 1
    assert_bit_exact(restored, states[1])


def test_empty_step_folder_is_ignored(two_saved):
    mgr, _ = two_saved
    (mgr.directory / "step_000000000099").mkdir()
    assert mgr.latest_step() == 2
    _, _, step = mgr.restore(make_state(0))
    assert step == 2


def test_only_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(5, make_state(5), META, force=True)
    path = data_file(mgr, 5)
    path.write_bytes(b"")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="step 5: file"):
        mgr.restore(make_state(0))
    with pytest.raises(CheckpointError, match="no committed checkpoint"):
        CheckpointManager(tmp_path / "empty").restore(make_state(0))


def test_restoring_into_a_different_shape_names_the_path_and_both_shapes(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1, obs_dim=17), META, force=True)
    with pytest.raises(CheckpointMismatchError) as err:
        mgr.restore(make_state(0, obs_dim=24))
    msg = str(err.value)
    assert (
        "params.actor.kernel: checkpoint has float32 (17, 64), this run expects float32 (24, 64)"
        in msg
    )
    assert "same config" in msg and "env='CartpoleBalance'" in msg


def test_restoring_into_a_different_structure_names_the_missing_path(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"a": jnp.zeros(3), "b": jnp.zeros(2)}, META, force=True)
    with pytest.raises(CheckpointMismatchError, match="c: the checkpoint has no such entry"):
        mgr.restore({"a": jnp.zeros(3), "c": jnp.zeros(2)})


def test_metadata_mismatch_names_the_differing_fields(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1), META, force=True)
    mgr.check_metadata({"env": "CartpoleBalance", "config": {"lr": 3e-4}})
    with pytest.raises(CheckpointMismatchError) as err:
        mgr.check_metadata({"env": "CheetahRun", "config": {"lr": 3e-4, "batch_size": 512}})
    assert "'env': ('CartpoleBalance', 'CheetahRun')" in str(err.value)
    assert "'config.batch_size': (256, 512)" in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="env"):
        mgr.restore(make_state(0), expected_metadata={"env": "CheetahRun"})


def test_keeps_the_last_k_and_the_best_by_eval_return(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2, keep_best=True)
    state = {"w": jnp.zeros(4)}
    for step, ret in [(1, 5.0), (2, 9.0), (3, 1.0), (4, 2.0), (5, None)]:
        mgr.save(step, state, META, eval_return=ret, force=True)
    assert mgr.steps() == [2, 4, 5]
    assert mgr.best_step() == 2
    no_best = CheckpointManager(tmp_path / "b", keep_last=1, keep_best=False)
    for step in (1, 2, 3):
        no_best.save(step, state, META, eval_return=10.0 - step, force=True)
    assert no_best.steps() == [3]


def test_a_several_seed_run_keeps_and_finds_each_seeds_own_best(tmp_path):
    """K seeds in one run: `best_step(i)` is seed i's best evaluation, not the mean's, and
    retention keeps every seed's best (export --checkpoint best --seed i exports that one)."""
    mgr = CheckpointManager(tmp_path, keep_last=1, keep_best=True)
    state = {"w": jnp.zeros(4)}
    for step, rets in [(1, [1.0, 5.0]), (2, [3.0, 2.0]), (3, [2.0, float("nan")]), (4, [0.0, 0.0])]:
        mgr.save(step, state, META, eval_return=float(np.nanmean(rets)), force=True, eval_returns=rets)
    assert (mgr.best_step(), mgr.best_step(0), mgr.best_step(1)) == (1, 2, 1)
    assert mgr.steps() == [1, 2, 4]  # the last, the mean's best (1), seed 0's best (2)
    assert mgr._manifest(4)["eval_returns"] == [0.0, 0.0]


def test_save_interval_is_respected(tmp_path):
    now = [0.0]
    mgr = CheckpointManager(tmp_path, save_interval_s=600.0, clock=lambda: now[0])
    state = {"w": jnp.zeros(4)}
    assert not mgr.save(1, state, META)
    now[0] = 599.0
    assert not mgr.save(2, state, META)
    now[0] = 600.0
    assert mgr.save(3, state, META)
    now[0] = 900.0
    assert not mgr.save(4, state, META)
    assert mgr.save(5, state, META, force=True)
    now[0] = 1499.0
    assert not mgr.save(6, state, META)
    assert mgr.steps() == [3, 5]


def test_leftover_temporary_folder_from_a_crash_is_ignored_and_cleaned(tmp_path):
    """A crash's leftovers are ignored by readers and removed by the next writer only."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1), META, force=True)
    mgr.release()  # that run ended
    # A crash mid-write: a full copy under the temporary name, and a step folder without marker.
    crashed = mgr.directory / ".tmp-step_000000000002"
    import shutil

    shutil.copytree(mgr._step_dir(1), crashed)
    (crashed / "COMMITTED").unlink()
    half = mgr.directory / "step_000000000003"
    shutil.copytree(mgr._step_dir(1), half)
    (half / "COMMITTED").unlink()
    assert mgr.steps() == [1]
    _, _, step = mgr.restore(make_state(0))
    assert step == 1
    CheckpointManager(tmp_path).restore(make_state(0))  # a reader (eval, export) touches nothing
    assert crashed.exists()
    CheckpointManager(tmp_path).claim()  # the next writer (resume) cleans up
    assert not crashed.exists()
    assert sorted(p.name for p in mgr.directory.iterdir()) == [
        ".writer.lock",  # (the lock file stays; its flock goes with its process)
        "step_000000000001",
        "step_000000000003",
    ]


def test_resaving_a_step_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1), META, force=True)
    mgr.save(1, make_state(2), META, force=True)
    restored, _, _ = mgr.restore(make_state(0))
    assert_bit_exact(restored, make_state(2))
    assert sorted(p.name for p in mgr.directory.iterdir()) == [".writer.lock", "step_000000000001"]


def test_zero_size_leaves_round_trip(tmp_path):
    """MJX data has empty arrays (e.g. no contacts); orbax refuses them, we must not."""
    import jax.numpy as jnp

    from jaxrl.io.checkpoint import CheckpointManager

    state = {"contacts": jnp.zeros((4, 0, 3)), "x": jnp.arange(3.0)}
    m = CheckpointManager(tmp_path)
    assert m.save(1, state, {"algo": "t"}, force=True)
    got, _, step = m.restore(state)
    assert step == 1 and got["contacts"].shape == (4, 0, 3)
    assert (got["x"] == state["x"]).all()


def test_relative_run_dir_works(tmp_path, monkeypatch):
    """Notebooks and CLIs pass relative run folders; orbax itself only takes absolute paths."""
    import jax.numpy as jnp

    from jaxrl.io.checkpoint import CheckpointManager

    monkeypatch.chdir(tmp_path)
    m = CheckpointManager("runs/rel")
    assert m.save(3, {"x": jnp.ones(2)}, {"algo": "t"}, force=True)
    assert (tmp_path / "runs/rel/checkpoints").is_dir() and m.latest_step() == 3


def test_partial_restore_reads_only_the_selected_subtree(tmp_path):
    """`only=` restores e.g. the agent without reading the replay buffer: selected leaves equal the
    saved ones bit for bit, the others keep the (shape-only) target's leaves."""
    mgr = CheckpointManager(tmp_path)
    saved = make_state(3)
    mgr.save(7, saved, META, force=True)
    template = jax.eval_shape(lambda: make_state(0))
    state, _, step = mgr.restore(template, only=lambda path: path.startswith(".params"))
    assert step == 7
    assert_bit_exact(state.params, saved.params)
    assert isinstance(state.obs_normaliser.mean, jax.ShapeDtypeStruct)  # not read
    assert isinstance(state.step, jax.ShapeDtypeStruct)


def test_one_writer_per_folder_and_readers_never_touch_a_save_in_progress(tmp_path):
    """A live writer holds the folder's lock: a second writer is refused naming it, a reader
    (eval / export / init_from while the run trains) leaves the writer's unfinished folder
    alone; once the writer releases (or dies), the next one may write."""
    import os

    from jaxrl.io.checkpoint import writer_absent

    writer = CheckpointManager(tmp_path)
    writer.save(1, make_state(1), META, force=True)  # the first save claims the folder
    in_progress = writer.directory / ".tmp-step_000000000002"
    in_progress.mkdir()
    (in_progress / "part").write_text("being written")
    _, _, step = CheckpointManager(tmp_path).restore(make_state(0))
    assert step == 1 and (in_progress / "part").exists()
    second = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match=rf"process {os.getpid()} on .* is writing checkpoints into "
                       r".*: two runs writing one folder would mix their checkpoints"):
        second.save(3, make_state(3), META, force=True)
    with pytest.raises(CheckpointError, match="is writing checkpoints into"):
        writer_absent(tmp_path)  # a reader asking whether a run writes here
    assert second.steps() == [1] and in_progress.exists()
    writer.release()
    writer_absent(tmp_path)
    assert second.save(3, make_state(3), META, force=True) and second.steps() == [1, 3]
    assert not in_progress.exists()  # the new writer cleaned what the old one left


def test_a_resave_cut_between_its_two_renames_keeps_the_old_copy(tmp_path):
    """Re-saving step 1 moves the old copy aside, then renames the new one in: a kill between
    the two leaves only temporary names, and the next writer restores the old copy."""
    import shutil

    mgr = CheckpointManager(tmp_path)
    mgr.save(1, make_state(1), META, force=True)
    mgr.release()
    old = mgr.directory / ".tmp-old-step_000000000001"
    os_new = mgr.directory / ".tmp-step_000000000001"
    shutil.copytree(mgr._step_dir(1), os_new)
    (os_new / "COMMITTED").unlink()  # the new copy, not yet committed
    mgr._step_dir(1).rename(old)
    assert mgr.steps() == []
    nxt = CheckpointManager(tmp_path)
    nxt.claim()
    assert nxt.steps() == [1] and not old.exists() and not os_new.exists()
    restored, _, step = nxt.restore(make_state(0))
    assert step == 1
    assert_bit_exact(restored, make_state(1))


def test_a_checkpoint_that_verifies_but_cannot_be_read_gives_way_to_the_previous_one(two_saved):
    """Step 2's data file is cut in half and its manifest and marker re-hashed, so it passes
    verification; orbax then fails to read it, and restore falls back to step 1 with a warning
    (before, the resume failed outright).  A step named explicitly still raises."""
    import hashlib

    mgr, states = two_saved
    folder = mgr._step_dir(2)
    path = data_file(mgr, 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    manifest = json.loads((folder / "manifest.json").read_text())
    rel = str(path.relative_to(folder))
    manifest["files"][rel] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "COMMITTED").write_text(hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest() + "\n")
    assert mgr.verify(2) is None
    with pytest.warns(RuntimeWarning, match="skipping checkpoint in .*orbax could not read checkpoint step 2"):
        restored, _, step = mgr.restore(make_state(0))
    assert step == 1
    assert_bit_exact(restored, states[1])
    with pytest.raises(CheckpointError, match="orbax could not read checkpoint step 2"):
        mgr.restore(make_state(0), step=2)


def test_a_disk_read_error_is_a_failed_verification_not_a_crash(two_saved, monkeypatch):
    from jaxrl.io import checkpoint

    mgr, _ = two_saved
    bad = data_file(mgr, 2)
    real = checkpoint.file_sha256

    def sha256(path):
        if Path(path) == bad:
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(checkpoint, "file_sha256", sha256)
    assert "step 2: unreadable" in mgr.verify(2) and "Input/output error" in mgr.verify(2)
    with pytest.warns(RuntimeWarning, match="step 2: unreadable"):
        _, _, step = mgr.restore(make_state(0))
    assert step == 1


def test_retention_does_not_count_a_corrupt_newest_step(tmp_path):
    """keep_last=1, step 5 corrupt, the run resumed from step 1: its next checkpoint (step 2)
    is kept; before, step 5 held the one slot and each new checkpoint was deleted as it was made."""
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 5):
        mgr.save(step, make_state(step), META, force=True)
    mgr.release()
    data_file(mgr, 5).write_bytes(b"")
    resumed = CheckpointManager(tmp_path, keep_last=1, keep_best=False)
    with pytest.warns(RuntimeWarning, match="step 5: file"):
        _, _, step = resumed.restore(make_state(0))
    assert step == 1
    resumed.save(2, make_state(2), META, force=True)
    assert resumed.steps() == [2, 5]  # the newest good one, and the corrupt one left as it was
    resumed.save(3, make_state(3), META, force=True)
    assert resumed.steps() == [3, 5]


def test_a_corrupt_best_step_is_neither_the_best_nor_kept_as_it(tmp_path):
    """Step 1 (return 5) good, step 2 (return 9) corrupt, the run resumed: its next save (step 3,
    return 0) with keep_last=1 keeps step 1 as the best, not the corrupt step 2 in its place
    (before, step 1 was deleted and `best` pointed at a step that cannot be read).  Re-saving
    step 2 makes it a candidate again."""
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step, ret in ((1, 5.0), (2, 9.0)):
        mgr.save(step, make_state(step), META, eval_return=ret, force=True)
    mgr.release()
    data_file(mgr, 2).write_bytes(b"")
    resumed = CheckpointManager(tmp_path, keep_last=1)
    with pytest.warns(RuntimeWarning, match="step 2: file"):
        _, _, step = resumed.restore(make_state(0))
    assert step == 1 and resumed.best_step() == 1
    resumed.save(3, make_state(3), META, eval_return=0.0, force=True)
    assert resumed.steps() == [1, 2, 3] and resumed.best_step() == 1
    restored, _, _ = resumed.restore(make_state(0), step=resumed.best_step())
    assert_bit_exact(restored, make_state(1))
    # a reader that has not met the damage yet (export --checkpoint best) verifies the best first
    resumed.release()
    reader = CheckpointManager(tmp_path)
    with pytest.warns(RuntimeWarning, match="corrupt best checkpoint.*step 2: file"):
        assert reader.best_verified_step() == 1
    resumed.save(2, make_state(2), META, eval_return=9.0, force=True)
    assert resumed.best_step() == 2
