"""How well the physics-informed world model predicts a contact-rich task, next to two baselines.

    python experiments/world_model_fit.py --task HopperHop --out experiments/results/world_model_hopper_held.json
    python experiments/world_model_fit.py --task HopperHop --hold 0 --out experiments/results/world_model_hopper.json

Data: random actions on ``--envs`` envs for ``--steps`` control steps (train: seed 0; held out:
seed 1, other episodes).  Fits (`jaxrl.algos.world_model`, ``WorldModelConfig.cpu()``, H = 4
training rollouts, early stopping on a 20% split of the train data): the physics model and the
plain MLP (same network predicting the state change).  Reports the held-out mean squared
normalised state error after 1 and 4 open-loop steps (exact MJX rollouts for the physics model)
for both, for "next = current", and for the smooth dynamics without any learned force.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import envs
from jaxrl.algos import world_model as wm


def collect(task, dyn, key, num_envs: int, steps: int) -> wm.Sequences:
    """Time-major random-action data -> (x, ctrl, x_next, done) [T, N, ...]."""

    @jax.jit
    def run(key):
        state = jax.vmap(task.reset)(jax.random.split(key, num_envs))

        def body(s, k):
            a = jax.random.uniform(k, (num_envs, task.action_size), minval=-1.0, maxval=1.0)
            s2 = jax.vmap(task.step)(s, a)
            return s2, (dyn.state_of(s.data), s2.data.ctrl, dyn.state_of(s2.data), s2.done)

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    return wm.Sequences(*run(key))


def windows(data: wm.Sequences, h: int) -> wm.Sequences:
    """Every ``h``-step window of time-major data (`wm.sequences`)."""
    return wm.sequences(data.x, data.ctrl, data.x_next, data.done, h)


def evaluate(model: wm.WorldModel, state: wm.WorldModelState, test: wm.Sequences) -> dict:
    out = {}
    for h in (1, 4):
        seq = windows(test, h)
        out[f"h{h}"] = float(jax.jit(model.error)(state, seq))
    return out


def stay_error(seq: wm.Sequences, scaler: wm.Scaler) -> float:
    """"next = current": every step of the window predicted as its first state."""
    err = ((seq.x[:, :1] - seq.x_next) / scaler.x_std) ** 2
    mask = wm.WorldModel.alive(seq.done)[..., None]
    return float((mask * err).sum() / (mask.sum() * err.shape[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="HopperHop")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--min-epoch-steps", type=int, default=None,
                   help="gradient steps per epoch at least (default: WorldModelConfig.cpu()'s 50; 1: LIFT's one pass)")
    p.add_argument("--hold", type=int, choices=(0, 1), default=1,
                   help="1: M and bias forces held over a step's substeps (LIFT, the default); 0: a full MJX step per substep")
    p.add_argument("--out", default="experiments/results/world_model_hopper_held.json")
    a = p.parse_args()

    task = envs.make(a.task, num_envs=1).env
    dyn = wm.SmoothDynamics.of_task(task)
    train = collect(task, dyn, jax.random.PRNGKey(0), a.envs, a.steps)
    test = collect(task, dyn, jax.random.PRNGKey(1), a.envs, a.steps)
    results = {"task": a.task, "train_transitions": a.envs * a.steps, "test_transitions": a.envs * a.steps,
               "machine": "2-core CPU", "jax": jax.__version__, "hold_dynamics": bool(a.hold),
               "max_epochs": a.max_epochs, "min_epoch_steps": a.min_epoch_steps, "models": {}}
    scaler = None
    for physics in (True, False):
        cfg = wm.WorldModelConfig.cpu().replace(physics=physics, max_epochs=a.max_epochs, hold_dynamics=bool(a.hold))
        if a.min_epoch_steps is not None:
            cfg = cfg.replace(min_epoch_steps=a.min_epoch_steps)
        model = wm.WorldModel(cfg, dyn)
        seqs = windows(train, cfg.horizon)
        state = model.init(jax.random.PRNGKey(0), seqs)
        t = time.perf_counter()
        fit = jax.jit(model.fit).lower(state, seqs, jax.random.PRNGKey(1)).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        state, info = fit(state, seqs, jax.random.PRNGKey(1))
        jax.block_until_ready(state)
        row = {"fit_s": time.perf_counter() - t, "compile_s": compile_s, "epochs": int(info["epochs"]),
               "val_error_per_epoch": [float(v) for v in np.asarray(info["val_error"]) if np.isfinite(v)],
               **evaluate(model, state, test)}
        results["models"]["physics" if physics else "plain_mlp"] = row
        print(("physics" if physics else "plain_mlp"), json.dumps(row), flush=True)
        if physics:
            scaler = state.scaler
            zero = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
            results["models"]["smooth_only"] = evaluate(model, zero, test)
    results["models"]["next_equals_current"] = {f"h{h}": stay_error(windows(test, h), scaler)
                                                for h in (1, 4)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["models"], indent=1))


if __name__ == "__main__":
    main()
