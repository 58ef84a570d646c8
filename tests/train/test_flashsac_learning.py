"""FlashSAC learns on CPU within a fixed env-step budget (the cpu preset, the shared loop)."""

import numpy as np
import pytest

from jaxrl import flashsac

# Shares the session's one solved run: keep these tests on the same xdist worker.
pytestmark = pytest.mark.xdist_group("solved_cartpole")


@pytest.mark.slow
def test_cpu_preset_solves_cartpole_balance_within_40k_steps(solved_cartpole_run):
    """Solved = deterministic eval return >= 900 of the maximum 1000 (random policy: ~200-600).
    (The run is the shared session fixture: conftest.solved_cartpole_run.)"""
    _, rows = solved_cartpole_run
    assert rows[-1]["env_steps"] >= 40_000
    assert max(r["eval_return"] for r in rows[-3:]) >= 900, [round(r["eval_return"]) for r in rows]


@pytest.mark.slow
def test_cpu_preset_makes_clear_progress_on_cartpole_swingup():
    """Swing-up is harder: the pole starts hanging down.  The untrained policy (first eval, after
    the random warm-up) scores 0-250: its unit-norm mean head gives non-zero actions that may
    spin the pole.  A best eval >= 200 and >= 150 above it within 40k steps means the pole is
    swung up and partly balanced (solved ~800)."""
    _, rows = flashsac.train("CartpoleSwingup", flashsac.FlashSACConfig.cpu(), steps=40_000,
                             num_evals=8, progress=False)
    returns = np.array([r["eval_return"] for r in rows])
    assert returns.max() >= max(200.0, returns[0] + 150.0), returns.round()
