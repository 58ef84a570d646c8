"""`render_reset_grid`: look at sampled reset states of every type (one row per type)."""

from __future__ import annotations

import os

import numpy as np

from envs.manipulation.base import ManipulationTask
from envs.omnireset.dataset import ResetDataset
from jaxrl.io.video import make_renderer


def render_reset_grid(
    task: ManipulationTask,
    dataset: ResetDataset,
    per_type: int = 4,
    path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    height: int = 240,
    width: int = 320,
    camera: str | int = 0,
) -> np.ndarray:
    """Render ``per_type`` random states of each reset type into an image grid
    ([types * height, per_type * width, 3] uint8; empty cells stay black).  Saves a PNG when
    ``path`` is given (needs Pillow or imageio).  Raises a RuntimeError naming the apt packages
    (libegl1 / libosmesa6) when no OpenGL context can be created."""
    import mujoco

    dataset.check_compatible(task)
    rng = np.random.default_rng(seed)
    renderer = make_renderer(task.mj_model, height, width)
    data = mujoco.MjData(task.mj_model)
    k = len(dataset.type_names)
    grid = np.zeros((k * height, per_type * width, 3), np.uint8)
    try:
        for row, name in enumerate(dataset.type_names):
            states = dataset.states(name)
            n = states.qpos.shape[0]
            if n == 0:
                continue
            for col, i in enumerate(rng.choice(n, size=min(per_type, n), replace=False)):
                data.qpos[:] = states.qpos[i]
                data.qvel[:] = states.qvel[i]
                data.ctrl[:] = states.ctrl[i]
                mujoco.mj_forward(task.mj_model, data)
                renderer.update_scene(data, camera=camera)
                grid[row * height : (row + 1) * height, col * width : (col + 1) * width] = (
                    renderer.render()
                )
    finally:
        renderer.close()
    if path is not None:
        _save_png(grid, path)
    return grid


def _save_png(image: np.ndarray, path) -> None:
    try:
        from PIL import Image

        Image.fromarray(image).save(path)
    except ImportError:
        import imageio.v3 as iio

        iio.imwrite(path, image)
