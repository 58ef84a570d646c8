"""The physics-informed world model (`jaxrl.algos.world_model`) on HopperHop, a contact-rich task
(foot-floor contacts, joint limits, 4 physics substeps per control step)."""

import copy
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mujoco import mjx

import envs
from envs._runtime import few_steps_options
from jaxrl.algos import world_model as wm

pytestmark = pytest.mark.xdist_group("world_model")

ENVS, STEPS = 8, 60


@pytest.fixture(scope="module")
def hopper():
    task = envs.make("HopperHop", num_envs=1).env
    return task, wm.SmoothDynamics.of_task(task)


def _rollout(task, dyn, full, key, envs_, steps):
    """Random-action rollout stepped substep by substep with ``full``: states, ctrl, next states
    and, per substep, ``qfrc_constraint`` and the force the integrator really applied
    (M·qacc − qfrc_smooth)."""
    from mujoco.mjx._src import support

    def control_step(d, ctrl):
        def sub(d, _):
            d = mjx.step(full, d.replace(ctrl=ctrl))
            return d, (d.qfrc_constraint, support.mul_m(full, d, d.qacc) - d.qfrc_smooth)

        return jax.lax.scan(sub, d, None, length=dyn.n_substeps)

    @functools.partial(jax.jit, compiler_options=few_steps_options(envs_ * steps))
    def run(key):
        data = jax.vmap(task.reset)(jax.random.split(key, envs_)).data

        def body(d, k):
            a = jax.random.uniform(k, (envs_, dyn.nu), minval=-1.0, maxval=1.0)
            d2, (fc, fe) = jax.vmap(control_step)(d, a)
            return d2, (dyn.state_of(d), a, dyn.state_of(d2), fc, fe)

        return jax.lax.scan(body, data, jax.random.split(key, steps))[1]

    return run(key)


def test_smooth_dynamics_plus_the_true_forces_reproduces_mjx(hopper):
    """Smooth MJX (constraints and contacts off) + the true generalised constraint force per
    substep as ``qfrc_applied`` gives MJX's next state.  Measured max |error| over 480 transitions:
    ~4e-6 (states up to ~18) with the force MJX's integrator applied; with ``qfrc_constraint``
    itself the same once the solver has converged (Playground's hopper runs 4 solver iterations
    and integrates the unconverged qacc, which ``qfrc_constraint`` does not match: error ~0.5)."""
    task, dyn = hopper
    integrate = jax.jit(jax.vmap(jax.vmap(dyn.integrate)), compiler_options=few_steps_options(ENVS * STEPS))
    x, c, xn, fc, fe = _rollout(task, dyn, task.mjx_model, jax.random.PRNGKey(0), ENVS, STEPS)
    assert float(jnp.abs(fc).max()) > 10.0  # contacts really happen
    assert float(jnp.abs(integrate(x, c, fe) - xn).max()) < 1e-4
    no_force = float(jnp.abs(integrate(x, c, jnp.zeros_like(fe)) - xn).max())
    assert no_force > 0.05  # so the forces matter

    converged = copy.deepcopy(task.mj_model)
    converged.opt.iterations, converged.opt.ls_iterations, converged.opt.tolerance = 100, 50, 1e-12
    full = mjx.put_model(converged, impl="jax")
    x, c, xn, fc, fe = _rollout(task, dyn, full, jax.random.PRNGKey(1), ENVS, STEPS // 2)
    assert float(jnp.abs(integrate(x, c, fc) - xn).max()) < 1e-3


# A floating base with two PD-driven hinges (position actuators with kv, a force limit), joint
# damping and a spring: every term of LIFT's held step, and a free joint's quaternion.
ARM_XML = """
<mujoco>
  <option timestep="0.004"/>
  <worldbody>
    <body name="base" pos="0 0 1">
      <freejoint/>
      <geom type="box" size=".1 .05 .05" mass="2"/>
      <body name="arm1" pos=".1 0 0">
        <joint name="j1" type="hinge" axis="0 1 0" damping="0.3" stiffness="2"/>
        <geom type="capsule" fromto="0 0 0 .2 0 0" size=".02" mass=".5"/>
        <body name="arm2" pos=".2 0 0">
          <joint name="j2" type="hinge" axis="0 0 1" damping="0.1"/>
          <geom type="capsule" fromto="0 0 0 .2 0 0" size=".02" mass=".3"/>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position joint="j1" kp="40" kv="2"/>
    <position joint="j2" kp="20" kv="1" forcerange="-3 3" forcelimited="true"/>
  </actuator>
</mujoco>"""


def test_held_dynamics_is_lifts_control_step_computed_with_mujoco_c():
    """`integrate(..., hold=True)`: M and the bias forces of the step's start, the PD torques and
    passive forces recomputed every substep, semi-implicit Euler (implicit joint damping as
    MuJoCo's Euler).  Reference: MuJoCo C in float64 — M (`mj_fullM`) and ``qfrc_bias`` from one
    `mj_forward`, then per substep `mj_transmission` / `mj_fwdVelocity` / `mj_fwdActuation` for
    the actuator and passive forces, numpy's solve and `mj_integratePos`."""
    import mujoco

    mj, n = mujoco.MjModel.from_xml_string(ARM_XML), 5
    dyn = wm.SmoothDynamics(mj, n)
    rng = np.random.default_rng(0)
    quat = rng.normal(size=4)
    qpos = np.concatenate([[0.1, -0.2, 1.0], quat / np.linalg.norm(quat), rng.uniform(-0.8, 0.8, 2)])
    qvel, ctrl, force = rng.normal(size=mj.nv), rng.uniform(-1, 1, mj.nu), rng.normal(size=mj.nv)
    x = np.concatenate([qpos, qvel])
    step = jax.jit(lambda x, c, f, hold: dyn.integrate(x, c, f, hold=hold), static_argnums=3,
                   compiler_options=few_steps_options(1))
    held, exact = (np.asarray(step(*map(jnp.float32, (x, ctrl, force)), h)) for h in (True, False))
    for h in (True, False):  # physics at 'highest' whatever the caller's matmul precision
        dots = re.findall(r"stablehlo\.dot_general.*?precision = \[(\w+), \w+\]",
                          step.lower(*map(jnp.float32, (x, ctrl, force)), h).as_text())
        assert dots and set(dots) == {"HIGHEST"}, (h, sorted(set(dots)))

    smooth = copy.deepcopy(mj)
    smooth.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_CONSTRAINT) | int(mujoco.mjtDisableBit.mjDSBL_CONTACT)
    d = mujoco.MjData(smooth)
    d.qpos[:], d.qvel[:], d.ctrl[:] = qpos, qvel, ctrl
    mujoco.mj_forward(smooth, d)
    mass = np.zeros((mj.nv, mj.nv))
    mujoco.mj_fullM(smooth, d, mass)
    bias, dt = d.qfrc_bias.copy(), mj.opt.timestep
    damped = mass + dt * np.diag(smooth.dof_damping)  # MuJoCo's Euler: joint damping implicit
    q, v = qpos.copy(), qvel.copy()
    for _ in range(n):
        d.qpos[:], d.qvel[:] = q, v
        mujoco.mj_transmission(smooth, d)
        mujoco.mj_fwdVelocity(smooth, d)
        mujoco.mj_fwdActuation(smooth, d)
        v = v + dt * np.linalg.solve(damped, d.qfrc_passive + d.qfrc_actuator + force - bias)
        mujoco.mj_integratePos(smooth, q, v, dt)
    want = np.concatenate([q, v])
    assert np.abs(d.actuator_force).max() > 1.0 and np.abs(d.actuator_force[1]) <= 3.0  # the PD law acts
    err = np.abs(held - want).max()
    assert err < 2e-5 * max(1.0, np.abs(want).max()), err
    assert np.abs(exact - want).max() > 20 * err  # the exact step differs: the check can tell them apart
    one = wm.SmoothDynamics(mj, 1)  # one substep: nothing is held, both forms are MJX's step
    held1, exact1 = (np.asarray(jax.jit(lambda x, c, f, h=h: one.integrate(x, c, f, hold=h),
                                        compiler_options=few_steps_options(1))(*map(jnp.float32, (x, ctrl, force))))
                     for h in (True, False))
    np.testing.assert_allclose(held1, exact1, rtol=1e-6, atol=1e-6)


def test_the_held_form_needs_an_euler_model_and_old_records_keep_the_exact_form():
    """The held step integrates with semi-implicit Euler (LIFT): another integrator is refused
    with the fix named.  A run recorded before ``hold_dynamics`` existed stepped every substep
    exactly, and resumes that way (`WorldModelConfig.RECORDED_BEFORE`)."""
    import mujoco

    from jaxrl.io import runfolder

    rk4 = wm.SmoothDynamics(mujoco.MjModel.from_xml_string(ARM_XML.replace('timestep="0.004"',
                                                                           'timestep="0.004" integrator="RK4"')), 2)
    with pytest.raises(ValueError, match="set hold_dynamics=False"):
        wm.WorldModel(wm.WorldModelConfig.cpu(), rk4)
    wm.WorldModel(wm.WorldModelConfig.cpu().replace(hold_dynamics=False), rk4)  # the exact form is fine
    record = runfolder.config_to_dict(wm.WorldModelConfig.cpu())
    assert runfolder.config_from_dict(wm.WorldModelConfig, record).hold_dynamics is True
    del record["hold_dynamics"]
    assert runfolder.config_from_dict(wm.WorldModelConfig, record).hold_dynamics is False


def _zero_force_state(model: wm.WorldModel, data: wm.Sequences) -> wm.WorldModelState:
    state = model.init(jax.random.PRNGKey(0), data)
    return state.replace(params=jax.tree.map(jnp.zeros_like, state.params))


def test_imagined_step_is_the_tasks_own_step_on_the_predicted_state(monkeypatch):
    """With a zero force the world model is the smooth dynamics; on CartpoleBalance (no contacts,
    the slider limit not reached in 5 steps) that is MJX's physics, so the imagined step — the
    task's own step with the physics swapped — returns the observation and reward of the real
    step evaluated on the state after it (kinematics recomputed: Playground's own step reads the
    pole angle from kinematics one physics step old, which imagination must not copy)."""
    from mujoco_playground._src import mjx_env

    vec = envs.make("CartpoleBalance", num_envs=1)
    task = vec.env
    dyn = wm.SmoothDynamics.of_task(task)
    model = wm.WorldModel(wm.WorldModelConfig.cpu(), dyn)
    s = dyn.state_size
    data = wm.Sequences(jnp.ones((4, 1, s)), jnp.ones((4, 1, dyn.nu)), jnp.ones((4, 1, s)) * 1.1,
                        jnp.zeros((4, 1)))
    quick = few_steps_options(5)  # five steps: the quick compile
    imagine = jax.jit(wm.imagined_step(task, model, _zero_force_state(model, data)), compiler_options=quick)
    physics = mjx_env.step
    monkeypatch.setattr(mjx_env, "step", lambda m, d, c, n=1: mjx.forward(m, physics(m, d, c, n)))
    real = jax.jit(task.step).lower(jax.eval_shape(task.reset, jax.random.PRNGKey(0)), jnp.zeros(1)).compile(quick)
    monkeypatch.setattr(mjx_env, "step", physics)
    st = jax.jit(task.reset, compiler_options=quick)(jax.random.PRNGKey(0))  # op by op: dozens of kernels
    for i in range(5):
        a = jnp.array([0.3 if i % 2 else -0.5])
        nxt, im = real(st, a), imagine(st, a)
        np.testing.assert_allclose(np.asarray(im.obs), np.asarray(nxt.obs), atol=1e-4)
        np.testing.assert_allclose(float(im.reward), float(nxt.reward), atol=1e-4)
        st = nxt
    # The model's physics (smooth dynamics, kinematics of the predicted state) is traced at the
    # env step's 'highest' matmul precision whatever the caller's; its network at the caller's.
    dots = re.findall(r"stablehlo\.dot_general.*?precision = \[(\w+), \w+\]", imagine.lower(st, a).as_text())
    assert "HIGHEST" in dots and "DEFAULT" in dots, sorted(set(dots))


def test_imagination_rolls_the_mean_and_the_actor_observes_the_predicted_noise():
    """With a key, the observation is the task's own observation of mean + ε·exp(½ logvar)·std
    (ε from that key), while the state carried on, the reward and the termination are the mean
    step's: compared with the mean step and with the noise drawn here from the same key."""
    task = envs.make("CartpoleBalance", num_envs=1).env
    dyn = wm.SmoothDynamics.of_task(task)
    model = wm.WorldModel(wm.WorldModelConfig.cpu(), dyn)
    s = dyn.state_size
    data = wm.Sequences(jnp.ones((4, 1, s)), jnp.ones((4, 1, dyn.nu)), jnp.ones((4, 1, s)) * 1.1,
                        jnp.zeros((4, 1)))
    state = _zero_force_state(model, data)  # zero network: the mean is the smooth dynamics
    state = state.replace(scaler=state.scaler.replace(x_std=jnp.full((s,), 0.1)))  # visible noise
    quick = few_steps_options(2)  # two steps: the quick compile
    step = jax.jit(wm.imagined_step(task, model, state), compiler_options=quick)
    st, a, key = jax.jit(task.reset, compiler_options=quick)(jax.random.PRNGKey(0)), jnp.array([0.4]), jax.random.PRNGKey(7)
    mean, noisy = step(st, a), step(st, a, key)
    for field in ("qpos", "qvel"):
        np.testing.assert_array_equal(np.asarray(getattr(noisy.data, field)), np.asarray(getattr(mean.data, field)))
    assert float(noisy.reward) == float(mean.reward) and float(noisy.done) == float(mean.done)
    assert float(mean.obs[0]) == pytest.approx(float(mean.data.qpos[0]))  # obs[0]: the cart position
    # jitted: op by op, the prediction's MJX step compiled ~480 kernels (~15 s on a CPU)
    _, logvar = jax.jit(model.predict, compiler_options=quick)(state.params, state.scaler, dyn.state_of(st.data), a)
    eps = jax.random.normal(key, (s,))
    want = float(mean.data.qpos[0] + eps[0] * jnp.exp(0.5 * logvar[0]) * 0.1)
    assert float(noisy.obs[0]) == pytest.approx(want, abs=1e-5)
    assert abs(want - float(mean.data.qpos[0])) > 1e-3  # the check can tell noise from none


def test_tasks_without_a_physics_hook_and_bad_configs_are_refused():
    class Opaque:
        mj_model = None

    cfg = wm.WorldModelConfig.cpu()
    with pytest.raises(TypeError, match="implement `physics_step` for your task"):
        wm.imagined_step(Opaque(), None, None)
    with pytest.raises(TypeError, match="has no `mj_model`"):
        wm.SmoothDynamics.of_task(object())
    with pytest.raises(ValueError, match="one L2 coefficient per layer: 4"):
        cfg.replace(weight_decay=(1e-4,))
    with pytest.raises(ValueError, match=r"logvar_min=1\.0: it must be < logvar_max"):
        cfg.replace(logvar_min=1.0)
    with pytest.raises(ValueError, match="holdout"):
        cfg.replace(holdout=1.0)
    with pytest.raises(ValueError, match="at least horizon=4 time steps"):
        wm.sequences(*(jnp.zeros((3, 2, 1)),) * 3, jnp.zeros((3, 2)), 4)


def test_rollout_windows_and_the_mask_after_done():
    t, n = 6, 2
    x = jnp.arange(t * n, dtype=jnp.float32).reshape(t, n, 1)
    seq = wm.sequences(x, x, x + 100, jnp.zeros((t, n)), 3)
    assert seq.x.shape == ((t - 2) * n, 3, 1)
    # window w of env e holds x[w], x[w+1], x[w+2] of that env
    for w in range(t - 2):
        for e in range(n):
            np.testing.assert_array_equal(np.asarray(seq.x[w * n + e, :, 0]), np.asarray(x[w:w + 3, e, 0]))
    done = jnp.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(wm.WorldModel.alive(done)),
                                  [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("min_steps, per_epoch", [(1, 4), (10, 10)])
def test_an_epoch_is_one_pass_over_the_train_split_unless_a_minimum_is_set(min_steps, per_epoch):
    """LIFT's schedule (the default ``min_epoch_steps=1``): an epoch is ceil(train / batch)
    gradient steps, so patience counts passes over the data; ``cpu()`` sets a minimum.  Counted
    from the optimiser's own step counter after one epoch (40 windows: 8 held out, 32 / batch 8
    = 4 steps), on the plain-MLP model (no physics to compile) fitting x' = 1.1·x."""
    dyn = wm.SmoothDynamics.of_task(envs.make("CartpoleBalance", num_envs=1).env)
    assert (wm.WorldModelConfig().min_epoch_steps, wm.WorldModelConfig().max_epochs) == (1, 1000)
    assert (wm.WorldModelConfig.cpu().min_epoch_steps, wm.WorldModelConfig.cpu().max_epochs) == (50, 100)
    cfg = wm.WorldModelConfig.cpu().replace(physics=False, hidden=(8,), weight_decay=(0.0, 0.0), batch_size=8,
                                            horizon=1, max_epochs=1, min_epoch_steps=min_steps)
    model = wm.WorldModel(cfg, dyn)
    s, u = dyn.state_size, dyn.nu
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 1, s))
    data = wm.Sequences(x, jnp.zeros((40, 1, u)), 1.1 * x, jnp.zeros((40, 1)))
    fitted, info = jax.jit(model.fit)(model.init(jax.random.PRNGKey(1), data), data, jax.random.PRNGKey(2))
    # the one epoch beat the fresh parameters, so the fit kept its state (with its step counter)
    assert int(info["epochs"]) == 1 and float(info["best_val"]) == float(info["val_error"][0])
    counts = [int(c) for c in jax.tree.leaves(fitted.opt_state) if jnp.issubdtype(c.dtype, jnp.integer)]
    assert counts and set(counts) == {per_epoch}, counts


FREE_BODY = """<mujoco><option timestep="0.01"/>
  <worldbody><body pos="0 0 1"><freejoint/><geom type="box" size=".1 .1 .1" mass="1"/>
    <body pos="0 0 -.1"><joint name="h" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0 0 -.2" size=".03" mass=".2"/></body></body></worldbody>
  <actuator><motor joint="h" gear="1"/></actuator></mujoco>"""


def test_a_free_body_fits_beside_the_zero_rows_of_an_unfilled_buffer():
    """A real buffer's unused rows are zeros, and for a robot with a free joint (T1, G1) a zero
    quaternion makes MJX's step NaN, which a zero weight does not cancel (0 · NaN = NaN): the
    scaler, the held-out errors and the fitted model came out NaN.  Now the scaler holds the
    statistics of the valid rows alone and the fit is finite.  (Zero padding of a model without a free
    joint, as Cartpole's, stays finite either way.)  Compiled the quick way: the point is NaN or
    not, not speed."""
    import mujoco

    dyn = wm.SmoothDynamics(mujoco.MjModel.from_xml_string(FREE_BODY), 1)
    cfg = wm.WorldModelConfig.cpu().replace(hidden=(8,), weight_decay=(0.0, 0.0), batch_size=4, horizon=1,
                                            max_epochs=2, min_epoch_steps=1)
    model = wm.WorldModel(cfg, dyn)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    n, pad = 12, 8
    quat = jax.random.normal(k[0], (n, 4))
    qpos = jnp.concatenate([jax.random.normal(k[1], (n, 3)), quat / jnp.linalg.norm(quat, axis=1, keepdims=True),
                            jax.random.normal(k[2], (n, 1))], axis=1)
    x = jnp.concatenate([qpos, 0.1 * jax.random.normal(k[3], (n, dyn.nv))], axis=1)
    ctrl, x_next = jnp.ones((n, dyn.nu)), 1.01 * x  # (any finite target: only the physics of x matters)
    z = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:])])[:, None]  # + an unfilled buffer's rows
    data = wm.Sequences(z(x), z(ctrl), z(x_next), jnp.zeros((n + pad, 1)), valid=jnp.arange(n + pad) < n)
    state = jax.jit(model._init, compiler_options=few_steps_options(1))(jax.random.PRNGKey(1), data)
    sc = state.scaler  # the statistics of the valid rows alone (numpy), and a finite force unit
    np.testing.assert_allclose(np.asarray(sc.x_mean), np.asarray(x).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sc.x_std), np.maximum(np.asarray(x).std(0), 1e-3), rtol=1e-4)
    assert bool(jnp.all(jnp.isfinite(sc.out_scale))) and bool(jnp.all(sc.out_scale > 0))
    fitted, info = jax.jit(model.fit, compiler_options=few_steps_options(1))(state, data, jax.random.PRNGKey(2))
    assert np.isfinite(float(info["best_val"])) and int(info["epochs"]) == 2
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(fitted.params))


def test_each_fit_starts_afresh_so_the_new_data_is_never_discarded():
    """A fit's held-out split is drawn anew each time, mostly from windows the incoming
    parameters trained on, so their score is optimistic: they are no candidate for the best.
    A fit returns the best of its own epochs, here even when a learning rate of 10 makes every
    epoch worse than the parameters it started from (before, it returned those unchanged)."""
    dyn = wm.SmoothDynamics.of_task(envs.make("CartpoleBalance", num_envs=1).env)
    cfg = wm.WorldModelConfig.cpu().replace(physics=False, hidden=(8,), weight_decay=(0.0, 0.0), batch_size=8,
                                            horizon=1, max_epochs=3, min_epoch_steps=4)
    s, u = dyn.state_size, dyn.nu
    x = jax.random.normal(jax.random.PRNGKey(0), (40, 1, s))
    data = wm.Sequences(x, jnp.zeros((40, 1, u)), 1.1 * x, jnp.zeros((40, 1)))
    model = wm.WorldModel(cfg, dyn)
    fitted, _ = jax.jit(model.fit)(model.init(jax.random.PRNGKey(1), data), data, jax.random.PRNGKey(2))
    wild = wm.WorldModel(cfg.replace(learning_rate=10.0), dyn)
    refit, info = jax.jit(wild.fit)(fitted, data, jax.random.PRNGKey(3))
    ran = np.asarray(info["val_error"])[: int(info["epochs"])]
    assert float(info["best_val"]) == float(np.nanmin(ran))
    assert float(info["best_val"]) > float(model.error(fitted, data))  # every epoch was worse ...
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(refit.params), jax.tree.leaves(fitted.params))]
    assert all(changed)  # ... and the fit still returned its own best epoch
