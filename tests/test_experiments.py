"""The comparison scripts' bookkeeping (experiments/): both sides end at the same env step."""

import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("name, algo", [("sac_vs_brax_cpu", "sac"), ("sac_vs_brax_cpu_8seeds", "sac"),
                                        ("flashsac_vs_brax_cpu", "flashsac")])
def test_our_budget_is_the_env_steps_braxs_sac_really_took(name, algo):
    """`_compare.brax_sac_steps` against Brax's own runs (their last evaluation's env steps, in the
    stored results): our side is given that budget, so the final evaluations meet (since stop 51
    our loops stop at the budget exactly; Brax rounds up to whole epochs)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import _compare
    finally:
        sys.path.remove(str(EXPERIMENTS))
    from jaxrl.train import registry

    results = json.loads((EXPERIMENTS / "results" / f"{name}.json").read_text())
    cfg = registry.get(algo).config.cpu()
    steps, evals = results["meta"]["steps"], results["meta"].get("num_evals", 5)  # (the README's command)
    for task in results["tasks"].values():
        brax_rows = task.get("brax_rows") or task["brax_sac"]["rows"]
        assert _compare.brax_sac_steps(steps, cfg.num_envs, cfg.min_buffer, evals) == brax_rows[-1]["env_steps"]
