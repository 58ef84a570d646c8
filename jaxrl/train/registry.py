"""The algorithm registry: one table ``name -> (Config, make_loop, policy_layers, presets)``.

The CLI's algorithm and ``--preset`` choices, `jaxrl.train.run` (train, resume, rebuild), export
and the tests all read this table; adding an algorithm is adding a row and its loop binding.

Every config class has the same API: ``paper(env_name)``, ``cpu()`` (further presets take
``env_name`` too), ``replace(**kw)``, and documented fields (tyro shows them in ``--help``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax

from envs.wrappers import VecEnv
from jaxrl.algos import flashsac as flashsac_algo
from jaxrl.algos import ppo as ppo_algo
from jaxrl.algos import sac as sac_algo
from jaxrl.train.finetune import FinetuneConfig, FinetuneLoop
from jaxrl.train.loop import HostLoop
from jaxrl.train.offpolicy import OffPolicyAgent, OffPolicyLoop, OffPolicySettings
from jaxrl.train.onpolicy import OnPolicyLoop

# (config, train env, eval env or None, env-step budget, seed, num_evals, *, devices, seeds) -> loop
LoopFactory = Callable[..., HostLoop]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    config: type  # frozen dataclass: paper(env_name), cpu(), replace(**kw)
    make_loop: LoopFactory
    policy_layers: Callable[[Any, Any], list]  # (agent state, config) -> export ops
    presets: tuple[str, ...]  # config classmethods by CLI name ("lift-smoke" -> lift_smoke)
    summary: str  # one line for `--help`

    def preset(self, name: str, env_name: str | None = None) -> Any:
        """The named preset's config for ``env_name`` (presets that do not depend on the task
        ignore it)."""
        if name not in self.presets:
            raise ValueError(f"{self.name} has no preset {name!r}; presets: {', '.join(self.presets)}")
        fn = getattr(self.config, name.replace("-", "_"))
        return fn(env_name) if "env_name" in inspect.signature(fn).parameters else fn()


# ------------------------------------------------------------------------- loop bindings
def flashsac_agent(cfg: flashsac_algo.FlashSACConfig, env: VecEnv) -> OffPolicyAgent:
    """FlashSAC's five functions with the config (and env spec) bound, for the off-policy loop."""

    def act(state, obs, key):  # evaluation acts at the learner's precision, as training does
        with jax.default_matmul_precision(cfg.matmul_precision):
            return flashsac_algo.act(state, obs, key, cfg, deterministic=True)[0]

    return OffPolicyAgent(
        init=lambda key: flashsac_algo.init(key, env.spec, cfg),
        explore=functools.partial(flashsac_algo.explore, cfg=cfg),
        act=act,
        observe=functools.partial(flashsac_algo.observe, cfg=cfg),
        update=functools.partial(flashsac_algo.update, cfg=cfg),
        period=cfg.actor_update_every,
        update_period=functools.partial(flashsac_algo.update_period, cfg=cfg),
        per_env=(".reward_stats.G", ".explore.noise"),
        sparse_metrics=flashsac_algo.ACTOR_METRICS,
    )


def flashsac_loop(cfg: flashsac_algo.FlashSACConfig, env: VecEnv, eval_env: VecEnv | None,
                  steps: int, seed: int, num_evals: int = 10, *, devices: int | None = None,
                  seeds: int = 1) -> OffPolicyLoop:
    """The off-policy loop for this config; the cosine schedules' length is the run's number of
    updates, known once the budget is split into chunks."""
    if env.num_envs != cfg.num_envs:
        raise ValueError(f"env has {env.num_envs} envs but config.num_envs={cfg.num_envs}")
    settings = OffPolicySettings(
        total_steps=steps, batch_size=cfg.batch_size, updates_per_step=cfg.updates_per_step,
        buffer_size=cfg.buffer_size, min_buffer=cfg.min_buffer, num_evals=num_evals,
        learner_precision=cfg.matmul_precision, obs_dtype=cfg.replay_obs_dtype,
    )
    iters = OffPolicyLoop.budget(env.num_envs, settings)[1]
    cfg = cfg.replace(total_updates=max(1, iters * cfg.updates_per_step))
    return OffPolicyLoop(env, flashsac_agent(cfg, env), settings, eval_env, seed, devices=devices,
                         seeds=seeds)


def sac_agent(cfg: sac_algo.SACConfig, env: VecEnv) -> OffPolicyAgent:
    """The large-batch SAC's five functions with the config (and env spec) bound."""

    def act(state, obs, key):  # evaluation acts at the learner's precision, as training does
        with jax.default_matmul_precision(cfg.matmul_precision):
            return sac_algo.act(state, obs, key, cfg, deterministic=True)[0]

    return OffPolicyAgent(
        init=lambda key: sac_algo.init(key, env.spec, cfg),
        explore=functools.partial(sac_algo.explore, cfg=cfg),
        act=act,
        observe=functools.partial(sac_algo.observe, cfg=cfg),
        update=functools.partial(sac_algo.update, cfg=cfg),
    )


def sac_loop(cfg: sac_algo.SACConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
             num_evals: int = 10, *, devices: int | None = None, seeds: int = 1) -> OffPolicyLoop:
    """The off-policy loop with one uniform sample per iteration scanned over the updates
    (``sample_once``), the learner at ``cfg.matmul_precision``.  The config's ``env_overrides``
    are applied where the envs are made (`jaxrl.train.run.train`), not here."""
    if env.num_envs != cfg.num_envs:
        raise ValueError(f"env has {env.num_envs} envs but config.num_envs={cfg.num_envs}")
    sac_algo.check_obs_keys(env.spec, cfg)
    settings = OffPolicySettings(
        total_steps=steps, batch_size=cfg.batch_size, updates_per_step=cfg.updates_per_step,
        buffer_size=cfg.buffer_size, min_buffer=cfg.min_buffer, num_evals=num_evals,
        learner_precision=cfg.matmul_precision, sample_once=True, obs_dtype=cfg.replay_obs_dtype,
        warmup_actions=cfg.warmup_actions,
    )
    return OffPolicyLoop(env, sac_agent(cfg, env), settings, eval_env, seed, devices=devices,
                         seeds=seeds)


def ppo_loop(cfg: ppo_algo.PPOConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
             num_evals: int = 10, *, devices: int | None = None, seeds: int = 1) -> OnPolicyLoop:
    return OnPolicyLoop(cfg, env, eval_env, steps, seed, num_evals, devices=devices, seeds=seeds)


def finetune_loop(cfg: FinetuneConfig, env: VecEnv, eval_env: VecEnv | None, steps: int, seed: int,
                  num_evals: int = 10, *, devices: int | None = None, seeds: int = 1) -> FinetuneLoop:
    """World-model finetuning of a pretrained SAC agent (``steps``: REAL env steps)."""
    return FinetuneLoop(cfg, env, eval_env, steps, seed, num_evals, devices=devices, seeds=seeds)


def _finetune_policy_layers(state: Any, cfg: FinetuneConfig) -> list:
    return sac_algo.policy_layers(state, cfg.sac)


# ------------------------------------------------------------------------------- the table
ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("flashsac", flashsac_algo.FlashSACConfig, flashsac_loop, flashsac_algo.policy_layers,
                  ("cpu", "paper"), "FlashSAC: norm-bounded SAC, distributional critic, few updates on big data"),
        Algorithm("ppo", ppo_algo.PPOConfig, ppo_loop, ppo_algo.policy_layers, ("cpu", "paper"),
                  "PPO with OmniReset's recipe (state-dependent std, adaptive KL)"),
        Algorithm("sac", sac_algo.SACConfig, sac_loop, sac_algo.policy_layers,
                  ("cpu", "brax", "paper", "lift", "lift-deploy", "lift-lowdim", "lift-smoke"),
                  "Large-batch, high-UTD SAC (LIFT's pretraining recipe: bf16 MLPs, asymmetric obs)"),
        Algorithm("finetune", FinetuneConfig, finetune_loop, _finetune_policy_layers, ("cpu", "paper"),
                  "World-model finetuning of a `sac` run in a changed env (use `jaxrl finetune RUN_DIR`)"),
    )
}


def get(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
