"""FlashSAC learns on CPU within a fixed env-step budget (the cpu preset, the shared loop).

CartpoleSwingup and CheetahRun at the same preset and budget are measured, not tested, in
experiments/flashsac_vs_brax.py (745 and 413 at 40k steps; results/flashsac_vs_brax_cpu.json):
one learning run per algorithm is what the suite's 20-minute budget affords."""

import pytest

# Shares the session's one solved run: keep these tests on the same xdist worker.
pytestmark = pytest.mark.xdist_group("solved_cartpole")


@pytest.mark.slow
def test_cpu_preset_solves_cartpole_balance_within_40k_steps(solved_cartpole_run):
    """Solved = deterministic eval return >= 900 of the maximum 1000 (random policy: ~200-600).
    (The run is the shared session fixture: conftest.solved_cartpole_run.)"""
    _, rows = solved_cartpole_run
    assert rows[-1]["env_steps"] >= 40_000
    assert max(r["eval_return"] for r in rows[-3:]) >= 900, [round(r["eval_return"]) for r in rows]
