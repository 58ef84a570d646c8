"""FlashSAC from Python: ``jaxrl.flashsac.train(env, config, steps=...) -> (state, metrics)``.

    import jaxrl.flashsac as flashsac
    state, rows = flashsac.train("CartpoleBalance", flashsac.FlashSACConfig.cpu(), steps=60_000)
    rows[-1]["eval_return"]

The algorithm itself (networks, losses, update) is in `jaxrl.algos.flashsac`; the loop it runs in
is the shared off-policy loop (`jaxrl.train.offpolicy`, bound in `jaxrl.train.registry`);
`jaxrl.train.run` adds metrics files, checkpoints, progress and resume.
"""

from __future__ import annotations

from typing import Any

from envs.wrappers import VecEnv
from jaxrl.algos.flashsac import FlashSACConfig, FlashSACState  # noqa: F401  (re-export)
from jaxrl.train import run
from jaxrl.train.registry import flashsac_agent as make_agent  # noqa: F401  (re-export)
from jaxrl.train.registry import flashsac_loop as make_loop  # noqa: F401  (re-export)

NAME = "flashsac"
Config = FlashSACConfig


def train(env: str | VecEnv, config: FlashSACConfig | None = None, *, steps: int, seed: int = 0,
          out_dir: str | None = None, **run_kwargs) -> tuple[Any, list[dict]]:
    """Train FlashSAC; returns (final agent state, one metrics row per evaluation).

    ``env`` is a task name (made with ``config.num_envs`` envs) or a ready `VecEnv`.  With
    ``out_dir`` the run writes config.json, metrics.jsonl, TensorBoard events, checkpoints and
    summary.json there; ``init_from=RUN_DIR`` starts from another run's agent (see
    `jaxrl.train.run.train` for every option).
    """
    carry, rows = run.train(NAME, env, config or FlashSACConfig.cpu(), steps=steps, seed=seed,
                            out_dir=out_dir, **run_kwargs)
    return carry.agent, rows
