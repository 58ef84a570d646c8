"""`jaxrl` command line.  Every option's default comes from the config dataclasses (tyro).

    jaxrl list-envs [--source playground]
    jaxrl train flashsac --env CartpoleBalance --steps 60000 --out runs/cp [--preset cpu|paper] [--config.batch-size 512 ...]
    jaxrl train ppo --env CartpoleBalance --steps 200000 --out runs/ppo [--resets FILE --mix 0.25,0.25,0.25,0.25]
    jaxrl resume RUN_DIR
    jaxrl export RUN_DIR --format onnx|npz [--out FILE]
    jaxrl resets build --task NAME --per-type N --out FILE
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

COMMANDS = {
    "list-envs": "list tasks with observation/action sizes and whether they need Menagerie",
    "train": "train an algorithm: `jaxrl train flashsac|ppo --help`",
    "resume": "continue a run from its newest verified checkpoint",
    "export": "export a run's deterministic policy (ONNX or npz) plus a JSON card",
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
@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Options shared by every trainer."""

    env: str = "CartpoleBalance"  # task name (see `jaxrl list-envs`)
    steps: int = 100_000  # env-step budget (warm-up included)
    seed: int = 0
    out: str = "runs/latest"  # run folder: config.json, metrics.jsonl, checkpoints, summary.json
    preset: Literal["cpu", "paper"] = "cpu"  # config preset the overrides apply to
    num_evals: int = 10  # evaluations (metrics rows) over the run
    checkpoint_every_s: float = 600.0  # seconds between checkpoints (one at the end always)
    progress: bool = True


def _preset(cls, preset: str, env: str):
    return cls.paper(env) if preset == "paper" else cls.cpu()


def train_cmd(argv: list[str]) -> None:
    import tyro

    if not argv or argv[0] not in ("flashsac", "ppo"):
        raise SystemExit("usage: jaxrl train {flashsac,ppo} [options]   (jaxrl train flashsac --help)")
    algo, rest = argv[0], argv[1:]
    from jaxrl.train import run

    mod = run.algo_module(algo)
    # First pass: the preset decides the config defaults shown and overridden in the second.
    pre = tyro.cli(TrainArgs, args=[a for a in rest if not a.startswith("--config.")] if "--help" not in rest and "-h" not in rest else [],
                   return_unknown_args=True)[0]
    default_cfg = _preset(mod.Config, pre.preset, pre.env)

    # Built at run time so that the config defaults shown by --help are the chosen preset's.
    Args = dataclasses.make_dataclass(
        "Args",
        [
            ("config", mod.Config, dataclasses.field(default=default_cfg)),
            ("resets", "str | None", dataclasses.field(default=None)),  # (ppo) OmniReset dataset file
            ("mix", "str | None", dataclasses.field(default=None)),  # (ppo) e.g. 0.25,0.25,0.25,0.25
        ],
        bases=(TrainArgs,),
        frozen=True,
    )
    a = tyro.cli(Args, args=rest, prog=f"jaxrl train {algo}", description=mod.__doc__.split("\n")[0])
    resets = None
    if a.resets:
        if algo != "ppo":
            raise SystemExit("--resets is for ppo (OmniReset)")
        probs = [float(p) for p in a.mix.split(",")] if a.mix else None
        resets = {"path": str(Path(a.resets).absolute()), "probs": probs}
    elif a.mix:
        raise SystemExit("--mix needs --resets FILE")
    run.train(algo, a.env, a.config, steps=a.steps, seed=a.seed, out_dir=a.out, resets=resets,
              num_evals=a.num_evals, progress=a.progress, checkpoint_every_s=a.checkpoint_every_s)
    print(json.dumps(json.loads((Path(a.out) / "summary.json").read_text()), indent=1))


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    """Export the deterministic policy of a run for deployment."""

    run_dir: str
    format: Literal["onnx", "npz"] = "onnx"
    out: str | None = None  # default: RUN_DIR/policy.<format>
    checkpoint: Literal["latest", "best"] = "latest"


def export_cmd(a: ExportArgs) -> Path:
    from jaxrl.io import lifecycle

    return lifecycle.export_run(a.run_dir, fmt=a.format, out=a.out, which=a.checkpoint)


@dataclasses.dataclass(frozen=True)
class ResetsBuildArgs:
    """Build and validate an OmniReset reset-state dataset."""

    task: str
    per_type: int = 1000  # candidate states sampled per reset type (kept ones are validated)
    out: str = "resets.npz"
    seed: int = 0


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "list-envs":
        list_envs(tyro.cli(ListEnvs, args=rest, prog="jaxrl list-envs"))
    elif cmd == "train":
        train_cmd(rest)
    elif cmd == "resume":
        if not rest or rest[0].startswith("-"):
            raise SystemExit("usage: jaxrl resume RUN_DIR")
        from jaxrl.train import run

        run.resume(rest[0])
    elif cmd == "export":
        if rest and not rest[0].startswith("-"):  # `jaxrl export RUN_DIR ...`
            rest = ["--run-dir", rest[0], *rest[1:]]
        print(export_cmd(tyro.cli(ExportArgs, args=rest, prog="jaxrl export RUN_DIR")))
    elif cmd == "resets":
        if not rest or rest[0] != "build":
            raise SystemExit("usage: jaxrl resets build --task NAME --per-type N --out FILE")
        a = tyro.cli(ResetsBuildArgs, args=rest[1:], prog="jaxrl resets build")
        from envs import omnireset

        print(json.dumps(omnireset.build_and_save(a.task, a.per_type, a.out, seed=a.seed), indent=1))
    else:
        raise SystemExit(f"unknown command {cmd!r}\n\n{_usage()}")


if __name__ == "__main__":
    main()
