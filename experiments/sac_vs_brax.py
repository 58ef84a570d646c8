"""Our large-batch SAC vs Brax's own SAC on the same tasks, budget, batch, update count and machine.

    python experiments/sac_vs_brax.py --tasks CartpoleSwingup CheetahRun --steps 40000 \
        --out experiments/results/sac_vs_brax_cpu

Ours runs `SACConfig.cpu()` through the public API (`jaxrl.sac.train`).  Brax SAC
(`brax.training.agents.sac.train`) runs with MuJoCo Playground's tuned `brax_sac_config`
(learning rate, discount, reward scaling, networks) except for what decides the cost, which is
taken from our config: num_envs, batch size, gradient updates per env step, min / max replay
size, and 16 eval envs.  The runs go one after the other in this process.  Writes `<out>.json`
(eval returns at every evaluation and at equal env steps, wall and compile seconds, env steps/s,
the time per env step ours / Brax, both sides' settings, machine and JAX versions) and
`<out>.png` (both learning curves per task).
"""

from __future__ import annotations

import dataclasses

import _compare  # experiments/, beside this script

from jaxrl import sac

# Our config field -> Brax sac.train keyword: the settings both sides share.
EQUAL = {"num_envs": "num_envs", "batch_size": "batch_size", "updates_per_step": "grad_updates_per_step",
         "min_buffer": "min_replay_size", "buffer_size": "max_replay_size"}


def extra(cfg: sac.SACConfig):
    """Timing of both runs, and a check that the shared settings really were equal."""
    def fields(ours: dict, brax: dict) -> dict:
        shared = {k: getattr(cfg, k) for k in EQUAL} | {"eval_envs": _compare.EVAL_ENVS}
        mismatch = {k: (getattr(cfg, k), brax["settings"][b]) for k, b in EQUAL.items()
                    if getattr(cfg, k) != brax["settings"][b]}
        if mismatch:
            raise RuntimeError(f"ours and Brax ran with different settings: {mismatch}")
        return {"equal_settings": shared, **_compare.timing(ours, brax)}
    return fields


def main() -> None:
    a = _compare.parse_args(__doc__, ["CartpoleSwingup", "CheetahRun"], 40_000,
                            "experiments/results/sac_vs_brax_cpu")
    cfg = sac.SACConfig.cpu()
    results = {"meta": _compare.meta(steps=a.steps, seed=a.seed, num_evals=a.num_evals,
                                     sac_config="SACConfig.cpu()", sac_settings=dataclasses.asdict(cfg)),
               "tasks": {}}
    _compare.compare_tasks(
        a.tasks, "sac", "jaxrl SAC",
        lambda task: _compare.run_ours(sac.train, task, cfg, a.steps, a.seed, a.num_evals),
        lambda task: _compare.run_brax(task, cfg, a.steps, a.seed, a.num_evals),
        results, a.out, extra=extra(cfg))


if __name__ == "__main__":
    main()
