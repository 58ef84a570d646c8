"""Large-batch, high-UTD SAC: LIFT's Brax-style pretraining recipe (ALGORITHMS.md §2).

One gradient step (`update`), in the recipe's order:

1. temperature: mean(exp(log α) · sg(−log π(a|s) − H̄)), a ~ π(s), H̄ = −entropy_coef · |A|;
2. critic with the NEW α: y = reward_scale·r + γ(1 − terminated)(min Q̄(s', a') − α log π(a'|s')),
   loss ½·mean(((Q(s, a) − y)·(1 − truncated))²) — time-outs are masked out of the loss, not
   bootstrapped;
3. actor with the new α and the PRE-update critic: mean(α log π(a|s) − min Q(s, a));
4. Polyak: target ← τ·critic + (1 − τ)·target.

AdamW (weight decay also on log α), no gradient clipping, one learning rate each for actor,
critic and α.  Networks (`jaxrl.nets.mlp`): a swish policy MLP → 2|A| (mean, raw log σ with
log σ = −5 + 3.5(tanh(raw) + 1)), a tanh-squashed Gaussian; twin swish Q MLPs on
[norm(privileged_state), a] (``activation`` and ``critic_layer_norm`` change both only outside
the LIFT presets); hidden layers in ``compute_dtype`` (bfloat16 in the lift presets),
parameters and output layers in float32.  Observations are normalised by running mean / std
(`jaxrl.data.normalizer`, std clipped to [1e-6, 1e6], no value clip), one set of statistics per
observation key, updated from every collected batch (`observe`).

The loop (`jaxrl.train.offpolicy`, ``sample_once=True``) draws ONE uniform sample of
batch_size × updates_per_step transitions per env step and scans the updates over its slices.

Brax's SAC (``brax.training.agents.sac``) differs from the recipe in three choices, each a
switch here so that a run can be Brax's algorithm exactly: ``std_head="softplus"`` (σ =
softplus(raw) + 1e-3 instead of a bounded log σ), ``alpha_in_losses="previous"`` (critic and
actor use the α from before this step's α update) and ``warmup_actions="policy"`` (the warm-up
acts with the initial policy, not uniform random actions).  `SACConfig.brax` switches all three
on; every other preset keeps the recipe's choices.  (The warm-up is the one of the three where
LIFT's own code is Brax's: its prefill acts with the initial stochastic policy, while
ALGORITHMS.md §2 says "random steps", which the default follows; with 4096 envs it is two env
steps either way.)

The agent state keeps each part in its own field so that finetuning can load chosen parts
(``init_parts``: "actor", "critic", "target", "obs") and re-initialise α (`reset_alpha`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs.registry import override_pairs
from envs.specs import EnvSpec
from jaxrl.algos.compiled_init import compiled_init
from jaxrl.data import normalizer, replay
from jaxrl.data.transition import Transition
from jaxrl.nets.heads import sample_tanh_gaussian
from jaxrl.nets.mlp import ACTIVATIONS, MLP, TwinQ

# (num_envs, batch_size, updates_per_step, gamma, tau, actor_lr, critic_lr, alpha_lr,
#  init_log_alpha, entropy_coef, reward_scale) of LIFT's lift_configs.py (buffer 1M for all).
_G1_ROW = (4096, 16384, 19, 0.98201, 0.00239, 1.699e-4, 1.877e-4, 6.44e-4, -3.005, 0.396, 16.0)
_T1_FLAT_ROW = (4096, 16384, 16, 0.98210, 0.00665, 2.05e-4, 1.365e-4, 6.41e-4, -6.050, 0.174, 32.0)
# the table's third row: lift_configs.py's base config, which its 12-DoF LowDim tasks keep
LOWDIM_ROW = (1000, 1024, 9, 0.98706, 0.02418, 1.034e-4, 1.0015e-4, 9.97e-3, -3.348, 0.5, 1.0)
LIFT_TASKS: dict[str, tuple] = {
    "G1JoystickFlatTerrain": _G1_ROW,
    "G1JoystickRoughTerrain": _G1_ROW,
    "T1JoystickRoughTerrain": _G1_ROW,
    "T1JoystickFlatTerrain": _T1_FLAT_ROW,
}
_ROW_FIELDS = ("num_envs", "batch_size", "updates_per_step", "gamma", "tau", "actor_lr",
               "critic_lr", "alpha_lr", "init_log_alpha", "entropy_coef", "reward_scale")
_DTYPES = ("float32", "bfloat16")
# An env_overrides key that is not a Playground config key: the run builds the envs with
# Playground's domain randomiser (the `envs.make(..., domain_randomization=True)` keyword).
DOMAIN_RANDOMIZATION = "domain_randomization"
STD_HEADS = ("range", "softplus")
ALPHA_IN_LOSSES = ("updated", "previous")
WARMUP_ACTIONS = ("uniform", "policy")
BRAX_MIN_STD = 1e-3  # Brax's NormalTanhDistribution: σ = softplus(raw) + min_std
_PRECISIONS = (None, "default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


# ============================================================================ config
@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC hyper-parameters; defaults are LIFT's G1 Joystick row (see `lift`, `cpu`)."""

    # --- data collection / replay
    num_envs: int = 4096  # parallel envs: one env step yields a large, decorrelated batch
    batch_size: int = 16384  # large batches: low-noise gradients, few host round trips
    updates_per_step: int = 19  # gradient steps per vector env step (high UTD on big data)
    buffer_size: int = 1_000_000  # replay capacity in transitions (LIFT: 1M for every task)
    min_buffer: int = 8192  # warm-up transitions (``warmup_actions``) before the first update
    # --- RL
    gamma: float = 0.98201  # discount (tuned per task in LIFT)
    tau: float = 0.00239  # Polyak rate of the target critic
    reward_scale: float = 16.0  # rewards are multiplied by this in the critic target
    # --- optimisers (AdamW, no gradient clipping)
    actor_lr: float = 1.699e-4  # policy learning rate
    critic_lr: float = 1.877e-4  # twin-Q learning rate
    alpha_lr: float = 6.44e-4  # temperature learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay (also applied to log α)
    # --- temperature
    init_log_alpha: float = -3.005  # initial log α (finetuning re-initialises it)
    entropy_coef: float = 0.396  # target entropy H̄ = −entropy_coef · |A|
    # --- networks
    actor_hidden: tuple[int, ...] = (512, 256, 128)  # policy MLP widths
    critic_hidden: tuple[int, ...] = (1024, 512, 256)  # each Q MLP's widths
    activation: str = "swish"  # hidden activation of policy and Q MLPs (LIFT: swish; Brax: relu)
    critic_layer_norm: bool = False  # LayerNorm after each Q hidden activation: bounds Q features (LIFT: off)
    log_std_min: float = -5.0  # log σ = min + (max − min)/2 · (tanh(raw) + 1)
    log_std_max: float = 2.0  # upper end of log σ
    std_head: str = "range"  # "range": log σ in [log_std_min, log_std_max] (LIFT); "softplus": σ = softplus(raw) + 1e-3 (Brax)
    alpha_in_losses: str = "updated"  # α of critic and actor losses: "updated" = this step's new α (LIFT), "previous" (Brax)
    warmup_actions: str = "uniform"  # warm-up acting: "uniform" random actions (ALGORITHMS.md §2), "policy" = the initial policy (Brax; LIFT's code)
    compute_dtype: str = "bfloat16"  # hidden-layer compute dtype; parameters stay float32
    matmul_precision: str | None = None  # learner matmul precision (None: JAX's default)
    replay_obs_dtype: str = "float32"  # replay's observation dtype: "bfloat16" halves the buffer; acting, statistics and export then round too
    # --- observations
    normalize_obs: bool = True  # running mean / std normalisation of both observation keys
    obs_std_min: float = 1e-6  # the normaliser's std is clipped to [obs_std_min, obs_std_max]
    obs_std_max: float = 1e6  # (no value clip)
    actor_obs_key: str = "state"  # what the deployed policy sees
    critic_obs_key: str = "privileged_state"  # asymmetric actor-critic: the critic sees more
    # --- environment
    env_overrides: tuple = ()  # ((dotted Playground config key, value), ...) applied by the run
    num_eval_envs: int = 1024  # deterministic evaluation episodes per evaluation (LIFT: 1024)

    def __post_init__(self):
        def bad(field: str, value: Any, fix: str):
            raise ValueError(f"SACConfig.{field}={value!r} is invalid: {fix}")

        # JSON round trips (config.json) turn tuples into lists: normalise back.
        object.__setattr__(self, "actor_hidden", tuple(int(w) for w in self.actor_hidden))
        object.__setattr__(self, "critic_hidden", tuple(int(w) for w in self.critic_hidden))
        object.__setattr__(self, "env_overrides", override_pairs(self.env_overrides, "SACConfig.env_overrides"))
        for f in ("num_envs", "batch_size", "updates_per_step", "buffer_size", "num_eval_envs"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                bad(f, v, "it must be a positive integer")
        if self.min_buffer < 0:
            bad("min_buffer", self.min_buffer, "it must be >= 0")
        if self.batch_size > self.buffer_size:
            bad("batch_size", self.batch_size,
                f"it exceeds buffer_size={self.buffer_size}; raise buffer_size or lower batch_size")
        if self.min_buffer > self.buffer_size:
            bad("min_buffer", self.min_buffer,
                f"it exceeds buffer_size={self.buffer_size}; raise buffer_size or lower min_buffer")
        if not 0.0 <= self.gamma <= 1.0:
            bad("gamma", self.gamma, "the discount must lie in [0, 1] (e.g. 0.99)")
        if not 0.0 < self.tau <= 1.0:
            bad("tau", self.tau, "the Polyak rate must lie in (0, 1]; 0 never updates the target")
        for f in ("actor_lr", "critic_lr", "alpha_lr", "reward_scale", "obs_std_min"):
            if not getattr(self, f) > 0:
                bad(f, getattr(self, f), "it must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, "it must be >= 0")
        if self.entropy_coef < 0:
            bad("entropy_coef", self.entropy_coef, "it must be >= 0 (H̄ = −coef·|A|)")
        if not self.actor_hidden or not self.critic_hidden or min(self.actor_hidden + self.critic_hidden) < 1:
            bad("actor_hidden" if not self.actor_hidden or min(self.actor_hidden) < 1 else "critic_hidden",
                self.actor_hidden, "hidden widths must be a non-empty tuple of positive integers")
        if not self.log_std_min < self.log_std_max:
            bad("log_std_min", self.log_std_min, f"it must be < log_std_max={self.log_std_max}")
        if not self.obs_std_min < self.obs_std_max:
            bad("obs_std_min", self.obs_std_min, f"it must be < obs_std_max={self.obs_std_max}")
        for f, options in (("std_head", STD_HEADS), ("alpha_in_losses", ALPHA_IN_LOSSES),
                           ("warmup_actions", WARMUP_ACTIONS)):
            if getattr(self, f) not in options:
                bad(f, getattr(self, f), f"choose one of {', '.join(map(repr, options))}")
        if self.activation not in ACTIVATIONS:
            bad("activation", self.activation, f"choose one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.critic_layer_norm, (bool, np.bool_)):
            bad("critic_layer_norm", self.critic_layer_norm, "it must be True or False")
        if self.compute_dtype not in _DTYPES:
            bad("compute_dtype", self.compute_dtype, f"choose one of {', '.join(_DTYPES)}")
        if self.matmul_precision not in _PRECISIONS:
            bad("matmul_precision", self.matmul_precision,
                f"choose None or one of {', '.join(p for p in _PRECISIONS if p)}")
        for f in ("actor_obs_key", "critic_obs_key"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                bad(f, getattr(self, f), "it must name an observation key ('state', 'privileged_state')")

    # ------------------------------------------------------------------ presets
    @classmethod
    def lift(cls, env_name: str | None = None) -> SACConfig:
        """LIFT's pretraining settings for ``env_name`` (lift_configs.py): bfloat16 hidden layers,
        'highest' matmul precision elsewhere, pushes off, T1 observation noise 0."""
        if env_name not in LIFT_TASKS:
            raise ValueError(f"SACConfig.lift has no settings for task {env_name!r}; supported: "
                             f"{', '.join(LIFT_TASKS)}")
        overrides: tuple = (("push_config.enable", False),)
        if env_name.startswith("T1"):
            overrides += (("noise_config.level", 0.0),)
        return cls(**dict(zip(_ROW_FIELDS, LIFT_TASKS[env_name])), compute_dtype="bfloat16",
                   matmul_precision="highest", env_overrides=overrides)

    @classmethod
    def lift_deploy(cls, env_name: str | None = None) -> SACConfig:
        """`lift` for deployment: pushes on, observation noise as Playground ships it, and
        Playground's domain randomisation (``registry.get_domain_randomizer``)."""
        cfg = cls.lift(env_name)
        return cfg.replace(env_overrides=(("push_config.enable", True),
                                          (DOMAIN_RANDOMIZATION, True)))

    @classmethod
    def paper(cls, env_name: str | None = None) -> SACConfig:
        """`lift` for LIFT's four humanoid tasks; the defaults (G1 row, stock env) elsewhere."""
        return cls.lift(env_name) if env_name in LIFT_TASKS else cls()

    @classmethod
    def cpu(cls) -> SACConfig:
        """Small settings for a 2-core CPU (Cartpole- / Cheetah-sized tasks), float32 throughout:
        Brax's SAC as MuJoCo Playground tunes it (`brax_sac_config`, brax/training/agents/sac) at
        16 envs, batch 128, 16 updates per vector step (UTD 1), 2048 random warm-up steps and a
        200k buffer — the cost-deciding settings `experiments/sac_vs_brax.py` gives both sides.

        * actor / critic lr 1e-3 (Brax's ``learning_rate``), α lr 3e-4 (Brax's fixed α Adam);
          weight decay 0 (Brax uses plain Adam);
        * α₀ = 1 (Brax's log α = 0) and H̄ = −0.5·|A|: strong early entropy bonus for exploration;
        * 256×256 relu policy and Q MLPs with LayerNorm after each Q hidden activation (Brax's
          ``q_network_layer_norm=True``): bounded Q features keep lr 1e-3 critics stable;
        * log σ ∈ [−3, 2], so log σ starts at −0.5 (σ₀ ≈ 0.61, Brax's softplus head: ≈ 0.69)
          instead of −1.5 with the LIFT range [−5, 2];
        * γ 0.99, τ 0.005, reward scale 1, observation normalisation (all as Brax).

        Measured on CartpoleSwingup at 40k env steps (deterministic eval, 2 shared cores): seeds
        0 / 1 / 2 → 688 / 566 / 565 on two CPU devices, 234 / 551 / 164 on one (Brax: 705 / 260 /
        406); the former preset (128-wide swish, lr 3e-4, α₀ 0.1, no LayerNorm) scored 256 on
        seed 0.  Returns at this budget swing by hundreds between seeds; see README "Against
        Brax's own SAC".  With ``warmup_actions="policy"`` (Brax's warm-up) it is above Brax's SAC by
        mean on both tasks, 8 seeds a side: CartpoleSwingup 490 vs 348, CheetahRun 362 vs 333; but
        on CartpoleBalance it scored 695 against the uniform warm-up's 831 (8 seeds, p = 0.20), so
        the default stays uniform (ALGORITHMS.md §2's "random steps").
        """
        return cls(num_envs=16, batch_size=128, updates_per_step=16, buffer_size=200_000,
                   min_buffer=2048, gamma=0.99, tau=0.005, reward_scale=1.0, actor_lr=1e-3,
                   critic_lr=1e-3, alpha_lr=3e-4, weight_decay=0.0, init_log_alpha=0.0,
                   entropy_coef=0.5, actor_hidden=(256, 256), critic_hidden=(256, 256),
                   activation="relu", critic_layer_norm=True, log_std_min=-3.0, log_std_max=2.0,
                   compute_dtype="float32", num_eval_envs=16)

    @classmethod
    def brax(cls) -> SACConfig:
        """`cpu` with Brax's three algorithmic choices as well (σ = softplus(raw) + 1e-3, the
        pre-update α in the critic and actor losses, a warm-up acting with the initial policy):
        Brax's SAC, choice for choice, at CPU size.  Measured against Brax with 8 seeds a side
        (README "Against Brax's own SAC"): CartpoleSwingup 540 vs 348, CheetahRun 317 vs 333 —
        both above the `cpu` preset's 392 and 295 on the same seeds."""
        return cls.cpu().replace(std_head="softplus", alpha_in_losses="previous", warmup_actions="policy")

    @classmethod
    def lift_lowdim(cls) -> SACConfig:
        """The table's 12-DoF "LowDim" row (ALGORITHMS.md §2; lift_configs.py's base config):
        how LIFT pretrained its finetuning sources — 1000 envs, batch 1024, 9 updates per step,
        τ 0.024, α lr 1e-2, reward scale 1 — with the lift presets' bfloat16 hidden layers and
        'highest' precision.  LIFT's LowDim envs (12 actuated leg joints) are its own, not
        Playground's, and not in this library: the row applies to the task you name, with no
        env changes."""
        return cls(**dict(zip(_ROW_FIELDS, LOWDIM_ROW)), compute_dtype="bfloat16",
                   matmul_precision="highest")

    @classmethod
    def lift_smoke(cls, env_name: str | None = None) -> SACConfig:
        """The lift code path (bfloat16 hidden layers, asymmetric observations, normalisers,
        one-sample UTD scan, env overrides) at a size 2 CPU cores run in minutes.  Not for
        learning anything: it checks that a lift run compiles, trains, checkpoints and exports.
        ``env_name`` None: T1JoystickFlatTerrain's settings; another task than the four of
        `LIFT_TASKS` is refused (its env has neither LIFT's observations nor its overrides)."""
        base = cls.lift("T1JoystickFlatTerrain" if env_name is None else env_name)
        return base.replace(num_envs=8, batch_size=64, updates_per_step=4, buffer_size=4096,
                            min_buffer=16, actor_hidden=(32, 32), critic_hidden=(64, 64),
                            num_eval_envs=16)

    def replace(self, **kw) -> SACConfig:
        return dataclasses.replace(self, **kw)

    @property
    def dtype(self) -> Any:
        return jnp.dtype(self.compute_dtype)


def target_entropy(action_size: int, cfg: SACConfig) -> float:
    """H̄ = −entropy_coef · |A|."""
    return -cfg.entropy_coef * action_size


# ============================================================================ state
@struct.dataclass
class SACState:
    actor_params: Any
    critic_params: Any  # twin Q: every leaf has a leading axis of size 2
    target_params: Any  # Polyak average of critic_params
    log_alpha: jax.Array  # [] log temperature
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    obs_stats: dict  # observation key -> normalizer.RunningStats
    step: jax.Array  # [] int32 gradient steps done


def _policy_net(cfg: SACConfig, action_size: int) -> MLP:
    return MLP(hidden=cfg.actor_hidden, out=2 * action_size, compute_dtype=cfg.dtype,
               activation=cfg.activation)


def _q_net(cfg: SACConfig) -> TwinQ:
    return TwinQ(hidden=cfg.critic_hidden, compute_dtype=cfg.dtype, activation=cfg.activation,
                 layer_norm=cfg.critic_layer_norm)


def _action_size(state: SACState) -> int:
    return state.actor_params["out"]["bias"].shape[-1] // 2


def _adamw(lr: float, cfg: SACConfig) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=cfg.weight_decay)


def check_obs_keys(spec: EnvSpec, cfg: SACConfig) -> None:
    """A ValueError naming the missing key when the env lacks an observation the config reads."""
    for field in ("actor_obs_key", "critic_obs_key"):
        key = getattr(cfg, field)
        if key not in spec.obs:
            raise ValueError(f"SACConfig.{field}={key!r}: env {spec.name!r} has no such observation; "
                             f"it has {', '.join(sorted(spec.obs))}")


@compiled_init
def init(key: jax.Array, spec: EnvSpec, cfg: SACConfig) -> SACState:
    """Fresh agent for ``spec``: target = critic, empty normaliser statistics."""
    check_obs_keys(spec, cfg)
    a = spec.action.size
    k_actor, k_critic = jax.random.split(key)
    actor_params = _policy_net(cfg, a).init(
        k_actor, jnp.zeros((1, spec.obs[cfg.actor_obs_key].size), jnp.float32))["params"]
    critic_params = _q_net(cfg).init(
        k_critic, jnp.zeros((1, spec.obs[cfg.critic_obs_key].size), jnp.float32),
        jnp.zeros((1, a), jnp.float32))["params"]
    log_alpha = jnp.asarray(cfg.init_log_alpha, jnp.float32)
    keys = sorted({cfg.actor_obs_key, cfg.critic_obs_key})
    return SACState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_params=critic_params,
        log_alpha=log_alpha,
        actor_opt=_adamw(cfg.actor_lr, cfg).init(actor_params),
        critic_opt=_adamw(cfg.critic_lr, cfg).init(critic_params),
        alpha_opt=_adamw(cfg.alpha_lr, cfg).init(log_alpha),
        obs_stats={k: normalizer.init(spec.obs[k].shape) for k in keys},
        step=jnp.zeros((), jnp.int32),
    )


def reset_alpha(state: SACState, cfg: SACConfig) -> SACState:
    """α back to ``cfg.init_log_alpha`` with a fresh optimiser state (finetuning)."""
    log_alpha = jnp.asarray(cfg.init_log_alpha, jnp.float32)
    return state.replace(log_alpha=log_alpha, alpha_opt=_adamw(cfg.alpha_lr, cfg).init(log_alpha))


# ============================================================================ networks
def norm_obs(state: SACState, obs: dict, key: str, cfg: SACConfig) -> jax.Array:
    """obs[key] standardised by its running statistics (identity without ``normalize_obs``)."""
    x = replay.as_stored(obs[key].astype(jnp.float32), cfg.replay_obs_dtype)  # (as its updates see it)
    if not cfg.normalize_obs:
        return x
    return normalizer.standardize(state.obs_stats[key], x, cfg.obs_std_min, cfg.obs_std_max)


def policy(actor_params, state: SACState, obs: dict, cfg: SACConfig):
    """(mean, log σ) [B, A] each: log σ = min + (max − min)/2 · (tanh(raw) + 1) (``std_head="range"``),
    or σ = softplus(raw) + 1e-3 (``"softplus"``, Brax's NormalTanhDistribution: σ has no upper
    bound and starts near softplus(0) ≈ 0.69)."""
    out = _policy_net(cfg, _action_size(state)).apply(
        {"params": actor_params}, norm_obs(state, obs, cfg.actor_obs_key, cfg))
    mean, raw = jnp.split(out, 2, axis=-1)
    if cfg.std_head == "softplus":
        return mean, jnp.log(jax.nn.softplus(raw) + BRAX_MIN_STD)
    half = 0.5 * (cfg.log_std_max - cfg.log_std_min)
    return mean, cfg.log_std_min + half * (jnp.tanh(raw) + 1.0)


def q_values(critic_params, state: SACState, obs: dict, action: jax.Array, cfg: SACConfig):
    """Q_i(norm(obs[critic_obs_key]), a): [2, B]."""
    return _q_net(cfg).apply({"params": critic_params},
                             norm_obs(state, obs, cfg.critic_obs_key, cfg), action)


def act(state: SACState, obs: dict, key: jax.Array, cfg: SACConfig,
        deterministic: bool = False) -> tuple[jax.Array, dict]:
    """Actions [N, A] in [-1, 1]: tanh(mean) if ``deterministic`` else a tanh-Gaussian sample."""
    mean, log_std = policy(state.actor_params, state, obs, cfg)
    action = jnp.tanh(mean) if deterministic else sample_tanh_gaussian(key, mean, log_std)[0]
    return action, {"mean": mean, "log_std": log_std}


def explore(state: SACState, obs: dict, key: jax.Array, cfg: SACConfig) -> tuple[jax.Array, SACState]:
    """Stochastic actions for data collection (the state is unchanged)."""
    return act(state, obs, key, cfg)[0], state


def observe(state: SACState, tr: Transition, cfg: SACConfig) -> SACState:
    """Merge the collected batch's observations into the running statistics of each key."""
    if not cfg.normalize_obs:
        return state
    # as replay stores them (bfloat16 or float32): the statistics of what the networks are fed
    stats = {k: normalizer.update(s, replay.as_stored(tr.obs[k].astype(jnp.float32), cfg.replay_obs_dtype))
             for k, s in state.obs_stats.items()}
    return state.replace(obs_stats=stats)


# ============================================================================ losses
def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target: float) -> jax.Array:
    """mean(exp(log α) · sg(−log π − H̄)): raises α while the entropy is below its target."""
    return jnp.mean(jnp.exp(log_alpha) * jax.lax.stop_gradient(-log_prob - target))


def critic_target(reward, terminated, next_q, next_log_prob, alpha, cfg: SACConfig) -> jax.Array:
    """y = reward_scale·r + γ(1 − terminated)(min_i Q̄_i(s', a') − α log π(a'|s')); next_q [2, B]."""
    not_done = 1.0 - terminated.astype(jnp.float32)
    next_v = jnp.min(next_q, axis=0) - alpha * next_log_prob
    return jax.lax.stop_gradient(cfg.reward_scale * reward + cfg.gamma * not_done * next_v)


def critic_loss_value(q: jax.Array, target: jax.Array, truncated: jax.Array) -> jax.Array:
    """½·mean(((Q − y)·(1 − truncated))²) over both critics and the batch; q [2, B]."""
    err = (q - target[None]) * (1.0 - truncated.astype(jnp.float32))[None]
    return 0.5 * jnp.mean(jnp.square(err))


def critic_loss(critic_params, state: SACState, batch: Transition, key, alpha, cfg: SACConfig):
    """The critic loss of ``critic_params``; a' ~ π(s') from the current actor, Q̄ the target.
    Returns (loss, Q [2, B])."""
    mean, log_std = policy(state.actor_params, state, batch.next_obs, cfg)
    next_action, next_log_prob = sample_tanh_gaussian(key, mean, log_std)
    next_q = q_values(state.target_params, state, batch.next_obs, next_action, cfg)
    y = critic_target(batch.reward.astype(jnp.float32), batch.terminated, next_q, next_log_prob,
                      alpha, cfg)
    q = q_values(critic_params, state, batch.obs, batch.action, cfg)
    return critic_loss_value(q, y, batch.truncated), q


def actor_loss(actor_params, state: SACState, batch: Transition, key, alpha, cfg: SACConfig):
    """mean(α log π(a|s) − min_i Q_i(s, a)), a ~ π(s), with the critic of ``state``.
    Returns (loss, log π [B])."""
    mean, log_std = policy(actor_params, state, batch.obs, cfg)
    action, log_prob = sample_tanh_gaussian(key, mean, log_std)
    q = q_values(state.critic_params, state, batch.obs, action, cfg)
    return actor_loss_value(log_prob, q, alpha), log_prob


def actor_loss_value(log_prob: jax.Array, q: jax.Array, alpha) -> jax.Array:
    """mean(α log π − min_i Q_i); log_prob [B], q [2, B]."""
    return jnp.mean(alpha * log_prob - jnp.min(q, axis=0))


# ============================================================================ update
def update(state: SACState, batch: Transition, key: jax.Array, cfg: SACConfig
           ) -> tuple[SACState, dict[str, jax.Array]]:
    """One gradient step (jit-able): α, then critic (new α), then actor (new α, pre-update
    critic), then Polyak; ``alpha_in_losses="previous"`` gives both losses the α before its step."""
    k_alpha, k_critic, k_actor = jax.random.split(key, 3)
    # (1) temperature, from a ~ π(s) of the current actor
    mean, log_std = policy(state.actor_params, state, batch.obs, cfg)
    _, log_prob = sample_tanh_gaussian(k_alpha, mean, log_std)
    h_bar = target_entropy(_action_size(state), cfg)
    a_loss, a_grad = jax.value_and_grad(alpha_loss)(state.log_alpha, log_prob, h_bar)
    a_upd, alpha_opt = _adamw(cfg.alpha_lr, cfg).update(a_grad, state.alpha_opt, state.log_alpha)
    log_alpha = optax.apply_updates(state.log_alpha, a_upd)
    # The losses' α: the new one (LIFT) or, with alpha_in_losses="previous", the one before (Brax).
    alpha = jnp.exp(log_alpha if cfg.alpha_in_losses == "updated" else state.log_alpha)
    # (2) critic with that α
    (c_loss, q), c_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, k_critic, alpha, cfg)
    c_upd, critic_opt = _adamw(cfg.critic_lr, cfg).update(c_grads, state.critic_opt, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_upd)
    # (3) actor with that α and the pre-update critic (``state`` still holds it)
    (p_loss, pi_log_prob), p_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state, batch, k_actor, alpha, cfg)
    p_upd, actor_opt = _adamw(cfg.actor_lr, cfg).update(p_grads, state.actor_opt, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, p_upd)
    # (4) Polyak
    target_params = optax.incremental_update(critic_params, state.target_params, cfg.tau)
    state = state.replace(actor_params=actor_params, critic_params=critic_params,
                          target_params=target_params, log_alpha=log_alpha, actor_opt=actor_opt,
                          critic_opt=critic_opt, alpha_opt=alpha_opt, step=state.step + 1)
    metrics = {
        "critic_loss": c_loss, "actor_loss": p_loss, "alpha_loss": a_loss, "alpha": jnp.exp(log_alpha),
        "entropy": -jnp.mean(pi_log_prob), "q_mean": jnp.mean(q),
        "critic_grad_norm": optax.tree.norm(c_grads), "actor_grad_norm": optax.tree.norm(p_grads),
    }
    return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


# ============================================================================ export
def policy_layers(state: SACState, cfg: SACConfig) -> list[dict]:
    """The deterministic policy tanh(mean(norm(obs[actor_obs_key]))) as export ops, in float32:
    the normaliser as two affines, x − mean then × 1/std (as one, x·(1/std) − mean/std, a feature
    with a large mean and a tiny std, e.g. gravity at 9.81 ± 1e-7, loses its value to rounding),
    dense + ``cfg.activation`` per hidden layer, the mean half of the output layer, tanh; first of
    all ``round_bf16`` when replay stores bfloat16 observations (`replay.as_stored`)."""
    f32 = lambda x: np.asarray(x, np.float32)
    # bfloat16 replay: the policy learned from (and acts on) rounded observations (`replay.as_stored`)
    ops: list[dict] = [{"op": "round_bf16"}] if cfg.replay_obs_dtype == "bfloat16" else []
    if cfg.normalize_obs:
        stats = state.obs_stats[cfg.actor_obs_key]
        scale, _ = normalizer.standardize_affine(stats, cfg.obs_std_min, cfg.obs_std_max)
        ops += [{"op": "affine", "scale": np.ones_like(f32(scale)), "shift": -f32(stats.mean)},
                {"op": "affine", "scale": f32(scale), "shift": np.zeros_like(f32(scale))}]
    p = state.actor_params
    for i in range(len(cfg.actor_hidden)):
        layer = p[f"hidden_{i}"]
        ops += [{"op": "dense", "kernel": f32(layer["kernel"]), "bias": f32(layer["bias"])},
                {"op": cfg.activation}]
    a = _action_size(state)
    ops += [{"op": "dense", "kernel": f32(p["out"]["kernel"])[:, :a], "bias": f32(p["out"]["bias"])[:a]},
            {"op": "tanh"}]
    return ops
