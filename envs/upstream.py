"""Workarounds for known defects in MuJoCo Playground 0.2's learning configs.

1. ``dm_control_suite_params.brax_sac_config`` sets ``num_resets_per_eval``, a keyword Brax's
   ``sac.train`` does not accept (TypeError).  We drop keys the trainer does not take.
2. Its ``PendulumSwingUp`` special cases (action_repeat 4, fewer PPO updates, longer SAC budget)
   never apply: the task is registered as ``PendulumSwingup``.  We apply them for the real name.
3. ``network_factory`` is a ConfigDict of network kwargs, not a factory; we build the factory.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def _fix_pendulum(env_name: str, cfg: dict, algo: str) -> None:
    if env_name != "PendulumSwingup":
        return
    cfg["action_repeat"] = 4
    if algo == "ppo":
        cfg["num_updates_per_batch"] = 4
    else:
        cfg["num_timesteps"] = 10_000_000


def _accepted(train_fn, cfg: dict) -> dict:
    params = inspect.signature(train_fn).parameters
    return {k: v for k, v in cfg.items() if k in params}


def brax_sac_kwargs(env_name: str) -> dict[str, Any]:
    """Playground's tuned Brax SAC settings for a dm_control task, as kwargs ``sac.train`` accepts."""
    from brax.training.agents.sac import networks as sac_networks
    from brax.training.agents.sac import train as sac
    from mujoco_playground.config import dm_control_suite_params

    cfg = dict(dm_control_suite_params.brax_sac_config(env_name))
    _fix_pendulum(env_name, cfg, "sac")
    net = dict(cfg.pop("network_factory", {}) or {})
    cfg["network_factory"] = functools.partial(sac_networks.make_sac_networks, **net)
    return _accepted(sac.train, cfg)


def brax_ppo_kwargs(env_name: str) -> dict[str, Any]:
    """Playground's tuned Brax PPO settings for a dm_control task, as kwargs ``ppo.train`` accepts."""
    from brax.training.agents.ppo import networks as ppo_networks
    from brax.training.agents.ppo import train as ppo
    from mujoco_playground.config import dm_control_suite_params

    cfg = dict(dm_control_suite_params.brax_ppo_config(env_name))
    _fix_pendulum(env_name, cfg, "ppo")
    net = dict(cfg.pop("network_factory", {}) or {})
    cfg["network_factory"] = functools.partial(ppo_networks.make_ppo_networks, **net)
    return _accepted(ppo.train, cfg)
