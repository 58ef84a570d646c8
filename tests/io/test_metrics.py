"""Metrics rows survive JSONL and TensorBoard; curves are drawn; the progress bar runs headless."""

from __future__ import annotations

import io
import json
import struct
import sys

import numpy as np
import pytest

from jaxrl.io.metrics import (
    WANDB_ID_FILE,
    MetricsLogger,
    _wandb_run_id,
    plot_learning_curve,
    read_jsonl,
)
from jaxrl.io.progress import LiveCurve, Progress

ROWS = [
    {"env_steps": 1000, "eval_return": 1.5, "critic_loss": 0.25, "phase": "warmup"},
    {"env_steps": 2000, "eval_return": 3.0, "critic_loss": 0.125, "nonfinite": 0},
    {"env_steps": 3000, "eval_return": 4.5, "critic_loss": 0.0625},
]


def read_tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Parse TFRecord-framed Event protos (u64 length, u32 crc, data, u32 crc), file by file in
    name order as TensorBoard reads them, and as TensorBoard does, let a session START event at
    step S hide every event read before it at a step >= S (a restarted writer's ``purge_step``)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()}
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


def test_a_resume_rewrites_the_log_atomically_and_keeps_appending_to_it(tmp_path, monkeypatch):
    """`rewrite` (a resume dropping the rows after its checkpoint) renames a new file over the
    old one: killed while writing it, the old log is whole; afterwards the logger appends to
    the new file (its handle is reopened, not left on the replaced one)."""
    import os

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for row in ROWS[:2]:
            logger.log(row)
        real_replace = os.replace

        def killed(*a):
            raise KeyboardInterrupt  # a kill between writing the new file and renaming it

        monkeypatch.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            logger.rewrite(ROWS[:1])
        assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[:2]  # the old log, whole
        monkeypatch.setattr(os, "replace", real_replace)
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.rewrite(ROWS[:1])
        logger.log(ROWS[1])
    assert read_jsonl(tmp_path / "metrics.jsonl") == ROWS[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # the killed try's file reused


def test_a_resume_hides_the_tensorboard_points_it_logs_again(tmp_path):
    """A run killed after logging rows 1-3 but checkpointed at row 1 logs rows 2-3 again when it
    resumes: TensorBoard shows each step once, the resumed session's value (before stop 49 both,
    a zigzag); a restart within the same second keeps the first session's events."""
    with MetricsLogger(tmp_path) as logger:
        for row in ROWS:
            logger.log({**row, "sps": 1.0})
    with MetricsLogger(tmp_path) as logger:  # the resume, at once
        logger.rewrite(ROWS[:1])
        for row in ROWS[1:]:
            logger.log({**row, "sps": 2.0})
    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["sps"] == [(1000, 1.0), (2000, 2.0), (3000, 2.0)]
    assert scalars["eval_return"] == [(1000, 1.5), (2000, 3.0), (3000, 4.5)]


def test_row_without_env_steps_is_rejected(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger, pytest.raises(KeyError):
        logger.log({"eval_return": 1.0})


def test_wandb_asked_but_not_installed_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path / "run", tensorboard=False, wandb=True)
    assert not (tmp_path / "run").exists()  # failed before creating anything


def read_wandb_records(path) -> list:
    """The Record protos of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log chunks in 32 KiB blocks (u32 crc, u16 length, u8 type: 1 full, 2 first,
    3 middle, 4 last; a block tail under 7 bytes is padding)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    assert not pending, "file ends inside a record"
    return records


def _item_key_value(item) -> tuple[str, object]:
    key = item.key or "/".join(item.nested_key)
    if item.value_json:
        return key, json.loads(item.value_json)
    return key, getattr(item, item.WhichOneof("value"))


def read_wandb_run(path) -> dict:
    """id, name, project, resume (asked), config, history [(step, {metric: value})], exit code."""
    run = {"config": {}, "history": [], "exit_code": None}
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(
                id=record.run.run_id,
                name=record.run.display_name,
                project=record.run.project,
                resume=record.run.resume,
                start_time=record.run.start_time.ToNanoseconds(),
            )
            run["config"].update(_item_key_value(i) for i in record.run.config.update)
        elif kind == "config":
            run["config"].update(_item_key_value(i) for i in record.config.update)
        elif kind == "history":
            values = dict(_item_key_value(i) for i in record.history.item)
            metrics = {k: v for k, v in values.items() if not k.startswith("_")}
            run["history"].append((record.history.step.num, metrics))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    run["config"].pop("_wandb", None)
    return run


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, quiet, with every file it writes under tmp_path."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # forget settings an earlier wandb user in this process read from its env
    home = tmp_path / "wandb_home"
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_SAVE_CODE": "false",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_META": "true",
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "WANDB_API_KEY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_NAME",
        "WANDB_TAGS",
        "WANDB_NOTES",
        "WANDB_RUN_GROUP",
        "WANDB_JOB_TYPE",
    ):
        monkeypatch.delenv(name, raising=False)
    yield wandb
    wandb.teardown()  # stop the wandb-core service, drop its settings (no-op when done already)


def test_wandb_offline_run_gets_rows_and_config_and_a_resume_continues_it(tmp_path, wandb_offline):
    run_dir = tmp_path / "sac_cartpole"
    config = {"algo": "sac", "lr": np.float32(0.5), "hidden": (256, 256)}
    with MetricsLogger(
        run_dir, tensorboard=False, wandb=True, wandb_project="jaxrl-test", config=config
    ) as logger:
        logger.log({**ROWS[0], "eval_return": np.float32(1.5)})
        for row in ROWS[1:]:
            logger.log(row)
        logger.log({"env_steps": 2000, "eval_return": -1.0})  # behind W&B's step: JSONL only
    with (
        pytest.raises(RuntimeError, match="boom"),
        MetricsLogger(run_dir, tensorboard=False, wandb=True, wandb_project="jaxrl-test") as logger,
    ):  # resumed: metrics.jsonl has rows
        logger.log({"env_steps": 4000, "eval_return": 6.0})
        raise RuntimeError("boom")
    wandb_offline.teardown()  # finish() can return before wandb-core has flushed the .wandb file

    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    # one offline folder per session: offline-run-<start second>-<id>[-<n> when a second repeats]
    first, resumed = sorted(
        (read_wandb_run(p) for p in run_dir.glob(f"wandb/offline-run-*/run-{run_id}.wandb")),
        key=lambda run: run["start_time"],
    )
    assert first["id"] == resumed["id"] == run_id and first["resume"] and resumed["resume"]
    assert first["name"] == "sac_cartpole" and first["project"] == "jaxrl-test"
    assert first["config"] == {"algo": "sac", "lr": 0.5, "hidden": [256, 256]}
    assert first["history"] == [
        (1000, {"eval_return": 1.5, "critic_loss": 0.25}),  # the string "phase" is left out
        (2000, {"eval_return": 3.0, "critic_loss": 0.125, "nonfinite": 0}),
        (3000, {"eval_return": 4.5, "critic_loss": 0.0625}),
    ]
    assert first["exit_code"] == 0
    for log in run_dir.glob("wandb/offline-run-*/logs/debug-internal.log"):
        assert "ignoring partial history" not in log.read_text()  # the stale row never reached W&B
    assert resumed["history"] == [(4000, {"eval_return": 6.0})]
    assert resumed["exit_code"] == 1  # left the with block on an exception: a failed run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["env_steps"] for r in rows] == [1000, 2000, 3000, 2000, 4000]
    assert not list((tmp_path / "wandb_home").glob("**/offline-run-*"))  # runs live in run_dir


def test_wandb_run_id_is_kept_for_a_resume_and_renewed_for_a_new_run(tmp_path):
    first = _wandb_run_id(tmp_path, resume=False)
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    assert _wandb_run_id(tmp_path, resume=True) == first
    second = _wandb_run_id(tmp_path, resume=False)  # e.g. the folder was overwritten
    assert second != first and _wandb_run_id(tmp_path, resume=True) == second
    assert _wandb_run_id(tmp_path / "fresh", resume=True) != second  # nothing stored yet


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
    # a task that scores success (OmniReset's) shows its rate beside the return
    with Progress(10, notebook=False, file=io.StringIO(), mininterval=0) as bar:
        bar.update({"env_steps": 5, "eval_return": 80.0, "eval_success": 0.25})
        bar.update({"env_steps": 10, "actor_loss": 0.1})
        assert bar.bar.postfix == "eval_return=80, success=25%"


def test_live_curve_is_a_no_op_outside_notebooks():
    curve = LiveCurve()
    for row in ROWS:
        curve.update(row)
    curve.update({"env_steps": 4000, "critic_loss": 1.0})
    assert curve.points == [(1000.0, 1.5), (2000.0, 3.0), (3000.0, 4.5)]


def test_the_seed_interval_is_students_t_on_the_sample_std():
    """95% interval of a K-seed mean: t(0.975, K-1) · s / √K with s the sample std (ddof 1).
    Two seeds 0 and 1: t(0.975, 1) = 12.706 (a t table), s = 0.7071, half-width 6.353; a normal
    quantile (1.96) or ddof 0 would give 0.98 or 6.35/√2 instead.  NaN seeds are left out; fewer
    than two seeds: no interval."""
    import math

    from jaxrl.train.loop import confidence_interval

    assert confidence_interval([0.0, 1.0]) == pytest.approx((0.5 - 6.3531, 0.5 + 6.3531), abs=1e-3)
    assert confidence_interval([0.0, math.nan, 1.0]) == pytest.approx((0.5 - 6.3531, 0.5 + 6.3531), abs=1e-3)
    lo, hi = confidence_interval([2.0, 4.0, 6.0, 8.0])  # t(0.975, 3) = 3.182, s = 2.582
    assert (lo, hi) == pytest.approx((5.0 - 3.182 * 2.582 / 2, 5.0 + 3.182 * 2.582 / 2), abs=1e-2)
    assert all(math.isnan(x) for x in confidence_interval([3.0]))
