"""Crash safety: SIGKILL a real training process, resume it, and get the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl.io import lifecycle
from jaxrl.io.checkpoint import CheckpointMismatchError

# Module fixtures train runs: keep the whole file on one xdist worker (built once).
pytestmark = pytest.mark.xdist_group("resume")

TINY = [
    "--env", "CartpoleBalance", "--steps", "2400", "--num-evals", "6", "--checkpoint-every-s", "0",
    "--no-progress", "--config.num-envs", "8", "--config.batch-size", "32", "--config.buffer-size", "4000",
    "--config.min-buffer", "256", "--config.actor-width", "16", "--config.critic-width", "16",
    "--config.num-blocks", "1",
    "--env-kwargs", "vision=false",  # Playground's default value: recorded, rebuilt on resume, same physics
]


def _cli(*args, **kw):
    cmd = [sys.executable, "-m", "jaxrl.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _steps(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted(p.name for p in d.glob("step_*") if (p / "COMMITTED").exists()) if d.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    full, crashed = root / "full", root / "crashed"
    p = _cli("train", "flashsac", *TINY, "--out", str(full))
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out

    p = _cli("train", "flashsac", *TINY, "--out", str(crashed))
    deadline = time.time() + 900
    while len(_steps(crashed)) < 3 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed: " + p.communicate()[0][-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = _steps(crashed)
    assert not (crashed / "summary.json").exists()

    p = _cli("resume", str(crashed))
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out
    return full, crashed, killed_at


def test_resumed_run_equals_uninterrupted_run(runs):
    full, crashed, killed_at = runs
    rows_full = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    killed_steps = [int(name.split("_")[1]) for name in killed_at]
    # killed in the middle, before its last checkpoint (else the resume would have nothing to do)
    assert len(killed_at) >= 3 and max(killed_steps) < rows_full[-1]["env_steps"]
    # --env-kwargs reached the run record, which `jaxrl resume` rebuilt the env from
    assert json.loads((crashed / "config.json").read_text())["env_kwargs"] == {"vision": False}
    _, _, _, agent_a, _ = lifecycle.load_run(full)
    _, _, _, agent_b, _ = lifecycle.load_run(crashed)
    leaves_a, leaves_b = jax.tree.leaves(agent_a), jax.tree.leaves(agent_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows_a] == [r["env_steps"] for r in rows_b]
    assert [r["eval_return"] for r in rows_a] == [r["eval_return"] for r in rows_b]
    assert json.loads((crashed / "summary.json").read_text())["final_eval_return"] == rows_a[-1]["eval_return"]


def test_corrupted_latest_checkpoint_falls_back_to_previous_good(runs, tmp_path):
    full, _, _ = runs
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full, run)
    latest = max((run / "checkpoints").glob("step_*"))
    data = max((p for p in latest.rglob("*") if p.is_file() and "state" in p.parts), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = os.urandom(64)
    data.write_bytes(bytes(raw))
    steps = sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
    with pytest.warns(RuntimeWarning, match="checksum"):
        _, _, _, agent, _ = lifecycle.load_run(run)
    # the step before the damaged one, read intact (orbax would read the damaged bytes silently)
    (run / "checkpoints" / latest.name).rename(run / "damaged")
    _, _, _, previous, _ = lifecycle.load_run(run)
    assert len(steps) >= 2
    for a, b in zip(jax.tree.leaves(agent), jax.tree.leaves(previous)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restoring_into_another_layout_names_the_mismatch(runs, tmp_path):
    full, _, _ = runs
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["config"]["actor_width"] = 32
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="different configuration: .*actor_width"):
        lifecycle.load_run(run)
    # an edit that keeps every shape is refused as well (it would export another policy silently)
    cfg = json.loads((full / "config.json").read_text())
    cfg["config"]["tau"] = 0.5
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match="different configuration: .*tau"):
        lifecycle.export_run(run, "npz", out=tmp_path / "p.npz")


def test_exported_onnx_and_npz_equal_the_jax_policy_on_random_and_real_observations(runs, tmp_path):
    import onnxruntime as ort

    import envs
    from jaxrl.algos import flashsac as algo
    from jaxrl.io import numpy_policy

    full, _, _ = runs
    record, _, config, agent, env = lifecycle.load_run(full)
    onnx_path = lifecycle.export_run(full, fmt="onnx", out=tmp_path / "p.onnx")
    npz_path = lifecycle.export_run(full, fmt="npz", out=tmp_path / "p.npz")
    card = json.loads(Path(f"{onnx_path}.card.json").read_text())
    assert card["observation"]["size"] == env.obs_spec["state"].size
    assert card["action"]["size"] == env.action_size and card["control_dt"] == pytest.approx(env.spec.dt)
    # Real observations from a rollout, plus random ones well outside the training range.
    e = envs.make(record["env"], num_envs=64)
    s, real = e.reset(jax.random.PRNGKey(5)), []
    for i in range(30):
        s = e.step(s, e.random_action_fn(jax.random.PRNGKey(i)))
        real.append(np.asarray(s.obs["state"]))
    rand = np.random.default_rng(0).normal(0, 3, (2000, e.obs_spec["state"].size)).astype(np.float32)
    obs = np.concatenate(real + [rand])
    want = np.asarray(algo.act(agent, {"state": obs, "privileged_state": obs}, jax.random.PRNGKey(0),
                               config, deterministic=True)[0])
    sess = ort.InferenceSession(str(onnx_path))
    got = sess.run(None, {sess.get_inputs()[0].name: obs})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(numpy_policy.forward(numpy_policy.load_npz(npz_path), obs), want, atol=1e-5)


def test_resume_without_a_saved_replay_buffer_refills_it_and_finishes(tmp_path, monkeypatch, capfd):
    """save_buffer=False (what a too-small disk falls back to): checkpoints leave the replay buffer
    out, resume warns, refills it with warm-up transitions and runs to the end of the budget; its
    progress bar starts at the checkpoint's step.  Resuming the finished run then trains nothing
    and leaves its folder as it was."""
    from jaxrl import flashsac
    from jaxrl.io import progress
    from jaxrl.io.checkpoint import CheckpointManager
    from jaxrl.train import run

    bars = []  # each session's bar: where it starts

    class Bar(progress.Progress):
        def __init__(self, total, desc="", **kw):
            bars.append(kw.get("initial"))
            super().__init__(total, desc, disable=True, **kw)

    monkeypatch.setattr(progress, "Progress", Bar)

    cfg = flashsac.FlashSACConfig.cpu().replace(num_envs=8, batch_size=32, buffer_size=4000, min_buffer=256,
                                                actor_width=16, critic_width=16, num_blocks=1)

    class Crash(Exception):
        pass

    seen = []

    def crash_after_second_row(row):
        seen.append(row)
        if len(seen) == 2:
            raise Crash

    with pytest.raises(Crash):
        flashsac.train("CartpoleBalance", cfg, steps=2400, num_evals=6, out_dir=tmp_path, progress=False,
                       checkpoint_every_s=0, save_buffer=False, progress_fn=crash_after_second_row)
    mgr = CheckpointManager(tmp_path)
    step = mgr.steps()[-1]
    skipped = json.loads((mgr._step_dir(step) / "skipped.json").read_text())
    assert skipped, "the buffer leaves should have been left out"
    with pytest.warns(RuntimeWarning, match="refilling"):
        carry, rows = run.resume(tmp_path, progress=True)
    assert bars == [step] and 0 < step < 2400
    assert rows[-1]["env_steps"] >= 2400 and np.isfinite(rows[-1]["eval_return"])
    # Empty after the restore, then 256 refill transitions plus every step taken after it:
    assert int(carry.buffer.size) * cfg.num_envs == 256 + rows[-1]["env_steps"] - step
    assert json.loads((tmp_path / "summary.json").read_text())["env_steps"] == rows[-1]["env_steps"]

    before = {f: (tmp_path / f).read_bytes() for f in ("summary.json", "metrics.jsonl")}
    capfd.readouterr()
    _, again = run.resume(tmp_path, progress=True)
    assert "already finished its budget" in capfd.readouterr().err
    assert bars == [step]  # no session ran
    assert [(r["env_steps"], r.get("eval_return")) for r in again] == [(r["env_steps"], r.get("eval_return")) for r in rows]
    assert {f: (tmp_path / f).read_bytes() for f in before} == before  # summary.json keeps its program_bytes
    assert json.loads(before["summary.json"])["program_bytes"]["chunk"]["temporaries"] > 0


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path):
    """A cluster's requeue calls `jaxrl resume` again and again: a run SIGKILLed while compiling
    (config.json written, no committed checkpoint) starts from step 0 with a notice; a folder
    that is not a run stays an error."""
    run = tmp_path / "requeued"
    p = _cli("train", "flashsac", *TINY, "--out", str(run))
    deadline = time.time() + 600
    while not (run / "config.json").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be killed: " + p.communicate()[0][-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _steps(run) == [] and (run / "config.json").exists()

    p = _cli("resume", str(run))
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out
    assert "no committed checkpoint yet" in out and "starting it again from step 0" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_steps"] >= 2400 and json.loads((run / "summary.json").read_text())["env_steps"] >= 2400
    p = _cli("resume", str(tmp_path / "not-a-run"))
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "not a jaxrl run folder" in out


def test_export_card_carries_the_checkpoints_config_hash(runs, tmp_path):
    """One identity per run: the card's config_sha256 is the hash the checkpoints were written with."""
    from jaxrl.io.checkpoint import CheckpointManager

    full, _, _ = runs
    path = lifecycle.export_run(full, fmt="npz", out=tmp_path / "p.npz")
    card = json.loads(Path(f"{path}.card.json").read_text())
    assert card["config_sha256"] == CheckpointManager(full).metadata()["config_hash"]
    assert len(card["config_sha256"]) == 64


def test_sac_run_stopped_mid_way_resumes_to_the_uninterrupted_result(tmp_path, stop_after):
    """The LIFT-style SAC (bfloat16 hidden layers, normalisers, U updates from one sample) goes
    through the same lifecycle: a run stopped after its second row resumes from its checkpoint
    and ends bit for bit where the uninterrupted run ends (agent, normalisers, buffer, env state,
    keys) with the same rows."""
    from jaxrl.algos import sac
    from jaxrl.train import run

    cfg = sac.SACConfig.cpu().replace(num_envs=4, batch_size=16, buffer_size=512, min_buffer=16,
                                      updates_per_step=2, actor_hidden=(8,), critic_hidden=(8,),
                                      compute_dtype="bfloat16", num_eval_envs=4)
    kw = {"steps": 64, "num_evals": 4, "progress": False, "checkpoint_every_s": 0,
          "env_kwargs": {"episode_length": 20}}

    full, full_rows = run.train("sac", "CartpoleBalance", cfg, out_dir=tmp_path / "full", **kw)
    with pytest.raises(stop_after.Stop):
        run.train("sac", "CartpoleBalance", cfg, out_dir=tmp_path / "cut", progress_fn=stop_after(2), **kw)
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed, rows = run.resume(tmp_path / "cut", progress=False, checkpoint_every_s=0)
    assert rows[-1]["env_steps"] == full_rows[-1]["env_steps"] == 64
    assert [r["eval_return"] for r in rows] == [r["eval_return"] for r in full_rows]
    assert int(full.agent.step) > 0
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(full)[0], jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
