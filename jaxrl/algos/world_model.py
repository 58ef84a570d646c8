"""Physics-informed world model (ALGORITHMS.md §2 "World model"): the robot's own smooth dynamics
plus a learned generalised force per dof.

Why physics inside: a plain network has to learn gravity, inertia, Coriolis terms and the
actuators from a few thousand real transitions; here MuJoCo supplies all of that and the network
only learns what the smooth model lacks — contact and constraint forces and whatever the changed
world does differently (a heavier part, friction), expressed as a force on each dof.

The smooth dynamics is MJX itself (`SmoothDynamics`): the task's MuJoCo model with constraints and
contacts disabled, the predicted force applied as ``qfrc_applied``, integrated over the task's
control substeps with MJX's own functions — so mass matrix, bias forces, actuator law and
integrator are MuJoCo's, for ANY model, not hand-written for one robot.  Two forms
(``WorldModelConfig.hold_dynamics``):

* held (default, LIFT): the mass matrix and bias forces of the step's start serve every substep;
  each substep recomputes the actuator forces (the PD law at the substep's state), the passive
  forces, the acceleration and the semi-implicit Euler update.  One kinematics / mass-matrix
  evaluation per control step (T1: 10 substeps).  Tested against MuJoCo C doing the same in float64.
* exact: a full smooth ``mjx.step`` per substep, so M and the bias forces follow the state.  With
  the network's output replaced by the true per-substep ``qfrc_constraint`` it reproduces MJX's
  next state (tests/algos/test_world_model.py).

With one substep per control step (Cartpole, Cheetah) the two agree to float precision.  The held
form integrates with semi-implicit Euler, as LIFT; a model with another integrator needs
``hold_dynamics=False`` (a clear error says so).

The network (`ForceNet`, 4×400 swish) maps the normalised state x = [qpos, qvel, act] and the
normalised actuator input ``ctrl`` to the force (one per dof, in units of ``force_scale``, held over
the control step) and a log-variance over the next state, soft-clamped to [logvar_min, logvar_max].
Training (`fit`): open-loop H-step rollouts of the mean from real start states and the real ctrl
sequence, Gaussian NLL mean(exp(−logvar)·err² + logvar) on the normalised state error, masked after
the first done, plus per-layer L2; Adam; early stop when the held-out error improves by less than
``min_improvement`` (relative) for ``patience`` epochs, keeping the best parameters.  The whole fit
is one jitted ``while_loop`` (the finetuning loop calls it each epoch inside its program).

Gradients do not run through MJX: before a fit, each real transition's MJX step is expanded to
first order around it (`linearise`: x' ≈ F0 + A·(x̂ − x) + B·f, forward-mode derivatives, once per
fit), and the training rollout uses that expansion.  It is exact in the force to first order and
lets the predicted state drift from the real one through A; reverse-mode through ``mjx.step`` made
a fit more than 10× slower on this CPU (HopperHop, 1,000 gradient steps: 375 s, compile 126 s; the
expansion: 1,500 steps in 20 s, compile 41 s).  Imagination and every reported error integrate MJX exactly (`rollout`).

``physics=False`` gives the plain-MLP baseline: the same network predicts the normalised state
change directly (next = x + Δ), so the two are compared on equal footing.

The scaler (state / ctrl mean and std, force scale) is fixed when the model is created from the
first real data and never refit (refitting it under a trained network, as the official code does
on finetuning data, silently changes what the network's inputs mean).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs._runtime import run_once_options
from envs.wrappers import PHYSICS_MATMUL_PRECISION
from jaxrl.nets.mlp import ACTIVATIONS, MLP


# ============================================================================ config
@dataclass(frozen=True)
class WorldModelConfig:
    """World-model settings; defaults are LIFT's (ALGORITHMS.md §2)."""

    hidden: tuple[int, ...] = (400, 400, 400, 400)  # MLP widths (LIFT: 4×400)
    activation: str = "swish"  # hidden activation (LIFT: swish)
    physics: bool = True  # True: predict forces for MJX's smooth dynamics; False: plain-MLP baseline
    hold_dynamics: bool = True  # mass matrix and bias forces of a step's start held over its substeps (LIFT); False: a full MJX step per substep
    logvar_min: float = -10.0  # soft lower clamp of the predicted log-variance (LIFT)
    logvar_max: float = 0.5  # soft upper clamp: the model may never claim more than e^0.5 noise
    learning_rate: float = 1e-3  # Adam step size (LIFT)
    batch_size: int = 200  # sequences per gradient step (LIFT)
    horizon: int = 4  # open-loop training rollout length H (LIFT: 1 on dumps, 4 when finetuning)
    weight_decay: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)  # L2 per layer, input→output (LIFT)
    holdout: float = 0.2  # share of sequences held out for early stopping (LIFT: 20%)
    patience: int = 6  # epochs without a relative improvement >= min_improvement before stopping
    min_improvement: float = 0.01  # relative held-out improvement that counts (LIFT: 1%)
    max_epochs: int = 1000  # hard cap on epochs per fit (LIFT: 1000; patience ends fits far sooner)
    min_epoch_steps: int = 1  # gradient steps per epoch at least; 1: an epoch is one pass over the train split (LIFT)

    def __post_init__(self):
        def bad(name, value, why):
            raise ValueError(f"WorldModelConfig.{name}={value!r}: {why}")

        if not self.hidden or any(int(w) < 1 for w in self.hidden):
            bad("hidden", self.hidden, "give one or more positive widths")
        if self.activation not in ACTIVATIONS:
            bad("activation", self.activation, f"choose one of {', '.join(ACTIVATIONS)}")
        if not self.logvar_min < self.logvar_max:
            bad("logvar_min", self.logvar_min, f"it must be < logvar_max={self.logvar_max}")
        if len(self.weight_decay) != len(self.hidden) + 1:
            bad("weight_decay", self.weight_decay,
                f"give one L2 coefficient per layer: {len(self.hidden) + 1} for hidden={self.hidden}")
        for name in ("batch_size", "horizon", "patience", "max_epochs", "min_epoch_steps"):
            if int(getattr(self, name)) < 1:
                bad(name, getattr(self, name), "it must be >= 1")
        if not 0.0 < self.holdout < 1.0:
            bad("holdout", self.holdout, "it must be in (0, 1)")

    # Runs recorded before a field existed behaved like this (`runfolder.config_from_dict`):
    # before hold_dynamics every substep was a full MJX step.
    RECORDED_BEFORE: ClassVar[dict] = {"hold_dynamics": False}

    def replace(self, **kw) -> WorldModelConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def paper(cls, env_name: str | None = None) -> WorldModelConfig:
        """LIFT's settings (the defaults)."""
        return cls()

    @classmethod
    def cpu(cls) -> WorldModelConfig:
        """Cartpole/Hopper-sized tasks on a 2-core CPU: 3×128 (the 4×400 net is ~0.5M parameters
        and fits a few thousand transitions no better here).  An epoch is at least 50 gradient
        steps (one pass over a few thousand transitions is a handful, and patience would end a
        fit after a few dozen steps) and a fit at most 100 epochs: the settings every CPU result
        in README was measured with."""
        return cls(hidden=(128, 128, 128), weight_decay=(2.5e-5, 5e-5, 7.5e-5, 1e-4), max_epochs=100,
                   min_epoch_steps=50)


# ============================================================================ physics
class SmoothDynamics:
    """The task's MuJoCo model without constraints or contacts, stepped by MJX (impl "jax").

    ``integrate(x, ctrl, force)`` advances the state x = [qpos, qvel, act] by ``n_substeps`` physics
    steps with ``ctrl`` held and ``force`` (one per dof; [nv] held over the substeps, or
    [n_substeps, nv] one per substep) added as ``qfrc_applied``.
    """

    def __init__(self, mj_model: Any, n_substeps: int):
        import mujoco
        from mujoco import mjx

        smooth = _copy_model(mj_model)
        smooth.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_CONSTRAINT) | int(
            mujoco.mjtDisableBit.mjDSBL_CONTACT)
        self.mj_model = mj_model
        self.integrator = int(mj_model.opt.integrator)
        self.model = mjx.put_model(smooth, impl="jax")
        self.template = mjx.make_data(self.model)
        self.n_substeps = int(n_substeps)
        self.nq, self.nv, self.na, self.nu = mj_model.nq, mj_model.nv, mj_model.na, mj_model.nu
        self.state_size = self.nq + self.nv + self.na
        self.dt = float(mj_model.opt.timestep) * self.n_substeps
        # Diagonal of the mass matrix at the reference pose: the force scale's unit per dof.
        d = mujoco.MjData(mj_model)
        mujoco.mj_forward(mj_model, d)
        diag, unit, col = np.zeros(mj_model.nv), np.zeros(mj_model.nv), np.zeros(mj_model.nv)
        for i in range(mj_model.nv):
            unit[:] = 0.0
            unit[i] = 1.0
            mujoco.mj_mulM(mj_model, d, col, unit)
            diag[i] = col[i]
        self.mass_diag = np.maximum(diag, 1e-6).astype(np.float32)

    @property
    def euler(self) -> bool:
        """Whether the model integrates with (semi-implicit) Euler: the held form's integrator."""
        import mujoco

        return self.integrator == int(mujoco.mjtIntegrator.mjINT_EULER)

    @classmethod
    def of_task(cls, task: Any) -> SmoothDynamics:
        """From a Playground or jaxrl task (its ``mj_model`` and ``n_substeps``)."""
        if not hasattr(task, "mj_model"):
            raise TypeError(f"{type(task).__name__} has no `mj_model`: the world model needs the task's "
                            "MuJoCo model (MuJoCo Playground and jaxrl tasks have one; Brax envs do not)")
        return cls(task.mj_model, int(getattr(task, "n_substeps", 1)))

    def split(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        nq, nv = self.nq, self.nv
        return x[..., :nq], x[..., nq:nq + nv], x[..., nq + nv:]

    def state_of(self, data: Any) -> jax.Array:
        """x = [qpos, qvel, act] of an mjx.Data (any leading axes)."""
        return jnp.concatenate([data.qpos, data.qvel, data.act], axis=-1)

    def integrate(self, x: jax.Array, ctrl: jax.Array, force: jax.Array, hold: bool = False) -> jax.Array:
        """One control step of one state (vmap for batches).  ``hold``: the mass matrix, its
        factorisation and the bias forces of the step's start serve all its substeps, and each
        substep recomputes only the actuator forces (the PD law at the substep's state), the
        passive forces, the acceleration and the semi-implicit Euler update (LIFT's world model).
        Otherwise every substep is a full smooth ``mjx.step`` (exact).  With one substep both agree
        (Euler models: the held form's integrator)."""
        from mujoco import mjx

        qpos, qvel, act = self.split(x)
        forces = force if force.ndim == 2 else jnp.broadcast_to(force, (self.n_substeps, self.nv))
        d = self.template.replace(qpos=qpos, qvel=qvel, act=act, ctrl=ctrl)

        def substep(d, f):
            return mjx.step(self.model, d.replace(qfrc_applied=f)), None

        # Physics at the env step's matmul precision, whatever the learner's (TF32 on GPUs).
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            if hold:
                d, substep = self._held_start(d), self._held_substep
            if self.n_substeps == 1:
                # No scan for one substep: under vmap, a scan whose carry starts as the unbatched
                # template is batched over and over until its carry's batching settles, which made
                # tracing `linearise` ~1.5× slower (measured: 9.7 s vs 6.6 s, CartpoleSwingup).
                d, _ = substep(d, forces[0])
            else:
                d, _ = jax.lax.scan(substep, d, forces)
        return self.state_of(d)

    def _held_start(self, d: Any) -> Any:
        """The step's start: kinematics, mass matrix (factorised), actuator moments, bias forces."""
        from mujoco.mjx._src import forward

        return forward.fwd_velocity(self.model, forward.fwd_position(self.model, d))

    def _held_substep(self, d: Any, f: jax.Array) -> tuple[Any, None]:
        """One substep on the held mass matrix and bias forces (`integrate` with ``hold``).  MJX's
        own pieces: actuator lengths and moments from this substep's qpos (`smooth.transmission`:
        exact for joint transmissions; site transmissions read the start's kinematics), actuator
        and tendon velocities, passive and actuator forces, then ``fwd_acceleration`` (``qfrc_bias``
        and the factorised M are the start's: nothing recomputes them) and semi-implicit Euler.
        Passive terms that read body velocities (fluid forces) see the start's."""
        from mujoco.mjx._src import forward, passive, smooth

        m = self.model
        d = smooth.transmission(m, d)
        d = d.tree_replace({"_impl.actuator_velocity": d._impl.actuator_moment @ d.qvel,
                            "_impl.ten_velocity": d._impl.ten_J @ d.qvel})
        d = forward.fwd_actuation(m, passive.passive(m, d))
        d = forward.fwd_acceleration(m, d.replace(qfrc_applied=f))
        return forward.euler(m, d.replace(qacc=d.qacc_smooth)), None


def _copy_model(mj_model: Any) -> Any:
    import copy

    return copy.deepcopy(mj_model)


# ============================================================================ network + state
class ForceNet(nn.Module):
    """[norm(x), norm(ctrl)] -> (output [out], logvar [state_size])."""

    hidden: tuple[int, ...]
    activation: str
    out: int
    state_size: int

    @nn.compact
    def __call__(self, z):
        y = MLP(hidden=self.hidden, out=self.out + self.state_size, activation=self.activation,
                name="mlp")(z)
        return y[..., :self.out], y[..., self.out:]


@struct.dataclass
class Scaler:
    """Fixed input / output scales, set from the first real data (never refit)."""

    x_mean: jax.Array
    x_std: jax.Array
    c_mean: jax.Array
    c_std: jax.Array
    out_scale: jax.Array  # force per unit output (physics) or state change per unit output (baseline)


@struct.dataclass
class WorldModelState:
    params: Any
    opt_state: Any
    scaler: Scaler
    fits: jax.Array  # fits done so far


class Sequences(NamedTuple):
    """Real H-step sequences: x [M, H, S] start states, ctrl [M, H, U], x_next [M, H, S], done [M, H],
    and optionally valid [M] or [M, H] (1: a real step, 0: an unused slot of a fixed-size buffer
    or a step whose next state is unknown; lets a growing replay buffer be fitted inside one
    compiled program).  A sequence takes part when its first step is valid."""

    x: jax.Array
    ctrl: jax.Array
    x_next: jax.Array
    done: jax.Array
    valid: Any = None


class Linearised(NamedTuple):
    """First-order MJX step around real transitions: f0 [M, H, S], a [M, H, S, S], b [M, H, S, nv]."""

    f0: jax.Array
    a: jax.Array
    b: jax.Array


class WorldModel:
    """A world model for one task: `SmoothDynamics` + `ForceNet` + config (static; state is a pytree)."""

    def __init__(self, cfg: WorldModelConfig, dynamics: SmoothDynamics):
        self.cfg = cfg
        self.dyn = dynamics
        if cfg.physics and cfg.hold_dynamics and not dynamics.euler:
            raise ValueError("WorldModelConfig.hold_dynamics=True integrates with semi-implicit Euler "
                             "(LIFT), but this task's model uses another integrator "
                             f"(mjtIntegrator {dynamics.integrator}): set hold_dynamics=False to step "
                             "MJX's own integrator every substep")
        # The control step every prediction, rollout and linearisation integrates.
        self.integrate = functools.partial(dynamics.integrate, hold=cfg.hold_dynamics)
        out = dynamics.nv if cfg.physics else dynamics.state_size
        self.net = ForceNet(hidden=tuple(cfg.hidden), activation=cfg.activation, out=out,
                            state_size=dynamics.state_size)
        self.opt = optax.adam(cfg.learning_rate)
        self._init_program = jax.jit(self._init, compiler_options=run_once_options())

    # ---------------------------------------------------------------- init
    def init(self, key: jax.Array, data: Sequences) -> WorldModelState:
        """Fresh parameters; the scaler from ``data`` (first steps of every sequence).  Called
        outside a trace (a test, a notebook) it runs as one compiled program: op by op, the
        smooth model's vmapped MJX step alone was ~600 kernels, ~25 s of compiling on a CPU."""
        if isinstance(key, jax.core.Tracer):
            return self._init(key, data)
        return self._init_program(key, data)

    def _init(self, key: jax.Array, data: Sequences) -> WorldModelState:
        data = fill_invalid(data)
        x = data.x.reshape(-1, data.x.shape[-1])
        c = data.ctrl.reshape(-1, data.ctrl.shape[-1])
        xn = data.x_next.reshape(-1, data.x_next.shape[-1])
        w = step_weights(data)
        w = w.reshape(-1, 1) / jnp.maximum(w.sum(), 1.0)

        def mean_std(a):
            mean = (w * a).sum(0)
            return mean, jnp.sqrt((w * (a - mean) ** 2).sum(0))

        (x_mean, x_std), (c_mean, c_std) = mean_std(x), mean_std(c)
        x_std, c_std = jnp.maximum(x_std, 1e-3), jnp.maximum(c_std, 1e-3)
        if self.cfg.physics:
            # Force unit per dof: the mass-matrix diagonal times the spread of the acceleration
            # the smooth model misses on this data (so the network's outputs start at O(1)).
            smooth = jax.vmap(lambda a, b: self.integrate(a, b, jnp.zeros(self.dyn.nv)))(x, c)
            _, v_true, _ = self.dyn.split(xn)
            _, v_smooth, _ = self.dyn.split(smooth)
            acc = (v_true - v_smooth) / self.dyn.dt
            out_scale = jnp.maximum(jnp.asarray(self.dyn.mass_diag) * mean_std(acc)[1], 1e-3)
        else:
            out_scale = jnp.maximum(mean_std(xn - x)[1], 1e-6)
        scaler = Scaler(x_mean, x_std, c_mean, c_std, out_scale)
        z = jnp.zeros((1, x.shape[-1] + c.shape[-1]))
        params = self.net.init(key, z)["params"]
        return WorldModelState(params, self.opt.init(params), scaler, jnp.zeros((), jnp.int32))

    # ---------------------------------------------------------------- prediction
    def _logvar(self, raw: jax.Array) -> jax.Array:
        lo, hi = self.cfg.logvar_min, self.cfg.logvar_max
        lv = hi - jax.nn.softplus(hi - raw)
        return lo + jax.nn.softplus(lv - lo)

    @staticmethod
    def _inputs(scaler: Scaler, x: jax.Array, ctrl: jax.Array) -> jax.Array:
        return jnp.concatenate([(x - scaler.x_mean) / scaler.x_std, (ctrl - scaler.c_mean) / scaler.c_std], -1)

    def predict(self, params: Any, scaler: Scaler, x: jax.Array, ctrl: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
        """Mean next state [.., S] and its log-variance (normalised state units) of one step."""
        z = self._inputs(scaler, x, ctrl)
        out, raw = self.net.apply({"params": params}, z)
        if self.cfg.physics:
            force = out * scaler.out_scale
            integrate = self.integrate
            for _ in range(x.ndim - 1):
                integrate = jax.vmap(integrate)
            nxt = integrate(x, ctrl, force)
        else:
            nxt = x + out * scaler.out_scale
        return nxt, self._logvar(raw)

    def force(self, params: Any, scaler: Scaler, x: jax.Array, ctrl: jax.Array) -> jax.Array:
        """The predicted generalised force (physics models only)."""
        z = self._inputs(scaler, x, ctrl)
        return self.net.apply({"params": params}, z)[0] * scaler.out_scale

    # ---------------------------------------------------------------- rollouts
    def rollout(self, params: Any, scaler: Scaler, x0: jax.Array, ctrl: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
        """Exact open-loop mean rollout (MJX integrates every step) from x0 [M, S] with ctrl
        [M, H, U] -> (x̂ [M, H, S], logvar [M, H, S]).  Imagination and reported errors use it."""

        def one(x, c):
            nxt, lv = self.predict(params, scaler, x, c)
            return nxt, (nxt, lv)

        _, (xs, lvs) = jax.lax.scan(one, x0, jnp.swapaxes(ctrl, 0, 1))
        return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(lvs, 0, 1)

    def linearise(self, data: Sequences) -> Linearised:
        """The MJX step expanded to first order around every real transition (no force):
        x' ≈ F0 + A·(x̂ − x) + B·f.  Computed once per fit with forward-mode derivatives."""
        s = self.dyn.state_size

        def one(x, c):
            g = lambda xf: self.integrate(xf[:s], c, xf[s:])
            xf = jnp.concatenate([x, jnp.zeros(self.dyn.nv, x.dtype)])
            return g(xf), jax.jacfwd(g)(xf)

        # One vmap over the M×H transitions, not two nested ones: batching the differentiated MJX
        # step once halves the trace (measured: 17.0 s vs 9.7 s, CartpoleSwingup).
        lead = data.x.shape[:2]
        f0, jac = jax.vmap(one)(data.x.reshape(-1, s), data.ctrl.reshape(-1, data.ctrl.shape[-1]))
        f0, jac = f0.reshape(*lead, s), jac.reshape(*lead, *jac.shape[1:])
        return Linearised(f0, jac[..., :s], jac[..., s:])

    def rollout_linear(self, params: Any, scaler: Scaler, data: Sequences, lin: Linearised
                       ) -> tuple[jax.Array, jax.Array]:
        """The training rollout: as `rollout`, with each MJX step replaced by its expansion
        around the real transition (`linearise`).  Exact in the force to first order, and the
        state's drift from the real trajectory enters through A; no MJX in the gradient."""

        def one(x_hat, inp):
            x, c, f0, a, b = inp
            z = self._inputs(scaler, x_hat, c)
            out, raw = self.net.apply({"params": params}, z)
            nxt = f0 + jnp.einsum("mij,mj->mi", a, x_hat - x) + jnp.einsum("mij,mj->mi", b, out * scaler.out_scale)
            return nxt, (nxt, self._logvar(raw))

        sw = lambda t: jnp.swapaxes(t, 0, 1)
        _, (xs, lvs) = jax.lax.scan(one, data.x[:, 0], (sw(data.x), sw(data.ctrl), sw(lin.f0), sw(lin.a), sw(lin.b)))
        return sw(xs), sw(lvs)

    # ---------------------------------------------------------------- loss
    @staticmethod
    def alive(done: jax.Array) -> jax.Array:
        """[M, H] mask: step h counts while no earlier step of the sequence ended its episode."""
        before = jnp.cumsum(done.astype(jnp.float32), axis=1) - done.astype(jnp.float32)
        return (before == 0).astype(jnp.float32)

    def _nll(self, xs, lvs, scaler: Scaler, data: Sequences) -> tuple[jax.Array, jax.Array]:
        err = (xs - data.x_next) / scaler.x_std
        mask = (self.alive(data.done) * step_weights(data))[..., None]
        n = jnp.maximum(mask.sum() * err.shape[-1], 1.0)
        nll = (mask * (jnp.exp(-lvs) * err ** 2 + lvs)).sum() / n
        return nll, (mask * err ** 2).sum() / n

    def loss(self, params: Any, scaler: Scaler, data: Sequences, lin: Linearised | None = None
             ) -> tuple[jax.Array, jax.Array]:
        """(Gaussian NLL + per-layer L2, masked mean squared normalised error) of an H-step
        open-loop rollout; the linearised one when ``lin`` is given (physics models)."""
        if self.cfg.physics and lin is not None:
            xs, lvs = self.rollout_linear(params, scaler, data, lin)
        else:
            xs, lvs = self.rollout(params, scaler, data.x[:, 0], data.ctrl)
        nll, mse = self._nll(xs, lvs, scaler, data)
        l2 = 0.0
        mlp = params["mlp"]
        names = [f"hidden_{i}" for i in range(len(self.cfg.hidden))] + ["out"]
        for name, wd in zip(names, self.cfg.weight_decay):
            l2 = l2 + wd * 0.5 * jnp.sum(mlp[name]["kernel"] ** 2)
        return nll + l2, mse

    def error(self, state: WorldModelState, data: Sequences) -> jax.Array:
        """Masked mean squared normalised state error of the exact open-loop rollout."""
        data = fill_invalid(data)
        xs, lvs = self.rollout(state.params, state.scaler, data.x[:, 0], data.ctrl)
        return self._nll(xs, lvs, state.scaler, data)[1]

    # ---------------------------------------------------------------- fit
    def fit(self, state: WorldModelState, data: Sequences, key: jax.Array
            ) -> tuple[WorldModelState, dict[str, jax.Array]]:
        """Fit to convergence: epochs over the train split, early stop on the held-out split.

        Jittable (one ``while_loop``) with fixed shapes: ``data.valid`` marks the real sequences
        of a fixed-size buffer, and the split, batches and epoch length follow the number of valid
        ones at run time.  A random ``holdout`` share of the valid sequences is held out; each
        epoch draws ``max(min_epoch_steps, n_train / batch_size)`` batches uniformly from the
        rest.  Returns the best-on-held-out state and ``{"val_error": [max_epochs] (nan after the
        stop), "epochs": n, "best_val": e}`` (held-out errors of the training rollout).
        """
        cfg = self.cfg
        m = data.x.shape[0]
        if m < 2:
            raise ValueError(f"world model fit needs at least 2 sequences, got {m}")
        data = fill_invalid(data)
        valid = step_weights(data)[:, 0]
        lin = self.linearise(data) if cfg.physics else None
        # Valid sequences first, in random order; the first n_val of them are held out.
        order = jnp.argsort(jnp.where(valid > 0, jax.random.uniform(jax.random.fold_in(key, 0), (m,)), 2.0))
        n_valid = valid.sum()
        n_val = jnp.clip(jnp.round(cfg.holdout * n_valid), 1.0, jnp.maximum(n_valid - 1.0, 1.0))
        rank = jnp.zeros((m,), jnp.float32).at[order].set(jnp.arange(m, dtype=jnp.float32))
        held = valid * (rank < n_val)
        train_w = valid - held
        per_step = step_weights(data)
        val = (data._replace(valid=per_step * held[:, None]), lin)
        bsz = min(cfg.batch_size, m)
        steps = jnp.maximum(cfg.min_epoch_steps, jnp.ceil((n_valid - n_val) / bsz)).astype(jnp.int32)
        p_train = train_w / jnp.maximum(train_w.sum(), 1.0)

        def epoch(params, opt_state, k):
            def step(j, c):
                p, o = c
                idx = jax.random.choice(jax.random.fold_in(k, j), m, (bsz,), p=p_train)
                batch, blin = jax.tree.map(lambda a: a[idx], (data._replace(valid=per_step * train_w[:, None]), lin))
                g = jax.grad(lambda q: self.loss(q, state.scaler, batch, blin)[0])(p)
                upd, o = self.opt.update(g, o, p)
                return optax.apply_updates(p, upd), o

            return jax.lax.fori_loop(0, steps, step, (params, opt_state))

        def val_error(params):
            return self.loss(params, state.scaler, *val)[1]

        history = jnp.full((cfg.max_epochs,), jnp.nan)
        # Not the incoming parameters' error: this fit's held-out split is new, and most of it
        # trained them (a fresh split per fit), so their score would be optimistic and could end
        # the fit with them, discarding the new data.  The first epoch always becomes the best.
        best0 = jnp.asarray(jnp.inf, jnp.float32)

        def cond(c):
            i, since, *_ = c
            return (i < cfg.max_epochs) & (since < cfg.patience)

        def body(c):
            i, since, params, opt_state, best, best_params, best_opt, hist = c
            params, opt_state = epoch(params, opt_state, jax.random.fold_in(key, i + 1))
            e = val_error(params)
            hist = hist.at[i].set(e)
            improved = e < best * (1.0 - cfg.min_improvement)
            better = e < best
            best_params = jax.tree.map(lambda a, b: jnp.where(better, a, b), params, best_params)
            best_opt = jax.tree.map(lambda a, b: jnp.where(better, a, b), opt_state, best_opt)
            best = jnp.minimum(e, best)
            since = jnp.where(improved, 0, since + 1)
            return i + 1, since, params, opt_state, best, best_params, best_opt, hist

        c0 = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), state.params, state.opt_state, best0,
              state.params, state.opt_state, history)
        i, _, _, _, best, best_params, best_opt, hist = jax.lax.while_loop(cond, body, c0)
        new = state.replace(params=best_params, opt_state=best_opt, fits=state.fits + 1)
        return new, {"val_error": hist, "epochs": i, "best_val": best}


# ============================================================================ data
def fill_invalid(data: Sequences) -> Sequences:
    """``data`` with every invalid step's x, ctrl and x_next replaced by the first valid step's.

    A fixed-size buffer's unused rows are zeros, and a zero quaternion (a free joint: T1, G1)
    makes MJX's step NaN; a weight of 0 does not cancel it (0 · NaN = NaN), and a NaN in any
    row makes means, held-out errors and gradients NaN.  The substitute is a real state, so
    the physics of masked steps stays finite; their weight keeps them out of every sum."""
    if data.valid is None:
        return data
    ok = step_weights(data) > 0  # [M, H]
    first = jnp.argmax(ok.reshape(-1))

    def fill(a):
        ref = a.reshape((-1,) + a.shape[2:])[first]
        return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 2)), a, ref)

    return data._replace(x=fill(data.x), ctrl=fill(data.ctrl), x_next=fill(data.x_next))


def step_weights(data: Sequences) -> jax.Array:
    """[M, H] float weights of the steps: ``data.valid`` broadcast (all ones without it)."""
    shape = data.done.shape
    if data.valid is None:
        return jnp.ones(shape, jnp.float32)
    v = jnp.asarray(data.valid, jnp.float32)
    return jnp.broadcast_to(v[:, None] if v.ndim == 1 else v, shape)


def sequences(x: jax.Array, ctrl: jax.Array, x_next: jax.Array, done: jax.Array, horizon: int,
              valid: jax.Array | None = None) -> Sequences:
    """All H-step windows of time-major data [T, N, ...] -> Sequences [(T−H+1)·N, H, ...].

    ``valid`` [T, N] (optional) drops windows whose first step is not a real transition."""
    t = x.shape[0]
    if t < horizon:
        raise ValueError(f"need at least horizon={horizon} time steps of data, got {t}")
    starts = np.arange(t - horizon + 1)
    idx = starts[:, None] + np.arange(horizon)[None, :]  # [W, H]

    def win(a):
        w = a[idx]  # [W, H, N, ...]
        w = jnp.moveaxis(w, 2, 1)  # [W, N, H, ...]
        return w.reshape((-1, horizon) + a.shape[2:])

    out = Sequences(win(x), win(ctrl), win(x_next), win(done))
    if valid is not None:
        keep = np.asarray(win(valid)[:, 0]).astype(bool)
        out = jax.tree.map(lambda a: a[keep], out)
    return out


# ============================================================================ imagination
def check_imaginable(task: Any) -> bool:
    """Whether ``task``'s physics can be swapped for the world model (True: through its own
    ``physics_step``, False: through Playground's ``mjx_env.step``); a TypeError naming what to
    implement otherwise.  Call it before compiling anything that imagines."""
    try:
        from mujoco_playground._src import mjx_env
    except ImportError:  # pragma: no cover - playground is a core dependency
        mjx_env = None
    own = hasattr(task, "physics_step")
    if not own and (mjx_env is None or not isinstance(task, mjx_env.MjxEnv)):
        raise TypeError(
            f"{type(task).__name__} cannot be imagined: the world model replaces the task's physics, "
            "so the task must step it through MuJoCo Playground's `mjx_env.step` or a "
            "`physics_step(data) -> data` method, and compute its reward and termination from the "
            "data it gets back (implement `physics_step` for your task)")
    return own


def imagined_step(task: Any, model: WorldModel, state: WorldModelState, mean_obs: bool = False) -> Any:
    """``step(env_state, action, key=None) -> env_state`` of ``task`` with its physics replaced by
    the world model's mean prediction; everything else — action → ctrl, observation, reward,
    termination, the task's ``info`` bookkeeping — is the task's own ``step`` on the predicted state.

    After the prediction the full model's kinematics are recomputed (``mjx.forward``), so rewards
    and terminations read the predicted state, not start-of-step kinematics (the official code's
    imagined rewards do the latter).  With a ``key``, the model's predicted noise
    N(0, exp(logvar)) (normalised state units, so scaled by the scaler's std) is added to the
    state that what the ACTOR observes (``obs["state"]``, or a flat observation) is computed
    from; the state carried on, the reward, the termination and the critic's
    ``privileged_state`` stay the mean's (LIFT: imagination propagates the mean).  A flat
    observation (or one without ``privileged_state``) is the actor's and the critic's at once:
    ``mean_obs=True`` makes ``step`` return ``(env_state, the mean's observation)`` so that the
    critic can be given the mean (`jaxrl.train.finetune`).

    Works for MuJoCo Playground tasks (physics through ``mjx_env.step``) and jaxrl tasks (a
    ``physics_step(data)`` method); any other task raises a TypeError naming what to implement.
    Trace the returned function (jit / vmap) as usual: the physics swap is active only while it
    traces.
    """
    from mujoco import mjx
    from mujoco_playground._src import mjx_env

    own = check_imaginable(task)
    dyn = model.dyn

    def predicted(full_model, data, ctrl, noise):
        nxt, logvar = model.predict(state.params, state.scaler, dyn.state_of(data), ctrl)
        if noise is not None:
            key, scale = noise
            nxt = nxt + scale * jax.random.normal(key, nxt.shape) * jnp.exp(0.5 * logvar) * state.scaler.x_std
        qpos, qvel, act = dyn.split(nxt)
        d = data.replace(qpos=qpos, qvel=qvel, act=act, ctrl=ctrl, time=data.time + dyn.dt)
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            return mjx.forward(full_model, d)

    def swapped(env_state, action, noise):
        if own:
            task.physics_step = lambda data: predicted(task.mjx_model, data, data.ctrl, noise)
            try:
                return task.step(env_state, action)
            finally:
                del task.physics_step
        original = mjx_env.step
        mjx_env.step = lambda m, data, ctrl, n_substeps=1: predicted(m, data, ctrl, noise)
        try:
            return task.step(env_state, action)
        finally:
            mjx_env.step = original

    def step(env_state, action, key=None):
        if key is None:
            out = swapped(env_state, action, None)
            return (out, out.obs) if mean_obs else out
        # The mean step and the noisy one in ONE trace of the task's step (a second trace cost
        # ~14% of a finetuning chunk's compile): a batch of two whose noise is scaled by 0 (the
        # mean, exactly: the noise is finite, logvar <= logvar_max) and by 1.
        both = jax.vmap(lambda s: swapped(env_state, action, (key, s)))(jnp.array([0.0, 1.0]))
        mean, seen = (jax.tree.map(lambda x, i=i: x[i], both) for i in (0, 1))
        obs, seen = mean.obs, seen.obs
        if hasattr(obs, "keys") and "state" in obs:
            obs = {**obs, "state": seen["state"]}
        else:
            obs = seen
        return (mean.replace(obs=obs), mean.obs) if mean_obs else mean.replace(obs=obs)

    return step
