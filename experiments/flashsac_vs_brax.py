"""FlashSAC vs Brax's own SAC on the same tasks, budget, batch, update count and machine.

    python experiments/flashsac_vs_brax.py --tasks CartpoleSwingup CheetahRun CartpoleBalance \
        --steps 100000 --out experiments/results/flashsac_vs_brax_cpu

Brax SAC runs with MuJoCo Playground's tuned `brax_sac_config` (via `envs.upstream`, which
drops the `num_resets_per_eval` key Brax rejects); the settings that decide cost — num_envs,
batch size, gradient updates per env step, replay sizes, eval envs — are set equal for both.
Writes `<out>.json` (returns at equal env steps, wall-clock and env-steps/s ratios) and
`<out>.png` (both learning curves per task).  The shared pieces are in `_compare.py`.
"""

from __future__ import annotations

import _compare  # experiments/, beside this script

from jaxrl import flashsac


def main() -> None:
    a = _compare.parse_args(__doc__, ["CartpoleSwingup", "CheetahRun", "CartpoleBalance"], 100_000,
                            "experiments/results/flashsac_vs_brax_cpu")
    cfg = flashsac.FlashSACConfig.cpu()
    equal = _compare.brax_sac_steps(a.steps, cfg.num_envs, cfg.min_buffer, a.num_evals)  # both end here
    results = {"meta": _compare.meta(steps=a.steps, seed=a.seed, flashsac_config="FlashSACConfig.cpu()",
                                     equal_env_steps=equal),
               "tasks": {}}
    _compare.compare_tasks(
        a.tasks, "flashsac", "FlashSAC",
        lambda task: _compare.run_ours(flashsac.train, task, cfg, equal, a.seed, a.num_evals),
        lambda task: _compare.run_brax(task, cfg, a.steps, a.seed, a.num_evals),
        results, a.out)


if __name__ == "__main__":
    main()
