"""render_reset_grid: one row per reset type, one column per sampled state."""

import numpy as np
import pytest

import envs.omnireset as omr

# The session's PushToSlot dataset (conftest.push_dataset) is built once per worker: these tests
# and the omnireset notebook (which builds the same one) share a worker.
pytestmark = pytest.mark.xdist_group("push_dataset")


def test_render_reset_grid_shape(push_task, push_dataset, tmp_path):
    try:
        grid = omr.render_reset_grid(
            push_task, push_dataset, per_type=2, path=tmp_path / "g.png", height=48, width=64
        )
    except RuntimeError as e:
        assert "libosmesa6" in str(e) and "libegl1" in str(e)
        pytest.skip(f"no OpenGL here: {e}")
    assert grid.shape == (3 * 48, 2 * 64, 3) and grid.dtype == np.uint8
    assert grid.std() > 0  # something was drawn
    assert (tmp_path / "g.png").exists()
