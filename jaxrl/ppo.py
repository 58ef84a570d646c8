"""PPO from Python: ``jaxrl.ppo.train(env, config, steps=...) -> (state, metrics)``.

    import jaxrl.ppo as ppo
    state, rows = ppo.train("CartpoleBalance", ppo.PPOConfig.cpu(), steps=300_000)

The algorithm is `jaxrl.algos.ppo`, its jitted loop `jaxrl.train.onpolicy`; `jaxrl.train.run`
adds metrics files, checkpoints, progress and resume (this module adapts the loop to it).
For OmniReset, pass a `VecEnv` made by ``envs.omnireset.make_mixture_env``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np

from envs.wrappers import VecEnv
from jaxrl.algos import ppo as algo
from jaxrl.algos.ppo import PPOConfig, PPOState  # noqa: F401  (re-export)
from jaxrl.train import guards, onpolicy

NAME = "ppo"
Config = PPOConfig


class OnPolicyLoop:
    """`jaxrl.train.run` interface over the jitted on-policy chunk (see OffPolicyLoop)."""

    def __init__(self, cfg: PPOConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
                 num_evals: int = 10):
        self.cfg, self.env, self.seed = cfg, env, seed
        total_iters = max(1, math.ceil(steps / cfg.batch_size))
        self.chunk_iters = max(1, math.ceil(total_iters / num_evals))
        self.total_iters = self.chunk_iters * num_evals  # whole chunks: one compiled chunk serves
        self._chunk = onpolicy.make_train_chunk(env, cfg, self.chunk_iters)
        self._evaluate = onpolicy.make_evaluate(eval_env, cfg) if eval_env is not None else None
        self._compiled: dict[str, Any] = {}
        self.compile_s = 0.0

    def init_carry(self) -> onpolicy.OnPolicyCarry:
        return onpolicy.init_carry(self.env, self.cfg, self.seed)

    def env_steps(self, carry) -> int:
        return onpolicy.env_steps(carry, self.cfg)

    def finished(self, carry) -> bool:
        return int(carry.iteration) >= self.total_iters

    def _call(self, name, fn, *args):
        if name not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[name] = fn.lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[name](*args)

    def run_chunk(self, carry):
        t0 = time.perf_counter()
        start = self.env_steps(carry)
        carry, metrics = self._call("chunk", self._chunk, carry)
        metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
        steps = self.env_steps(carry)
        guards.check_actions(carry.env_state.nonfinite_actions, steps)  # root cause first
        guards.check_finite({k: v for k, v in metrics.items() if k != "train_return"}, steps)
        elapsed = time.perf_counter() - t0
        row = {"env_steps": steps, "chunk_s": elapsed, "sps": (steps - start) / max(elapsed, 1e-9), **metrics}
        if self._evaluate is not None:
            key, k = jax.random.split(carry.key)
            carry = carry.replace(key=key)
            row["eval_return"] = float(self._call("eval", self._evaluate, carry.agent, k))
            guards.check_finite({"eval_return": row["eval_return"]}, steps)
        return carry, row


def make_loop(cfg: PPOConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
              num_evals: int = 10) -> OnPolicyLoop:
    return OnPolicyLoop(cfg, env, eval_env, steps, seed, num_evals)


def policy_layers(agent_state: Any, cfg: PPOConfig) -> list[dict]:
    return algo.policy_layers(agent_state, cfg)


def train(env: str | VecEnv, config: PPOConfig | None = None, *, steps: int, seed: int = 0,
          out_dir: str | None = None, **run_kwargs) -> tuple[Any, list[dict]]:
    """Train PPO; returns (final agent state, one metrics row per evaluation)."""
    from jaxrl.train import run

    carry, rows = run.train(NAME, env, config or PPOConfig.cpu(), steps=steps, seed=seed,
                            out_dir=out_dir, **run_kwargs)
    return carry.agent, rows
