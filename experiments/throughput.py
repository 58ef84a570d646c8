"""Throughput of every trainer next to the simulator's own limit and Brax's trainers, on 1 and 2
devices and with 1 or 4 seeds in one program.

    python experiments/throughput.py --tasks CartpoleBalance CheetahRun \
        --out experiments/results/throughput_cpu.json
    # only some trainers / layouts, raw rows taken from an earlier file:
    python experiments/throughput.py --tasks CheetahRun --trainers sac ppo --layouts 1x1 \
        --raw-from experiments/results/throughput_cpu_cheetah.json --out ...
    # ours against Brax's trainer only, in alternating pairs (Brax first), each pair's ratio:
    python experiments/throughput.py --tasks CartpoleBalance --trainers ppo --alternate 2 \
        --out experiments/results/throughput_cpu_ppo_pairs.json
    # our envs restarting from pooled start states as Brax's wrapper does (`envs.make(reset_pool=1)`):
    python experiments/throughput.py --tasks CheetahRun --trainers ppo --reset-pool 1 --alternate 1 --out ...

Every measurement runs in a fresh subprocess with an EMPTY compilation cache, so its compile
seconds are what a first run pays.  Per task:

* raw simulation: env-steps/s of random actions through `VecEnv` at each trainer's num_envs, on
  1 device and on 2 (envs split with `shard_map`, as the trainers do, and — the alternative the
  design rejected — the same vmapped step left to GSPMD);
* each trainer (FlashSAC cpu, SAC cpu, PPO cpu at 256 envs): steady env-steps/s of the whole
  training loop (chunks after the first; evaluation excluded), gradient steps/s, compile
  seconds (the run's own: tracing, lowering and XLA compile of its programs; and XLA's backend
  compile alone), on 1 device, 2 devices, and 4 seeds on 2 devices; loop / raw ratio;
* Brax's own trainer on the same task and settings: SAC (num_envs, batch, updates per step,
  replay sizes equal to ours) and PPO (num_envs equal).  Both sides are compared by the same
  steady rate: env steps between the second and the last evaluation over the wall time between
  them (evaluation included, 16 eval envs each), and by backend compile seconds.

Writes ``--out`` (JSON: every row plus machine and versions).  On CPU only the ratios mean
much (DESIGN.md, "Measuring"); absolute numbers only from a GPU, with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Trainer -> (registry name, config expression, env steps of the measured run, evaluations)
TRAINERS = {
    "flashsac": ("flashsac", "cfg.cpu()", 20_480, 4),
    "sac": ("sac", "cfg.cpu()", 12_288, 4),
    "ppo": ("ppo", "cfg.cpu(num_envs=256)", 2_621_440, 5),
}


# ------------------------------------------------------------------ one measurement (subprocess)
def _compile_counter():
    """[backend compile s, all compile events s].  Only XLA's backend compile is summed for the
    comparison: jaxpr-trace events nest (a jit traced inside another reports both), so summing
    every `/jax/core/compile/` event overcounts (kept as ``compile_events_s``, for reference)."""
    import jax

    total = [0.0, 0.0]

    def listen(event, seconds, **_):
        if event.startswith("/jax/core/compile/"):
            total[1] += seconds
            if event.endswith("backend_compile_duration"):
                total[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    return total


def steady_rate(steps: list[float], times: list[float]) -> float | None:
    """Env-steps/s between the second and the last evaluation (evaluation time included): the
    rate once every program is compiled, measured the same way for our loop and Brax's."""
    if len(steps) < 3:
        return None
    return (steps[-1] - steps[1]) / max(times[-1] - times[1], 1e-9)


def measure_raw(task: str, num_envs: int, devices: int, mode: str, steps: int, reset_pool: int = 0) -> dict:
    import jax

    import envs
    from jaxrl.train import parallel

    compiled = _compile_counter()
    mesh = parallel.make_mesh(devices)
    env = envs.make(task, num_envs=num_envs, reset_pool=reset_pool)
    if mode == "shard_map":
        env = env.distribute(mesh)

    def rollout(state, key):
        def body(s, k):
            return env.step(s, env.random_action_fn(k)), ()
        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    state = env.reset(jax.random.PRNGKey(0))
    if mode == "gspmd":  # the same vmapped step, with the env axis of the state split by GSPMD
        spec = parallel.shardings(state, mesh, parallel.split_leading(num_envs))
        state = jax.device_put(state, spec)
    fn = jax.jit(rollout, donate_argnums=0)
    t0 = time.perf_counter()
    state = jax.block_until_ready(fn(state, jax.random.PRNGKey(1)))
    first = time.perf_counter() - t0
    runs = []
    for i in range(3):
        t0 = time.perf_counter()
        state = jax.block_until_ready(fn(state, jax.random.PRNGKey(2 + i)))
        runs.append(time.perf_counter() - t0)
    return {"env_steps_per_s": num_envs * steps / min(runs), "backend_compile_s": compiled[0],
            "first_call_s": first}


def measure_loop(trainer: str, task: str, devices: int, seeds: int, steps: int | None = None,
                 reset_pool: int = 0) -> dict:
    import jax  # noqa: F401

    from jaxrl.train import registry, run

    compiled = _compile_counter()
    name, expr, default_steps, evals = TRAINERS[trainer]
    steps = steps or default_steps
    algo = registry.get(name)
    cfg = eval(expr, {"cfg": algo.config})
    t0 = time.perf_counter()
    _, rows = run.train(name, task, cfg, steps=steps, num_evals=evals, progress=False,
                        devices=devices, seeds=seeds, env_kwargs={"reset_pool": reset_pool} if reset_pool else {})
    wall = time.perf_counter() - t0
    train_rows = [r for r in rows if "critic_loss" in r or "policy_loss" in r]
    steady = train_rows[1:]  # the first training chunk paid for compilation
    step_s = sum(r["chunk_s"] for r in steady)
    env_steps = sum(r["sps"] * r["chunk_s"] for r in steady)  # sps counts every seed's steps
    updates_per_env_step = (cfg.updates_per_step / cfg.num_envs if name != "ppo"
                            else cfg.num_epochs * cfg.num_minibatches / cfg.batch_size)
    evals = [r for r in rows if "eval_return" in r and r in train_rows]
    return {"env_steps_per_s": env_steps / step_s, "grad_steps_per_s": env_steps / step_s * updates_per_env_step / seeds,
            # As Brax's rate below: between evaluations, evaluation included (K seeds: all seeds).
            "env_steps_per_s_with_eval": seeds * (steady_rate([r["env_steps"] for r in evals],
                                                              [r["wall_s"] for r in evals]) or float("nan")),
            "compile_s": rows[-1]["compile_s"], "backend_compile_s": compiled[0],
            "compile_events_s": compiled[1], "wall_s": wall, "num_envs": cfg.num_envs,
            "final_eval_return": rows[-1].get("eval_return"), "env_steps": rows[-1]["env_steps"]}


def measure_brax(trainer: str, task: str, steps: int | None = None, settings: str = "playground") -> dict:
    """Brax's own trainer on ``task``.  SAC: our preset's envs, batch, updates and replay sizes.
    PPO: ``settings="playground"`` runs Playground's config at our num_envs (its own, heavier
    update: 16 epochs of 32 minibatches); ``"ours"`` gives Brax our preset's arithmetic (unroll,
    epochs, minibatches, hidden sizes; one unroll of every env per update, as ours)."""
    sys.path.insert(0, str(HERE))
    import _compare
    import brax_compat

    from jaxrl.train import registry

    brax_compat.patch()
    name, expr, default_steps, evals = TRAINERS[trainer]
    steps = steps or default_steps
    cfg = eval(expr, {"cfg": registry.get(name).config})
    compiled = _compile_counter()
    if trainer == "ppo":
        import ppo_vs_brax

        same = {"unroll_length": cfg.unroll_length, "num_minibatches": cfg.num_minibatches,
                "batch_size": cfg.num_envs // cfg.num_minibatches, "num_updates_per_batch": cfg.num_epochs,
                "hidden": cfg.hidden}
        res = ppo_vs_brax.run_brax(task, steps, cfg.num_envs, evals, 16, 0, same if settings == "ours" else None)
        curve = (res["steps"], res["eval_times_s"])
    else:
        res = _compare.run_brax(task, cfg, steps, 0, evals)
        curve = ([r["env_steps"] for r in res["rows"]], [r["wall_s"] for r in res["rows"]])
    # Brax evaluates once before training: its second evaluation follows the first training epoch.
    return {"env_steps_per_s_with_eval": steady_rate(curve[0][1:], curve[1][1:]),
            "backend_compile_s": compiled[0], "compile_events_s": compiled[1], "wall_s": res["wall_s"],
            "env_steps": curve[0][-1], "num_envs": cfg.num_envs, "settings": settings if trainer == "ppo" else "ours",
            "brax_config": res.get("config")}


# ------------------------------------------------------------------ driver
def _subprocess(kind: str, **kw) -> dict:
    """One measurement in a fresh interpreter with an empty compilation cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAXRL_COMPILATION_CACHE": cache, "PYTHONPATH": str(HERE)}
        cmd = [sys.executable, __file__, "--one", json.dumps({"kind": kind, **kw})]
        out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": (out.stderr or out.stdout)[-3000:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["CartpoleBalance", "CheetahRun"])
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    p.add_argument("--raw-steps", type=int, default=200)
    p.add_argument("--no-brax", action="store_true")
    p.add_argument("--brax-ppo-settings", nargs="+", default=["playground", "ours"],
                   choices=["playground", "ours"],
                   help="Brax PPO rows: Playground's config and/or ours (Playground's takes long on CPU)")
    p.add_argument("--raw-only", nargs="*", default=[], metavar="TASK",
                   help="tasks measured for raw simulation only (no trainer loops)")
    p.add_argument("--steps", nargs="*", default=[], metavar="TRAINER=N",
                   help="env-step budget of a trainer's measured runs, ours and Brax's (default: TRAINERS)")
    p.add_argument("--layouts", nargs="+", default=["1x1", "2x1", "2x4"], metavar="DxK",
                   help="trainer runs on D devices with K seeds (default: 1x1 2x1 2x4)")
    p.add_argument("--raw-from", metavar="JSON",
                   help="take the raw-simulation rows from an earlier results file instead of measuring")
    p.add_argument("--alternate", type=int, default=0, metavar="N",
                   help="instead of the table: N pairs per trainer of Brax's run then ours (1 device, 1 seed; "
                        "PPO with our arithmetic), each pair's ratio -- the machine's drift hits both sides alike")
    p.add_argument("--reset-pool", type=int, default=0, metavar="R",
                   help="our envs restart from R pooled start states per env (envs.make reset_pool; "
                        "1 = Brax's auto-reset); default 0: a fresh task reset per episode")
    p.add_argument("--out", default="experiments/results/throughput_cpu.json")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    budget = {}
    for item in a.steps:
        trainer, _, n = item.partition("=")
        if trainer not in TRAINERS or not n.isdigit() or int(n) < 1:
            p.error(f"--steps {item!r}: give TRAINER=N with TRAINER in {sorted(TRAINERS)} and N >= 1")
        budget[trainer] = int(n)
    try:
        layouts = [tuple(int(x) for x in item.split("x")) for item in a.layouts]
        assert all(len(t) == 2 and min(t) >= 1 for t in layouts)
    except (ValueError, AssertionError):
        p.error(f"--layouts {a.layouts}: give DEVICESxSEEDS items such as 1x1 2x4")
    if a.one:
        spec = json.loads(a.one)
        kind = spec.pop("kind")
        fn = {"raw": measure_raw, "loop": measure_loop, "brax": measure_brax}[kind]
        print("RESULT " + json.dumps(fn(**spec), default=float), flush=True)
        return

    import _compare  # experiments/, beside this script

    results = {"meta": _compare.meta(trainers={k: v[1] for k, v in TRAINERS.items()},
                                     steps={k: budget.get(k, v[2]) for k, v in TRAINERS.items()},
                                     command="experiments/throughput.py " + " ".join(sys.argv[1:]),
                                     reset_pool=a.reset_pool),
               "rows": []}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(row):
        results["rows"].append(row)
        print(json.dumps(row, default=float), flush=True)
        out.write_text(json.dumps(results, indent=1, default=float))

    if a.alternate:
        for task in a.tasks:
            for trainer in a.trainers:
                for i in range(a.alternate):
                    b = _subprocess("brax", trainer=trainer, task=task, steps=budget.get(trainer), settings="ours")
                    r = _subprocess("loop", trainer=trainer, task=task, devices=1, seeds=1, steps=budget.get(trainer),
                                    reset_pool=a.reset_pool)
                    ratio = (b["env_steps_per_s_with_eval"] / r["env_steps_per_s_with_eval"]
                             if b.get("env_steps_per_s_with_eval") and r.get("env_steps_per_s_with_eval") else None)
                    record({"task": task, "what": "pair", "trainer": trainer, "pair": i, "brax": b, "ours": r,
                            "ours_time_per_env_step_over_brax": ratio})
        return
    earlier = json.loads(Path(a.raw_from).read_text())["rows"] if a.raw_from else []
    for task in a.tasks + a.raw_only:
        raw = {(r["num_envs"], r["devices"], r["mode"]): r.get("env_steps_per_s")
               for r in earlier if r.get("task") == task and r.get("what") == "raw"}
        for n in sorted({256 if t == "ppo" else 16 for t in a.trainers}) if not a.raw_from else []:
            for devices, mode in ((1, "shard_map"), (2, "shard_map"), (2, "gspmd")):
                r = _subprocess("raw", task=task, num_envs=n, devices=devices, mode=mode, steps=a.raw_steps,
                                reset_pool=a.reset_pool)
                raw[n, devices, mode] = r.get("env_steps_per_s")
                record({"task": task, "what": "raw", "num_envs": n, "devices": devices, "mode": mode, **r})
        for trainer in ([] if task in a.raw_only else a.trainers):
            n = 256 if trainer == "ppo" else 16
            for devices, seeds in layouts:
                r = _subprocess("loop", trainer=trainer, task=task, devices=devices, seeds=seeds,
                                steps=budget.get(trainer), reset_pool=a.reset_pool)
                if "env_steps_per_s" in r and raw.get((n, devices, "shard_map")):
                    r["loop_over_raw"] = r["env_steps_per_s"] / raw[n, devices, "shard_map"]
                record({"task": task, "what": "loop", "trainer": trainer, "devices": devices, "seeds": seeds, **r})
            for settings in ([] if a.no_brax else a.brax_ppo_settings if trainer == "ppo" else ["ours"]):
                r = _subprocess("brax", trainer=trainer, task=task, steps=budget.get(trainer), settings=settings)
                ours = [x for x in results["rows"] if x.get("trainer") == trainer and x.get("task") == task
                        and x.get("devices") == 1 and x.get("seeds") == 1 and "env_steps_per_s_with_eval" in x]
                if ours and r.get("env_steps_per_s_with_eval"):  # < 1: ours takes less time per env step
                    r["ours_time_per_env_step_over_brax"] = (r["env_steps_per_s_with_eval"]
                                                             / ours[0]["env_steps_per_s_with_eval"])
                record({"task": task, "what": "brax", "trainer": trainer, **r})


if __name__ == "__main__":
    main()
