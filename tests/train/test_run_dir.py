"""A run folder holds one run: training into another run's folder is refused (its checkpoints
would mix with the new run's, and resume/export would pick the newest step of either)."""

import pytest

from jaxrl import flashsac
from jaxrl.io import runfolder


def _fake_run(path):
    (path / "checkpoints" / "step_000000000100").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "metrics.jsonl").write_text("")
    (path / "notes.txt").write_text("mine")  # not a run file: never deleted


def test_training_into_an_existing_run_is_refused_with_the_ways_out(tmp_path):
    _fake_run(tmp_path)
    with pytest.raises(FileExistsError, match="jaxrl resume") as e:
        flashsac.train("CartpoleBalance", steps=10, out_dir=tmp_path)
    assert "overwrite" in str(e.value)
    assert (tmp_path / "checkpoints").exists()  # nothing touched


def test_overwrite_removes_only_the_previous_runs_files(tmp_path):
    _fake_run(tmp_path)
    runfolder.claim(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_folder_without_a_run_is_used_as_is(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    runfolder.claim(tmp_path, overwrite=False)  # no error
    runfolder.claim(tmp_path / "new", overwrite=False)
