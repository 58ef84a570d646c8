"""FlashSAC's update with float32 products against bfloat16 products (`compute_dtype`, the
official use_amp), timed interleaved in one process (so a noisy machine slows both alike):

    JAXRL_CPU_DEVICES=1 python experiments/flashsac_precision_ab.py \
        --out experiments/results/flashsac_precision_ab_cpu.json

Two sizes, 8 updates per call (one vector step of the cpu preset) on random batches with
CheetahRun's observation and action sizes: the cpu preset (widths 32 / 64, batch 128) and the
paper's widths (128 / 256) at batch 512.  Reports the best and median ms per update over
``--repeats`` rounds and each round's critic losses, which must agree to bfloat16 accuracy.
bfloat16 products only pay where the hardware multiplies bfloat16 natively (GPUs, TPUs, CPUs
with AMX: the results record whether this CPU has it); elsewhere XLA widens them to float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _compare  # experiments/, beside this script
import jax
import jax.numpy as jnp

from envs.specs import ArraySpec, EnvSpec
from jaxrl.algos import flashsac as fs
from jaxrl.data.transition import Transition

UPDATES = 8  # one vector step of the cpu preset


def _spec(obs: int, act: int) -> EnvSpec:
    return EnvSpec(name="random", obs={"state": ArraySpec((obs,)), "privileged_state": ArraySpec((obs,))},
                   action=ArraySpec((act,), low=-1.0, high=1.0), num_envs=16, episode_length=1000,
                   dt=0.01, has_privileged_state=False)


def _batches(key: jax.Array, batch: int, obs: int, act: int) -> Transition:
    ks = jax.random.split(key, 4)
    o, no = jax.random.normal(ks[0], (UPDATES, batch, obs)), jax.random.normal(ks[1], (UPDATES, batch, obs))
    return Transition(obs={"state": o, "privileged_state": o}, next_obs={"state": no, "privileged_state": no},
                      action=jax.random.uniform(ks[2], (UPDATES, batch, act), minval=-1, maxval=1),
                      reward=jax.random.normal(ks[3], (UPDATES, batch)),
                      terminated=jnp.zeros((UPDATES, batch), bool), truncated=jnp.zeros((UPDATES, batch), bool))


def compiled_updates(cfg: fs.FlashSACConfig, batch: int, obs: int, act: int):
    """(compiled call of UPDATES updates as the off-policy loop scans them, initial state)."""
    period = cfg.actor_update_every

    def updates(state, key):
        data, keys = _batches(key, batch, obs, act), jax.random.split(key, UPDATES)

        def body(s, i):
            part = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * period, period), (data, keys))
            s, m = fs.update_period(s, *part, cfg)
            return s, m["critic_loss"]

        return jax.lax.scan(body, state, jnp.arange(UPDATES // period))

    state = fs.init(jax.random.PRNGKey(0), _spec(obs, act), cfg)
    return jax.jit(updates).lower(state, jax.random.PRNGKey(1)).compile(), state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--obs", type=int, default=17, help="observation size (CheetahRun: 17)")
    p.add_argument("--act", type=int, default=6, help="action size (CheetahRun: 6)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=10, help="calls of 8 updates per round")
    p.add_argument("--out", default="experiments/results/flashsac_precision_ab_cpu.json")
    a = p.parse_args()
    cpu = fs.FlashSACConfig.cpu()
    sizes = {"cpu preset (widths 32/64, batch 128)": (cpu, 128),
             "paper widths (128/256, batch 512)": (cpu.replace(actor_width=128, critic_width=256), 512)}
    rows = []
    for size, (cfg, batch) in sizes.items():
        fns = {dt: compiled_updates(cfg.replace(compute_dtype=dt), batch, a.obs, a.act)
               for dt in ("float32", "bfloat16")}
        ms = {dt: [] for dt in fns}
        losses = {dt: fn(state, jax.random.PRNGKey(1))[1].ravel().tolist() for dt, (fn, state) in fns.items()}
        for _ in range(a.repeats):
            for dt, (fn, state) in fns.items():
                s, t0 = state, time.perf_counter()
                for i in range(a.calls):
                    s, _ = fn(s, jax.random.PRNGKey(i))
                jax.block_until_ready(s)
                ms[dt].append((time.perf_counter() - t0) / a.calls / UPDATES * 1e3)
        row = {"size": size, "batch": batch, "actor_width": cfg.actor_width, "critic_width": cfg.critic_width,
               **{f"{dt}_ms_per_update_best": min(v) for dt, v in ms.items()},
               **{f"{dt}_ms_per_update_median": statistics.median(v) for dt, v in ms.items()},
               "bfloat16_over_float32_median": statistics.median(ms["bfloat16"]) / statistics.median(ms["float32"]),
               "critic_losses_first_call": losses,
               "max_rel_critic_loss_diff": max(abs(x - y) / abs(x) for x, y in zip(*losses.values()))}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "critic_losses_first_call"}), flush=True)
    with open("/proc/cpuinfo") as f:
        flags = next((ln for ln in f if ln.startswith("flags")), "")
    out = {"meta": _compare.meta(amx_bf16="amx_bf16" in flags.split(), repeats=a.repeats,
                                 command="experiments/flashsac_precision_ab.py " + " ".join(
                                     f"--{k} {v}" for k, v in vars(a).items())),
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
