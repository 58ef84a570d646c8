"""PPO as in OmniReset (ALGORITHMS.md §3): big-batch, clipped, adaptive-KL learning rate.

Pure functions over pytrees:

    cfg = PPOConfig.cpu()
    state = ppo.init(key, env.spec, cfg)
    state = ppo.observe(state, env_state.obs, cfg)                   # normaliser, every env step
    actions, extras = ppo.act(state, env_state.obs, key, cfg)       # stochastic, for rollouts
    advantages, returns = ppo.gae(rewards, values, next_values, terminated, truncated, γ, λ)
    state, metrics = ppo.update(state, rollout, key, cfg)            # epochs × minibatches
    layers = ppo.policy_layers(state, cfg)                           # deterministic policy, for export

The policy is a Gaussian on *unsquashed* actions: the env receives ``clip(a, -1, 1)``, the
log-probability is that of the raw sample ``a`` (as in rsl_rl / IsaacLab).  Its standard deviation
is state dependent (generalised state-dependent exploration):

    σ_a(s) = sqrt( Σ_j φ_j(s)² · exp(2·log_std[j, a]) + 1e-6 )

with φ(s) the last hidden layer of the actor and ``log_std`` a ``[hidden[-1], A]`` parameter,
every entry initialised to ``init_log_std`` (OmniReset: log 1.0 = 0).  As in OmniReset's rsl_rl
fork, gradients flow through φ into the trunk: the entropy bonus and the std part of the
log-probability shape the trunk as well as ``log_std``.  The actor and the value net are
`jaxrl.nets.sde.Actor` and `jaxrl.nets.sde.Critic`.

Observations are normalised as in rsl_rl's EmpiricalNormalization: ``(x − mean) / (std + 1e-2)``,
no clipping, with running statistics that absorb every env step of the rollout (`observe`, which
the loop calls before `act`); `update` leaves them alone.  Advantages are standardised once over
the whole rollout, before it is cut into minibatches.

Time limits: the loop stores ``V(final_obs)`` for every step; on a truncated step GAE uses it as the
next value and cuts the trace there, on a terminated step the next value is 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrl.algos.compiled_init import compiled_init
from jaxrl.data import normalizer
from jaxrl.nets import sde
from jaxrl.nets.mlp import ACTIVATIONS

LOG_2PI_E = math.log(2.0 * math.pi * math.e)


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Every PPO hyper-parameter; defaults are OmniReset's (ALGORITHMS.md §3)."""

    num_envs: int = 16384
    """Parallel envs: many, so that one batch covers many resets (the official commands: 16,384)."""
    unroll_length: int = 32
    """Env steps per env per iteration (batch = num_envs × unroll_length)."""
    num_epochs: int = 5
    """Passes over each batch."""
    num_minibatches: int = 4
    """Minibatches per epoch (must divide the batch)."""
    clip_eps: float = 0.2
    """PPO ratio clip, also used for the clipped value loss."""
    value_coef: float = 1.0
    """Weight of the value loss."""
    entropy_coef: float = 0.006
    """Weight of the entropy bonus (keeps σ(s) from collapsing early)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE λ: bias/variance trade-off of the advantages."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (per network or over both: ``grad_clip``)."""
    grad_clip: str = "global"
    """"global": one norm over actor and critic together (OmniReset's rsl_rl fork:
    ``clip_grad_norm_(policy.parameters())`` over both); "separate": each clipped to ``max_grad_norm``."""
    learning_rate: float = 1e-4
    """Initial Adam learning rate (then adapted by the KL schedule)."""
    desired_kl: float | None = 0.01
    """Target KL per minibatch for the adaptive schedule; None keeps the lr fixed."""
    lr_factor: float = 1.5
    """lr ÷ this when KL > 2·desired, × this when KL < desired/2."""
    lr_min: float = 1e-5
    """Lower bound of the adaptive lr."""
    lr_max: float = 1e-2
    """Upper bound of the adaptive lr."""
    hidden: tuple[int, ...] = (512, 256, 128, 64)
    """Hidden widths of actor and critic MLPs."""
    activation: str = "elu"
    """Hidden activation: elu | relu | swish | tanh."""
    init_log_std: float = 0.0
    """Initial value of every log_std[j, a] entry (OmniReset: log 1.0 = 0), so that at init
    σ_a(s) = sqrt(Σ_j φ_j(s)² + 1e-6) · exp(init_log_std)."""
    layer_init: str = "torch"
    """Layer init: "torch", PyTorch's nn.Linear default (rsl_rl keeps it; it sets the starting σ(s));
    "lecun", flax's lecun-normal kernels, zero biases, a 0.01-scaled mean head (`jaxrl.nets.sde`)."""
    normalize_obs: bool = True
    """Running mean/std normalisation of actor and critic observations (updated by `observe`)."""
    obs_norm_eps: float = 1e-2
    """Normalised observation = (x − mean) / (std + obs_norm_eps), unclipped (rsl_rl's form)."""
    reshuffle_each_epoch: bool = False
    """False: one random partition into minibatches, the same in every epoch (rsl_rl's
    ``mini_batch_generator`` draws one ``randperm`` before its epoch loop); True: a new one per epoch."""
    normalize_advantages: bool = True
    """Standardise advantages once over the whole rollout (not per minibatch)."""
    random_episode_start: bool = True
    """Each training env starts its first episode at a uniform random step of the time limit
    (rsl_rl's ``init_at_random_ep_len``, which OmniReset's train.py sets): fixed-length episodes
    would otherwise run in lockstep, every rollout one phase of the episode for all envs."""
    actor_obs_key: str = "state"
    """Observation the actor (and the exported policy) reads."""
    critic_obs_key: str = "privileged_state"
    """Observation the value net reads (asymmetric actor-critic)."""
    matmul_precision: str | None = None
    """Learner matmul precision (None: JAX's default, TF32 on recent GPUs); physics is 'highest'."""

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"PPOConfig: {msg}")

        for name in ("num_envs", "unroll_length", "num_epochs", "num_minibatches"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be an int >= 1, got {v!r}")
        batch = self.num_envs * self.unroll_length
        need(
            batch % self.num_minibatches == 0,
            f"num_minibatches ({self.num_minibatches}) must divide num_envs*unroll_length "
            f"({self.num_envs}*{self.unroll_length}={batch})",
        )
        need(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        need(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        need(self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}")
        need(self.value_coef >= 0, f"value_coef must be >= 0, got {self.value_coef}")
        need(self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.layer_init in ("torch", "lecun"), f"layer_init must be 'torch' or 'lecun', got {self.layer_init!r}")
        need(self.grad_clip in ("separate", "global"),
             f"grad_clip must be 'separate' or 'global', got {self.grad_clip!r}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(
            self.desired_kl is None or self.desired_kl > 0,
            f"desired_kl must be > 0 or None, got {self.desired_kl}",
        )
        need(self.lr_factor > 1, f"lr_factor must be > 1, got {self.lr_factor}")
        need(
            0 < self.lr_min <= self.learning_rate <= self.lr_max,
            f"need 0 < lr_min <= learning_rate <= lr_max, got {self.lr_min}, "
            f"{self.learning_rate}, {self.lr_max}",
        )
        need(
            len(self.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden),
            f"hidden must be a non-empty tuple of positive ints, got {self.hidden!r}",
        )
        need(
            self.activation in ACTIVATIONS,
            f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
        )
        need(self.obs_norm_eps > 0, f"obs_norm_eps must be > 0, got {self.obs_norm_eps}")
        need(bool(self.actor_obs_key), "actor_obs_key must be non-empty")
        need(bool(self.critic_obs_key), "critic_obs_key must be non-empty")
        need(self.matmul_precision in (None, "default", "high", "highest", "bfloat16", "tensorfloat32", "float32"),
             f"matmul_precision must be None, 'default', 'high' or 'highest', got {self.matmul_precision!r}")

    @classmethod
    def paper(cls, env_name: str | None = None, **overrides) -> PPOConfig:
        """OmniReset's settings (GPU scale); the same for every task (``env_name`` is accepted so
        that every algorithm's presets share one signature)."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides) -> PPOConfig:
        """Small nets and few envs that learn simple tasks (cartpole) in a minute on 2 CPU cores.

        A higher fixed-start lr (the KL schedule still adapts it) and a smaller batch give many
        more updates per env step than the GPU recipe.  It keeps the settings every CPU result in
        README was measured with (flax's lecun init, actor and critic clipped separately) where
        the paper preset now follows the official code (PyTorch's init, one global clip).
        """
        base = {
            "num_envs": 64,
            "unroll_length": 32,
            "num_minibatches": 4,
            "num_epochs": 4,
            "hidden": (64, 64),
            "learning_rate": 1e-3,
            "entropy_coef": 0.003,
            "layer_init": "lecun",
            "grad_clip": "separate",
            "random_episode_start": False,
            "reshuffle_each_epoch": True,
        }
        base.update(overrides)
        return cls(**base)

    # Runs recorded before a field existed behaved like this (`runfolder.config_from_dict`).
    RECORDED_BEFORE: ClassVar[dict] = {"grad_clip": "global", "layer_init": "lecun",
                                          "random_episode_start": False, "reshuffle_each_epoch": True}

    def replace(self, **kw) -> PPOConfig:
        return dataclasses.replace(self, **kw)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.unroll_length


# ----------------------------------------------------------------------------- state
@struct.dataclass
class PPOState:
    """Everything PPO learns or adapts."""

    params: dict  # {'actor': ..., 'critic': ...}
    opt_state: Any  # Adam moments (lr applied outside so the KL schedule can move it)
    obs_stats: dict  # {actor_obs_key: RunningStats, critic_obs_key: RunningStats}
    lr: jax.Array  # [] float32, current learning rate
    updates: jax.Array  # [] int32, gradient steps taken
    action_size: int = struct.field(pytree_node=False, default=1)


class Rollout(NamedTuple):
    """``unroll_length`` steps of ``num_envs`` envs (leading axes [T, N])."""

    obs: dict  # observation acted on: 'state' [T, N, D], 'privileged_state' [T, N, P]
    raw_action: jax.Array  # [T, N, A] unclipped Gaussian sample
    log_prob: jax.Array  # [T, N] log π_old(raw_action | obs)
    mean: jax.Array  # [T, N, A] π_old mean (for the analytic KL)
    std: jax.Array  # [T, N, A] π_old σ(s)
    value: jax.Array  # [T, N] V_old(obs)
    next_value: jax.Array  # [T, N] V_old(final_obs): true next observation's value
    reward: jax.Array  # [T, N]
    terminated: jax.Array  # [T, N] bool
    truncated: jax.Array  # [T, N] bool


def clip_gradients(grads: dict, cfg: PPOConfig) -> dict:
    """``grads`` ({'actor', 'critic'}) scaled to norm ≤ ``max_grad_norm``: each network on its own
    (``grad_clip="separate"``, as OmniReset's rsl_rl fork clips its actor and critic modules) or
    both together ("global")."""
    def clip(tree):
        return optax.clip_by_global_norm(cfg.max_grad_norm).update(tree, optax.EmptyState())[0]

    return {k: clip(v) for k, v in grads.items()} if cfg.grad_clip == "separate" else clip(grads)


def _optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    # Unit step size: `update` multiplies by the (adaptive) lr itself.  The first element keeps
    # the state layout of the former ``clip_by_global_norm`` (empty), so checkpoints still load.
    clip = optax.GradientTransformation(optax.init_empty_state,
                                        lambda g, s, p=None: (clip_gradients(g, cfg), s))
    return optax.chain(clip, optax.scale_by_adam())


@compiled_init
def init(key: jax.Array, spec: Any, cfg: PPOConfig) -> PPOState:
    """Fresh actor, critic, Adam state and normalisers for an env with ``spec`` (EnvSpec)."""
    for k in (cfg.actor_obs_key, cfg.critic_obs_key):
        if k not in spec.obs:
            raise ValueError(f"observation key {k!r} not in the env's observations {sorted(spec.obs)}")
    a_size = int(spec.action.size)
    ka, kc = jax.random.split(key)
    a_obs = jnp.zeros((1,) + tuple(spec.obs[cfg.actor_obs_key].shape), jnp.float32)
    c_obs = jnp.zeros((1,) + tuple(spec.obs[cfg.critic_obs_key].shape), jnp.float32)
    params = {
        "actor": sde.actor(cfg, a_size).init(ka, a_obs),
        "critic": sde.critic(cfg).init(kc, c_obs),
    }
    obs_stats = {
        k: normalizer.init(tuple(spec.obs[k].shape))
        for k in (cfg.actor_obs_key, cfg.critic_obs_key)
    }
    return PPOState(
        params=params,
        opt_state=_optimizer(cfg).init(params),
        obs_stats=obs_stats,
        lr=jnp.asarray(cfg.learning_rate, jnp.float32),
        updates=jnp.zeros((), jnp.int32),
        action_size=a_size,
    )


# ----------------------------------------------------------------------------- acting
def _norm(state: PPOState, obs: dict, key: str, cfg: PPOConfig) -> jax.Array:
    x = jnp.asarray(obs[key], jnp.float32)
    if not cfg.normalize_obs:
        return x
    return normalizer.normalize(state.obs_stats[key], x, clip=None, eps=cfg.obs_norm_eps)


def observe(state: PPOState, obs: dict, cfg: PPOConfig) -> PPOState:
    """Merge one env step's batched observations (``obs[k]`` [N, ...]) into the running
    statistics of the actor's and the critic's inputs; the loop calls it before every `act`
    (rsl_rl updates its normalisers at every env step).  Identity if ``normalize_obs`` is off."""
    if not cfg.normalize_obs:
        return state
    stats = state.obs_stats
    return state.replace(obs_stats={k: normalizer.update(s, obs[k]) for k, s in stats.items()})


def policy(params: dict, state: PPOState, obs: dict, cfg: PPOConfig) -> tuple[jax.Array, jax.Array]:
    """(mean, σ(s)) of the actor with ``params`` on ``obs``."""
    x = _norm(state, obs, cfg.actor_obs_key, cfg)
    return sde.actor(cfg, state.action_size).apply(params["actor"], x)


def value(params: dict, state: PPOState, obs: dict, cfg: PPOConfig) -> jax.Array:
    """V(obs[critic_obs_key]) with ``params``."""
    x = _norm(state, obs, cfg.critic_obs_key, cfg)
    return sde.critic(cfg).apply(params["critic"], x)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Diagonal Gaussian log-density, summed over the last axis."""
    z = (x - mean) / std
    return jnp.sum(-0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2 * math.pi), axis=-1)


def gaussian_entropy(std: jax.Array) -> jax.Array:
    return jnp.sum(jnp.log(std) + 0.5 * LOG_2PI_E, axis=-1)


def gaussian_kl(mean_p, std_p, mean_q, std_q) -> jax.Array:
    """KL(p ‖ q) of diagonal Gaussians, summed over the last axis."""
    return jnp.sum(
        jnp.log(std_q / std_p) + (jnp.square(std_p) + jnp.square(mean_p - mean_q)) / (2 * jnp.square(std_q)) - 0.5,
        axis=-1,
    )


def act(
    state: PPOState, obs: dict, key: jax.Array, cfg: PPOConfig, deterministic: bool = False
) -> tuple[jax.Array, dict]:
    """Actions in [-1, 1] for ``obs`` [N, ...] and, when stochastic, what PPO stores.

    extras (stochastic): raw_action [N, A] (unclipped sample), log_prob [N], mean, std [N, A],
    value [N].  Deterministic: clip(mean) and empty extras.
    """
    mean, std = policy(state.params, state, obs, cfg)
    if deterministic:
        return jnp.clip(mean, -1.0, 1.0), {}
    raw = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    extras = {
        "raw_action": raw,
        "log_prob": gaussian_log_prob(raw, mean, std),
        "mean": mean,
        "std": std,
        "value": value(state.params, state, obs, cfg),
    }
    return jnp.clip(raw, -1.0, 1.0), extras


# ----------------------------------------------------------------------------- GAE
def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over time-major arrays [T, N].

    ``next_values[t]`` is V of the TRUE next observation of step t (``final_obs``).  A terminated
    step bootstraps 0, a truncated one V(final_obs); both cut the λ-trace (the next step in the
    array belongs to a new episode).  Returns (advantages, returns = advantages + values).
    """
    term = terminated.astype(jnp.float32)
    done = jnp.logical_or(terminated, truncated).astype(jnp.float32)
    deltas = rewards + gamma * (1.0 - term) * next_values - values

    def back(carry, xs):
        delta, d = xs
        adv = delta + gamma * lam * (1.0 - d) * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(values[0]), (deltas, done), reverse=True)
    return adv, adv + values


# ----------------------------------------------------------------------------- update
def adapt_lr(lr: jax.Array, kl: jax.Array, cfg: PPOConfig) -> jax.Array:
    """rsl_rl's adaptive schedule: ÷lr_factor if KL > 2·desired, ×lr_factor if 0 < KL < desired/2.
    A KL of exactly 0 (the minibatch's policy is still the rollout's, e.g. the first minibatch
    without observation normalisation) leaves the rate alone, as rsl_rl's ``kl_mean > 0`` guard does."""
    if cfg.desired_kl is None:
        return lr
    lr = jnp.where(kl > 2.0 * cfg.desired_kl, lr / cfg.lr_factor, lr)
    lr = jnp.where((kl < 0.5 * cfg.desired_kl) & (kl > 0.0), lr * cfg.lr_factor, lr)
    return jnp.clip(lr, cfg.lr_min, cfg.lr_max)


def loss_fn(params: dict, state: PPOState, mb: dict, cfg: PPOConfig) -> tuple[jax.Array, dict]:
    """Clipped surrogate + value_coef·clipped value loss − entropy_coef·entropy on a minibatch.

    ``mb`` holds flat [B, ...] arrays: obs, raw_action, log_prob, mean, std, value, advantage
    (standardised), return.
    """
    mean, std = policy(params, state, mb["obs"], cfg)
    log_prob = gaussian_log_prob(mb["raw_action"], mean, std)
    adv = mb["advantage"]  # already standardised over the whole rollout (`rollout_batch`)
    ratio = jnp.exp(log_prob - mb["log_prob"])
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    policy_loss = -surrogate.mean()

    v = value(params, state, mb["obs"], cfg)
    v_clipped = mb["value"] + jnp.clip(v - mb["value"], -cfg.clip_eps, cfg.clip_eps)
    value_loss = jnp.maximum(jnp.square(v - mb["return"]), jnp.square(v_clipped - mb["return"])).mean()

    entropy = gaussian_entropy(std).mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    kl = jax.lax.stop_gradient(gaussian_kl(mb["mean"], mb["std"], mean, std).mean())
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": kl,
        "clip_fraction": (jnp.abs(ratio - 1.0) > cfg.clip_eps).mean(),
        "std": std.mean(),
    }
    return loss, metrics


def standardize_advantages(adv: jax.Array) -> jax.Array:
    """(A − mean) / (std + 1e-8) over ALL of ``adv`` (rsl_rl: torch's unbiased std)."""
    n = adv.size
    std = jnp.sqrt(jnp.sum(jnp.square(adv - adv.mean())) / max(n - 1, 1))
    return (adv - adv.mean()) / (std + 1e-8)


def rollout_batch(rollout: Rollout, cfg: PPOConfig) -> dict:
    """GAE on the [T, N] rollout, advantages standardised once over all T·N steps (returns keep
    the raw advantages), then every array flattened env-major to [N·T, ...] (each env's steps
    together, so that envs split over devices stay contiguous blocks)."""
    adv, ret = gae(
        rollout.reward, rollout.value, rollout.next_value, rollout.terminated, rollout.truncated,
        cfg.gamma, cfg.gae_lambda,
    )
    if cfg.normalize_advantages:
        adv = standardize_advantages(adv)
    batch = {
        "obs": rollout.obs,
        "raw_action": rollout.raw_action,
        "log_prob": rollout.log_prob,
        "mean": rollout.mean,
        "std": rollout.std,
        "value": rollout.value,
        "advantage": adv,
        "return": ret,
    }
    return jax.tree.map(lambda x: jnp.swapaxes(jnp.asarray(x), 0, 1).reshape((-1,) + x.shape[2:]), batch)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``range(n)`` from a few sorts of ONE uint32 array each.

    Each round sorts words whose high bits are random and whose low ``b = ceil(log2 n)`` bits are
    the position, then re-orders the permutation by the result: the rounds together sort by
    ``(bits of the last round, ..., bits of the first, index)``.  Enough rounds are taken for
    ``2b + 10`` random bits, so a tie (which would keep index order) has probability below
    n²/2^(2b+11) ≤ 2⁻¹¹ per call; it could only matter when the tied pair straddles a minibatch
    boundary.  Why not one sort of (random words, indices): on XLA:CPU a sort with a payload
    runs a generic comparator, about 5× slower than a plain uint32 sort (8192 elements: 2.4 ms
    against 0.5 ms), and these sorts were the PPO update's largest single cost
    (`experiments/ppo_update_ab.py`).  Larger ``n`` takes more rounds (2 up to 2¹³, 3 up to 2¹⁷)."""
    bits = max(1, (n - 1).bit_length())
    low = (1 << bits) - 1
    rounds = -(-(2 * bits + 10) // (32 - bits))
    position = jnp.arange(n, dtype=jnp.uint32)
    perm = position
    for k in jax.random.split(key, rounds):
        words = (jax.random.bits(k, (n,), jnp.uint32) & jnp.uint32(~low & 0xFFFFFFFF)) | position
        perm = perm[jnp.sort(words) & jnp.uint32(low)]
    return perm.astype(jnp.int32)


def minibatches(batch: dict, key: jax.Array, num_minibatches: int, shards: int = 1) -> dict:
    """One epoch's minibatches [M, B/M, ...] of the flat batch [B, ...].

    The batch is cut into ``shards`` equal contiguous blocks (one per device when the envs are
    split over devices), each block is shuffled with its own key, and minibatch m takes the m-th
    slice of every block: every minibatch holds an equal share of each block and no row moves
    between devices.  ``shards=1`` is one shuffle of the whole batch (rsl_rl's)."""
    n = jax.tree.leaves(batch)[0].shape[0]
    if n % (shards * num_minibatches):
        raise ValueError(f"batch of {n} cannot be cut into {shards} shard(s) x {num_minibatches} "
                         "minibatches; num_envs must be a multiple of the device count and "
                         "num_envs*unroll_length of num_minibatches*devices")
    per = n // shards
    perms = jax.vmap(lambda k: permutation(k, per))(jax.random.split(key, shards))

    def cut(x):
        x = x.reshape((shards, per) + x.shape[1:])
        x = jax.vmap(lambda block, p: block[p])(x, perms)  # shuffle within each block
        x = x.reshape((shards, num_minibatches, per // num_minibatches) + x.shape[2:])
        return jnp.swapaxes(x, 0, 1).reshape((num_minibatches, n // num_minibatches) + x.shape[3:])

    return jax.tree.map(cut, batch)


def epoch_keys(key: jax.Array, cfg: PPOConfig) -> jax.Array:
    """The ``num_epochs`` keys `minibatches` shuffles with: one per epoch, or the first repeated
    (``reshuffle_each_epoch=False``: every epoch the same minibatches, as rsl_rl)."""
    keys = jax.random.split(key, cfg.num_epochs)
    return keys if cfg.reshuffle_each_epoch else keys[jnp.zeros(cfg.num_epochs, jnp.int32)]


def update(
    state: PPOState, rollout: Rollout, key: jax.Array, cfg: PPOConfig, shards: int = 1
) -> tuple[PPOState, dict]:
    """num_epochs × num_minibatches clipped-PPO steps on one rollout.

    Per minibatch: forward, analytic KL(π_old ‖ π) → adaptive lr, clipped Adam step with that lr
    (rsl_rl's order).  The observation statistics are not touched here: `observe` updated them at
    every env step of the rollout, so the update sees the statistics after the last step (as in
    rsl_rl).  Minibatches are drawn within ``shards`` blocks of envs (`minibatches`; the loop
    passes its device count).  Metrics are means over all minibatches (lr: final).
    """
    batch = rollout_batch(rollout, cfg)
    opt = _optimizer(cfg)
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def minibatch_step(carry, mb):
        params, opt_state, lr = carry
        grads, metrics = grad_fn(params, state, mb, cfg)
        lr = adapt_lr(lr, metrics["approx_kl"], cfg)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return (params, opt_state, lr), metrics

    def epoch(carry, k):
        return jax.lax.scan(minibatch_step, carry, minibatches(batch, k, cfg.num_minibatches, shards))

    carry = (state.params, state.opt_state, state.lr)
    (params, opt_state, lr), metrics = jax.lax.scan(epoch, carry, epoch_keys(key, cfg))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["lr"] = lr

    steps = cfg.num_epochs * cfg.num_minibatches
    new_state = state.replace(
        params=params, opt_state=opt_state, lr=lr, updates=state.updates + steps
    )
    return new_state, metrics


# ----------------------------------------------------------------------------- export
def policy_layers(state: PPOState, cfg: PPOConfig) -> list[dict]:
    """The deterministic policy obs[actor_obs_key] [B, D] -> clip(mean) [B, A] as export ops."""
    f32 = lambda x: np.asarray(x, np.float32)
    ops: list[dict] = []
    if cfg.normalize_obs:
        scale, shift = normalizer.affine(state.obs_stats[cfg.actor_obs_key], eps=cfg.obs_norm_eps)
        ops.append({"op": "affine", "scale": f32(scale), "shift": f32(shift)})
    p = state.params["actor"]["params"]
    for i in range(len(cfg.hidden)):
        layer = p[f"hidden_{i}"]
        ops.append({"op": "dense", "kernel": f32(layer["kernel"]), "bias": f32(layer["bias"])})
        ops.append({"op": cfg.activation})
    ops.append({"op": "dense", "kernel": f32(p["mean"]["kernel"]), "bias": f32(p["mean"]["bias"])})
    ops.append({"op": "clip", "low": -1.0, "high": 1.0})
    return ops
