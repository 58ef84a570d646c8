"""Large-batch SAC from Python: ``jaxrl.sac.train(env, config, steps=...) -> (state, metrics)``.

    import jaxrl.sac as sac
    state, rows = sac.train("CartpoleBalance", sac.SACConfig.cpu(), steps=30_000)
    state, rows = sac.train("T1JoystickFlatTerrain", sac.SACConfig.lift("T1JoystickFlatTerrain"),
                            steps=50_000_000, out_dir="runs/t1")   # a GPU run

The algorithm (networks, losses, update order, presets) is in `jaxrl.algos.sac`; it runs in the
shared off-policy loop (`jaxrl.train.offpolicy`, bound in `jaxrl.train.registry`); the config's
``env_overrides`` (LIFT: pushes off, T1 observation noise 0) are applied when ``env`` is a name.
"""

from __future__ import annotations

from typing import Any

from envs.wrappers import VecEnv
from jaxrl.algos.sac import SACConfig, SACState  # noqa: F401  (re-export)
from jaxrl.train import run
from jaxrl.train.registry import sac_agent as make_agent  # noqa: F401  (re-export)
from jaxrl.train.registry import sac_loop as make_loop  # noqa: F401  (re-export)

NAME = "sac"
Config = SACConfig


def train(env: str | VecEnv, config: SACConfig | None = None, *, steps: int, seed: int = 0,
          out_dir: str | None = None, **run_kwargs) -> tuple[Any, list[dict]]:
    """Train SAC; returns (final agent state, one metrics row per evaluation).

    ``env`` is a task name (made with ``config.num_envs`` envs and ``config.env_overrides``) or a
    ready `VecEnv` (used as it is).  With ``out_dir`` the run writes config.json, metrics.jsonl,
    TensorBoard events, checkpoints and summary.json; ``init_from=RUN_DIR, init_parts=("actor",
    "critic", "target", "obs")`` starts from another run's parts (see `jaxrl.train.run.train`).
    """
    carry, rows = run.train(NAME, env, config or SACConfig.cpu(), steps=steps, seed=seed,
                            out_dir=out_dir, **run_kwargs)
    return carry.agent, rows
