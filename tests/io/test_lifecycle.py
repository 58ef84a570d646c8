"""The life of a trained run after training: evaluate, render, export, sim-to-sim.

All on one shared solved run (conftest.solved_cartpole_run: FlashSAC, CartpoleBalance, 40k steps).
"""

import json

import numpy as np
import pytest

from jaxrl.io import lifecycle, sim2sim, video

# Shares the session's one solved run: keep these tests on the same xdist worker.
pytestmark = pytest.mark.xdist_group("solved_cartpole")


@pytest.fixture(scope="module")
def run_dir(solved_cartpole_run):
    return solved_cartpole_run[0]


def test_eval_scores_the_trained_policy_and_writes_a_grid_video(run_dir, tmp_path):
    out = tmp_path / "rollout.mp4"
    try:
        report = lifecycle.evaluate_run(run_dir, episodes=4, video=out, grid=2, height=48, width=64)
    except RuntimeError as e:
        if video.GL_HELP in str(e):
            pytest.skip("no OpenGL context on this machine")
        raise
    assert len(report["returns"]) == 4 and report["lengths"] == [1000] * 4
    assert report["start"] == "nominal"  # not an OmniReset run: the task's own start
    assert report["mean_return"] >= 900  # the solved policy, not an untrained one (~200-600)
    assert json.loads((run_dir / "eval.json").read_text())["returns"] == report["returns"]
    from jaxrl.io.checkpoint import CheckpointManager

    # which policy it scored: the run's seed and the checkpoint (a run evaluated while it trains)
    assert report["seed_index"] == 0
    assert report["checkpoint_env_steps"] == CheckpointManager(run_dir, save_interval_s=float("inf")).latest_step()
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(48, 128, 3) for f in reader]
    assert meta["size"] == (128, 48)  # two 64-wide cells side by side
    assert len(frames) == 501  # the start and 1000 control steps at 100 Hz -> every 2nd at 50 fps
    assert abs(meta["fps"] - 50) < 1e-6
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.1  # the cart moves


def test_a_rollout_video_shows_each_episodes_last_state_and_holds_it(cartpole4, monkeypatch, tmp_path):
    """Frames are the start and the state after each step (`episode_rollout`'s record): an
    episode of length L shows frames 0..L, frame L (its last state: the fall, the success) held
    after it ends.  Before, frame L was never drawn (L-1 was held).  CartpoleBalance: 100 Hz,
    so every 2nd frame at 50 fps."""
    seen = {}

    def render_frames(model, qpos, **kw):
        seen["qpos"] = qpos
        return np.zeros((len(qpos), 4, 4, 3), np.uint8)

    monkeypatch.setattr(video, "render_frames", render_frames)
    monkeypatch.setattr(video, "write_video", lambda path, frames, fps: path)
    steps, nq = 6, lifecycle.sim_task(cartpole4).mj_model.nq
    qpos = np.arange(steps + 1.0)[:, None, None] + np.array([0.0, 100.0])[None, :, None] + np.zeros((1, 1, nq))
    no_mocap = (np.zeros((steps + 1, 2, 0, 3)), np.zeros((steps + 1, 2, 0, 4)))
    lifecycle._write_rollout_video(cartpole4, (qpos, *no_mocap), np.array([3, 6]), tmp_path / "v.mp4", 4, 4, None)
    np.testing.assert_array_equal(seen["qpos"][:, :, 0], [[0, 100], [2, 102], [3, 104], [3, 106]])


def test_sim2sim_return_in_mujoco_c_matches_mjx(run_dir, monkeypatch):
    """Both simulators start from MJX's reset of the same keys, traced once: the trace the
    task's observation size made is the reset program's, shared by the MJX and MuJoCo C sides
    (before: three traces, ~4 s each for T1 with impl "jax")."""
    from mujoco_playground._src.dm_control_suite import cartpole

    calls = []
    plain = cartpole.Balance.reset
    monkeypatch.setattr(cartpole.Balance, "reset", lambda self, key: calls.append(1) or plain(self, key))
    report = sim2sim.sim2sim(run_dir, episodes=2, max_steps=500)
    assert len(calls) == 1, len(calls)
    assert report["mujoco_step_calls"] == 2 * 500  # every step ran in MuJoCo C
    assert report["mjx_mean_return"] >= 450  # ~1 per step when balanced
    assert abs(report["relative_gap"]) < 0.02, report
    assert (run_dir / "policy.onnx").exists() and (run_dir / "sim2sim.json").exists()
    assert "MuJoCo C" in sim2sim.format_report(report)


def test_bad_eval_and_sim2sim_requests_are_refused(run_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="episodes"):
        lifecycle.evaluate_run(run_dir, episodes=0)
    with pytest.raises(ValueError, match="grid"):
        lifecycle.evaluate_run(run_dir, episodes=2, video=tmp_path / "v.mp4", grid=3)
    # a video that cannot be written is refused before the rollout (which used to run first)
    from jaxrl.train import evaluate

    monkeypatch.setattr(evaluate, "episode_rollout", lambda *a, **k: pytest.fail("rolled out first"))
    for kw, why in (({"video": tmp_path / "v.avi"}, r"unsupported video suffix '\.avi'"),
                    ({"video": tmp_path / "v.mp4", "height": 0}, "height and width must be >= 1 pixel"),
                    ({"video": tmp_path / "v.gif", "width": 10**5}, "exceeds the model's offscreen buffer"),
                    ({"video": tmp_path / "v.mp4", "camera": "nope"}, "camera 'nope' is not in the model")):
        with pytest.raises(ValueError, match=why):
            lifecycle.evaluate_run(run_dir, episodes=1, **kw)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="checkpoint"):
        lifecycle.evaluate_run(run_dir, episodes=1, which="oldest")
    with pytest.raises(ValueError, match="start must be 'nominal' or 'anywhere'"):
        lifecycle.evaluate_run(run_dir, episodes=1, start="middle")
    with pytest.raises(ValueError, match="draws from the reset dataset a run trained on"):
        lifecycle.evaluate_run(run_dir, episodes=1, start="anywhere")
    with pytest.raises(FileNotFoundError, match="not a jaxrl run"):
        sim2sim.sim2sim(tmp_path)
    with pytest.raises(ValueError, match="episodes"):
        sim2sim.sim2sim(run_dir, episodes=0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):  # 0 used to mean "all", -1 a 0-step pass
        sim2sim.sim2sim(run_dir, max_steps=0)
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        sim2sim.sim2sim(run_dir, max_gap=-0.1)
    with pytest.raises(ValueError, match=r"names a \.npz file but format='onnx'"):
        lifecycle.export_run(run_dir, "onnx", out=tmp_path / "p.npz")


def test_a_brax_pipeline_env_is_refused_for_video_before_anything_compiles():
    import envs

    with pytest.raises(NotImplementedError, match="Brax pipelines are not supported"):
        lifecycle.sim_task(envs.make("inverted_pendulum", num_envs=1))


def test_export_card_names_its_checkpoint_and_sim2sim_re_exports_a_stale_file(run_dir, tmp_path):
    """The card says which checkpoint it holds; sim2sim's default file is re-exported when its card
    names another checkpoint (a run resumed since, another seed), not silently reused."""
    from jaxrl.io.checkpoint import CheckpointManager

    latest = CheckpointManager(run_dir, save_interval_s=float("inf")).latest_step()
    npz = lifecycle.export_run(run_dir, out=tmp_path / "p.npz")  # the format follows the suffix
    card = json.loads((tmp_path / "p.npz.card.json").read_text())
    assert card["policy"]["format"] == "npz" and npz.read_bytes()[:2] == b"PK"
    budget = json.loads((run_dir / "config.json").read_text())["steps"]
    assert latest >= budget  # whole iterations: the last checkpoint may pass the budget
    assert card["checkpoint"] == {"which": "latest", "env_steps": latest, "run_env_steps": budget,
                                  "run_finished": True}
    assert card["training_compute_dtype"] == "float32"
    onnx = lifecycle.export_run(run_dir)
    card_file = onnx.with_name(onnx.name + ".card.json")
    stale = json.loads(card_file.read_text())
    stale["checkpoint"]["env_steps"] = latest - 1
    card_file.write_text(json.dumps(stale))
    report = sim2sim.sim2sim(run_dir, episodes=1, max_steps=5, write=False, max_gap=1e9)
    assert json.loads(card_file.read_text())["checkpoint"]["env_steps"] == latest
    assert report["policy_checkpoint"]["env_steps"] == latest and report["policy_seed"] == card["seed"]
    assert report["passed"] is True
    # a policy file that is not the one its card describes (an export stopped between the two
    # files) is exported again, not trusted
    from jaxrl.io.checkpoint import file_sha256

    policy = run_dir / "policy.onnx"
    policy.write_bytes(policy.read_bytes() + b"\0")
    sim2sim.sim2sim(run_dir, episodes=1, max_steps=5, write=False)
    assert file_sha256(policy) == json.loads(card_file.read_text())["policy"]["sha256"]


def test_evaluating_another_task_writes_its_own_report_beside_the_runs(run_dir):
    own = run_dir / "eval.json"
    before = own.read_bytes() if own.exists() else None
    report = lifecycle.evaluate_run(run_dir, episodes=1, env="CartpoleBalanceHeavyPole")
    assert json.loads((run_dir / "eval_CartpoleBalanceHeavyPole.json").read_text()) == report
    assert (own.read_bytes() if own.exists() else None) == before
