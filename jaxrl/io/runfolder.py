"""A run folder on disk: its record (config.json), its identity (one config hash) and its files.

Pure file handling with no training imports, so that the training side (`jaxrl.train.run`) and
the deployment side (`jaxrl.io.export`, `lifecycle`, `sim2sim`) both import it downward.

    RUN_DIR/config.json   the record: algo, env, steps, seed, num_evals, env_kwargs, resets,
                          init_from (what was loaded from another run), config (the algorithm's)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

# Files and folders a run writes; `claim` deletes only these when overwriting a run.
RESETS_FILE = "resets.npz"  # the reset dataset of a run trained on a hand-built mixture VecEnv
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints", "eval.json",
             "sim2sim.json", "rollout.mp4", "policy.onnx", "policy.onnx.card.json", "policy.npz",
             "policy.npz.card.json", "learning_curve.png", "wandb", RESETS_FILE,
             "policy.onnx.tmp", "policy.npz.tmp")  # (an export cut short: `export.export_policy`)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def config_hash(config: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, tuples as lists) of a run record or
    config dataclass: THE identity of a run, shared by checkpoint metadata and the export card."""
    text = json.dumps(_jsonable(config) if dataclasses.is_dataclass(config) else config,
                      sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def identity(record: dict) -> dict:
    """The part of a record that defines the training run (what `config_hash` hashes): not
    ``init_from``, whose source step and path say where a run started, not what it is, and not
    ``devices``, where it ran (a run resumes on another device count), and not ``session``, how
    it is checkpointed and logged.  Records written before ``seeds`` existed are single-seed runs."""
    out = {k: v for k, v in record.items() if k not in ("init_from", "devices", "session")}
    if out.get("seeds", 1) == 1:
        out.pop("seeds", None)
    return out


def config_to_dict(cfg: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(cls: type, d: dict) -> Any:
    """The config ``cls`` from its JSON form (lists back to tuples; nested configs, such as the
    finetuning config's SAC and world-model parts, rebuilt as their own classes).  A field the
    record predates takes the value in ``cls.RECORDED_BEFORE`` when the class has one (the
    behaviour runs had before the field existed, so an old run resumes as it started), else its
    default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"config has fields {unknown} that {cls.__name__} does not know")
    d = {**{k: v for k, v in getattr(cls, "RECORDED_BEFORE", {}).items() if k not in d}, **d}

    def value(f: dataclasses.Field, v: Any) -> Any:
        if isinstance(v, dict):
            proto = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(proto):
                return config_from_dict(type(proto), v)
        return tuple(v) if isinstance(v, list) else v

    return cls(**{k: value(fields[k], v) for k, v in d.items()})


def is_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "config.json").is_file()


# what every run record holds (config.json): how to rebuild the run
RECORD_KEYS = ("algo", "env", "steps", "seed", "config")


def read_record(run_dir: str | Path) -> dict:
    """The run's config.json; a ValueError when it is not one (unreadable, or lacking
    `RECORD_KEYS`)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxrl run folder (no config.json)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): resume, eval and export rebuild the run from "
                         "it; restore the file (train writes it once, at the run's start)") from None
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a run record as `jaxrl train` writes "
                         "it; restore the file (train writes it once, at the run's start)")
    return record


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to the disk, then rename it
    over ``path``: a crash or a power cut leaves the old file or the new one, never half of one."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_record(run_dir: str | Path, record: dict) -> None:
    """``config.json``, atomically (resume, eval and export rebuild the run from it)."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(record, indent=1))


def claim(out: Path, overwrite: bool, keep: tuple = ()) -> None:
    """Refuse a folder that already holds a run unless ``overwrite``; then remove that run's files,
    but not the paths in ``keep`` (the writer's lock file the new run already holds: deleting it
    would let another process lock a new file at its path)."""
    out = Path(out)
    if not ((out / "config.json").exists() or (out / "checkpoints").exists()):
        return
    # with the evaluations on other tasks (`jaxrl eval --env`), which would outlive the run they scored
    existing = [n for n in RUN_FILES if (out / n).exists()] + sorted(p.name for p in out.glob("eval_*.json"))
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}). Continue it with `jaxrl resume {out}`, "
            "train into a new folder, or pass overwrite=True (CLI: --overwrite) to delete that run first."
        )
    kept = {Path(k).absolute() for k in keep}
    for name in existing:
        path = out / name
        if any(path.absolute() in k.parents for k in kept):  # a folder holding a kept file: the rest goes
            for child in path.iterdir():
                if child.absolute() not in kept:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif path.absolute() not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
