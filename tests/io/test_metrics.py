"""Metrics rows survive JSONL and TensorBoard; curves are drawn; the progress bar runs headless."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from jaxrl.io.metrics import MetricsLogger, plot_learning_curve, read_jsonl
from jaxrl.io.progress import LiveCurve, Progress

ROWS = [
    {"env_steps": 1000, "eval_return": 1.5, "critic_loss": 0.25, "phase": "warmup"},
    {"env_steps": 2000, "eval_return": 3.0, "critic_loss": 0.125, "nonfinite": 0},
    {"env_steps": 3000, "eval_return": 4.5, "critic_loss": 0.0625},
]


def read_tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Parse TFRecord-framed Event protos (u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_rows_round_trip_through_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log({**ROWS[0], "eval_return": np.float32(1.5)})  # numpy scalars become plain
        for row in ROWS[1:]:
            logger.log(row)
    assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS

    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["eval_return"] == [(1000, 1.5), (2000, 3.0), (3000, 4.5)]
    assert scalars["critic_loss"][-1] == (3000, 0.0625)
    assert "phase" not in scalars and "env_steps" not in scalars


def test_jsonl_appends_on_resume_and_skips_a_line_cut_by_a_crash(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(ROWS[0])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"env_steps": 15')  # crash mid-write
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(ROWS[1])
    with pytest.warns(RuntimeWarning, match="metrics.jsonl:2"):
        assert read_jsonl(tmp_path / "metrics.jsonl") == [ROWS[0], ROWS[1]]


def test_row_without_env_steps_is_rejected(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger, pytest.raises(KeyError):
        logger.log({"eval_return": 1.0})


def test_wandb_asked_but_not_installed_says_how_to_fix(tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install wandb"):
            MetricsLogger(tmp_path, tensorboard=False, wandb=True)
    else:
        pytest.skip("wandb is installed")


def test_learning_curve_png_has_one_line_per_run(tmp_path):
    other = [{**r, "eval_return": r["eval_return"] * 2} for r in ROWS]
    path = plot_learning_curve({"sac": ROWS, "flashsac": other}, tmp_path / "curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    single = plot_learning_curve(ROWS, tmp_path / "one.png", y="critic_loss")
    assert single.stat().st_size > 5000


def test_progress_runs_headless_and_shows_the_last_eval_return():
    out = io.StringIO()
    with Progress(3000, desc="sac CartpoleBalance", notebook=False, file=out, mininterval=0) as bar:
        for row in ROWS:
            bar.update(row)
        bar.update({"env_steps": 3000, "critic_loss": 0.01})  # no eval in this row: keep the last
        assert bar.bar.n == 3000
        assert bar.bar.postfix == "eval_return=4.5"
    assert "eval_return=4.5" in out.getvalue() and "3.00k/3.00k" in out.getvalue()


def test_live_curve_is_a_no_op_outside_notebooks():
    curve = LiveCurve()
    for row in ROWS:
        curve.update(row)
    curve.update({"env_steps": 4000, "critic_loss": 1.0})
    assert curve.points == [(1000.0, 1.5), (2000.0, 3.0), (3000.0, 4.5)]
