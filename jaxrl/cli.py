"""`jaxrl` command line.  Every option's default comes from the config dataclasses (tyro).

    jaxrl list-envs [--source playground]
    jaxrl train flashsac --env CartpoleBalance --steps 60000 --out runs/cp [--preset cpu|paper] [--config.batch-size 512 ...]
    jaxrl train flashsac --env CartpoleSwingup --init-from runs/cp [--init-parts actor,critic] --out runs/swingup
    jaxrl train ppo --env CartpoleBalance --steps 200000 --out runs/ppo [--resets FILE --mix 0.25,0.25,0.25,0.25]
    jaxrl train flashsac --env CartpoleBalance --seeds 4 --devices 2 --out runs/cp4    # 4 seeds, 2 devices
    jaxrl train sac --env T1JoystickFlatTerrain --preset lift --env-kwargs push_config.enable=true domain_randomization=true
    jaxrl finetune RUN_DIR --env CartpoleBalanceHeavyPole --real-steps 5000 --out runs/ft [--preset cpu|paper] [--config.starts 128 ...]
    jaxrl resume RUN_DIR [--devices N]
    jaxrl export RUN_DIR --format onnx|npz [--out FILE] [--seed I]   # --seed-index I, as eval/sim2sim
    jaxrl eval RUN_DIR --episodes 10 [--video out.mp4 --grid 4]
    jaxrl sim2sim RUN_DIR --episodes 3
    jaxrl resets build --task NAME --per-type N --out FILE
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Literal

COMMANDS = {
    "list-envs": "list tasks with observation/action sizes and whether they need Menagerie",
    "train": "train an algorithm: `jaxrl train ALGO --help` (algorithms: jaxrl.train.registry)",
    "finetune": "world-model finetuning of a `sac` run in a changed env (few real steps, deterministic there)",
    "resume": "continue a run from its newest verified checkpoint",
    "export": "export a run's deterministic policy (ONNX or npz) plus a JSON card",
    "eval": "evaluate a run's deterministic policy; --video renders rollouts (MuJoCo renderer)",
    "sim2sim": "run the exported policy in MuJoCo C (not MJX) and report return next to MJX's",
    "resets": "OmniReset datasets: `jaxrl resets build --help`",
}


def _usage() -> str:
    lines = ["usage: jaxrl COMMAND [options]", "", "commands:"]
    lines += [f"  {k:<10} {v}" for k, v in COMMANDS.items()]
    lines += ["", "Run `jaxrl COMMAND --help` for the options of one command."]
    return "\n".join(lines)


# --------------------------------------------------------------------- list-envs
@dataclasses.dataclass(frozen=True)
class ListEnvs:
    """List tasks.  Sizes need building each task (slow for many), so ask for them with --sizes."""

    source: Literal["all", "jaxrl", "playground", "brax"] = "all"
    sizes: bool = False


def list_envs(args: ListEnvs) -> list[dict]:
    import envs
    from envs import menagerie

    names = envs.list_envs(None if args.source == "all" else args.source)
    rows = []
    for name in names:
        src = envs.source_of(name)
        row = {"name": name, "source": src, "needs_menagerie": bool(menagerie.robot_dirs(name)) if src == "playground" else False}
        if args.sizes:
            try:
                e = envs.make(name, num_envs=1)
                row.update(obs=e.obs_spec["state"].shape, privileged=e.obs_spec["privileged_state"].shape,
                           action=e.action_size)
            except Exception as err:  # noqa: BLE001 - report and go on
                row["error"] = str(err).split("\n")[0][:100]
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


# ------------------------------------------------------------------------- train
def _help(text: str):
    """Field help that survives tyro's view of the dataclass built at run time in `train_cmd`
    (inline comments of inherited fields are lost there)."""
    import tyro

    return tyro.conf.arg(help=text)


def _run_dir(text: str):
    """The type of a run-folder argument: positional anywhere on the command line
    (`jaxrl eval --episodes 3 runs/x`), shown as RUN_DIR."""
    import tyro

    return Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR", help=text)]


def _also(*names: str):
    """Other spellings of an option (tyro aliases)."""
    import tyro

    return tyro.conf.arg(aliases=names)


ENV_KWARGS_HELP = ("env settings KEY=VALUE ...: Playground config keys, dotted (push_config.enable=false "
                   "noise_config.level=0), episode_length=N, impl=jax|warp, domain_randomization=true, reset_pool=R "
                   "(episodes restart from R start states per env drawn at the first reset; 1: from each env's first state, as Brax); VALUE "
                   "is read as JSON (true, 0.5, [1,2]; True/False too) or else as text. Recorded in the run: resume, eval, "
                   "export and sim2sim rebuild the same env")


def parse_env_kwargs(items: tuple[str, ...] | list[str]) -> dict:
    """``--env-kwargs KEY=VALUE ...`` as the ``env_kwargs`` dict of `jaxrl.train.run.train`."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--env-kwargs {item!r}: expected KEY=VALUE, e.g. push_config.enable=false")
        if text.lower() in ("true", "false"):  # True / False as Python spells them, too
            value = text.lower() == "true"
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text  # a plain word: impl=jax
        out[key.strip()] = value
    return out


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Options shared by every trainer."""

    env: Annotated[str, _help("task name (see `jaxrl list-envs`)")] = "CartpoleBalance"
    steps: Annotated[int, _help("env-step budget (warm-up included)")] = 100_000
    seed: Annotated[int, _help("seed of envs, networks and exploration: same seed, same run")] = 0
    out: Annotated[str, _help("run folder: config.json, metrics.jsonl, tensorboard/, checkpoints/, summary.json")] = "runs/latest"
    overwrite: Annotated[bool, _help("delete a run already in --out first (else refuse: use `jaxrl resume`)")] = False
    preset: Annotated[str, _help("config preset the --config.* overrides apply to (choices: see usage)")] = "cpu"
    num_evals: Annotated[int, _help("evaluations over the run, each a metrics row and eval-return point (off-policy runs add one after their warm-up)")] = 10
    checkpoint_every_s: Annotated[float, _help("seconds between checkpoints (one at the end always)")] = 600.0
    init_from: Annotated[str | None, _help("start from another run's agent (its newest verified checkpoint)")] = None
    init_parts: Annotated[str | None, _help("with --init-from: comma-separated agent parts, e.g. actor,critic; None: all of them")] = None
    progress: Annotated[bool, _help("live progress bar (env steps, steps/s, eval return, ETA)")] = True
    verbose: Annotated[bool, _help("show the simulators' raw console messages (warp module loads, solver-limit prints)")] = False
    wandb: Annotated[bool, _help("also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works)")] = False
    devices: Annotated[int | None, _help("data parallel over N devices (default on GPU/TPU: every visible device that divides num_envs and the batch; on CPU: 1); several hosts: all of their devices")] = None
    seeds: Annotated[int, _help("train K seeds (--seed, --seed+1, ...) as one vmapped program; rows hold mean, 95% interval and each seed")] = 1
    env_kwargs: Annotated[tuple[str, ...], _help(ENV_KWARGS_HELP)] = ()


def _chosen_preset(rest: list[str], defaults: type | None = None) -> tuple[str, str]:
    """(--preset, --env) as given on the command line (``defaults``' otherwise, `TrainArgs`), read
    before tyro parses so that --help shows the chosen preset's defaults."""
    defaults = defaults or TrainArgs
    found = {"preset": defaults.preset, "env": defaults.env}
    for i, arg in enumerate(rest):
        for name in found:
            if arg == f"--{name}" and i + 1 < len(rest):
                found[name] = rest[i + 1]
            elif arg.startswith(f"--{name}="):
                found[name] = arg.split("=", 1)[1]
    return found["preset"], found["env"]


def train_cmd(argv: list[str]) -> None:
    import tyro

    from jaxrl.train import registry

    trainers = [n for n in registry.ALGORITHMS if n != "finetune"]  # (finetune: `jaxrl finetune`)
    usage = (f"usage: jaxrl train {{{','.join(trainers)}}} [options]   "
             f"(jaxrl train {trainers[0]} --help)")
    if argv and argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + "\n".join(f"  {n:<10} {registry.get(n).summary}" for n in trainers))
        return
    if not argv or argv[0] not in registry.ALGORITHMS:
        unknown = f"unknown algorithm {argv[0]!r}\n" if argv and not argv[0].startswith("-") else ""
        raise SystemExit(f"{unknown}{usage}")
    algo, rest = registry.get(argv[0]), argv[1:]
    if algo.name == "finetune":
        raise SystemExit("finetuning starts from a pretrained run: `jaxrl finetune RUN_DIR --env TARGET "
                         "--real-steps N --out DIR` (see `jaxrl finetune --help`)")
    preset, env = _chosen_preset(rest)
    if preset not in algo.presets:
        raise SystemExit(f"jaxrl train {algo.name}: unknown --preset {preset!r}; "
                         f"choices: {', '.join(algo.presets)}")
    try:
        default_cfg = algo.preset(preset, env)
    except ValueError as e:  # a task-specific preset for another task (lift on CartpoleBalance)
        raise SystemExit(f"jaxrl train {algo.name} --preset {preset} --env {env}: {e}") from None

    # Built at run time so that the config defaults shown by --help are the chosen preset's.
    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("preset", Annotated[Literal[algo.presets], _help("config preset the --config.* overrides apply to")],
             dataclasses.field(default=preset)),
            ("config", algo.config, dataclasses.field(default=default_cfg)),
            ("resets", Annotated[str | None, _help("(ppo) OmniReset reset dataset file (`jaxrl resets build`)")],
             dataclasses.field(default=None)),
            ("mix", Annotated[str | None, _help("(ppo) reset-type probabilities, e.g. 0.25,0.25,0.25,0.25")],
             dataclasses.field(default=None)),
        ],
        bases=(TrainArgs,),
        frozen=True,
    )
    a = tyro.cli(Args, args=rest, prog=f"jaxrl train {algo.name}",
                 description=f"{algo.summary}.  Presets: {', '.join(algo.presets)}.")
    if a.verbose:
        import envs

        envs.set_verbose(True)
    resets = None
    if a.resets:
        if algo.name != "ppo":
            raise SystemExit("--resets is for ppo (OmniReset)")
        try:
            probs = [float(p) for p in a.mix.split(",")] if a.mix else None
        except ValueError:
            raise SystemExit(f"--mix {a.mix!r}: expected reset-type probabilities separated by commas, "
                             "e.g. 0.25,0.25,0.25,0.25") from None
        resets = {"path": str(Path(a.resets).absolute()), "probs": probs}
    elif a.mix:
        raise SystemExit("--mix needs --resets FILE")
    if a.init_parts and not a.init_from:
        raise SystemExit("--init-parts needs --init-from RUN_DIR")
    from jaxrl.train import run

    run.train(algo.name, a.env, a.config, steps=a.steps, seed=a.seed, out_dir=a.out, resets=resets,
              num_evals=a.num_evals, progress=a.progress, checkpoint_every_s=a.checkpoint_every_s,
              overwrite=a.overwrite, wandb=a.wandb, init_from=a.init_from,
              init_parts=a.init_parts.split(",") if a.init_parts else None, devices=a.devices,
              seeds=a.seeds, env_kwargs=parse_env_kwargs(a.env_kwargs))
    import jax

    if jax.process_index() == 0:  # several hosts: process 0 writes the run folder
        print(json.dumps(json.loads((Path(a.out) / "summary.json").read_text()), indent=1))


@dataclasses.dataclass(frozen=True)
class FinetuneArgs:
    """World-model finetuning of a pretrained `sac` run (RUN_DIR) on a target task."""

    run_dir: _run_dir("the pretraining run (`jaxrl train sac ...`)")
    env: Annotated[str, _help("target task, e.g. CartpoleBalanceHeavyPole (see `jaxrl list-envs --source jaxrl`)")] = "CartpoleBalanceHeavyPole"
    real_steps: Annotated[int, _help("budget of REAL env steps (prefill included); the target env runs only tanh(μ)")] = 5_000
    out: Annotated[str, _help("run folder of the finetuning run")] = "runs/finetune"
    preset: Annotated[Literal["cpu", "paper"], _help("FinetuneConfig preset the --config.* overrides apply to")] = "cpu"
    seed: Annotated[int, _help("seed of the target envs, the world model and the imagined rollouts")] = 0
    num_evals: Annotated[int, _help("evaluations of the deterministic policy in a copy of the target env (not counted as real steps)")] = 10
    overwrite: Annotated[bool, _help("delete a run already in --out first (else refuse: use `jaxrl resume`)")] = False
    progress: Annotated[bool, _help("live progress bar (real env steps, eval return, ETA)")] = True
    checkpoint_every_s: Annotated[float, _help("seconds between checkpoints (one at the end always)")] = 600.0
    verbose: Annotated[bool, _help("show the simulators' raw console messages (warp module loads, solver-limit prints)")] = False
    wandb: Annotated[bool, _help("also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works)")] = False
    env_kwargs: Annotated[tuple[str, ...], _help("target env settings KEY=VALUE ..., over the pretraining config's "
                                                  "env changes (as `jaxrl train --env-kwargs`)")] = ()


def finetune_cmd(rest: list[str]) -> None:
    import tyro

    from jaxrl.algos import sac
    from jaxrl.io import runfolder
    from jaxrl.train import run
    from jaxrl.train.finetune import FinetuneConfig

    rest = _run_dir_compat(rest)

    def parser(default):
        return dataclasses.make_dataclass("Args", [("config", FinetuneConfig, dataclasses.field(default=default))],
                                          bases=(FinetuneArgs,), frozen=True)

    # The config's defaults are the pretraining run's networks (and, for `paper`, the target
    # task's): read RUN_DIR, --env and --preset first, so that --help shows those defaults and the
    # parsed config carries them (the same rule as `run.finetune` without a config).
    first = _peek(parser(FinetuneConfig.cpu()), rest)
    if first is not None:
        preset, env, run_dir = first.preset, first.env, first.run_dir
    else:  # e.g. an override valid under the chosen preset only (--preset paper --config.horizon-min 15)
        preset, env = _chosen_preset(rest, FinetuneArgs)
        run_dir = next((a for i, a in enumerate(rest) if not a.startswith("-") and runfolder.is_run(a)
                        and (i == 0 or rest[i - 1] != "--out")), None)
    pretrained = None
    if run_dir is not None and runfolder.is_run(run_dir):
        record = runfolder.read_record(run_dir)
        if record.get("algo") == "sac":
            pretrained = runfolder.config_from_dict(sac.SACConfig, record["config"])
    try:
        default = FinetuneConfig.cpu(pretrained) if preset == "cpu" else FinetuneConfig.paper(env, pretrained)
    except ValueError as e:  # e.g. the paper preset of a task it has no settings for
        raise SystemExit(f"jaxrl finetune --preset {preset} --env {env}: {e}") from None
    a = tyro.cli(parser(default), args=rest, prog="jaxrl finetune",
                 description=FinetuneArgs.__doc__.strip() + "  Presets: cpu, paper.")
    if a.verbose:
        import envs

        envs.set_verbose(True)
    run.finetune(a.run_dir, a.env, real_steps=a.real_steps, config=a.config, out_dir=a.out, seed=a.seed,
                 num_evals=a.num_evals, overwrite=a.overwrite, progress=a.progress, wandb=a.wandb,
                 checkpoint_every_s=a.checkpoint_every_s, env_kwargs=parse_env_kwargs(a.env_kwargs))
    print(json.dumps(json.loads((Path(a.out) / "summary.json").read_text()), indent=1))


def _peek(Args, rest: list[str]):
    """``rest`` parsed as ``Args`` with its defaults, quietly (help requests left out), or None
    where it does not parse (the real parse after it reports why)."""
    import contextlib
    import io

    import tyro

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            return tyro.cli(Args, args=[x for x in rest if x not in ("-h", "--help")])
    except SystemExit:
        return None


@dataclasses.dataclass(frozen=True)
class ResumeArgs:
    """Continue a run from its newest verified checkpoint (from step 0 if it has none yet)."""

    run_dir: _run_dir("the run folder to continue")
    devices: int | None = None  # data parallel over N devices; need not be the count it trained on
    progress: bool = True  # live progress bar
    verbose: bool = False  # show the simulators' raw console messages


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Export the deterministic policy of a run for deployment."""

    run_dir: _run_dir("the run folder whose policy to export")
    format: Literal["onnx", "npz"] | None = None  # default: --out's suffix, else onnx
    out: str | None = None  # default: RUN_DIR/policy.<format>
    checkpoint: Literal["latest", "best"] = "latest"
    # a run of K seeds: which one to export (0..K-1); --seed-index as `eval` and `sim2sim` spell it
    seed: Annotated[int | None, _also("--seed-index")] = None


def export_cmd(a: ExportArgs) -> Path:
    from jaxrl.io import lifecycle

    return lifecycle.export_run(a.run_dir, fmt=a.format, out=a.out, which=a.checkpoint, seed_index=a.seed)


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    """Evaluate a run's deterministic policy on fresh episodes; optionally render a video."""

    run_dir: _run_dir("the run folder whose policy to evaluate")
    episodes: int = 10  # episodes, run in parallel (one env each)
    video: str | None = None  # write a video of the first --grid episodes here (.mp4 or .gif)
    grid: int = 1  # episodes shown side by side in the video
    height: int = 240  # video cell height in pixels
    width: int = 320  # video cell width in pixels
    camera: str = "auto"  # camera name or id; auto: the task's first camera, else -1 (free camera)
    checkpoint: Literal["latest", "best"] = "latest"
    seed: int = 0  # seed of the evaluation episodes' initial states
    seed_index: int | None = None  # a run of K seeds: whose policy (0..K-1)
    env: str | None = None  # evaluate on another task of the same layout (a finetuning target); default the run's
    start: Literal["nominal", "anywhere"] | None = None  # initial states; default the run's own (OmniReset: anywhere)


@dataclasses.dataclass(frozen=True)
class Sim2SimArgs:
    """Run the exported policy in MuJoCo C (not MJX) and report its return next to MJX's."""

    run_dir: _run_dir("the run folder whose policy to run")
    episodes: int = 3  # episodes on each simulator, same initial states
    policy: str | None = None  # policy file (.onnx/.npz) run as it is; default RUN_DIR/policy.onnx, exported when missing or stale
    checkpoint: Literal["latest", "best"] = "latest"  # which checkpoint RUN_DIR/policy.onnx must hold (re-exported otherwise); not with --policy
    seed: int = 0  # seed of the initial states
    max_steps: int | None = None  # cap episode length (default: the task's)
    seed_index: int | None = None  # a run of K seeds: whose policy (0..K-1); not with --policy
    max_gap: float | None = None  # fail (exit status 1) when |relative gap| exceeds this, e.g. 0.05


def _run_dir_compat(rest: list[str]) -> list[str]:
    """``--run-dir PATH`` (or ``--run-dir=PATH``), as earlier versions spelt it, -> the positional
    RUN_DIR."""
    out, found = [], []
    it = iter(rest)
    for arg in it:
        if arg == "--run-dir":
            value = next(it, None)
            if value is None:  # (no value: left for the parser to refuse)
                out.append(arg)
            else:
                found.append(value)
        elif arg.startswith("--run-dir="):
            found.append(arg.split("=", 1)[1])
        else:
            out.append(arg)
    return found + out


def _camera(text: str) -> str | int | None:
    if text == "auto":
        return None
    return int(text) if text.lstrip("-").isdigit() else text


@dataclasses.dataclass(frozen=True)
class ResetsBuildArgs:
    """Build and validate an OmniReset reset-state dataset."""

    task: str
    per_type: int = 10_000  # validated states kept per reset type (the paper: 10k each)
    out: str = "resets.npz"
    seed: int = 0
    settle_steps: int | None = None  # control steps each candidate is held still; default ~2 s


def _refusal(err: BaseException) -> bool:
    """Whether ``err`` is one of the refusals our own code raises on purpose for bad input: an
    error of those kinds whose innermost frame lies in `jaxrl` or `envs`.  Its message already
    says what is wrong and how to fix it, so the command line prints it without a traceback.
    Anything else (an error inside JAX or MuJoCo, a bug of ours) keeps its traceback."""
    from envs.menagerie import MenagerieMissingError
    from envs.omnireset.dataset import DatasetMismatchError
    from jaxrl.data.replay import ReplayCapacityError
    from jaxrl.io.checkpoint import CheckpointError
    from jaxrl.train.guards import NonFiniteError
    from jaxrl.train.memory import ProgramMemoryError

    kinds = (ValueError, FileNotFoundError, FileExistsError, CheckpointError, MenagerieMissingError,
             DatasetMismatchError, ReplayCapacityError, ProgramMemoryError, NonFiniteError)
    if not isinstance(err, kinds) or err.__traceback__ is None:
        return False
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).resolve()
    ours = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "envs"]
    return any(where.is_relative_to(root) for root in ours)


def main(argv: list[str] | None = None) -> None:
    """`jaxrl COMMAND ...`.  Bad input ends the command with its message alone (exit status 1);
    ``JAXRL_TRACEBACK=1`` shows the traceback as well."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    try:
        _command(argv[0], argv[1:])
    except Exception as err:
        if os.environ.get("JAXRL_TRACEBACK", "0") not in ("", "0") or not _refusal(err):
            raise
        raise SystemExit(f"jaxrl {argv[0]}: {type(err).__name__}: {err}\n"
                         "(JAXRL_TRACEBACK=1 shows where it was raised)") from None


def _command(cmd: str, rest: list[str]) -> None:
    import tyro

    if cmd in ("train", "resume"):
        from jaxrl.train import parallel

        parallel.initialize_distributed()  # a no-op unless launched as one of several hosts
    if cmd == "list-envs":
        list_envs(tyro.cli(ListEnvs, args=rest, prog="jaxrl list-envs"))
    elif cmd == "train":
        train_cmd(rest)
    elif cmd == "finetune":
        finetune_cmd(rest)
    elif cmd == "resume":
        a = tyro.cli(ResumeArgs, args=_run_dir_compat(rest), prog="jaxrl resume")
        from jaxrl.train import run

        if a.verbose:
            import envs

            envs.set_verbose(True)
        run.resume(a.run_dir, devices=a.devices, progress=a.progress)
    elif cmd == "export":
        print(export_cmd(tyro.cli(ExportArgs, args=_run_dir_compat(rest), prog="jaxrl export")))
    elif cmd == "eval":
        from jaxrl.io import lifecycle

        a = tyro.cli(EvalArgs, args=_run_dir_compat(rest), prog="jaxrl eval")
        report = lifecycle.evaluate_run(a.run_dir, episodes=a.episodes, which=a.checkpoint, seed=a.seed,
                                        video=a.video, grid=a.grid, height=a.height, width=a.width,
                                        camera=_camera(a.camera), seed_index=a.seed_index, env=a.env,
                                        start=a.start)
        print(json.dumps(report, indent=1))
    elif cmd == "sim2sim":
        from jaxrl.io import sim2sim

        a = tyro.cli(Sim2SimArgs, args=_run_dir_compat(rest), prog="jaxrl sim2sim")
        report = sim2sim.sim2sim(a.run_dir, episodes=a.episodes, policy_file=a.policy, which=a.checkpoint,
                                 seed=a.seed, max_steps=a.max_steps, seed_index=a.seed_index,
                                 max_gap=a.max_gap)
        print(sim2sim.format_report(report))
        if not report.get("passed", True):
            raise SystemExit(1)
    elif cmd == "resets":
        usage = "usage: jaxrl resets build --task NAME --per-type N --out FILE   (jaxrl resets build --help)"
        if rest and rest[0] in ("-h", "--help"):
            print(usage)
            return
        if not rest or rest[0] != "build":
            raise SystemExit(usage)
        a = tyro.cli(ResetsBuildArgs, args=rest[1:], prog="jaxrl resets build")
        from envs import omnireset

        print(json.dumps(omnireset.build_and_save(a.task, a.per_type, a.out, seed=a.seed,
                                                    settle_steps=a.settle_steps), indent=1))
    else:
        raise SystemExit(f"unknown command {cmd!r}\n\n{_usage()}")


if __name__ == "__main__":
    main()
