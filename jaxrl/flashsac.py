"""FlashSAC from Python: ``jaxrl.flashsac.train(env, config, steps=...) -> (state, metrics)``.

    import jaxrl.flashsac as flashsac
    state, rows = flashsac.train("CartpoleBalance", flashsac.FlashSACConfig.cpu(), steps=60_000)
    rows[-1]["eval_return"]

The algorithm itself (networks, losses, update) is in `jaxrl.algos.flashsac`; the loop it runs in
is the shared off-policy loop (`jaxrl.train.offpolicy`); `jaxrl.train.run` adds metrics files,
checkpoints, progress and resume.
"""

from __future__ import annotations

import functools
from typing import Any

from envs.wrappers import VecEnv
from jaxrl.algos import flashsac as algo
from jaxrl.algos.flashsac import FlashSACConfig, FlashSACState  # noqa: F401  (re-export)
from jaxrl.train.offpolicy import OffPolicyAgent, OffPolicyLoop, OffPolicySettings

NAME = "flashsac"
Config = FlashSACConfig


def make_agent(cfg: FlashSACConfig, env: VecEnv) -> OffPolicyAgent:
    """Bind the config (and env spec) into the five functions the off-policy loop calls."""

    def act(state, obs, key):
        return algo.act(state, obs, key, cfg, deterministic=True)[0]

    return OffPolicyAgent(
        init=lambda key: algo.init(key, env.spec, cfg),
        explore=functools.partial(algo.explore, cfg=cfg),
        act=act,
        observe=functools.partial(algo.observe, cfg=cfg),
        update=functools.partial(algo.update, cfg=cfg),
    )


def make_loop(cfg: FlashSACConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
              num_evals: int = 10) -> OffPolicyLoop:
    """The off-policy loop for this config; the cosine schedule length is set from the budget."""
    if env.num_envs != cfg.num_envs:
        raise ValueError(f"env has {env.num_envs} envs but config.num_envs={cfg.num_envs}")
    settings = OffPolicySettings(
        total_steps=steps, batch_size=cfg.batch_size, updates_per_step=cfg.updates_per_step,
        buffer_size=cfg.buffer_size, min_buffer=cfg.min_buffer, num_evals=num_evals,
    )
    probe = OffPolicyLoop(env, make_agent(cfg, env), settings, None, seed)
    cfg = cfg.replace(total_updates=max(1, probe.num_updates))
    return OffPolicyLoop(env, make_agent(cfg, env), settings, eval_env, seed)


def policy_layers(agent_state: Any, cfg: FlashSACConfig) -> list[dict]:
    return algo.policy_layers(agent_state, cfg)


def train(env: str | VecEnv, config: FlashSACConfig | None = None, *, steps: int, seed: int = 0,
          out_dir: str | None = None, **run_kwargs) -> tuple[Any, list[dict]]:
    """Train FlashSAC; returns (final agent state, one metrics row per evaluation).

    ``env`` is a task name (made with ``config.num_envs`` envs) or a ready `VecEnv`.  With
    ``out_dir`` the run writes config.json, metrics.jsonl, TensorBoard events, checkpoints and
    summary.json there (see `jaxrl.train.run.train`).
    """
    from jaxrl.train import run

    carry, rows = run.train(NAME, env, config or FlashSACConfig.cpu(), steps=steps, seed=seed,
                            out_dir=out_dir, **run_kwargs)
    return carry.agent, rows
