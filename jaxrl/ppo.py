"""PPO from Python: ``jaxrl.ppo.train(env, config, steps=...) -> (state, metrics)``.

    import jaxrl.ppo as ppo
    state, rows = ppo.train("CartpoleBalance", ppo.PPOConfig.cpu(), steps=300_000)

The algorithm is `jaxrl.algos.ppo`, its jitted loop `jaxrl.train.onpolicy.OnPolicyLoop`;
`jaxrl.train.run` adds metrics files, checkpoints, progress and resume.  For OmniReset, pass a
`VecEnv` made by ``envs.omnireset.make_mixture_env``.
"""

from __future__ import annotations

from typing import Any

from envs.wrappers import VecEnv
from jaxrl.algos.ppo import PPOConfig, PPOState  # noqa: F401  (re-export)
from jaxrl.train import run

NAME = "ppo"
Config = PPOConfig


def train(env: str | VecEnv, config: PPOConfig | None = None, *, steps: int, seed: int = 0,
          out_dir: str | None = None, **run_kwargs) -> tuple[Any, list[dict]]:
    """Train PPO; returns (final agent state, one metrics row per evaluation).  Options as
    `jaxrl.train.run.train` (num_evals, progress, init_from, ...)."""
    carry, rows = run.train(NAME, env, config or PPOConfig.cpu(), steps=steps, seed=seed,
                            out_dir=out_dir, **run_kwargs)
    return carry.agent, rows
