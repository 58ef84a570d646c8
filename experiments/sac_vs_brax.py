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

    python experiments/sac_vs_brax.py --tasks CartpoleSwingup --steps 40000 --seeds 8 \
        --out experiments/results/sac_vs_brax_cpu_8seeds

``--seeds K``: K seeds per side instead of one, because one seed ranks nothing at this budget
(final returns of single runs differ by hundreds).  Ours trains its K seeds as one vmapped
program (``seeds=K``), Brax runs seeds ``seed … seed+K-1`` one after the other.  The JSON then
holds every seed's return at each evaluation, both means with 95% Student-t intervals, and
Welch's t-test of the final returns; the PNG draws means, intervals and seeds.

    python experiments/sac_vs_brax.py --tasks CheetahRun --steps 40000 --seeds 8 --brax-choices \
        --brax-from experiments/results/sac_vs_brax_cpu_cheetah_8seeds.json \
        --out experiments/results/sac_vs_brax_cpu_cheetah_8seeds_brax_choices

``--brax-choices``: ours also takes the three choices where Brax's SAC differs from LIFT's recipe
(``std_head="softplus"``, ``alpha_in_losses="previous"``, ``warmup_actions="policy"``), so both
sides run the same algorithm with the same settings.  ``--brax-from FILE``: Brax's side (its
rows, final returns and wall time) is read from an earlier ``--seeds`` results file instead of
run again — refused unless that file's steps, seeds, evaluations and shared cost settings are
this run's.
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


def brax_seed_rows(runs: list[list[dict]]) -> list[dict]:
    """Brax's per-seed rows joined into rows of a several-seed run (as ours: mean, interval,
    ``seed{i}/eval_return``), at the evaluations all seeds share."""
    from jaxrl.train.loop import seed_summary

    out = []
    for rows in zip(*runs):
        steps = {r["env_steps"] for r in rows}
        assert len(steps) == 1, f"Brax seeds evaluated at different env steps: {steps}"
        out.append({"env_steps": steps.pop(), **seed_summary({"eval_return": [r["eval_return"] for r in rows]},
                                                              len(rows))})
    return out


def earlier_brax(path: str, a, cfg: sac.SACConfig, task: str) -> dict:
    """Brax's side of ``task`` from an earlier ``--seeds`` results file, if it ran what this run
    would run (same steps, seed, seeds, evaluations, cost settings); else a clear error."""
    import json
    from pathlib import Path

    old = json.loads(Path(path).read_text())
    meta, want = old["meta"], {"steps": a.steps, "seed": a.seed, "seeds": a.seeds, "num_evals": a.num_evals}
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    diff |= {k: (meta["sac_settings"].get(k), getattr(cfg, k)) for k in EQUAL
             if meta["sac_settings"].get(k) != getattr(cfg, k)}
    if diff:
        raise SystemExit(f"--brax-from {path}: it ran other settings (theirs, ours): {diff}; run Brax again")
    if task not in old["tasks"] or "brax_rows" not in old["tasks"][task]:
        raise SystemExit(f"--brax-from {path}: it has no finished Brax runs of {task}")
    t = old["tasks"][task]
    return {"rows": t["brax_rows"], "wall_s": t["wall_s_brax_all_seeds_in_turn"], "from": path}


def compare_seeds(a, cfg: sac.SACConfig) -> None:
    """``--seeds K``: K seeds a side; final returns compared by means, intervals and Welch's t."""
    import json
    import time
    from pathlib import Path

    import numpy as np
    from scipy import stats

    from jaxrl.io.metrics import plot_learning_curve
    from jaxrl.train.loop import confidence_interval

    k = a.seeds
    equal = _compare.brax_sac_steps(a.steps, cfg.num_envs, cfg.min_buffer, a.num_evals)  # both end here
    results = {"meta": _compare.meta(steps=a.steps, seed=a.seed, seeds=k, num_evals=a.num_evals,
                                     sac_config=config_name(a), sac_settings=dataclasses.asdict(cfg),
                                     equal_env_steps=equal),
               "tasks": {}}
    curves = {}
    for task in a.tasks:
        earlier = earlier_brax(a.brax_from, a, cfg, task) if a.brax_from else None
        t0 = time.perf_counter()
        _, ours = sac.train(task, cfg, steps=equal, seed=a.seed, seeds=k, num_evals=a.num_evals, progress=False)
        ours_wall = time.perf_counter() - t0
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        t0, brax_runs = time.perf_counter(), []
        for i in range(0 if earlier else k):  # a long comparison keeps what it has: the JSON after every run
            results["tasks"][task] = {"partial": f"Brax seeds done: {i} of {k}", "jaxrl_rows": ours,
                                      "wall_s_jaxrl_all_seeds_one_program": ours_wall,
                                      "brax_runs": brax_runs}
            Path(f"{a.out}.json").write_text(json.dumps(results, indent=1, default=float))
            brax_runs.append(_compare.run_brax(task, cfg, a.steps, a.seed + i, a.num_evals))
        brax_wall = earlier["wall_s"] if earlier else time.perf_counter() - t0
        brax = earlier["rows"] if earlier else brax_seed_rows([r["rows"] for r in brax_runs])
        final = min(ours[-1]["env_steps"], brax[-1]["env_steps"])
        last_ours = [r for r in ours if r["env_steps"] <= final and "eval_return" in r][-1]
        last_brax = [r for r in brax if r["env_steps"] <= final][-1]
        mine = [last_ours[f"seed{i}/eval_return"] for i in range(k)]
        theirs = [last_brax[f"seed{i}/eval_return"] for i in range(k)]
        welch = stats.ttest_ind(mine, theirs, equal_var=False)
        res = {"compared_at_env_steps": final,
               "jaxrl_sac_final_returns": mine, "brax_sac_final_returns": theirs,
               "jaxrl_sac_mean": float(np.mean(mine)), "brax_sac_mean": float(np.mean(theirs)),
               "jaxrl_sac_ci95": confidence_interval(mine), "brax_sac_ci95": confidence_interval(theirs),
               "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue),
               "wall_s_jaxrl_all_seeds_one_program": ours_wall, "wall_s_brax_all_seeds_in_turn": brax_wall,
               "jaxrl_rows": ours, "brax_rows": brax, "brax_from": earlier and earlier["from"]}
        results["tasks"][task] = res
        print(json.dumps({k_: v for k_, v in res.items() if not k_.endswith("_rows")} | {"task": task},
                         default=float), flush=True)
        curves[f"{task} jaxrl SAC ({k} seeds)"] = ours
        curves[f"{task} Brax SAC ({k} seeds)"] = brax
        Path(f"{a.out}.json").write_text(json.dumps(results, indent=1, default=float))
    plot_learning_curve(curves, f"{a.out}.png")


def config_name(a) -> str:
    return "SACConfig.brax()" if a.brax_choices else "SACConfig.cpu()"


def main() -> None:
    a = _compare.parse_args(__doc__, ["CartpoleSwingup", "CheetahRun"], 40_000,
                            "experiments/results/sac_vs_brax_cpu", seeds=True, brax_choices=True)
    cfg = sac.SACConfig.brax() if a.brax_choices else sac.SACConfig.cpu()
    if a.brax_from and a.seeds < 2:
        raise SystemExit("--brax-from reads an earlier --seeds K run: give --seeds K (K >= 2) as well")
    if a.seeds > 1:
        return compare_seeds(a, cfg)
    equal = _compare.brax_sac_steps(a.steps, cfg.num_envs, cfg.min_buffer, a.num_evals)  # both end here
    results = {"meta": _compare.meta(steps=a.steps, seed=a.seed, num_evals=a.num_evals,
                                     sac_config=config_name(a), sac_settings=dataclasses.asdict(cfg),
                                     equal_env_steps=equal),
               "tasks": {}}
    _compare.compare_tasks(
        a.tasks, "sac", "jaxrl SAC",
        lambda task: _compare.run_ours(sac.train, task, cfg, equal, a.seed, a.num_evals),
        lambda task: _compare.run_brax(task, cfg, a.steps, a.seed, a.num_evals),
        results, a.out, extra=extra(cfg))


if __name__ == "__main__":
    main()
