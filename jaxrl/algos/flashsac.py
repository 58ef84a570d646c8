"""FlashSAC: SAC with norm-bounded networks, a distributional critic, few updates and big data.

Recipe (ALGORITHMS.md §1): norm-bounded BN/residual trunks re-projected after every optimiser
step; a two-member categorical (C51) critic ensemble with cross-batch value prediction; per-sample
min-ensemble target; reward scaling by running discounted-return statistics; temperature tuned to
a Gaussian-width target entropy; actor and temperature updated every 2nd critic step; held
(Zeta-distributed) exploration noise.

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

from envs.specs import EnvSpec
from jaxrl.algos import distributional
from jaxrl.data.transition import Transition
from jaxrl.nets.bounded import project
from jaxrl.nets.heads import TanhGaussianActor, critic_ensemble, sample_tanh_gaussian

ENSEMBLE_SIZE = 2
# Playground humanoids whose joystick tasks use gamma 0.97 in the paper.
_HUMANOID_PREFIXES = ("G1", "T1", "H1", "Berkeley", "Op3", "Apollo", "Booster")


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
    gamma: float = 0.99  # discount; 0.97 for Playground humanoid joystick tasks (`paper`)
    tau: float = 0.01  # Polyak rate of the target critic: slow target for stable bootstraps
    # --- optimiser (Adam, no weight decay, no clipping: the norm bounds replace them)
    lr_init: float = 3e-4  # cosine schedule start
    lr_final: float = 1.5e-4  # cosine schedule end: halving the lr late stabilises the finish
    total_updates: int = 100_000  # length of the cosine schedule in critic steps; trainer sets it
    # --- networks
    actor_width: int = 128  # actor trunk width: the policy needs less capacity than the critic
    critic_width: int = 256  # critic trunk width
    num_blocks: int = 2  # inverted residual blocks per trunk
    expansion: int = 4  # block hidden size = expansion * width (inverted bottleneck)
    bn_momentum: float = 0.99  # flax convention: running = m * running + (1 - m) * batch
    bn_eps: float = 1e-5  # BatchNorm variance epsilon
    rms_eps: float = 1e-6  # RMSNorm epsilon
    log_std_min: float = -5.0  # lower bound of the policy log-std
    log_std_max: float = 0.0  # upper bound: std <= 1 before tanh keeps actions off saturation
    # --- distributional critic
    num_atoms: int = 101  # C51 atoms: fine value resolution on the scaled-reward range
    v_min: float = -5.0  # support lower end (rewards are scaled so |G| fits)
    v_max: float = 5.0  # support upper end
    reward_scale_max_ratio: float = 5.0  # r / max(std(G), max|G| / this): keeps |G| <= v_max
    # --- temperature
    init_log_alpha: float = math.log(0.01)  # small initial entropy bonus
    target_entropy_sigma: float = 0.15  # target entropy = that of N(0, sigma^2) per action dim
    # --- schedule of the actor
    actor_update_every: int = 2  # actor + alpha updated every 2nd critic step (delayed policy)
    # --- exploration
    noise_repeat_max: int = 16  # max steps one Gaussian noise vector is held
    noise_repeat_exponent: float = 2.0  # p(k) ∝ k^-exponent (truncated Zeta): mostly short holds
    # --- observations
    critic_obs_key: str = "privileged_state"  # asymmetric actor-critic: critic sees privileged
    actor_obs_key: str = "state"  # what the deployed policy sees

    def __post_init__(self):
        def bad(field: str, value: Any, fix: str):
            raise ValueError(f"FlashSACConfig.{field}={value!r} is invalid: {fix}")

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
        """The published GPU configuration; gamma 0.97 for Playground humanoid joystick tasks."""
        humanoid = (
            bool(env_name) and "Joystick" in env_name and env_name.startswith(_HUMANOID_PREFIXES)
        )
        return cls(gamma=0.97 if humanoid else 0.99)

    @classmethod
    def cpu(cls) -> FlashSACConfig:
        """Small settings for a 2-core CPU.

        Measured: CartpoleBalance deterministic eval return 950 after 24k env steps (about
        2.5 min on 2 shared cores).  Fewer envs, a small batch and 8 updates per vector step
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
def _trunk_kwargs(cfg: FlashSACConfig, train: bool) -> dict:
    """Trunk settings shared by actor and critic (widths differ, set by the caller)."""
    return dict(num_blocks=cfg.num_blocks, train=train, expansion=cfg.expansion,
                bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps, rms_eps=cfg.rms_eps)


def _actor(cfg: FlashSACConfig, action_size: int, train: bool) -> nn.Module:
    return TanhGaussianActor(action_size=action_size, width=cfg.actor_width,
                             log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                             **_trunk_kwargs(cfg, train))


def _critic(cfg: FlashSACConfig, train: bool) -> nn.Module:
    return critic_ensemble(ENSEMBLE_SIZE)(num_atoms=cfg.num_atoms, width=cfg.critic_width,
                                          **_trunk_kwargs(cfg, train))


def _action_size(state: FlashSACState) -> int:
    return state.actor_params["mean"]["kernel"].shape[-1]


def _optimizer(cfg: FlashSACConfig, steps: int) -> optax.GradientTransformation:
    """Adam on a cosine lr lr_init -> lr_final over ``steps`` optimiser steps."""
    schedule = optax.cosine_decay_schedule(
        cfg.lr_init, max(int(steps), 1), alpha=cfg.lr_final / cfg.lr_init
    )
    return optax.adam(schedule)


def _optimizers(cfg: FlashSACConfig):
    actor_steps = cfg.total_updates // cfg.actor_update_every
    return (
        _optimizer(cfg, cfg.total_updates),
        _optimizer(cfg, actor_steps),
        _optimizer(cfg, actor_steps),
    )  # critic, actor, alpha


# ============================================================================ init / act
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
    critic_tx, actor_tx, alpha_tx = _optimizers(cfg)
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
        actor_opt=actor_tx.init(actor_params),
        critic_opt=critic_tx.init(critic_params),
        alpha_opt=alpha_tx.init(log_alpha),
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


def _policy(state: FlashSACState, obs: dict, cfg: FlashSACConfig):
    """Actor in eval mode (BN running statistics): (mean, log_std), each [N, A]."""
    return _actor(cfg, _action_size(state), train=False).apply(
        {"params": state.actor_params, "batch_stats": state.actor_stats}, obs[cfg.actor_obs_key]
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


def _critic_loss(critic_params, critic_stats, batch, next_action, target, cfg):
    """Cross-entropy of both members to ``target`` [B, K]; the online critic runs in train mode
    on [(s, a); (s', a')] so current and next pairs share BN statistics."""
    obs = batch.obs[cfg.critic_obs_key]
    b = obs.shape[0]
    logits, upd = _critic(cfg, train=True).apply(
        {"params": critic_params, "batch_stats": critic_stats},
        jnp.concatenate([obs, batch.next_obs[cfg.critic_obs_key]]),
        jnp.concatenate([batch.action, next_action]),
        mutable=["batch_stats"],
    )
    logits = logits[:, :b]  # [E, B, K]: predictions for (s, a)
    loss = distributional.cross_entropy(target[None], logits).mean(-1).sum()
    z = distributional.atoms(cfg.num_atoms, cfg.v_min, cfg.v_max)
    q = distributional.expectation(jax.nn.softmax(logits), z)  # [E, B]
    return loss, (upd["batch_stats"], q)


def _actor_loss(actor_params, actor_stats, state, obs2, crit_obs2, key, alpha, cfg):
    """SAC actor loss on [s; s'] (actor train mode, critic eval mode)."""
    a = _action_size(state)
    (mean, log_std), upd = _actor(cfg, a, train=True).apply(
        {"params": actor_params, "batch_stats": actor_stats}, obs2, mutable=["batch_stats"]
    )
    action, log_p = sample_tanh_gaussian(key, mean, log_std)
    logits = _critic(cfg, train=False).apply(
        {"params": state.critic_params, "batch_stats": state.critic_stats}, crit_obs2, action
    )
    z = distributional.atoms(cfg.num_atoms, cfg.v_min, cfg.v_max)
    q = distributional.expectation(jax.nn.softmax(logits), z).min(0)  # [2B]
    loss = jnp.mean(alpha * log_p - q)
    return loss, (upd["batch_stats"], log_p)


# ============================================================================ update
def _zero_metrics():
    f = jnp.zeros((), jnp.float32)
    return {"actor_loss": f, "alpha_loss": f, "entropy": f, "actor_grad_norm": f}


def _actor_step(state: FlashSACState, batch: Transition, key, cfg: FlashSACConfig):
    """One actor + temperature step; returns (state, metrics)."""
    _, actor_tx, alpha_tx = _optimizers(cfg)
    obs2 = jnp.concatenate([batch.obs[cfg.actor_obs_key], batch.next_obs[cfg.actor_obs_key]])
    crit2 = jnp.concatenate([batch.obs[cfg.critic_obs_key], batch.next_obs[cfg.critic_obs_key]])
    alpha = jnp.exp(state.log_alpha)
    (loss, (stats, log_p)), grads = jax.value_and_grad(_actor_loss, has_aux=True)(
        state.actor_params, state.actor_stats, state, obs2, crit2, key, alpha, cfg
    )
    updates, actor_opt = actor_tx.update(grads, state.actor_opt, state.actor_params)
    actor_params = project(optax.apply_updates(state.actor_params, updates))

    entropy = -jnp.mean(jax.lax.stop_gradient(log_p))
    h_bar = target_entropy(_action_size(state), cfg)

    def alpha_loss_fn(log_alpha):
        return log_alpha * (entropy - h_bar)  # lowers α while entropy > target

    alpha_loss, g_alpha = jax.value_and_grad(alpha_loss_fn)(state.log_alpha)
    a_upd, alpha_opt = alpha_tx.update(g_alpha, state.alpha_opt, state.log_alpha)
    log_alpha = optax.apply_updates(state.log_alpha, a_upd)
    state = state.replace(
        actor_params=actor_params,
        actor_stats=stats,
        actor_opt=actor_opt,
        log_alpha=log_alpha,
        alpha_opt=alpha_opt,
    )
    metrics = {
        "actor_loss": loss,
        "alpha_loss": alpha_loss,
        "entropy": entropy,
        "actor_grad_norm": optax.tree.norm(grads),
    }
    return state, metrics


def update(
    state: FlashSACState, batch: Transition, key: jax.Array, cfg: FlashSACConfig
) -> tuple[FlashSACState, dict[str, jax.Array]]:
    """One FlashSAC gradient step (jit-able).

    1. critic step (cross-batch prediction, min-member C51 target), projection, Polyak target;
    2. every ``actor_update_every``-th critic step: actor + temperature step, projection.
    ``batch.reward`` is the raw reward; it is scaled here with the current statistics.
    """
    critic_tx, _, _ = _optimizers(cfg)
    k_next, k_actor = jax.random.split(key)
    alpha = jnp.exp(state.log_alpha)
    r = scale_reward(state, batch.reward.astype(jnp.float32), cfg)

    # a' ~ π(s') with the actor in eval mode.
    mean, log_std = _policy(state, batch.next_obs, cfg)
    next_action, log_p_next = sample_tanh_gaussian(k_next, mean, log_std)
    # Target critic on [(s,a); (s',a')] in train mode (shared BN statistics).
    obs = batch.obs[cfg.critic_obs_key]
    next_obs = batch.next_obs[cfg.critic_obs_key]
    b = obs.shape[0]
    target_logits, _ = _critic(cfg, train=True).apply(
        {"params": state.target_params, "batch_stats": state.target_stats},
        jnp.concatenate([obs, next_obs]),
        jnp.concatenate([batch.action, next_action]),
        mutable=["batch_stats"],
    )
    target_logits = jax.lax.stop_gradient(target_logits[:, b:])  # [E, B, K]

    target = critic_target(target_logits, log_p_next, r, batch.terminated, alpha, cfg)
    (c_loss, (c_stats, q)), c_grads = jax.value_and_grad(_critic_loss, has_aux=True)(
        state.critic_params, state.critic_stats, batch, next_action, target, cfg
    )
    updates, critic_opt = critic_tx.update(c_grads, state.critic_opt, state.critic_params)
    critic_params = project(optax.apply_updates(state.critic_params, updates))
    polyak = functools.partial(optax.incremental_update, step_size=cfg.tau)
    state = state.replace(
        critic_params=critic_params,
        critic_stats=c_stats,
        critic_opt=critic_opt,
        target_params=polyak(critic_params, state.target_params),
        target_stats=polyak(c_stats, state.target_stats),
        step=state.step + 1,
    )

    do_actor = state.step % cfg.actor_update_every == 0
    state, a_metrics = jax.lax.cond(
        do_actor,
        lambda s: _actor_step(s, batch, k_actor, cfg),
        lambda s: (s, _zero_metrics()),
        state,
    )
    metrics = {
        "critic_loss": c_loss,
        "critic_grad_norm": optax.tree.norm(c_grads),
        "q_mean": q.mean(),
        "target_q_log_prob_next": log_p_next.mean(),
        "alpha": jnp.exp(state.log_alpha),
        "reward_scale": reward_scale(state, cfg),
        "scaled_reward_mean": r.mean(),
        "actor_updated": do_actor.astype(jnp.float32),
        **a_metrics,
    }
    return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


# ============================================================================ export
def policy_layers(state: FlashSACState, cfg: FlashSACConfig) -> list[dict]:
    """The deterministic policy tanh(mean(obs['state'])) as a list of export ops.

    Ops (applied in order to x = obs["state"] [B, D]): affine (folded eval-mode BatchNorm),
    dense (unit kernels without bias), relu, push / add_pop (residual), rmsnorm, tanh.
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
    ops = [bn(tp["input_bn"], ts["input_bn"]), unit(tp["embed"])]
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
        {"op": "dense", "kernel": p["mean"]["kernel"], "bias": p["mean"]["bias"]},
        {"op": "tanh"},
    ]
    return ops
