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


def test_help_of_train_and_resets_exits_0_and_train_lists_only_trainers(capsys):
    cli.main(["train", "--help"])  # returns: exit status 0
    out = capsys.readouterr().out
    assert "usage: jaxrl train {flashsac,ppo,sac}" in out and "finetune" not in out.split("\n")[0]
    cli.main(["resets", "-h"])
    assert "jaxrl resets build" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"usage: jaxrl train \{flashsac,ppo,sac\}") as e:
        cli.main(["train"])  # no algorithm: a usage error
    assert e.value.code != 0


@pytest.mark.parametrize("args", [["--episodes", "1", "RUN"], ["--run-dir=RUN", "--episodes", "1"],
                                  ["--run-dir", "RUN"]])
def test_run_dir_may_stand_anywhere_and_the_old_run_dir_option_still_works(tmp_path, args):
    args = [str(tmp_path) if a == "RUN" else a.replace("RUN", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit, match=f"jaxrl eval: FileNotFoundError: {tmp_path} is not a jaxrl run folder"):
        cli.main(["eval", *args])
    with pytest.raises(SystemExit) as e:  # no value: a usage error, not the current folder
        cli.main(["eval", "--run-dir"])
    assert e.value.code == 2


def _fake_sac_run(path, **config):
    """A run record as `jaxrl train sac` writes it (no checkpoint: the CLI reads the record only)."""
    import dataclasses
    import json

    from jaxrl.algos import sac

    cfg = sac.SACConfig.cpu().replace(**config)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"algo": "sac", "env": "CartpoleBalance", "steps": 100,
                                                  "seed": 0, "config": dataclasses.asdict(cfg)}))
    return path


@pytest.mark.parametrize("where", ["first", "last", "option=", "paper-only override"])
def test_finetune_takes_the_pretrained_networks_wherever_run_dir_stands(tmp_path, monkeypatch, capsys, where):
    """`--run-dir=PATH` and a RUN_DIR after the options used to lose the pretraining run's networks
    (the config was built around SAC's defaults and the loaded weights refused or misread)."""
    from jaxrl.train import run

    src = str(_fake_sac_run(tmp_path / "pre", actor_hidden=(24, 12), activation="swish"))
    opts = ["--env", "CartpoleBalanceHeavyPole", "--real-steps", "2000", "--out", str(tmp_path / "ft")]
    args = {"first": [src, *opts], "last": [*opts, src], "option=": [f"--run-dir={src}", *opts],
            # valid under paper (horizon_max 20), not under the cpu preset the first reading assumes
            "paper-only override": [*opts, "--preset", "paper", "--config.horizon-min", "15", src]}[where]
    seen = {}
    monkeypatch.setattr(run, "finetune", lambda run_dir, env, **kw: seen.update(run_dir=run_dir, env=env, **kw))
    with pytest.raises(FileNotFoundError):  # (the stand-in wrote no summary.json)
        cli.main(["finetune", *args])
    assert seen["run_dir"] == src and seen["env"] == "CartpoleBalanceHeavyPole"
    assert seen["config"].sac.actor_hidden == (24, 12) and seen["config"].sac.activation == "swish"
    if where == "paper-only override":
        assert seen["config"].horizon_min == 15 and seen["config"].horizon_max == 20
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", *args, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "--config.sac.actor-hidden [INT [INT ...]] policy MLP widths (default: 24 12)" in out


def test_usage_mistakes_name_the_option_and_a_corrupt_run_record_is_refused_clearly(tmp_path):
    with pytest.raises(SystemExit, match="--mix 'a,b': expected reset-type probabilities"):
        cli.main(["train", "ppo", "--resets", str(tmp_path / "r.npz"), "--mix", "a,b"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{")
    with pytest.raises(SystemExit, match=r"jaxrl eval: ValueError: .*config.json is not valid JSON"):
        cli.main(["eval", str(run)])
    (run / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"jaxrl resume: ValueError: .*config.json lacks algo, env, steps, seed, "
                       "config: not a run record"):
        cli.main(["resume", str(run)])


def test_sim2sim_refuses_a_policy_file_beside_the_choice_of_what_to_export(tmp_path):
    from jaxrl.io import sim2sim

    with pytest.raises(ValueError, match=r"runs that file as it is, so which='best' would be ignored"):
        sim2sim.sim2sim(tmp_path, policy_file=tmp_path / "p.onnx", which="best")
    with pytest.raises(SystemExit, match=r"so seed_index=1 would be ignored"):
        cli.main(["sim2sim", str(tmp_path), "--policy", "p.onnx", "--seed-index", "1"])


def test_init_from_a_run_of_another_algorithm_is_refused_naming_both(tmp_path):
    from jaxrl.algos import flashsac
    from jaxrl.train import run

    src = _fake_sac_run(tmp_path / "sac_run")
    with pytest.raises(ValueError, match=r"is a 'sac' run and this one trains 'flashsac'"):
        run.train("flashsac", "CartpoleBalance", flashsac.FlashSACConfig.cpu(), steps=100, progress=False,
                  init_from=src)
    with pytest.raises(SystemExit, match=r"jaxrl train: ValueError: --init-from .* is a 'sac' run and this one "
                       "trains 'ppo'"):
        cli.main(["train", "ppo", "--steps", "100", "--init-from", str(src), "--no-progress"])
    # a finetuning run's agent is a large-batch SAC agent: each starts from the other
    import json

    tuned = tmp_path / "ft_run"
    tuned.mkdir()
    (tuned / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()),
                                                   "algo": "finetune"}))
    run.check_init_source("sac", tuned)
    run.check_init_source("finetune", src)
    with pytest.raises(ValueError, match="is a 'finetune' run and this one trains 'flashsac'"):
        run.check_init_source("flashsac", tuned)
