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


def test_runs_in_one_process_share_their_envs_and_the_tasks_trace():
    """`run.make_envs`: the same arguments give the same VecEnv; a run's evaluation envs (16, seed
    + 1) and another num_envs of the same task and kwargs wrap the SAME task object (its traced
    single-env reset / step are shared); other kwargs build another task."""
    from jaxrl.train import run

    kw = {"episode_length": 30}
    train, evals, name = run.make_envs("CartpoleBalance", 4, 0, kw)
    again, evals_again, _ = run.make_envs("CartpoleBalance", 4, 0, dict(kw))
    assert name == "CartpoleBalance" and again is train and evals_again is evals
    assert evals.num_envs == run.NUM_EVAL_ENVS and evals.env is train.env
    other, _, _ = run.make_envs("CartpoleBalance", 8, 3, kw)
    assert other.num_envs == 8 and other.env is train.env and other is not train
    longer, _, _ = run.make_envs("CartpoleBalance", 4, 0, {"episode_length": 40})
    assert longer.env is not train.env and longer.episode_length == 40
