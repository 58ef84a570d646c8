"""A run folder holds one run: training into another run's folder is refused (its checkpoints
would mix with the new run's, and resume/export would pick the newest step of either)."""

import pytest

from jaxrl import flashsac
from jaxrl.io import runfolder


def _fake_run(path):
    (path / "checkpoints" / "step_000000000100").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "metrics.jsonl").write_text("")
    (path / "eval_CartpoleBalanceHeavyPole.json").write_text("{}")  # its evaluation on another task
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


def test_a_run_on_a_vecenv_records_how_to_rebuild_it_and_evaluates_on_the_same_task(capsys):
    """A run given a `VecEnv` records the `envs.make` keywords of its task (`VecEnv.make_kwargs`:
    episode length, overrides): a rebuilt run (resume, eval, export) has the same task, where it
    used to rebuild the task's defaults (1000-step episodes here).  Its evaluation envs wrap the
    same task object.  A VecEnv built by hand has nothing to record, and says so."""
    import envs
    from envs.wrappers import VecEnv
    from jaxrl import ppo
    from jaxrl.train import run

    env = envs.make("CartpoleBalance", num_envs=4, episode_length=7, sim_dt=0.005)
    kwargs = run.recorded_env_kwargs(env)
    assert kwargs == {"episode_length": 7, "sim_dt": 0.005}
    _, evals, name = run.make_envs(env, 4, 0, kwargs)
    assert name == "CartpoleBalance" and evals.env is env.env and evals.num_envs == run.NUM_EVAL_ENVS
    assert evals.episode_length == 7 and evals.make_kwargs == env.make_kwargs
    record = {"algo": "ppo", "env": name, "steps": 64, "seed": 0, "num_evals": 1, "env_kwargs": kwargs,
              "resets": None, "seeds": 1, "config": runfolder.config_to_dict(ppo.PPOConfig.cpu(num_envs=4))}
    _, _, rebuilt, loop = run.rebuild(record, devices=1)
    assert rebuilt.episode_length == loop.eval_env.episode_length == 7 and rebuilt.env.sim_dt == 0.005
    capsys.readouterr()
    assert run.recorded_env_kwargs(VecEnv(env.env, 4, 7)) == {}
    assert "cannot rebuild it" in capsys.readouterr().err
    assert run.recorded_env_kwargs(VecEnv(env.env, 4, 7), quiet=True) == {}  # no run folder: no notice
    assert "cannot rebuild it" not in capsys.readouterr().err
    assert envs.make("CartpoleBalance", randomization_fn=lambda m, k: (m, None)).make_kwargs is None


def test_overwrite_keeps_the_lock_file_its_new_writer_holds(tmp_path):
    _fake_run(tmp_path)
    lock = tmp_path / "checkpoints" / ".writer.lock"
    lock.write_text("process 1")
    runfolder.claim(tmp_path, overwrite=True, keep=(lock,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "notes.txt"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [".writer.lock"]
