"""The `jaxrl` command line: help, listing, and clear refusals."""

import pytest

from jaxrl import cli


def test_help_lists_every_command(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("list-envs", "train", "finetune", "resume", "export", "eval", "sim2sim", "resets"):
        assert cmd in out


def test_list_envs_marks_tasks_that_need_menagerie(capsys):
    rows = cli.list_envs(cli.ListEnvs(source="playground"))
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == 54
    assert by_name["T1JoystickFlatTerrain"]["needs_menagerie"] and not by_name["CartpoleBalance"]["needs_menagerie"]


def test_unknown_command_and_algorithm_are_refused():
    with pytest.raises(SystemExit, match="unknown command"):
        cli.main(["fly"])
    with pytest.raises(SystemExit, match="unknown algorithm 'dqn'\nusage: jaxrl train {flashsac,ppo"):
        cli.main(["train", "dqn"])
    with pytest.raises(SystemExit, match="--mix needs --resets"):
        cli.main(["train", "ppo", "--mix", "0.5,0.5", "--steps", "10"])
    with pytest.raises(SystemExit, match="unknown --preset 'lift'; choices: cpu, paper"):
        cli.main(["train", "ppo", "--preset", "lift"])
    with pytest.raises(SystemExit, match="--preset lift-smoke --env CartpoleBalance: SACConfig.lift has no "
                       "settings for task 'CartpoleBalance'; supported: G1Joystick"):
        cli.main(["train", "sac", "--preset", "lift-smoke", "--help"])  # the default env is no humanoid
    with pytest.raises(SystemExit, match="--init-parts needs --init-from"):
        cli.main(["train", "ppo", "--init-parts", "actor", "--steps", "10"])


def test_train_help_shows_config_defaults_from_the_preset(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "flashsac", "--help"])
    out = capsys.readouterr().out
    assert "--config.batch-size" in out and "--config.gamma" in out
    # the shared options carry their help text too, not only a default
    assert "env-step budget" in out and "delete a run already in --out" in out
    assert "--init-from" in out and "--verbose" in out


@pytest.mark.parametrize("algo, preset", [("flashsac", "paper"), ("ppo", "paper"), ("sac", "paper"),
                                          ("sac", "lift")])
def test_paper_preset_help_shows_the_paper_defaults(capsys, algo, preset):
    """`jaxrl train ppo --preset paper --help` used to die with a TypeError."""
    from jaxrl.train import registry

    with pytest.raises(SystemExit) as e:
        cli.main(["train", algo, "--preset", preset, "--env", "T1JoystickFlatTerrain", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    paper = registry.get(algo).preset(preset, "T1JoystickFlatTerrain")
    num_envs = out[out.index("--config.num-envs"):]
    assert f"(default: {paper.num_envs})" in num_envs[:200] and paper.num_envs != 16
    assert f"(default: {preset})" in out


@pytest.mark.parametrize("cmd", ["eval", "sim2sim"])
def test_eval_and_sim2sim_take_the_run_dir_positionally(tmp_path, cmd):
    with pytest.raises(SystemExit, match=f"jaxrl {cmd}: FileNotFoundError: .* is not a jaxrl run folder"):
        cli.main([cmd, str(tmp_path), "--episodes", "1"])


def test_bad_input_ends_with_its_message_and_other_errors_keep_their_traceback(monkeypatch):
    """A refusal raised on purpose inside `jaxrl` / `envs` (here `envs.make`'s unknown task name)
    is the command's whole output; ``JAXRL_TRACEBACK=1`` re-raises it as it was; an error raised
    anywhere else (a bug, an error inside a library) propagates with its traceback."""
    import numpy as np

    from jaxrl.train import run

    bad = ["train", "sac", "--env", "CartpoleBalanc", "--steps", "10"]
    with pytest.raises(SystemExit) as e:
        cli.main(bad)
    msg = str(e.value.code)
    assert msg.startswith("jaxrl train: ValueError: unknown env name 'CartpoleBalanc'. Did you mean: CartpoleBalance")
    assert "JAXRL_TRACEBACK=1" in msg and "Traceback" not in msg and e.value.__cause__ is None
    monkeypatch.setenv("JAXRL_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown env name") as raised:
        cli.main(bad)
    assert raised.traceback[-1].path.parent.name == "envs"  # where it was raised: envs/registry.py
    monkeypatch.delenv("JAXRL_TRACEBACK")
    monkeypatch.setattr(run, "train", lambda *a, **k: np.zeros(3).reshape(2))  # not our refusal
    with pytest.raises(ValueError, match="cannot reshape array"):
        cli.main(["train", "sac", "--steps", "10"])


def test_eval_help_documents_video_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--video" in out and "--grid" in out and "episodes shown side by side" in out


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    from jaxrl.train import run

    with pytest.raises(FileNotFoundError, match="not a jaxrl run folder"):
        run.resume(tmp_path)


def test_export_takes_the_run_dir_positionally(tmp_path):
    with pytest.raises(SystemExit, match="jaxrl export: FileNotFoundError: .* is not a jaxrl run folder"):
        cli.main(["export", str(tmp_path), "--format", "npz"])


def test_env_kwargs_are_read_as_json_values_or_text_and_malformed_ones_are_refused():
    got = cli.parse_env_kwargs(["push_config.enable=false", "noise_config.level=0.5", "impl=jax",
                                "episode_length=200", "vision_config.cam_res=[32,32]"])
    assert got == {"push_config.enable": False, "noise_config.level": 0.5, "impl": "jax",
                   "episode_length": 200, "vision_config.cam_res": [32, 32]}
    assert cli.parse_env_kwargs(["domain_randomization=False"]) == {"domain_randomization": False}  # not "False"
    for bad in ("push_config.enable", "=1"):
        with pytest.raises(SystemExit, match="expected KEY=VALUE"):
            cli.parse_env_kwargs([bad])


def test_train_refuses_bad_budgets_and_a_config_of_another_algorithm_before_anything_runs():
    from jaxrl.algos import flashsac, ppo, sac
    from jaxrl.train import run

    for steps in (0, -5):
        with pytest.raises(ValueError, match=f"steps must be >= 1, got {steps}"):
            run.train("flashsac", "CartpoleBalance", flashsac.FlashSACConfig.cpu(), steps=steps, progress=False)
    with pytest.raises(ValueError, match="num_evals must be >= 1, got -1"):
        run.train("sac", "CartpoleBalance", sac.SACConfig.cpu(), steps=100, num_evals=-1, progress=False)
    with pytest.raises(TypeError, match=r"flashsac needs a FlashSACConfig, got str 'cpu': e\.g\. "
                       r"FlashSACConfig\.cpu\(\), or a preset by name.*presets: cpu, paper"):
        run.train("flashsac", "CartpoleBalance", "cpu", steps=100, progress=False)
    with pytest.raises(TypeError, match="sac needs a SACConfig, got PPOConfig"):
        run.train("sac", "CartpoleBalance", ppo.PPOConfig.cpu(), steps=100, progress=False)
