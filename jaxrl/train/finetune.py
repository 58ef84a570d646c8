"""World-model finetuning (ALGORITHMS.md §2 "Finetuning"): a pretrained SAC agent improves in a
changed environment from few real transitions, exploring only inside a world model.

Why: a policy pretrained in simulation meets a world that differs (another simulator, a heavier
part, a new command).  Random or stochastic actions on a real robot are expensive and unsafe, so
the target environment only ever runs the DETERMINISTIC policy tanh(μ); the stochastic policy
explores inside a physics-informed world model (`jaxrl.algos.world_model`) fitted to the real
transitions, and SAC learns from imagined transitions mixed with a few real ones.

One epoch (one iteration of the host loop's chunk, Dyna style, all jitted):

1. fit the world model to convergence on the real buffer (H-step windows, early stop);
2. collect ``real_steps_per_epoch`` real steps with tanh(μ) into the real buffer (FIFO);
3. ``rounds`` times (ramped ``rounds_min`` → ``rounds_max`` over ``rounds_ramp_epochs``): from
   ``starts`` real start states, roll the model ``horizon`` steps (ramped ``horizon_min`` →
   ``horizon_max`` over ``horizon_ramp_epochs``) with the stochastic policy into the imagined
   buffer — the model's mean is rolled on, its predicted noise is added only to what the actor
   observes (``observation_noise``); rewards and terminations are the task's own, evaluated on
   the predicted state — then
   ``updates_per_round`` SAC updates, each on ``imagined_batch`` imagined plus ``real_batch``
   real transitions (LIFT: 5120 + 300, ≈6% real).

Before the first epoch, ``prefill`` real steps (deterministic too) fix the world model's scaler.
The SAC agent (policy, critics, targets, normaliser, optimiser states) comes from the
pretraining run (``init_from``), α is re-initialised (`FINETUNE_PARTS`); the observation
normaliser is frozen (the pretrained policy's inputs keep their meaning).  ``env_steps`` in the
metrics rows counts REAL transitions only; evaluation episodes run the deterministic policy in a
separate copy of the target env and are not counted.

Imagination needs the full task state at a real start state: the real buffer stores, per
transition, the task's state without its MJX data (observation, info, metrics) and the physics
state x = [qpos, qvel, act]; the MJX data is rebuilt from x with ``mjx.forward``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs.wrappers import PHYSICS_MATMUL_PRECISION, VecEnv, split_obs
from jaxrl.algos import sac
from jaxrl.algos import world_model as wm
from jaxrl.data import replay
from jaxrl.data.transition import Transition
from jaxrl.train.loop import (
    COUNTERS,
    HostLoop,
    chunk_counters,
    chunk_ends,
    init_keys,
    iterations_to_next,
    repeat,
    skip_when,
)

# The agent parts a finetuning run loads from its pretraining run: everything but α (and its
# optimiser), which LIFT re-initialises.
FINETUNE_PARTS = ("actor_params", "critic_params", "target_params", "actor_opt", "critic_opt",
                  "obs_stats", "step")


@dataclass(frozen=True)
class FinetuneConfig:
    """World-model finetuning; defaults are LIFT's (finetune_wm_ac.py), see `cpu` for this machine."""

    # --- the pretrained agent: its networks, with LIFT's finetuning hyper-parameters (`sac_overrides`)
    sac: sac.SACConfig = field(default_factory=sac.SACConfig)  # networks must equal the pretraining run's
    # --- real data (the target env only ever runs tanh(μ))
    num_envs: int = 1  # target envs stepped together (LIFT: 1, one robot)
    num_eval_envs: int = 16  # evaluation episodes in the target env, deterministic (sac.num_eval_envs is pretraining's)
    prefill: int = 1000  # real steps before the first model fit (LIFT: 1000)
    real_steps_per_epoch: int = 1000  # real steps collected per epoch (LIFT: 1000)
    real_buffer: int = 60_000  # FIFO real buffer in transitions (LIFT: 60k)
    # --- imagination
    starts: int = 400  # real start states per imagination round (LIFT: 400)
    rounds_min: int = 10  # imagination rounds per epoch at epoch 0 (LIFT: 10)
    rounds_max: int = 1000  # ... ramped linearly to this (LIFT: 1000)
    rounds_ramp_epochs: int = 4  # epochs of the rounds ramp (LIFT: 0-4)
    horizon_min: int = 1  # imagined rollout length at epoch 0 (LIFT: 1)
    horizon_max: int = 20  # ... ramped linearly to this (LIFT: 20)
    horizon_ramp_epochs: int = 10  # epochs of the horizon ramp (LIFT: 0-10)
    imagined_buffer: int = 400_000  # imagined transitions kept (FIFO; LIFT keeps ~50 rounds' worth)
    observation_noise: bool = True  # the model's predicted noise on what the actor observes; the state stays the mean (LIFT)
    # --- SAC updates
    updates_per_round: int = 20  # SAC updates after each round (LIFT: 20; ≤ 20k per 1000 real steps)
    imagined_batch: int = 5120  # imagined transitions per update (LIFT: 256·20)
    real_batch: int = 300  # real transitions per update (LIFT: 300, ≈6%)
    # --- the world model
    world_model: wm.WorldModelConfig = field(default_factory=wm.WorldModelConfig)  # LIFT: 4×400 swish, H = 4

    def __post_init__(self):
        def bad(name, value, fix):
            raise ValueError(f"FinetuneConfig.{name}={value!r} is invalid: {fix}")

        for f in ("num_envs", "num_eval_envs", "prefill", "real_steps_per_epoch", "real_buffer", "starts", "rounds_min",
                  "rounds_max", "horizon_min", "horizon_max", "imagined_buffer", "updates_per_round",
                  "imagined_batch", "real_batch"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f, v, "it must be a positive integer")
        for f in ("rounds_ramp_epochs", "horizon_ramp_epochs"):
            if getattr(self, f) < 0:
                bad(f, getattr(self, f), "it must be >= 0 (0: no ramp)")
        if self.rounds_min > self.rounds_max:
            bad("rounds_min", self.rounds_min, f"it exceeds rounds_max={self.rounds_max}")
        if self.horizon_min > self.horizon_max:
            bad("horizon_min", self.horizon_min, f"it exceeds horizon_max={self.horizon_max}")
        if self.prefill < self.world_model.horizon * self.num_envs * 2:
            bad("prefill", self.prefill, f"the first model fit needs at least 2 windows of "
                f"world_model.horizon={self.world_model.horizon} steps per env: raise prefill")
        if self.real_buffer < self.prefill + self.real_steps_per_epoch:
            bad("real_buffer", self.real_buffer, "it must hold the prefill and one epoch of real steps")
        if self.imagined_buffer < self.starts * self.horizon_max:
            bad("imagined_buffer", self.imagined_buffer,
                f"it must hold one round (starts x horizon_max = {self.starts * self.horizon_max})")
        if not isinstance(self.sac, sac.SACConfig):
            bad("sac", type(self.sac).__name__, "it must be a SACConfig (the pretraining run's)")

    def replace(self, **kw) -> FinetuneConfig:
        return dataclasses.replace(self, **kw)

    @property
    def env_overrides(self) -> tuple:
        """The target env's config changes: the pretraining config's (``sac.env_overrides``; LIFT:
        pushes off, T1 observation noise 0), so that the target differs from the pretraining env
        only by its variant's physics.  `jaxrl.train.run.train` applies them as it applies any
        config's; explicit ``env_kwargs`` win."""
        return self.sac.env_overrides

    @staticmethod
    def sac_overrides(cfg: sac.SACConfig) -> sac.SACConfig:
        """The pretraining config with LIFT's finetuning SAC settings: AdamW lr 2e-4 (actor and
        critic), α lr 3e-4, γ 0.99, τ 0.001, float32 (bfloat16 layers off, and 'highest' matmul
        precision: JAX's default runs float32 matmuls as TF32 on recent GPUs), H̄ = −0.5|A|, log α
        re-initialised at −7.13."""
        return cfg.replace(actor_lr=2e-4, critic_lr=2e-4, alpha_lr=3e-4, gamma=0.99, tau=0.001,
                           compute_dtype="float32", matmul_precision="highest", entropy_coef=0.5,
                           init_log_alpha=-7.13)

    @classmethod
    def paper(cls, env_name: str | None = None, pretrained: sac.SACConfig | None = None) -> FinetuneConfig:
        """LIFT's settings, the networks of ``pretrained`` (default: `SACConfig.paper(env_name)`)."""
        return cls(sac=cls.sac_overrides(pretrained or sac.SACConfig.paper(env_name)))

    @classmethod
    def cpu(cls, pretrained: sac.SACConfig | None = None) -> FinetuneConfig:
        """Small settings for a 2-core CPU and Cartpole-sized tasks: 1 env, 200-step epochs, 64
        starts x horizon 1 → 10, 2 → 8 rounds of 8 updates on 256 imagined + 16 real, a 3×128 model."""
        return cls(sac=cls.sac_overrides(pretrained or sac.SACConfig.cpu()), prefill=200,
                   real_steps_per_epoch=200, real_buffer=10_000, starts=64, rounds_min=2, rounds_max=8,
                   rounds_ramp_epochs=4, horizon_min=1, horizon_max=10, horizon_ramp_epochs=5,
                   imagined_buffer=20_000, updates_per_round=8, imagined_batch=256, real_batch=16,
                   world_model=wm.WorldModelConfig.cpu().replace(max_epochs=20))

    def epochs(self, real_steps: int) -> int:
        """Epochs a budget of ``real_steps`` real steps (prefill included) pays for."""
        return (real_steps - self.prefill) // self.real_steps_per_epoch


def ramp(epoch: jax.Array, lo: int, hi: int, epochs: int) -> jax.Array:
    """lo at epoch 0, linearly to hi at ``epochs`` (int32, traced)."""
    frac = jnp.clip(epoch.astype(jnp.float32) / max(epochs, 1), 0.0, 1.0) if epochs else 1.0
    return jnp.round(lo + (hi - lo) * frac).astype(jnp.int32)


@struct.dataclass
class FinetuneCarry:
    agent: sac.SACState
    model: wm.WorldModelState
    real: replay.ReplayState  # rows: {"tr", "x", "ctrl", "x_next", "ok", "start"} [T, num_envs]
    imagined: replay.ReplayState  # rows: {"tr", "valid"} [T, starts]
    env_state: Any
    key: jax.Array
    iteration: jax.Array  # [] int32, real vector steps taken (prefill included)
    epoch: jax.Array  # [] int32, epochs done


class FinetuneLoop(HostLoop):
    """`jaxrl.train.run`'s protocol over the finetuning epoch (one chunk iteration = one epoch)."""

    optional_state = (".imagined",)  # rebuilt by the next rounds; the real buffer is precious
    refill_note = "the next imagination rounds fill it again"
    memory_knobs = ("starts or horizon_max (the imagined rollouts), imagined_batch or updates_per_round "
                    "(the rows sampled and the update's activations)")

    def __init__(self, cfg: FinetuneConfig, env: VecEnv, eval_env: VecEnv | None, steps: int,
                 seed: int, num_evals: int = 10, *, devices: int | None = None, seeds: int = 1):
        super().__init__()
        if env.num_envs != cfg.num_envs:
            raise ValueError(f"env has {env.num_envs} envs but config.num_envs={cfg.num_envs}")
        epochs = cfg.epochs(steps)
        if epochs < 1:
            raise ValueError(
                f"real steps {steps:,} pay for no finetuning epoch: the budget must cover prefill="
                f"{cfg.prefill:,} plus at least one epoch of real_steps_per_epoch={cfg.real_steps_per_epoch:,} "
                f"(>= {cfg.prefill + cfg.real_steps_per_epoch:,})")
        sac.check_obs_keys(env.spec, cfg.sac)
        if devices not in (None, 1):
            raise ValueError("finetuning runs on one device (a few real envs); pass devices=1 or None")
        self.setup(env, eval_env, seed, 1, seeds, {})
        self.cfg = cfg
        # The world model's physics prior and imagination use the NOMINAL task when the target
        # has one (`envs.variants`: the changed masses, or MuJoCo C as the simulator, are what the
        # model must learn from real data, not be told).
        self.task = getattr(env.env, "nominal", env.env)
        wm.check_imaginable(self.task)  # reward / termination on predicted states, before compiling
        self.model = wm.WorldModel(cfg.world_model, wm.SmoothDynamics.of_task(self.task))
        self.prefill_iters = math.ceil(cfg.prefill / env.num_envs)
        self.epoch_iters = math.ceil(cfg.real_steps_per_epoch / env.num_envs)
        # The budget is real steps, the number finetuning is judged by: exactly ``epochs`` epochs
        # (rounding the epochs up to a multiple of ``num_evals``, as every loop did before stop
        # 51, overran it by up to a quarter), split as every loop splits its budget
        # (`loop.chunk_ends`, here in epochs); a chunk's length is an argument of its program.
        self.chunk_ends = list(chunk_ends(epochs, num_evals))  # epochs after each chunk
        self.total_iters = self.prefill_iters + epochs * self.epoch_iters
        # At most, per epoch: every round at rounds_max and horizon_max; each model fit at
        # max_epochs over a full real buffer (sequences of `horizon` steps).
        w = cfg.world_model
        fit_rows = w.max_epochs * max(w.min_epoch_steps, math.ceil(cfg.real_buffer / w.batch_size)) * w.batch_size * w.horizon
        sac_rows = cfg.rounds_max * cfg.updates_per_round * (cfg.imagined_batch + cfg.real_batch)
        imagined = cfg.rounds_max * cfg.starts * cfg.horizon_max
        self.quick_if_short(steps + epochs * imagined, epochs * (fit_rows + sac_rows))
        self.make_evaluate(self.deploy)
        self._chunk = self.program(self._chunk_fn, carry_out=False)

    # ------------------------------------------------------------------ policy
    def deploy(self, agent: sac.SACState, obs: dict, key: Any = None) -> jax.Array:
        """The only actions the target env ever receives: tanh(μ)."""
        return sac.act(agent, obs, None, self.cfg.sac, deterministic=True)[0]

    # ------------------------------------------------------------------ carry
    def _real_row(self, before, action, after) -> dict:
        """What one real vector step stores: the transition, the world model's view of it, and
        the start state for imagination (the task state without its MJX data)."""
        dyn = self.model.dyn
        done = after.terminated | after.truncated
        tr = Transition(obs=before.obs, action=action, reward=after.reward, next_obs=after.final_obs,
                        terminated=after.terminated, truncated=after.truncated)
        # After a done the env auto-reset: its next physics state is gone (ok = False masks it).
        return {"tr": tr, "x": jax.vmap(dyn.state_of)(before.inner.data),
                "ctrl": after.inner.data.ctrl, "x_next": jax.vmap(dyn.state_of)(after.inner.data),
                "ok": ~done, "start": before.inner.replace(data=None)}

    def _imagined_example(self, env_state) -> dict:
        obs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), env_state.obs)
        s = jax.ShapeDtypeStruct
        tr = Transition(obs=obs, action=s((self.env.action_size,), jnp.float32), reward=s((), jnp.float32),
                        next_obs=obs, terminated=s((), jnp.bool_), truncated=s((), jnp.bool_))
        return {"tr": tr, "valid": s((), jnp.bool_)}

    def _init_agent(self, key: jax.Array) -> sac.SACState:
        return sac.init(init_keys(key)[0], self.env.spec, self.cfg.sac)

    def _init(self, key: jax.Array, agent: Any = None, env_state: Any = None) -> FinetuneCarry:
        k_agent, k_env, key = init_keys(key)
        agent = sac.init(k_agent, self.env.spec, self.cfg.sac) if agent is None else agent
        env_state = self.env.reset(k_env) if env_state is None else env_state
        zero_action = jnp.zeros((self.env.num_envs, self.env.action_size), jnp.float32)
        row = jax.eval_shape(lambda s: self._real_row(s, zero_action, s), env_state)
        row = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), row)
        real = replay.init(row, self.cfg.real_buffer, self.env.num_envs, check=False)
        imagined = replay.init(self._imagined_example(env_state), self.cfg.imagined_buffer,
                               self.cfg.starts, check=False)
        dyn = self.model.dyn
        shape = wm.Sequences(jnp.zeros((2, 1, dyn.state_size)), jnp.zeros((2, 1, dyn.nu)),
                             jnp.zeros((2, 1, dyn.state_size)), jnp.zeros((2, 1)))
        model = self.model.init(key, shape)  # its scaler is set from the prefill (`_epoch`)
        return FinetuneCarry(agent=agent, model=model, real=real, imagined=imagined, env_state=env_state,
                             key=key, iteration=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------ pieces
    def _collect(self, carry: FinetuneCarry, n: jax.Array) -> FinetuneCarry:
        """``n`` real vector steps with tanh(μ) (the normaliser stays frozen)."""
        def body(_, c):
            action = self.deploy(c.agent, c.env_state.obs)
            after = self.env.step(c.env_state, action)
            return c.replace(real=replay.insert(c.real, self._real_row(c.env_state, action, after)),
                             env_state=after, iteration=c.iteration + 1)

        return jax.lax.fori_loop(0, n, body, carry)

    def real_sequences(self, real: replay.ReplayState) -> wm.Sequences:
        """Every H-step window of the real ring buffer, fixed shape [T·N, H, ...], with
        ``valid`` [T·N, H]: the window lies in the filled part without crossing the write
        position, and each step's next state is known (no auto-reset in it)."""
        h = self.cfg.world_model.horizon
        t = real.rows
        oldest = (real.insert_pos - real.size) % t
        age = (jnp.arange(t) - oldest) % t  # 0 = oldest row
        rows = (jnp.arange(t)[:, None] + jnp.arange(h)[None, :]) % t  # [T, H]
        inside = (age + h - 1 < real.size)[:, None]  # [T, 1]
        d = real.data

        def win(a):  # [T, N, ...] -> [T·N, H, ...]
            w = jnp.moveaxis(a[rows], 2, 1)  # [T, N, H, ...]
            return w.reshape((-1, h) + a.shape[2:])

        ok = jnp.broadcast_to(inside[:, None, :], (t, real.data["ok"].shape[1], h)).reshape(-1, h)
        ok = ok & win(d["ok"])
        return wm.Sequences(win(d["x"]), win(d["ctrl"]), win(d["x_next"]), ~win(d["ok"]), valid=ok)

    def _starts(self, carry: FinetuneCarry, key: jax.Array):
        """``starts`` uniformly drawn real start states, their MJX data rebuilt from x."""
        from mujoco import mjx

        real = carry.real
        n_env = real.data["ok"].shape[1]
        k_t, k_n = jax.random.split(key)
        m = self.cfg.starts
        oldest = (real.insert_pos - real.size) % real.rows
        ti = (oldest + jax.random.randint(k_t, (m,), 0, jnp.maximum(real.size, 1))) % real.rows
        ni = jax.random.randint(k_n, (m,), 0, n_env)
        pick = lambda a: a[ti, ni]
        x = pick(real.data["x"])
        start = jax.tree.map(pick, real.data["start"])
        template = jax.tree.map(lambda a: jnp.broadcast_to(a[0], (m,) + a.shape[1:]), carry.env_state.inner.data)
        dyn, full = self.model.dyn, self.task.mjx_model

        def rebuild(d, xi):
            qpos, qvel, act = dyn.split(xi)
            return mjx.forward(full, d.replace(qpos=qpos, qvel=qvel, act=act))

        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):  # physics, as the env step
            return start.replace(data=jax.vmap(rebuild)(template, x))

    def _imagine(self, carry: FinetuneCarry, horizon: jax.Array, key: jax.Array) -> FinetuneCarry:
        """One round: ``horizon`` model steps from real start states with the stochastic policy,
        into the imagined buffer (steps after an imagined termination are marked invalid)."""
        k_start, key = jax.random.split(key)
        inner = self._starts(carry, k_start)
        step = jax.vmap(wm.imagined_step(self.task, self.model, carry.model, mean_obs=True))
        cfg = self.cfg.sac

        def body(i, c):
            # ``critic``: the critic's observation of ``inner``, computed from the mean state; the
            # model's noise reaches only what the actor observes, even when the task's
            # observation is one flat array serving both (LIFT: noise on the actor's input).
            inner, critic, alive, buf = c
            obs = {**split_obs(inner.obs), "privileged_state": critic}
            k_act, k_noise = jax.random.split(jax.random.fold_in(key, i))
            action = sac.act(carry.agent, obs, k_act, cfg)[0]
            nxt, mean = (step(inner, action, jax.random.split(k_noise, self.cfg.starts))
                         if self.cfg.observation_noise else step(inner, action))
            done = nxt.done > 0.5
            critic = split_obs(mean)["privileged_state"]
            tr = Transition(obs=obs, action=action, reward=nxt.reward.astype(jnp.float32),
                            next_obs={**split_obs(nxt.obs), "privileged_state": critic}, terminated=done,
                            truncated=jnp.zeros_like(done))
            buf = replay.insert(buf, {"tr": tr, "valid": alive})
            return nxt, critic, alive & ~done, buf

        alive = jnp.ones((self.cfg.starts,), bool)
        critic = split_obs(inner.obs)["privileged_state"]  # a real start state: no noise
        _, _, _, imagined = jax.lax.fori_loop(0, horizon, body, (inner, critic, alive, carry.imagined))
        return carry.replace(imagined=imagined)

    def _imagined_weights(self, img: replay.ReplayState) -> jax.Array:
        """Sampling probabilities over the imagined buffer's flat rows: uniform over the valid
        ones (filled, and not after an imagined termination)."""
        filled = (jnp.arange(img.rows) < img.size)[:, None]
        valid = (img.data["valid"] & filled).reshape(-1).astype(jnp.float32)
        return valid / jnp.maximum(valid.sum(), 1.0)

    def _batch(self, carry: FinetuneCarry, weights: jax.Array, key: jax.Array) -> Transition:
        """``imagined_batch`` valid imagined + ``real_batch`` real transitions."""
        k_i, k_r = jax.random.split(key)
        idx = jax.random.choice(k_i, weights.shape[0], (self.cfg.imagined_batch,), p=weights)
        imagined = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[idx], carry.imagined.data["tr"])
        real = replay.sample(carry.real, k_r, self.cfg.real_batch)["tr"]
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), imagined, real)

    def _round(self, carry: FinetuneCarry, horizon: jax.Array, key: jax.Array):
        k_img, k_upd = jax.random.split(key)
        carry = self._imagine(carry, horizon, k_img)
        weights = self._imagined_weights(carry.imagined)  # once per round, not per update

        def update(agent, k):
            k_b, k_u = jax.random.split(k)
            return sac.update(agent, self._batch(carry, weights, k_b), k_u, self.cfg.sac)

        agent, metrics = jax.lax.scan(update, carry.agent, jax.random.split(k_upd, self.cfg.updates_per_round))
        return carry.replace(agent=agent), jax.tree.map(jnp.mean, metrics)

    def _epoch(self, carry: FinetuneCarry, prefill: jax.Array):
        """One epoch: fit the model, collect real steps, imagine and update.  The first call is
        the prefill instead (``prefill`` real steps, then the model's scaler from them): the same
        program with the fit and the rounds skipped, so the env step is compiled once."""
        cfg = self.cfg
        key, k_fit, k_rounds, k_model = jax.random.split(carry.key, 4)
        model, fit = skip_when(prefill, self.model.fit, carry.model, self.real_sequences(carry.real), k_fit)
        n = jnp.where(prefill, self.prefill_iters, self.epoch_iters).astype(jnp.int32)
        carry = self._collect(carry.replace(model=model, key=key), n)
        model = jax.lax.cond(prefill, lambda: self.model.init(k_model, self.real_sequences(carry.real)),
                             lambda: carry.model)
        carry = carry.replace(model=model)
        rounds = ramp(carry.epoch, cfg.rounds_min, cfg.rounds_max, cfg.rounds_ramp_epochs)
        horizon = ramp(carry.epoch, cfg.horizon_min, cfg.horizon_max, cfg.horizon_ramp_epochs)
        carry, metrics = skip_when(prefill, lambda c: repeat(
            lambda c: self._round(c, horizon, jax.random.fold_in(k_rounds, c.agent.step)), c, rounds), carry)
        metrics = {**metrics, "model_val_error": fit["best_val"], "model_fit_epochs": fit["epochs"],
                   "rounds": rounds, "horizon": horizon}
        return carry.replace(epoch=carry.epoch + (~prefill).astype(jnp.int32)), metrics

    def _chunk_fn(self, carry: FinetuneCarry, n: jax.Array, prefill: jax.Array):
        before = carry.env_state
        # The learner's precision (SAC, the model's network); every physics step inside — the
        # real env's, the world model's smooth dynamics, imagined kinematics — keeps 'highest'.
        with jax.default_matmul_precision(self.cfg.sac.matmul_precision):
            carry, metrics = repeat(lambda c: self._epoch(c, prefill), carry, n)
        return carry, {**metrics, **chunk_counters(before, carry.env_state)}

    # ------------------------------------------------------------------ host
    # init_carry: the base's (a fresh agent; `run.train` loads the pretrained parts into it).
    # refill: the base's no-op. A restore without the imagined buffer needs nothing: the next
    # rounds refill it, sampling weighs only valid imagined rows, and the real batch is always there.
    def env_steps(self, carry: FinetuneCarry) -> int:
        return self.counter(carry.iteration) * self.env.num_envs

    def finished(self, carry: FinetuneCarry) -> bool:
        return self.counter(carry.iteration) >= self.total_iters

    def _advance(self, carry: FinetuneCarry):
        done = self.counter(carry.iteration)
        if done < self.prefill_iters:  # the prefill: one chunk "epoch"; its row: the env's counters
            carry, metrics = self.chunk(carry, 1, warm=True)
            return carry, {k: v for k, v in metrics.items() if k in COUNTERS}
        epochs = (done - self.prefill_iters) // self.epoch_iters
        return self.chunk(carry, iterations_to_next(tuple(self.chunk_ends), epochs))
