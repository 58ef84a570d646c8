"""Render MuJoCo states to frames and write them as a video (``jaxrl eval --video``, notebooks).

Rendering is offscreen: on a headless machine with ``MUJOCO_GL`` unset, ``make_renderer`` falls
back to EGL, then OSMesa, instead of letting GLFW abort the process.  The shadow map is sized to
the frame (`shadow_map_size`): with software GL, a model's 2048-4096 texel shadow map cost most
of every frame.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
import shutil
import sys
from pathlib import Path

import mujoco
import numpy as np

GL_HELP = (
    "MuJoCo could not create an OpenGL context for offscreen rendering. Set MUJOCO_GL=egl "
    "(GPU machines; apt-get install libegl1 libgl1) or MUJOCO_GL=osmesa (software; apt-get "
    "install libosmesa6) before importing mujoco, then retry."
)

_CODECS = {".mp4": "h264", ".gif": "gif"}


def shadow_map_size(model: mujoco.MjModel, height: int, width: int) -> int:
    """Shadow map edge for ``height`` x ``width`` frames: the power of two >= twice the longer
    edge, at most the model's own.  Measured with software GL (Mesa EGL, 2 CPU cores): a
    cartpole frame of 48x64 took 14.4 ms with the model's 2048 map and 5.9 ms with 256; 240x320
    took 24.2 ms and 15.5 ms with 1024.  A shadow finer than twice the pixel grid is not seen."""
    edge = 1 << math.ceil(math.log2(2 * max(height, width, 1)))
    return min(model.vis.quality.shadowsize, edge)


def _check_size(model: mujoco.MjModel, height: int, width: int) -> None:
    """Frames of at least one pixel, within the model's offscreen buffer (the model is not
    enlarged behind the caller's back)."""
    if isinstance(height, bool) or isinstance(width, bool) or int(height) < 1 or int(width) < 1:
        raise ValueError(f"video height and width must be >= 1 pixel, got {height}x{width} (HxW)")
    vis = model.vis.global_
    if height > vis.offheight or width > vis.offwidth:
        raise ValueError(
            f"render size {width}x{height} (WxH) exceeds the model's offscreen buffer "
            f"{vis.offwidth}x{vis.offheight}: render smaller, or enlarge it in the MJCF with "
            f'<visual><global offwidth="{max(width, vis.offwidth)}" '
            f'offheight="{max(height, vis.offheight)}"/></visual> '
            "(or set model.vis.global_.offwidth/offheight before rendering)."
        )


def check_request(model: mujoco.MjModel, path: str | os.PathLike, height: int, width: int,
                  camera: str | int | None) -> None:
    """Everything about a video request that can be refused before the rollout that feeds it
    (suffix, frame size, camera): a bad ``--video`` must not cost a compiled rollout first."""
    if Path(path).suffix.lower() not in _CODECS:
        raise ValueError(f"unsupported video suffix {Path(path).suffix!r} in {str(path)!r}; use one of "
                         f"{list(_CODECS)}")
    _check_size(model, height, width)
    if camera is not None:
        _check_camera(model, camera)


def make_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """A ``mujoco.Renderer`` with a `shadow_map_size` shadow map (on a copy: the caller's model
    is left as it is).  An oversized request is a ValueError here (the model is not enlarged
    behind the caller's back); a missing GL backend is a RuntimeError with GL_HELP."""
    _check_size(model, height, width)
    shadow = shadow_map_size(model, height, width)
    if shadow < model.vis.quality.shadowsize:
        model = copy.copy(model)
        model.vis.quality.shadowsize = shadow
    from mujoco.rendering.classic import gl_context

    errors = []
    headless_default = not os.environ.get("MUJOCO_GL") and not os.environ.get("DISPLAY")
    if not headless_default:  # (GLFW without a display aborts the process later: skip it)
        try:
            return mujoco.Renderer(model, height=height, width=width)
        except Exception as e:  # noqa: BLE001  mujoco raises various errors when no GL backend is available
            errors.append(f"{os.environ.get('MUJOCO_GL') or 'default'}: {e}")
    if not os.environ.get("MUJOCO_GL") and "OpenGL.GL" not in sys.modules:
        for backend in ("egl", "osmesa"):
            try:
                os.environ["PYOPENGL_PLATFORM"] = backend
                module = __import__(f"mujoco.{backend}", fromlist=["GLContext"])
                gl_context.GLContext = module.GLContext
                renderer = mujoco.Renderer(model, height=height, width=width)
                os.environ["MUJOCO_GL"] = backend
                return renderer
            except Exception as e:  # noqa: BLE001  (any failure: try the next backend)
                errors.append(f"{backend}: {e}")
                os.environ.pop("PYOPENGL_PLATFORM", None)
    raise RuntimeError(f"{GL_HELP} Tried: {'; '.join(errors)}")


def _check_camera(model: mujoco.MjModel, camera: str | int) -> None:
    """Fail before any GL work, listing the cameras the model does have."""
    names = [model.camera(i).name for i in range(model.ncam)]
    if isinstance(camera, str):
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera {camera!r} is not in the model; available: {names}")
    elif not -1 <= int(camera) < model.ncam:
        raise ValueError(
            f"camera index {camera} out of range: use -1 (free camera) or 0..{model.ncam - 1} "
            f"{names}"
        )


def _check_finite(name: str, arr: np.ndarray, batch_ndim: int) -> None:
    bad = ~np.isfinite(arr.reshape(*arr.shape[:batch_ndim], -1)).all(-1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        what = f"frame {where[0]}" + (f", rollout {where[1]}" if batch_ndim == 2 else "")
        raise ValueError(f"{name} has non-finite values at {what}")


def _mocap(name: str, arr, lead: tuple[int, ...], model: mujoco.MjModel, n: int):
    if arr is None:
        return None
    arr = np.asarray(arr, np.float64)
    want = (*lead, model.nmocap, n)
    if model.nmocap == 0:
        raise ValueError(f"{name} given but the model has no mocap bodies")
    if arr.shape != want:
        raise ValueError(f"{name} has shape {arr.shape}; expected {want} (qpos leading dims)")
    _check_finite(name, arr, len(lead))
    return arr


def render_frames(
    mj_model: mujoco.MjModel,
    qpos,
    *,
    mocap_pos=None,
    mocap_quat=None,
    height: int = 240,
    width: int = 320,
    camera: str | int = -1,
    cols: int | None = None,
) -> np.ndarray:
    """Render positions only (qvel is zero, so velocity-dependent visuals are not shown).

    ``qpos`` [T, nq] -> [T, H, W, 3] uint8; [T, K, nq] (K rollouts) -> a grid video
    [T, rows*H, cols*W, 3] with ``cols`` = ceil(sqrt(K)) by default and empty cells black.
    ``mocap_pos`` / ``mocap_quat`` share qpos' leading dims: [..., nmocap, 3] / [..., nmocap, 4].
    """
    qpos = np.asarray(qpos, np.float64)
    if qpos.ndim not in (2, 3):
        raise ValueError(f"qpos must be [T, nq] or [T, K, nq]; got shape {qpos.shape}")
    if qpos.shape[-1] != mj_model.nq:
        raise ValueError(f"qpos last dim is {qpos.shape[-1]}; expected model.nq = {mj_model.nq}")
    if 0 in qpos.shape[:-1]:
        raise ValueError(f"qpos has no frames or rollouts: shape {qpos.shape}")
    _check_finite("qpos", qpos, qpos.ndim - 1)
    lead = qpos.shape[:-1]
    mpos = _mocap("mocap_pos", mocap_pos, lead, mj_model, 3)
    mquat = _mocap("mocap_quat", mocap_quat, lead, mj_model, 4)
    _check_camera(mj_model, camera)

    grid = qpos.ndim == 3
    if not grid:  # one rollout is a 1x1 grid
        qpos = qpos[:, None]
        mpos = None if mpos is None else mpos[:, None]
        mquat = None if mquat is None else mquat[:, None]
    t_len, k = qpos.shape[:2]
    cols = 1 if not grid else (cols if cols is not None else math.ceil(math.sqrt(k)))
    if cols < 1:
        raise ValueError(f"cols must be >= 1; got {cols}")
    rows = math.ceil(k / cols)

    renderer = make_renderer(mj_model, height, width)
    try:
        data = mujoco.MjData(mj_model)
        out = np.zeros((t_len, rows * height, cols * width, 3), np.uint8)
        for t in range(t_len):
            for i in range(k):
                data.qpos[:] = qpos[t, i]
                if mpos is not None:
                    data.mocap_pos[:] = mpos[t, i]
                if mquat is not None:
                    data.mocap_quat[:] = mquat[t, i]
                mujoco.mj_forward(mj_model, data)
                renderer.update_scene(data, camera=camera)
                r, c = divmod(i, cols)
                out[t, r * height : (r + 1) * height, c * width : (c + 1) * width] = (
                    renderer.render()
                )
    finally:
        renderer.close()
    return out


def tile(frames: np.ndarray, cols: int) -> np.ndarray:
    """[K, T, H, W, C] -> [T, rows*H, cols*W, C], row-major, missing cells zero (black)."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(f"frames must be [K, T, H, W, C]; got shape {frames.shape}")
    if cols < 1:
        raise ValueError(f"cols must be >= 1; got {cols}")
    k, t, h, w, c = frames.shape
    rows = math.ceil(k / cols)
    pad = np.zeros((rows * cols - k, t, h, w, c), frames.dtype)
    cells = np.concatenate([frames, pad]).reshape(rows, cols, t, h, w, c)
    return cells.transpose(2, 0, 3, 1, 4, 5).reshape(t, rows * h, cols * w, c)


def fps_for(dt: float, speed: float = 1.0) -> float:
    """Frames per second that play one frame per ``dt`` seconds of sim time at ``speed``x."""
    if not dt > 0 or not speed > 0:
        raise ValueError(f"dt and speed must be > 0; got dt={dt}, speed={speed}")
    return speed / dt


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write [T, H, W, 3] uint8 frames to .mp4 (h264) or .gif, picked by suffix.

    Written to a temp file beside ``path`` then renamed, so a reader never sees half a video.
    Uses imageio-ffmpeg's bundled binary when no ``ffmpeg`` is on PATH."""
    import mediapy

    path = Path(path)
    codec = _CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"unsupported video suffix {path.suffix!r}; use one of {list(_CODECS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8; got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be [T, H, W, 3] with T, H, W >= 1; got {frames.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0; got {fps}")
    if shutil.which("ffmpeg") is None:
        import imageio_ffmpeg

        mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())

    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name (not mkstemp) so ffmpeg creates the file with the usual umask permissions.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        mediapy.write_video(tmp, frames, fps=fps, codec=codec)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
