"""jaxrl.io.video: render qpos rollouts (single and grid), tile, write mp4/gif atomically."""

from pathlib import Path

import imageio_ffmpeg
import mediapy
import mujoco
import numpy as np
import pytest

from jaxrl.io import video

# A red box that slides along x under a top-down camera (image x == world x), plus a green
# mocap sphere.  Black background: no skybox, no floor.
XML = """
<mujoco>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1"/>
    <camera name="top" pos="0 0 2"/>
    <body name="box">
      <joint name="x" type="slide" axis="1 0 0"/>
      <geom type="box" size="0.15 0.15 0.15" rgba="1 0 0 1"/>
    </body>
    <body name="target" mocap="true" pos="0 0.5 0">
      <geom type="sphere" size="0.1" rgba="0 1 0 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
</mujoco>
"""
H, W = 24, 32


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(XML)


@pytest.fixture(scope="module")
def gl(model):
    """Skip GL-needing tests only where no OpenGL context can be created at all."""
    try:
        video.make_renderer(model, H, W).close()
    except RuntimeError as e:
        assert "libosmesa6" in str(e) and "libegl1" in str(e)
        pytest.skip(f"no OpenGL here: {e}")


def _mask(frame, channel):
    """Pixels dominated by one colour channel (0 red, 1 green)."""
    f = frame.astype(int)
    others = [c for c in range(3) if c != channel]
    return (f[..., channel] > 60) & (f[..., channel] > f[..., others].max(-1) + 40)


def _centroid_x(mask):
    return np.nonzero(mask)[1].mean()


# --- rendering ------------------------------------------------------------------------------


def test_moving_the_body_moves_its_pixels_and_rendering_is_deterministic(model, gl):
    frames = video.render_frames(model, [[-0.5], [0.5], [-0.5]], height=H, width=W, camera="top")
    assert frames.shape == (3, H, W, 3) and frames.dtype == np.uint8
    left, right = _mask(frames[0], 0), _mask(frames[1], 0)
    assert left.any() and right.any()
    assert _centroid_x(left) < W / 2 < _centroid_x(right)
    assert not left[:, W // 2 :].any() and not right[:, : W // 2].any()
    np.testing.assert_array_equal(frames[0], frames[2])  # same state, same pixels
    assert not np.array_equal(frames[0], frames[1])
    by_index = video.render_frames(model, [[-0.5]], height=H, width=W, camera=0)
    np.testing.assert_array_equal(by_index[0], frames[0])  # camera 0 is "top"


def test_mocap_pos_moves_the_mocap_body(model, gl):
    qpos = np.zeros((2, 1))
    mocap = np.array([[[-0.6, 0, 0]], [[0.6, 0, 0]]])
    frames = video.render_frames(model, qpos, mocap_pos=mocap, height=H, width=W, camera="top")
    a, b = _mask(frames[0], 1), _mask(frames[1], 1)
    assert a.any() and b.any()
    assert _centroid_x(a) < W / 2 < _centroid_x(b)
    default = video.render_frames(model, qpos[:1], height=H, width=W, camera="top")[0]
    assert abs(_centroid_x(_mask(default, 1)) - W / 2) < 3  # without mocap_pos: model's x=0


def test_grid_of_three_rollouts_equals_tile_of_single_renders(model, gl):
    qpos = np.stack([np.linspace(-0.5, 0.5, 2), [0.0, 0.3], [0.5, -0.5]], axis=1)[..., None]
    assert qpos.shape == (2, 3, 1)  # [T, K, nq]
    grid = video.render_frames(model, qpos, height=H, width=W, camera="top")
    assert grid.shape == (2, 2 * H, 2 * W, 3) and grid.dtype == np.uint8
    singles = np.stack(
        [video.render_frames(model, qpos[:, k], height=H, width=W, camera="top") for k in range(3)]
    )
    np.testing.assert_array_equal(grid, video.tile(singles, 2))
    assert (grid[:, H:, W:] == 0).all()  # 4th cell empty
    for r, c in [(0, 0), (0, 1), (1, 0)]:
        assert _mask(grid[0, r * H : (r + 1) * H, c * W : (c + 1) * W], 0).any()
    one_row = video.render_frames(model, qpos, height=H, width=W, camera="top", cols=3)
    np.testing.assert_array_equal(one_row, video.tile(singles, 3))


# --- tile -----------------------------------------------------------------------------------


def test_tile_matches_manual_concatenation():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, size=(3, 2, 4, 5, 3), dtype=np.uint8)  # [K, T, H, W, C]
    zero = np.zeros_like(f[0])  # one cell over time: [T, H, W, C]
    manual = np.concatenate(
        [np.concatenate([f[0], f[1]], axis=2), np.concatenate([f[2], zero], axis=2)],
        axis=1,
    )
    np.testing.assert_array_equal(video.tile(f, 2), manual)
    np.testing.assert_array_equal(video.tile(f, 3), np.concatenate(list(f), axis=2))
    np.testing.assert_array_equal(video.tile(f, 1), np.concatenate(list(f), axis=1))
    with pytest.raises(ValueError, match=r"\[K, T, H, W, C\]"):
        video.tile(f[0], 2)
    with pytest.raises(ValueError, match="cols"):
        video.tile(f, 0)


# --- write_video ----------------------------------------------------------------------------


def _colour_frames(t=6, h=32, w=48):
    """Flat colours that change over time: easy to compare after a lossy codec."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i] = (40 * i, 200 - 30 * i, 120)
    return frames


def _read_back(path):
    """Decode with imageio-ffmpeg: mediapy.read_video passes -vsync, which the ffmpeg 9 bundled
    by imageio-ffmpeg no longer accepts (writing is unaffected)."""
    gen = imageio_ffmpeg.read_frames(str(path))
    w, h = next(gen)["size"]
    return np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_video_round_trip(tmp_path, suffix):
    frames = _colour_frames()
    out = video.write_video(tmp_path / "sub" / f"clip{suffix}", frames, fps=10)
    assert out == tmp_path / "sub" / f"clip{suffix}"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind
    back = _read_back(out)
    assert back.shape == frames.shape
    np.testing.assert_allclose(
        back.reshape(len(back), -1, 3).mean(1), frames.reshape(len(frames), -1, 3).mean(1), atol=8
    )


def test_write_video_failure_leaves_target_and_dir_untouched(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")

    def broken(path, images, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("ffmpeg died")

    monkeypatch.setattr(mediapy, "write_video", broken)
    with pytest.raises(RuntimeError, match="ffmpeg died"):
        video.write_video(target, _colour_frames(), fps=10)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize(
    "frames, fps, path, match",
    [
        (_colour_frames().astype(np.float32), 10, "a.mp4", "uint8"),
        (_colour_frames()[0], 10, "a.mp4", r"\[T, H, W, 3\]"),
        (_colour_frames()[..., :1], 10, "a.mp4", r"\[T, H, W, 3\]"),
        (_colour_frames()[:0], 10, "a.mp4", r"T, H, W >= 1"),
        (_colour_frames(), 0, "a.mp4", "fps"),
        (_colour_frames(), -5, "a.mp4", "fps"),
        (_colour_frames(), 10, "a.avi", "suffix"),
    ],
)
def test_write_video_rejects_bad_input(tmp_path, frames, fps, path, match):
    with pytest.raises(ValueError, match=match):
        video.write_video(tmp_path / path, frames, fps)
    assert not any(tmp_path.iterdir())


def test_fps_for():
    assert video.fps_for(0.02) == pytest.approx(50.0)
    assert video.fps_for(0.02, speed=0.5) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="dt"):
        video.fps_for(0.0)


# --- render_frames input validation (fails before any GL work) --------------------------------


@pytest.mark.parametrize(
    "qpos, kwargs, match",
    [
        (np.zeros((3, 2)), {}, r"expected model.nq = 1"),
        (np.zeros(3), {}, r"\[T, nq\] or \[T, K, nq\]"),
        (np.zeros((2, 2, 2, 1)), {}, r"\[T, nq\] or \[T, K, nq\]"),
        (np.zeros((0, 1)), {}, "no frames"),
        (np.array([[0.0], [0.1], [np.nan]]), {}, "frame 2"),
        (np.array([[[0.0], [np.inf]]]), {}, "frame 0, rollout 1"),
        (np.zeros((2, 1)), {"camera": "side"}, r"'side'.*available: \['top'\]"),
        (np.zeros((2, 1)), {"camera": 3}, "out of range"),
        (np.zeros((2, 1)), {"mocap_pos": np.zeros((2, 3))}, r"expected \(2, 1, 3\)"),
        (np.zeros((2, 1)), {"mocap_quat": np.zeros((2, 1, 3))}, r"expected \(2, 1, 4\)"),
        (np.zeros((2, 1)), {"mocap_pos": np.full((2, 1, 3), np.nan)}, "mocap_pos.*frame 0"),
        (np.zeros((2, 3, 1)), {"cols": 0}, "cols"),
        (np.zeros((2, 1)), {"height": 4000}, "offheight"),
    ],
)
def test_render_frames_rejects_bad_input(model, qpos, kwargs, match):
    with pytest.raises(ValueError, match=match):
        video.render_frames(model, qpos, **kwargs)


def test_make_renderer_names_the_fix_for_an_oversized_buffer(model):
    with pytest.raises(ValueError, match=r'<visual><global offwidth="1000" offheight="480"/>'):
        video.make_renderer(model, 100, 1000)


SHADOW_XML = """
<mujoco>
  <worldbody>
    <light pos="1 1 3" dir="-1 -1 -3" castshadow="true"/>
    <geom type="plane" size="2 2 0.1" rgba=".8 .8 .8 1"/>
    <geom type="box" pos="0 0 0.3" size="0.2 0.2 0.3" rgba="1 0 0 1"/>
    <camera name="side" pos="1.5 -1.5 1.2" xyaxes="1 1 0 -0.3 0.3 1"/>
  </worldbody>
</mujoco>
"""


def _render_reference(xml: str) -> np.ndarray:
    """MuJoCo's own renderer on the model as written (its full-size shadow map)."""
    model = mujoco.MjModel.from_xml_string(xml)
    renderer = mujoco.Renderer(model, 48, 64)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer.update_scene(data, camera="side")
    frame = renderer.render().astype(int)
    renderer.close()
    return frame


def test_shadow_map_is_sized_to_the_frame_and_looks_the_same(gl):
    """A 48x64 frame gets a 128-texel shadow map instead of MuJoCo's 4096 (software GL spent
    most of each frame on it), on a copy of the model; the frame equals the full-size map's to
    within half an intensity level on average (measured 0.40), while the shadow itself changes
    it by 2.7."""
    model = mujoco.MjModel.from_xml_string(SHADOW_XML)
    assert model.vis.quality.shadowsize == 4096
    assert video.shadow_map_size(model, 48, 64) == 128 and video.shadow_map_size(model, 4000, 10) == 4096
    fast = video.render_frames(model, np.zeros((1, 0)), height=48, width=64, camera="side")[0].astype(int)
    assert model.vis.quality.shadowsize == 4096  # the caller's model is untouched
    full = _render_reference(SHADOW_XML)
    no_shadow = _render_reference(SHADOW_XML.replace('castshadow="true"', 'castshadow="false"'))
    assert np.abs(fast - full).mean() < 1.0
    assert np.abs(fast - no_shadow).mean() > 2.0  # the shadow is drawn
