"""Metrics: one JSON line per log call (the record), TensorBoard scalars, optional W&B.

``run_dir/metrics.jsonl`` is the source of truth: append-only, flushed each row, readable with
``read_jsonl`` even after a crash mid-line.  TensorBoard events go to ``run_dir/tensorboard``,
Weights & Biases files to ``run_dir/wandb``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np


def _plain(value: Any) -> Any:
    """numpy / jax scalars and small arrays -> JSON-native values."""
    if isinstance(value, (str, bool, type(None))) or type(value) in (int, float):
        return value
    if hasattr(value, "__array__") or isinstance(value, np.generic):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tensorboard_writer(run_dir: Path, purge_step: int | None = None) -> Any:
    """A tensorboardX writer into RUN_DIR/tensorboard whose event file name ends in the time in
    ns: tensorboardX names files by the second and opens them with "wb", so a second writer
    within the same second (a quick restart) would empty the first one's file; the suffix also
    keeps the files in the order written, which is the order TensorBoard applies purges in."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=str(run_dir / "tensorboard"), purge_step=purge_step,
                         filename_suffix=f".{time.time_ns()}")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


WANDB_ID_FILE = Path("wandb") / "jaxrl_run_id"  # under run_dir: the W&B run this folder logs to


class MetricsLogger:
    """Log metric rows (dicts with ``env_steps``) to JSONL, TensorBoard and, if asked, W&B.

    Args:
      run_dir: the run folder (created if needed).
      tensorboard: also write TensorBoard scalars (step = env_steps) with tensorboardX.
      wandb: also log to Weights & Biases; raises ImportError when wandb is not installed.
      wandb_project: the W&B project name.
      config: the run's config, given to W&B.

    W&B details:

    * Only real-number values are logged (strings, bools, lists stay in the JSONL), at
      ``step=env_steps``; the run is named after ``run_dir``.  ``WANDB_MODE=offline`` and the
      other ``WANDB_*`` variables work as usual.
    * One folder is one W&B run: its id is kept in ``run_dir/wandb/jaxrl_run_id`` and reused
      (``resume="allow"``) when the folder's ``metrics.jsonl`` already has rows, i.e. when a run
      is resumed; a folder whose ``metrics.jsonl`` is empty or gone (a new or overwritten run)
      starts a new W&B run.  A ``WANDB_RUN_ID`` in the environment (sweeps) wins.
    * W&B steps only go forward: a row whose env_steps is below the last step W&B has (rows a
      resumed run produces again after its checkpoint) is not sent to W&B; it is still in the
      JSONL and TensorBoard.
    * Each logger makes its own W&B run (``reinit="create_new"``), so two loggers never share
      one.  Leaving the ``with`` block on an exception, or ``close(failed=True)``, marks the W&B
      run failed (exit code 1).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
    ):
        if wandb:  # fail before creating anything
            try:
                import wandb as wandb_lib
            except ImportError as e:
                raise ImportError(
                    "MetricsLogger(wandb=True) needs Weights & Biases: `pip install wandb` "
                    "(and `wandb login`), or pass wandb=False"
                ) from e
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())
        had_rows = self._file.tell() > 0
        self._tb = self._wandb = None
        self._wandb_step = 0  # the lowest step W&B still takes (it drops rows below its step)
        try:
            if had_rows and not _ends_with_newline(self.path):  # a crash cut the last row
                self._file.write("\n")
            if tensorboard:
                self._tb = _tensorboard_writer(self.run_dir)
            if wandb:
                ident = {}
                if not os.environ.get("WANDB_RUN_ID"):
                    ident = {
                        "id": _wandb_run_id(self.run_dir, resume=had_rows),
                        "resume": "allow",
                        "name": self.run_dir.resolve().name,
                    }
                self._wandb = wandb_lib.init(
                    project=wandb_project,
                    dir=str(self.run_dir),
                    config=None if config is None else _plain(dict(config)),
                    reinit="create_new",
                    **ident,
                )
                self._wandb_step = self._wandb.starting_step  # > 0 when a W&B run resumed
        except BaseException:
            self.close(failed=True)
            raise

    def rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Make ``metrics.jsonl`` exactly ``rows`` (a resume drops the rows logged after its
        checkpoint): written to a new file renamed over the old one, so a kill leaves one of the
        two whole, then appended to as before.  TensorBoard's events past the last kept row are
        purged (a new event file whose first event tells TensorBoard to hide every earlier event
        from that step on: its ``purge_step``), so the rows logged again are not drawn twice; W&B
        keeps what it has (it drops rows below its step)."""
        from jaxrl.io.runfolder import write_text_atomic

        write_text_atomic(self.path, "".join(json.dumps({str(k): _plain(v) for k, v in r.items()}) + "\n"
                                             for r in rows))
        self._file.close()  # (it points at the replaced file)
        self._file = open(self.path, "a")  # noqa: SIM115  (closed by close())
        if self._tb is not None:
            self._tb.close()
            self._tb = _tensorboard_writer(self.run_dir, purge_step=int(rows[-1]["env_steps"]) + 1 if rows else 0)

    def sync(self) -> None:
        """The rows logged so far onto the disk (fsync), not only into the OS's cache."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def log(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` (needs ``env_steps``; other values scalars) everywhere."""
        if "env_steps" not in row:
            raise KeyError(f"a metrics row needs 'env_steps'; got keys {sorted(row)}")
        row = {str(k): _plain(v) for k, v in row.items()}
        step = int(row["env_steps"])
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in row.items() if k != "env_steps" and _is_scalar(v)}
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), global_step=step)
            self._tb.flush()
        if self._wandb is not None and step >= self._wandb_step:
            self._wandb.log(scalars, step=step)
            self._wandb_step = step

    def close(self, *, failed: bool = False) -> None:
        """Close every sink (safe to call twice); ``failed`` marks the W&B run failed."""
        tb, run, self._tb, self._wandb = self._tb, self._wandb, None, None
        try:
            if not self._file.closed:
                self._file.close()
            if tb is not None:
                tb.close()
        finally:
            if run is not None:
                run.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _wandb_run_id(run_dir: Path, resume: bool) -> str:
    """The W&B run id of ``run_dir``: the stored one when resuming, else a new one (stored)."""
    path = run_dir / WANDB_ID_FILE
    if resume and path.exists() and (run_id := path.read_text().strip()):
        return run_id
    run_id = uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a JSONL file; a damaged line (e.g. cut by a crash) is skipped with a warning."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping an unreadable line", RuntimeWarning)
    return rows


def plot_learning_curve(
    runs: Sequence[Mapping] | Mapping[str, Sequence[Mapping] | str | os.PathLike],
    path: str | os.PathLike,
    x: str = "env_steps",
    y: str = "eval_return",
    title: str | None = None,
) -> Path:
    """Save a PNG with one line per run: ``runs`` is a list of rows or ``{label: rows or jsonl}``.

    Rows of a several-seed run (``jaxrl.train.loop.seed_summary``) draw the mean over seeds, its
    95% interval as a band (``{y}_ci_low`` / ``{y}_ci_high``) and each seed (``seed{i}/{y}``) as a
    thin line.  Uses matplotlib's Agg canvas directly, so it never touches the notebook's pyplot
    backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(runs, Mapping):
        runs = {"run": runs}
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def series(rows, key):
        pts = [(r[x], r[key]) for r in rows
               if _is_scalar(r.get(x)) and _is_scalar(r.get(key)) and math.isfinite(r[key])]
        return tuple(map(list, zip(*pts))) if pts else ([], [])

    for label, rows in runs.items():
        if isinstance(rows, (str, os.PathLike)):
            rows = read_jsonl(rows)
        xs, ys = series(rows, y)
        if not xs:
            continue
        seeds = sorted({k for r in rows for k in r if k.startswith("seed") and k.endswith("/" + y)},
                       key=lambda k: int(k[4:k.index("/")]))
        line = ax.plot(xs, ys, label=f"{label} (mean of {len(seeds)} seeds)" if seeds else str(label),
                       marker="." if len(xs) < 30 else None)[0]
        lo_x, lo = series(rows, f"{y}_ci_low")
        hi_x, hi = series(rows, f"{y}_ci_high")
        if lo and lo_x == hi_x:
            ax.fill_between(lo_x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        for key in seeds:
            ax.plot(*series(rows, key), color=line.get_color(), alpha=0.35, linewidth=0.7)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title)
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
