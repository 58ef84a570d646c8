"""FlashSAC: SAC with norm-bounded networks, a distributional critic, few updates and big data.

Recipe (ALGORITHMS.md §1): norm-bounded BN/residual trunks re-projected after every optimiser
step; a two-member categorical (C51) critic ensemble with cross-batch value prediction; per-sample
min-ensemble target; reward scaling by running discounted-return statistics; temperature tuned to
a Gaussian-width target entropy; held (Zeta-distributed) exploration noise.

One update, in the official order: on update steps 0, 2, 4, ... the actor step, then the
temperature step; then the critic step, whose target already uses the new actor and α; then
the Polyak target.

Mixed precision (``compute_dtype="bfloat16"``, on in `paper` as the official ``use_amp`` is on
its GPU simulators): inside an update every network product multiplies bfloat16 operands
into float32 (`jaxrl.nets.bounded.low_precision_matmul`); all else, and acting, evaluation and
export, stay float32 -- the official code autocasts its update functions only.

Pure functions over a `FlashSACState` pytree; the config is static (a frozen, hashable
dataclass passed to every function), so ``jax.jit(functools.partial(update, cfg=cfg))`` works.
The warm-up with random actions (``min_buffer``) and the replay buffer belong to the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs.registry import override_pairs
from envs.specs import EnvSpec
from jaxrl.algos import distributional
from jaxrl.algos.compiled_init import compiled_init
from jaxrl.data import replay
from jaxrl.data.transition import Transition
from jaxrl.nets.bounded import BIAS, UNIT_KERNEL, project
from jaxrl.nets.heads import (
    TanhGaussianActor,
    critic_ensemble,
    half_rows,
    pair_rows,
    sample_tanh_gaussian,
)

ENSEMBLE_SIZE = 2
# Playground's humanoids (every task of theirs: ALGORITHMS.md §1 "γ 0.97 for Playground humanoids";
# the official script runs its four G1/T1 joystick tasks at 0.97).  Quadrupeds (Go1, Spot,
# Barkour) and everything else keep 0.99.
_HUMANOID_PREFIXES = ("G1", "T1", "H1", "BerkeleyHumanoid", "Op3", "Apollo", "Booster")


# ============================================================================ config
@dataclasses.dataclass(frozen=True)
class FlashSACConfig:
    """FlashSAC hyper-parameters; defaults are the paper's GPU settings (see `paper`, `cpu`)."""

    # --- data collection / replay
    num_envs: int = 1024  # parallel envs: lots of diverse, decorrelated data per update
    batch_size: int = 2048  # large batches keep BN statistics and gradients low-noise
    updates_per_step: int = 2  # gradient steps per vector env step: few updates, big data
    buffer_size: int = 10_000_000  # large replay so the critic sees a broad state distribution
    min_buffer: int = 100_000  # warm-up transitions collected with uniform random actions
    # --- RL
    gamma: float = 0.99  # discount; 0.97 for every Playground humanoid task (`paper`)
    tau: float = 0.01  # Polyak rate of the target critic: slow target for stable bootstraps
    # --- optimiser (Adam, no weight decay, no clipping: the norm bounds replace them)
    # Every optimiser decays its lr on a cosine over `total_updates` of ITS OWN steps.  The
    # actor and temperature take a step only every `actor_update_every` updates, so (as in the
    # official code) they end halfway down the cosine, near (lr_init + lr_final) / 2.
    lr_init: float = 3e-4  # cosine schedule start
    lr_final: float = 1.5e-4  # cosine end (critic): halving the lr late stabilises the finish
    total_updates: int = 100_000  # cosine length in updates; the trainer sets it from the budget
    # --- networks
    actor_width: int = 128  # actor trunk width: the policy needs less capacity than the critic
    critic_width: int = 256  # critic trunk width
    num_blocks: int = 2  # inverted residual blocks per trunk
    expansion: int = 4  # block hidden size = expansion * width (inverted bottleneck)
    bn_momentum: float = 0.99  # flax convention: running = m * running + (1 - m) * batch
    bn_eps: float = 1e-5  # BatchNorm variance epsilon
    rms_eps: float = 1e-6  # RMSNorm epsilon
    log_std_min: float = -10.0  # lower bound of the policy log-std (official: near-deterministic)
    log_std_max: float = 2.0  # upper bound (official); the temperature keeps std near 0.15
    # --- distributional critic
    num_atoms: int = 101  # C51 atoms: fine value resolution on the scaled-reward range
    v_min: float = -5.0  # support lower end (rewards are scaled so |G| fits)
    v_max: float = 5.0  # support upper end
    reward_scale_max_ratio: float = 5.0  # r / max(std(G), max|G| / this): keeps |G| <= v_max
    # --- temperature
    init_log_alpha: float = math.log(0.01)  # small initial entropy bonus
    target_entropy_sigma: float = 0.15  # target entropy = that of N(0, sigma^2) per action dim
    # --- schedule of the actor
    actor_update_every: int = 2  # actor + alpha step on updates 0, 2, 4, ...: a delayed policy
    # --- exploration
    noise_repeat_max: int = 16  # max steps one Gaussian noise vector is held
    noise_repeat_exponent: float = 2.0  # p(k) ∝ k^-exponent (truncated Zeta): mostly short holds
    # --- observations
    critic_obs_key: str = "privileged_state"  # asymmetric actor-critic: critic sees privileged
    actor_obs_key: str = "state"  # what the deployed policy sees
    # learner matmul precision (None: JAX's default, TF32 on recent GPUs); physics stays 'highest'
    matmul_precision: str | None = None
    # dtype the networks' products multiply in (float32 accumulation, float32 everything else):
    # "bfloat16" is the official use_amp (fp16 autocast) of its GPU-simulator runs (`paper`)
    compute_dtype: str = "float32"
    # replay's observation dtype: "bfloat16" halves the buffer; acting and export then round too
    replay_obs_dtype: str = "float32"
    # ((dotted Playground config key, value), ...) the run applies to its env; `paper` on the
    # G1/T1 joystick tasks: pushes off, as for the paper's headline numbers
    env_overrides: tuple = ()

    def __post_init__(self):
        def bad(field: str, value: Any, fix: str):
            raise ValueError(f"FlashSACConfig.{field}={value!r} is invalid: {fix}")

        object.__setattr__(self, "env_overrides", override_pairs(self.env_overrides, "FlashSACConfig.env_overrides"))

        if self.matmul_precision not in (None, "default", "high", "highest", "bfloat16",
                                         "tensorfloat32", "float32"):
            bad("matmul_precision", self.matmul_precision, "use None, 'default', 'high' or 'highest'")
        if self.compute_dtype not in ("float32", "bfloat16"):
            bad("compute_dtype", self.compute_dtype, "use 'float32' or 'bfloat16'")

        for f in (
            "num_envs",
            "batch_size",
            "updates_per_step",
            "buffer_size",
            "total_updates",
            "actor_width",
            "critic_width",
            "expansion",
            "actor_update_every",
            "noise_repeat_max",
        ):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                bad(f, v, "it must be a positive integer")
        if self.num_blocks < 0:
            bad("num_blocks", self.num_blocks, "it must be >= 0")
        if self.min_buffer < 0:
            bad("min_buffer", self.min_buffer, "it must be >= 0")
        if self.batch_size > self.buffer_size:
            bad(
                "batch_size",
                self.batch_size,
                f"it exceeds buffer_size={self.buffer_size}; raise buffer_size or lower batch_size",
            )
        if self.min_buffer > self.buffer_size:
            bad(
                "min_buffer",
                self.min_buffer,
                f"it exceeds buffer_size={self.buffer_size}; raise buffer_size or lower min_buffer",
            )
        if not 0.0 <= self.gamma <= 1.0:
            bad("gamma", self.gamma, "the discount must lie in [0, 1] (e.g. 0.99)")
        if not 0.0 < self.tau <= 1.0:
            bad(
                "tau",
                self.tau,
                "the Polyak rate must lie in (0, 1] (e.g. 0.01); 0 never updates the target",
            )
        if self.num_atoms < 2:
            bad("num_atoms", self.num_atoms, "a categorical critic needs >= 2 atoms (e.g. 101)")
        if not self.v_min < self.v_max:
            bad("v_min", self.v_min, f"it must be < v_max={self.v_max}")
        if not (self.lr_init > 0 and self.lr_final > 0):
            bad(
                "lr_init" if self.lr_init <= 0 else "lr_final",
                self.lr_init if self.lr_init <= 0 else self.lr_final,
                "learning rates must be > 0",
            )
        if not self.log_std_min < self.log_std_max:
            bad("log_std_min", self.log_std_min, f"it must be < log_std_max={self.log_std_max}")
        if not 0.0 <= self.bn_momentum < 1.0:
            bad("bn_momentum", self.bn_momentum, "it must lie in [0, 1) (flax convention, 0.99)")
        for f in ("bn_eps", "rms_eps", "target_entropy_sigma", "reward_scale_max_ratio"):
            if not getattr(self, f) > 0:
                bad(f, getattr(self, f), "it must be > 0")
        if self.noise_repeat_exponent < 0:
            bad("noise_repeat_exponent", self.noise_repeat_exponent, "it must be >= 0")

    @classmethod
    def paper(cls, env_name: str | None = None) -> FlashSACConfig:
        """The published GPU configuration; gamma 0.97 for Playground's humanoids (0.99 elsewhere);
        bfloat16 products (the official ``use_amp: true`` of its GPU-simulator runs); on the G1 / T1
        joystick tasks (and their variants) pushes off, as for the headline numbers (pushes and
        domain randomisation off; `jaxrl train --env-kwargs push_config.enable=true
        domain_randomization=true` turns both on)."""
        humanoid = bool(env_name) and env_name.startswith(_HUMANOID_PREFIXES)
        headline = bool(env_name) and env_name.startswith(("G1Joystick", "T1Joystick"))
        return cls(gamma=0.97 if humanoid else 0.99, compute_dtype="bfloat16",
                   env_overrides=(("push_config.enable", False),) if headline else ())

    @classmethod
    def cpu(cls) -> FlashSACConfig:
        """Small settings for a 2-core CPU.

        Measured (seed 0, 40k env steps, experiments/flashsac_vs_brax.py): deterministic eval
        return 990 on CartpoleBalance, 745 on CartpoleSwingup, 413 on CheetahRun, in 4-8 min
        each on 2 busy shared cores.  Fewer envs, a small batch and 8 updates per vector step
        (UTD 0.5 instead of 2/1024) trade the GPU's data volume for sample efficiency; the
        faster target (tau 0.02) propagates values within the few thousand updates made.
        """
        return cls(
            num_envs=16,
            batch_size=128,
            updates_per_step=8,
            buffer_size=200_000,
            min_buffer=4_096,
            tau=0.02,
            actor_width=32,
            critic_width=64,
            total_updates=20_000,
        )

    def replace(self, **kw) -> FlashSACConfig:
        return dataclasses.replace(self, **kw)

    @property
    def target_entropy_per_dim(self) -> float:
        """Entropy of N(0, sigma^2): ½ log(2πe σ²) (≈ -0.478 for σ = 0.15)."""
        return 0.5 * math.log(2 * math.pi * math.e * self.target_entropy_sigma**2)


def target_entropy(action_size: int, cfg: FlashSACConfig) -> float:
    """H̄ = ½ |A| log(2πe σ²)."""
    return action_size * cfg.target_entropy_per_dim


# ============================================================================ state
@struct.dataclass
class RewardScaleState:
    """Statistics of the per-env discounted return G used to scale rewards."""

    G: jax.Array  # [N] running discounted return of each env
    mean: jax.Array  # [] running mean of G over all envs and steps
    var: jax.Array  # [] running variance of G (init 1)
    count: jax.Array  # [] number of G samples seen (init 1e-4, as gym's RunningMeanStd)
    max_abs: jax.Array  # [] running max |G|


@struct.dataclass
class ExploreState:
    """Held exploration noise: one vector per env kept for ``steps_left`` more steps."""

    noise: jax.Array  # [N, A] standard normal, reused for the current hold
    steps_left: jax.Array  # [] int32 steps remaining in the hold (0: redraw next step)
    repeat: jax.Array  # [] int32 length k of the current hold


@struct.dataclass
class FlashSACState:
    actor_params: Any
    actor_stats: Any  # BatchNorm running statistics of the actor
    critic_params: Any  # ensemble: every leaf has a leading axis of size 2
    critic_stats: Any
    target_params: Any  # Polyak average of critic_params (never projected)
    target_stats: Any
    log_alpha: jax.Array  # [] log temperature
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    step: jax.Array  # [] int32 critic updates done
    reward_stats: RewardScaleState
    explore: ExploreState


# ============================================================================ modules
def _trunk_kwargs(cfg: FlashSACConfig, train: bool, amp: bool) -> dict:
    """Trunk settings shared by actor and critic (widths differ, set by the caller).  ``amp``:
    inside an update, where products run in ``compute_dtype`` (the official autocast wraps the
    update functions only; acting, evaluation and export stay float32)."""
    return {"num_blocks": cfg.num_blocks, "train": train, "expansion": cfg.expansion,
            "bn_momentum": cfg.bn_momentum, "bn_eps": cfg.bn_eps, "rms_eps": cfg.rms_eps,
            "dtype": jnp.dtype(cfg.compute_dtype) if amp else None}


def _actor(cfg: FlashSACConfig, action_size: int, train: bool, amp: bool = False) -> nn.Module:
    return TanhGaussianActor(action_size=action_size, width=cfg.actor_width,
                             log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                             **_trunk_kwargs(cfg, train, amp))


def _critic(cfg: FlashSACConfig, train: bool, half: int | None = None, amp: bool = False) -> nn.Module:
    """The critic ensemble; ``half`` (0: current, 1: next) for cross-batch prediction."""
    return critic_ensemble(ENSEMBLE_SIZE)(num_atoms=cfg.num_atoms, width=cfg.critic_width,
                                          half=half, **_trunk_kwargs(cfg, train, amp))


def _action_size(state: FlashSACState) -> int:
    return state.actor_params["mean"][UNIT_KERNEL].shape[-1]


def lr_schedule(cfg: FlashSACConfig) -> optax.Schedule:
    """Cosine lr_init -> lr_final over ``total_updates`` steps of the optimiser that uses it."""
    return optax.cosine_decay_schedule(
        cfg.lr_init, max(int(cfg.total_updates), 1), alpha=cfg.lr_final / cfg.lr_init
    )


def optimizer(cfg: FlashSACConfig) -> optax.GradientTransformation:
    """Adam on `lr_schedule`, the same for critic, actor and temperature.

    The schedule advances with the optimiser's own step count, so the actor's and the
    temperature's (stepped every `actor_update_every` updates) reach only the cosine's middle.
    The current lr sits in the state (``opt.hyperparams["learning_rate"]``) for metrics.
    """
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr_schedule(cfg))


# ============================================================================ init / act
@compiled_init
def init(key: jax.Array, spec: EnvSpec, cfg: FlashSACConfig) -> FlashSACState:
    """Fresh agent for ``spec``; bounded parameters start projected."""
    a = spec.action.size
    d_actor = spec.obs[cfg.actor_obs_key].size
    d_critic = spec.obs[cfg.critic_obs_key].size
    k_actor, k_critic = jax.random.split(key)
    obs_a = jnp.zeros((2, d_actor), jnp.float32)
    actor_vars = _actor(cfg, a, train=False).init(k_actor, obs_a)
    critic_vars = _critic(cfg, train=False).init(
        k_critic, jnp.zeros((2, d_critic), jnp.float32), jnp.zeros((2, a), jnp.float32)
    )
    actor_params = project(actor_vars["params"])
    critic_params = project(critic_vars["params"])
    tx = optimizer(cfg)
    log_alpha = jnp.asarray(cfg.init_log_alpha, jnp.float32)
    n = spec.num_envs
    return FlashSACState(
        actor_params=actor_params,
        actor_stats=actor_vars["batch_stats"],
        critic_params=critic_params,
        critic_stats=critic_vars["batch_stats"],
        target_params=critic_params,
        target_stats=critic_vars["batch_stats"],
        log_alpha=log_alpha,
        actor_opt=tx.init(actor_params),
        critic_opt=tx.init(critic_params),
        alpha_opt=tx.init(log_alpha),
        step=jnp.zeros((), jnp.int32),
        reward_stats=RewardScaleState(
            G=jnp.zeros((n,), jnp.float32),
            mean=jnp.zeros((), jnp.float32),
            var=jnp.ones((), jnp.float32),
            count=jnp.full((), 1e-4, jnp.float32),
            max_abs=jnp.zeros((), jnp.float32),
        ),
        explore=ExploreState(
            noise=jnp.zeros((n, a), jnp.float32),
            steps_left=jnp.zeros((), jnp.int32),
            repeat=jnp.zeros((), jnp.int32),
        ),
    )


def _policy(state: FlashSACState, obs: dict, cfg: FlashSACConfig, amp: bool = False):
    """Actor in eval mode (BN running statistics): (mean, log_std), each [N, A]; ``amp``: inside
    an update (the critic target's next action), products in ``compute_dtype``."""
    x = replay.as_stored(obs[cfg.actor_obs_key], cfg.replay_obs_dtype)  # as its updates see it
    return _actor(cfg, _action_size(state), train=False, amp=amp).apply(
        {"params": state.actor_params, "batch_stats": state.actor_stats}, x
    )


def act(
    state: FlashSACState,
    obs: dict,
    key: jax.Array,
    cfg: FlashSACConfig,
    deterministic: bool = False,
) -> tuple[jax.Array, dict]:
    """Actions [N, A] in [-1, 1]: tanh(mean) if ``deterministic`` else a fresh sample."""
    mean, log_std = _policy(state, obs, cfg)
    if deterministic:
        action = jnp.tanh(mean)
    else:
        action, _ = sample_tanh_gaussian(key, mean, log_std)
    return action, {"mean": mean, "log_std": log_std}


def sample_repeat(key: jax.Array, cfg: FlashSACConfig, shape: tuple[int, ...] = ()) -> jax.Array:
    """k ~ truncated Zeta: p(k) ∝ k^-exponent on 1..noise_repeat_max (int32)."""
    k = jnp.arange(1, cfg.noise_repeat_max + 1, dtype=jnp.float32)
    logits = -cfg.noise_repeat_exponent * jnp.log(k)
    return (jax.random.categorical(key, logits, shape=shape) + 1).astype(jnp.int32)


def explore(
    state: FlashSACState, obs: dict, key: jax.Array, cfg: FlashSACConfig
) -> tuple[jax.Array, FlashSACState]:
    """Stochastic actions with held noise: one N(0, I) vector per env is kept for k steps.

    When the hold runs out, both the noise (per env) and k (one for all envs) are redrawn.
    """
    k_noise, k_repeat = jax.random.split(key)
    ex = state.explore
    redraw = ex.steps_left <= 0
    noise = jnp.where(redraw, jax.random.normal(k_noise, ex.noise.shape), ex.noise)
    repeat = jnp.where(redraw, sample_repeat(k_repeat, cfg), ex.repeat)
    steps_left = jnp.where(redraw, repeat, ex.steps_left) - 1
    mean, log_std = _policy(state, obs, cfg)
    action, _ = sample_tanh_gaussian(None, mean, log_std, noise=noise)
    ex = ExploreState(noise=noise, steps_left=steps_left, repeat=repeat)
    return action, state.replace(explore=ex)


# ============================================================================ reward scaling
def observe(state: FlashSACState, tr: Transition, cfg: FlashSACConfig) -> FlashSACState:
    """Advance the reward-scaling statistics by one vector env step.

    G ← γ (1 − done) G + r per env (done = terminated | truncated of this transition, as in
    FastTD3 / FlashSAC), then a batched Welford (Chan) update of mean / var with the N new G
    values, and max|G| ← max(max|G|, max_env |G|).
    """
    rs = state.reward_stats
    done = (tr.terminated | tr.truncated).astype(jnp.float32)
    G = cfg.gamma * (1.0 - done) * rs.G + tr.reward.astype(jnp.float32)
    n = jnp.asarray(G.size, jnp.float32)
    b_mean, b_var = G.mean(), G.var()
    delta = b_mean - rs.mean
    total = rs.count + n
    mean = rs.mean + delta * n / total
    m2 = rs.var * rs.count + b_var * n + jnp.square(delta) * rs.count * n / total
    new = RewardScaleState(
        G=G,
        mean=mean,
        var=m2 / total,
        count=total,
        max_abs=jnp.maximum(rs.max_abs, jnp.max(jnp.abs(G))),
    )
    return state.replace(reward_stats=new)


def reward_scale(state: FlashSACState, cfg: FlashSACConfig) -> jax.Array:
    """The divisor max(sqrt(var_G + 1e-8), max|G| / reward_scale_max_ratio)."""
    rs = state.reward_stats
    return jnp.maximum(jnp.sqrt(rs.var + 1e-8), rs.max_abs / cfg.reward_scale_max_ratio)


def scale_reward(state: FlashSACState, reward: jax.Array, cfg: FlashSACConfig) -> jax.Array:
    """r̃ = r / max(sqrt(var_G + 1e-8), max|G| / 5)."""
    return reward / reward_scale(state, cfg)


# ============================================================================ losses
def critic_target(
    next_logits: jax.Array,
    next_log_prob: jax.Array,
    reward: jax.Array,
    terminated: jax.Array,
    alpha: jax.Array,
    cfg: FlashSACConfig,
) -> jax.Array:
    """Projected target distribution [B, K] from the target ensemble's next-state logits.

    next_logits [E, B, K]; per sample the member with the lower expected Q is used; atoms are
    shifted T z = clip(r̃ + γ (1 − terminated)(z − α log π(a'|s')), v_min, v_max) and
    projected onto the grid.  ``reward`` is already scaled; truncation does not stop the
    bootstrap.
    """
    z = distributional.atoms(cfg.num_atoms, cfg.v_min, cfg.v_max)
    probs = jax.nn.softmax(next_logits, -1)  # [E, B, K]
    q = distributional.expectation(probs, z)  # [E, B]
    member = jnp.argmin(q, axis=0)  # [B]
    p = jnp.take_along_axis(probs, member[None, :, None], axis=0)[0]  # [B, K]
    not_done = 1.0 - terminated.astype(jnp.float32)
    tz = reward[:, None] + cfg.gamma * not_done[:, None] * (
        z[None, :] - alpha * next_log_prob[:, None]
    )
    return distributional.project(tz, p, cfg.v_min, cfg.v_max)


def _expected_q(logits: jax.Array, cfg: FlashSACConfig) -> jax.Array:
    """E[Z] under softmax(logits) over the value atoms: [..., K] -> [...]."""
    z = distributional.atoms(cfg.num_atoms, cfg.v_min, cfg.v_max)
    return distributional.expectation(jax.nn.softmax(logits, -1), z)


def actor_loss(actor_params, state: FlashSACState, batch: Transition, key, alpha, cfg):
    """SAC actor loss mean(α log π(a|s) − min_i Q_i(s, a)) over the B current states.

    The actor runs in train mode on [s; s'] only so that its BatchNorm statistics see both
    halves (as the critic's do); loss and entropy use the s half alone, and the critic (eval
    mode, not differentiated) runs on those B pairs.  Returns (loss, (new actor stats, log π)).
    """
    obs = batch.obs[cfg.actor_obs_key]
    (mean, log_std), upd = _actor(cfg, _action_size(state), train=True, amp=True).apply(
        {"params": actor_params, "batch_stats": state.actor_stats},
        pair_rows(obs, batch.next_obs[cfg.actor_obs_key]),
        mutable=["batch_stats"],
    )
    action, log_p = sample_tanh_gaussian(key, half_rows(mean, 0), half_rows(log_std, 0))  # [B, A], [B]
    logits = _critic(cfg, train=False, amp=True).apply(
        {"params": state.critic_params, "batch_stats": state.critic_stats},
        batch.obs[cfg.critic_obs_key],
        action,
    )
    q = _expected_q(logits, cfg).min(0)  # [B]
    return jnp.mean(alpha * log_p - q), (upd["batch_stats"], log_p)


def temperature_loss(alpha: jax.Array, entropy: jax.Array, target: float) -> jax.Array:
    """α (H − H̄): lowers α while the entropy exceeds its target, raises it below.

    α itself multiplies (official code), so d/dα = H − H̄ and the optimised log α gets α (H − H̄).
    """
    return alpha * (entropy - target)


def critic_loss(critic_params, state: FlashSACState, batch: Transition, next_action, target, cfg):
    """Cross-entropy of both members to ``target`` [B, K]; the online critic runs in train mode
    on [(s, a); (s', a')] so current and next pairs share BN statistics.  The loss is the mean
    over members and samples (official ``update.py``), so it and its gradient norm read as one
    member's.  Returns (loss, (new critic stats, Q [E, B]))."""
    obs = batch.obs[cfg.critic_obs_key]
    logits, upd = _critic(cfg, train=True, half=0, amp=True).apply(
        {"params": critic_params, "batch_stats": state.critic_stats},
        pair_rows(obs, batch.next_obs[cfg.critic_obs_key]),
        pair_rows(batch.action, next_action),
        mutable=["batch_stats"],
    )  # [E, B, K]: predictions for (s, a)
    loss = distributional.cross_entropy(target[None], logits).mean()
    return loss, (upd["batch_stats"], _expected_q(logits, cfg))


def _lr(opt_state) -> jax.Array:
    """The lr the optimiser used in its latest step (schedule at init before any)."""
    return opt_state.hyperparams["learning_rate"]


# ============================================================================ update
def actor_step(state: FlashSACState, batch: Transition, key, cfg: FlashSACConfig):
    """One Adam step of the actor (then re-projection); returns (state, metrics).

    The metrics carry the entropy −mean log π(a|s) over the B current states, which drives
    the temperature step that follows.
    """
    alpha = jnp.exp(state.log_alpha)
    (loss, (stats, log_p)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state, batch, key, alpha, cfg
    )
    updates, opt = optimizer(cfg).update(grads, state.actor_opt, state.actor_params)
    state = state.replace(
        actor_params=project(optax.apply_updates(state.actor_params, updates)),
        actor_stats=stats,
        actor_opt=opt,
    )
    metrics = {
        "actor_loss": loss,
        "entropy": -jnp.mean(log_p),
        "actor_grad_norm": optax.tree.norm(grads),
        "actor_lr": _lr(opt),
    }
    return state, metrics


def temperature_step(state: FlashSACState, entropy: jax.Array, cfg: FlashSACConfig):
    """One Adam step on log α of `temperature_loss`; returns (state, metrics)."""
    h_bar = target_entropy(_action_size(state), cfg)
    entropy = jax.lax.stop_gradient(entropy)
    loss, grad = jax.value_and_grad(
        lambda log_alpha: temperature_loss(jnp.exp(log_alpha), entropy, h_bar)
    )(state.log_alpha)
    updates, opt = optimizer(cfg).update(grad, state.alpha_opt, state.log_alpha)
    state = state.replace(log_alpha=optax.apply_updates(state.log_alpha, updates), alpha_opt=opt)
    return state, {"alpha_loss": loss}


def critic_step(state: FlashSACState, batch: Transition, key, cfg: FlashSACConfig):
    """One Adam step of the critic ensemble (then re-projection); returns (state, metrics).

    Target: a' ~ π(s') from the CURRENT actor (eval mode) and the current α; the target critic
    runs in train mode on [(s,a); (s',a')] and its s' half feeds `critic_target`.
    ``batch.reward`` is raw; it is scaled here with the current statistics.
    """
    alpha = jnp.exp(state.log_alpha)
    r = scale_reward(state, batch.reward.astype(jnp.float32), cfg)
    mean, log_std = _policy(state, batch.next_obs, cfg, amp=True)
    next_action, log_p_next = sample_tanh_gaussian(key, mean, log_std)
    target_logits, _ = _critic(cfg, train=True, half=1, amp=True).apply(
        {"params": state.target_params, "batch_stats": state.target_stats},
        pair_rows(batch.obs[cfg.critic_obs_key], batch.next_obs[cfg.critic_obs_key]),
        pair_rows(batch.action, next_action),
        mutable=["batch_stats"],
    )
    target_logits = jax.lax.stop_gradient(target_logits)  # [E, B, K]: values at (s', a')
    target = critic_target(target_logits, log_p_next, r, batch.terminated, alpha, cfg)
    (loss, (stats, q)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, next_action, target, cfg
    )
    updates, opt = optimizer(cfg).update(grads, state.critic_opt, state.critic_params)
    state = state.replace(
        critic_params=project(optax.apply_updates(state.critic_params, updates)),
        critic_stats=stats,
        critic_opt=opt,
    )
    metrics = {
        "critic_loss": loss,
        "critic_grad_norm": optax.tree.norm(grads),
        "critic_lr": _lr(opt),
        "q_mean": q.mean(),
        "target_q_log_prob_next": log_p_next.mean(),
        "reward_scale": reward_scale(state, cfg),
        "scaled_reward_mean": r.mean(),
    }
    return state, metrics


def polyak_step(state: FlashSACState, cfg: FlashSACConfig) -> FlashSACState:
    """target ← τ·online + (1 − τ)·target (params and BN stats; never re-projected)."""
    polyak = functools.partial(optax.incremental_update, step_size=cfg.tau)
    return state.replace(
        target_params=polyak(state.critic_params, state.target_params),
        target_stats=polyak(state.critic_stats, state.target_stats),
    )


def _actor_part(state: FlashSACState) -> dict:
    """The fields the actor and temperature steps change."""
    return {"actor_params": state.actor_params, "actor_stats": state.actor_stats,
            "actor_opt": state.actor_opt, "log_alpha": state.log_alpha, "alpha_opt": state.alpha_opt}


# Metrics of the actor and temperature step: zero on the updates without one (``actor_updated``
# 0), so the loop averages them over the actor steps alone (`OffPolicyAgent.sparse_metrics`).
ACTOR_METRICS = ("actor_loss", "entropy", "actor_grad_norm", "alpha_loss")


def _no_actor_metrics(state: FlashSACState) -> dict:
    f = jnp.zeros((), jnp.float32)
    return {"actor_loss": f, "entropy": f, "actor_grad_norm": f, "alpha_loss": f,
            "actor_lr": _lr(state.actor_opt)}


def _actor_and_temperature(state: FlashSACState, batch: Transition, key: jax.Array,
                           cfg: FlashSACConfig) -> tuple[dict, dict]:
    state, m = actor_step(state, batch, key, cfg)
    state, m_alpha = temperature_step(state, m["entropy"], cfg)
    return _actor_part(state), {**m, **m_alpha}


def _critic_and_polyak(state: FlashSACState, batch: Transition, key: jax.Array, cfg: FlashSACConfig,
                       a_metrics: dict, did_actor: jax.Array) -> tuple[FlashSACState, dict]:
    state, c_metrics = critic_step(state, batch, key, cfg)
    state = polyak_step(state, cfg).replace(step=state.step + 1)
    metrics = {**c_metrics, **a_metrics, "alpha": jnp.exp(state.log_alpha),
               "actor_updated": jnp.asarray(did_actor, jnp.float32)}
    return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def update(
    state: FlashSACState, batch: Transition, key: jax.Array, cfg: FlashSACConfig
) -> tuple[FlashSACState, dict[str, jax.Array]]:
    """One FlashSAC gradient step (jit-able), in the official order:

    1. on update steps 0, 2, 4, ... (``actor_update_every``): actor step, then temperature step;
    2. critic step, its target computed with the actor and α just updated;
    3. Polyak target.
    """
    k_actor, k_critic = jax.random.split(key)
    do_actor = state.step % cfg.actor_update_every == 0
    # The branches return only the fields they change; the critic's buffers stay outside.
    part, a_metrics = jax.lax.cond(
        do_actor, lambda s: _actor_and_temperature(s, batch, k_actor, cfg),
        lambda s: (_actor_part(s), _no_actor_metrics(s)), state
    )
    return _critic_and_polyak(state.replace(**part), batch, k_critic, cfg, a_metrics, do_actor)


def update_period(
    state: FlashSACState, batches: Transition, keys: jax.Array, cfg: FlashSACConfig
) -> tuple[FlashSACState, dict[str, jax.Array]]:
    """``actor_update_every`` consecutive `update`s starting on an actor step (``batches`` and
    ``keys`` [P, ...]) -> (state, metrics [P]): the same steps, keys and order, but the actor
    and temperature step taken once up front and the critic steps scanned — no branch on the
    step counter.  Under the seed vmap that counter is per seed, so `update`'s `lax.cond` turns
    into a select that runs the actor step on every update; here it runs on every P-th only.
    The off-policy loop uses this when ``updates_per_step`` is a multiple of P (every preset)."""
    first = jax.tree.map(lambda x: x[0], batches)
    split = jax.vmap(jax.random.split)(keys)  # [P, 2, key]: each update's (actor, critic) keys
    part, a_metrics = _actor_and_temperature(state, first, split[0, 0], cfg)
    state = state.replace(**part)
    p = cfg.actor_update_every
    idle = _no_actor_metrics(state)
    per_step = {k: jnp.stack([v] + [jnp.broadcast_to(idle[k], jnp.shape(v))] * (p - 1))
                for k, v in a_metrics.items()}
    per_step["actor_lr"] = jnp.broadcast_to(a_metrics["actor_lr"], (p,))  # as `update` reports it

    def critic(s, xs):
        batch, k, a_m, did = xs
        return _critic_and_polyak(s, batch, k, cfg, a_m, did)

    return jax.lax.scan(critic, state, (batches, split[:, 1], per_step, jnp.arange(p) == 0))


# ============================================================================ export
def policy_layers(state: FlashSACState, cfg: FlashSACConfig) -> list[dict]:
    """The deterministic policy tanh(mean(obs['state'])) as a list of export ops.

    Ops (applied in order to x = obs["state"] [B, D]): affine (folded eval-mode BatchNorm),
    dense (unit kernels; the mean head adds its free bias), relu, push / add_pop (residual),
    rmsnorm, tanh; first of all ``round_bf16`` when replay stores bfloat16 observations
    (`replay.as_stored`).
    """
    p = jax.tree.map(lambda x: np.asarray(x, np.float32), state.actor_params)
    s = jax.tree.map(lambda x: np.asarray(x, np.float32), state.actor_stats)

    def bn(pp, ss):
        scale = pp["bn_scale"] / np.sqrt(ss["var"] + cfg.bn_eps)
        return {
            "op": "affine",
            "scale": scale.astype(np.float32),
            "shift": (pp["bn_bias"] - ss["mean"] * scale).astype(np.float32),
        }

    def unit(pp):
        return {"op": "dense", "kernel": pp["unit_kernel"], "bias": None}

    tp, ts = p["trunk"], s["trunk"]
    # bfloat16 replay: the policy learned from (and acts on) rounded observations (`replay.as_stored`)
    ops = [{"op": "round_bf16"}] if cfg.replay_obs_dtype == "bfloat16" else []
    ops += [bn(tp["input_bn"], ts["input_bn"]), unit(tp["embed"])]
    for i in range(cfg.num_blocks):
        bp, bs = tp[f"block_{i}"], ts[f"block_{i}"]
        ops += [
            {"op": "push"},
            unit(bp["up"]),
            bn(bp["up_bn"], bs["up_bn"]),
            {"op": "relu"},
            unit(bp["down"]),
            bn(bp["down_bn"], bs["down_bn"]),
            {"op": "relu"},
            {"op": "add_pop"},
        ]
    ops += [
        {"op": "rmsnorm", "scale": tp["out_rms"]["rms_scale"], "eps": float(cfg.rms_eps)},
        {"op": "dense", "kernel": p["mean"][UNIT_KERNEL], "bias": p["mean"][BIAS]},
        {"op": "tanh"},
    ]
    return ops
