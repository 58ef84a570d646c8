"""envs.make: shapes, auto-reset semantics, statistics, determinism, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs._runtime import few_steps_options


def _rollout(env, steps, key=0):
    state = env.reset(jax.random.PRNGKey(key))
    out = []
    keys = jax.random.split(jax.random.PRNGKey(key + 100), steps)
    for k in keys:
        state = env.step(state, env.random_action_fn(k))
        out.append(state)
    return out


def _check_shapes(env, state):
    n = env.num_envs
    for k in ("state", "privileged_state"):
        assert state.obs[k].shape == (n,) + env.obs_spec[k].shape
        assert state.obs[k].dtype == jnp.float32
        assert state.final_obs[k].shape == state.obs[k].shape
    assert state.reward.shape == (n,) and state.reward.dtype == jnp.float32
    assert state.terminated.dtype == jnp.bool_ and state.truncated.dtype == jnp.bool_
    assert state.episode_step.dtype == jnp.int32


def test_dm_control_rollout_shapes_and_dtypes(cartpole4):
    env = cartpole4
    assert env.obs_spec["state"].shape == (5,) and env.act_spec.shape == (1,)
    assert (env.act_spec.low, env.act_spec.high) == (-1.0, 1.0)
    for s in _rollout(env, 3):
        _check_shapes(env, s)
        assert np.isfinite(np.asarray(s.obs["state"])).all()


@pytest.fixture(scope="module")
def pendulum3():
    return envs.make("inverted_pendulum", num_envs=3, episode_length=200)


def test_brax_env_rollout_shapes_and_termination(pendulum3):
    env = pendulum3
    assert envs.source_of("inverted_pendulum") == "brax"
    states = _rollout(env, 40)
    for s in states:
        _check_shapes(env, s)
    # Random actions topple the pole: episodes end by termination, not by the time limit.
    term = np.array([np.asarray(s.terminated) for s in states])
    trunc = np.array([np.asarray(s.truncated) for s in states])
    assert term.any() and not trunc.any()
    assert not (term & trunc).any()


def test_auto_reset_keeps_final_obs_and_flags_truncation(cartpole4):
    env = cartpole4  # episode_length=5
    state = env.reset(jax.random.PRNGKey(3))
    actions = [jnp.full((4, 1), 0.3 * (-1) ** i) for i in range(6)]
    # Reference computed another way: the raw single-env task stepped without our wrapper.
    quick = few_steps_options(4 * 5)  # a few steps: the quick compile
    raw = jax.jit(jax.vmap(env.unwrapped.reset), compiler_options=quick)(
        jax.random.split(jax.random.split(jax.random.PRNGKey(3))[1], 4))
    raw_step = jax.jit(jax.vmap(env.unwrapped.step), compiler_options=quick)
    ret = np.zeros(4)
    for i in range(5):
        state = env.step(state, actions[i])
        raw = raw_step(raw, actions[i])
        ret += np.asarray(raw.reward)
        np.testing.assert_allclose(state.final_obs["state"], raw.obs, rtol=1e-6, atol=1e-6)
    assert state.truncated.all() and not state.terminated.any()
    assert (np.asarray(state.episode_step) == 0).all()
    assert (np.asarray(state.episode_return) == 0).all()
    # After the reset the observation to act on is a fresh start, not the final one.
    assert not np.allclose(state.obs["state"], state.final_obs["state"])
    assert int(state.stats.completed) == 4
    np.testing.assert_allclose(float(state.stats.return_sum), ret.sum(), rtol=1e-5)
    np.testing.assert_allclose(state.stats.last_return, ret, rtol=1e-5)
    assert float(state.stats.length_sum) == 20.0
    state = env.step(state, actions[5])
    assert not state.truncated.any() and (np.asarray(state.episode_step) == 1).all()


def test_one_episode_rollout_without_auto_reset_scores_as_the_auto_resetting_env(pendulum3):
    """Evaluation steps `VecEnv.without_auto_reset` (its program holds the reset physics once):
    returns and lengths equal those of the auto-resetting env masked by hand, with episodes
    that end early (the pendulum falls).  Its recorded frames are the start and the state after
    each step, so an episode's frame ``length`` is its last state: the fall a video must show."""
    from jaxrl.train.evaluate import episode_rollout

    env = pendulum3
    w = jnp.linspace(-1.0, 1.0, env.obs_spec["state"].shape[0])[:, None]
    sign = jnp.array([1.0, -1.0, -1.0])[:, None]  # balancing, toppling

    def policy(obs, _k):
        return jnp.tanh(sign * (obs["state"] @ w))

    key = jax.random.PRNGKey(5)
    ret, length, _, (frames, ended) = jax.jit(lambda k: episode_rollout(
        env, policy, env.reset(k), k, record=lambda s: (s.obs["state"], s.done)))(key)
    state, alive = env.reset(key), np.ones(3)
    ref_ret, ref_len, ref_frames = np.zeros(3), np.zeros(3), [np.asarray(state.obs["state"])]
    for _ in range(env.episode_length):  # the auto-resetting env, eagerly, masked after the end
        state = env.step(state, policy(state.obs, None))
        ref_ret += np.asarray(state.reward) * alive
        ref_len += alive
        ref_frames.append(np.asarray(state.final_obs["state"]))  # the obs after the step, reset or not
        alive = alive * ~np.asarray(state.done)
    assert 0 < ref_len.min() < env.episode_length  # early ends, masked
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5)
    np.testing.assert_array_equal(length, ref_len)
    assert frames.shape[0] == env.episode_length + 1
    for i, n in enumerate(ref_len.astype(int)):  # up to each episode's last state, that state included
        np.testing.assert_array_equal(ended[: n + 1, i], np.arange(n + 1) == n)  # frame n: the state that ended it
        # (the eager steps drift from the scanned ones by ~1e-3 over a falling pendulum's episode)
        np.testing.assert_allclose(frames[: n + 1, i], np.stack(ref_frames)[: n + 1, i], atol=2e-2)
    assert env.without_auto_reset() is env.without_auto_reset()  # one variant, one trace
    # What it is for: the step's program holds no reset branch (the reset physics) any more.
    action = policy(state.obs, None)
    assert "cond[" in str(jax.make_jaxpr(env._step)(state, action))
    assert "cond[" not in str(jax.make_jaxpr(env.without_auto_reset()._step)(state, action))


def test_same_seed_same_trajectory_other_seed_differs(cartpole4):
    a = cartpole4  # the session's env (its traces are shared); b is made anew with the same settings
    b = envs.make("CartpoleBalance", num_envs=4, episode_length=5, seed=0)
    ta = _rollout(a, 7, key=11)
    tb = _rollout(b, 7, key=11)
    for x, y in zip(ta, tb):
        np.testing.assert_array_equal(x.obs["state"], y.obs["state"])
        np.testing.assert_array_equal(x.reward, y.reward)
    tc = _rollout(a, 7, key=12)
    assert not np.array_equal(ta[-1].obs["state"], tc[-1].obs["state"])


def test_step_works_under_jit_and_scan(cartpole4):
    env = cartpole4

    @jax.jit
    def run(state, key):
        def body(s, k):
            s = env.step(s, env.random_action_fn(k))
            return s, s.reward

        return jax.lax.scan(body, state, jax.random.split(key, 12))

    state, rewards = run(env.reset(), jax.random.PRNGKey(0))
    assert rewards.shape == (12, 4)
    assert int(state.stats.completed) == 8  # two episodes of length 5 per env


def test_unknown_env_name_lists_closest_names():
    with pytest.raises(ValueError, match="CartpoleBalance"):
        envs.make("CartpoleBalanc")
    with pytest.raises(ValueError, match="unknown env name"):
        envs.make("NoSuchTaskAnywhere")
    with pytest.raises(ValueError, match="unknown env name.*CartpoleBalance"):  # not "no randomiser"
        envs.make("CartpoleBalanc", domain_randomization=True)


def test_a_hand_made_randomiser_on_a_task_without_an_mjx_model_is_refused_clearly():
    with pytest.raises(TypeError, match="keeps none .*Brax pipeline"):
        envs.make("inverted_pendulum", randomization_fn=lambda model, keys: (model, None))


def test_own_tasks_take_impl_and_menagerie_path_or_refuse_them(monkeypatch):
    """A finetuning variant of a Playground task builds the MJX implementation asked for (and
    its nominal twin too), with warp's per-step prints kept off after the physics edit; a task
    of our own MJCF refuses warp instead of silently stepping JAX."""
    from envs import _runtime, variants

    heavy = envs.make("CartpoleBalanceHeavyPole", impl="warp").env
    assert str(heavy.mjx_model.impl).lower().endswith("warp") and heavy.nominal.mjx_model.impl == heavy.mjx_model.impl
    if not _runtime.verbose():
        assert heavy.mjx_model.opt._impl.warn_overflow == 0
    with pytest.raises(ValueError, match="PushToSlot does not take impl='warp'"):
        envs.make("PushToSlot", impl="warp")
    with pytest.raises(ValueError, match="does not take menagerie_path"):
        envs.make("PushToSlot", menagerie_path="/tmp/menagerie")
    asked = []
    real = variants._load_playground
    monkeypatch.setattr(variants, "_load_playground", lambda *a: asked.append(a[:3]) or real(*a))
    envs.make("CartpoleBalanceHeavyPole", impl="jax", menagerie_path="/tmp/menagerie")
    assert asked == [("CartpoleBalance", "jax", "/tmp/menagerie")] * 2


def test_the_episode_length_is_the_built_tasks(monkeypatch):
    """A Playground constructor may set its own length (Cartpole with vision: 250 steps): the
    time limit is the built task's config, not the default config's."""
    from mujoco_playground import registry as pg

    real = pg.load

    def load(name, config_overrides=None):
        env = real(name, config_overrides=config_overrides)
        env._config.episode_length = 250  # as CartpoleBalance(vision=True) does in its __init__
        return env

    monkeypatch.setattr(pg, "load", load)
    assert envs.make("CartpoleBalance").episode_length == 250
    assert envs.make("CartpoleBalance", episode_length=40).episode_length == 40


@pytest.mark.parametrize("n", [0, -3])
def test_num_envs_must_be_positive(n):
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        envs.make("CartpoleBalance", num_envs=n)


def test_bad_impl_and_unknown_override_are_refused():
    with pytest.raises(ValueError, match="impl must be"):
        envs.make("CartpoleBalance", impl="cuda")
    with pytest.raises(ValueError, match="unknown config override"):
        envs.make("CartpoleBalance", not_a_key=3)
    with pytest.raises(TypeError, match="domain_randomization must be True or False"):
        envs.make("CartpoleBalance", domain_randomization="False")  # a truthy string


def test_wrong_action_shape_and_dtype_are_refused(cartpole4):
    env = cartpole4
    state = env.reset()
    with pytest.raises(ValueError, match=r"expected \(4, 1\)"):
        env.step(state, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        env.step(state, jnp.zeros((3, 1)))
    with pytest.raises(TypeError, match="floating point"):
        env.step(state, jnp.zeros((4, 1), jnp.int32))


def test_nan_actions_raise_eagerly_and_are_counted_under_jit(cartpole4):
    env = cartpole4
    state = env.reset()
    bad = jnp.zeros((4, 1)).at[2, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"non-finite action .*\[2\]"):
        env.step(state, bad)
    state = jax.jit(env.step, compiler_options=few_steps_options(4))(state, bad)
    assert int(state.nonfinite_actions) == 1


def test_register_own_task_and_refuse_duplicates(cartpole4):
    from envs import registry

    @envs.register("TestOwnCartpole", episode_length=7)
    def _make(**kw):
        return cartpole4.unwrapped

    try:
        assert "TestOwnCartpole" in envs.list_envs("jaxrl")
        env = envs.make("TestOwnCartpole", num_envs=2)
        assert env.episode_length == 7 and envs.source_of("TestOwnCartpole") == "jaxrl"
        with pytest.raises(ValueError, match="already registered"):
            envs.register("TestOwnCartpole")(_make)
        with pytest.raises(ValueError, match="already registered"):
            envs.register("CartpoleBalance")(_make)
    finally:
        registry.unregister("TestOwnCartpole")


def test_list_envs_covers_all_playground_and_brax_names():
    pg = envs.list_envs("playground")
    assert len(pg) == 54 and "T1JoystickFlatTerrain" in pg
    assert "ant" in envs.list_envs("brax")
    with pytest.raises(ValueError, match="source must be"):
        envs.list_envs("gym")


def test_default_impl_is_jax_on_cpu_except_humanoids():
    assert envs.default_impl("CartpoleBalance", "cpu") == "jax"
    assert envs.default_impl("T1JoystickFlatTerrain", "cpu") == "warp"
    assert envs.default_impl("CartpoleBalance", "gpu") is None


def test_runtime_enables_compilation_cache_but_leaves_matmul_precision_process_wide_default():
    """'highest' is scoped to the physics step (tests/train/test_core.py checks the HLO)."""
    assert jax.config.jax_compilation_cache_dir
    if "JAX_DEFAULT_MATMUL_PRECISION" not in __import__("os").environ:
        assert jax.config.jax_default_matmul_precision is None


def test_compile_options_this_jaxlib_refuses_are_left_out():
    """A compile option XLA does not know fails the whole compile ("No such compile option"):
    the quick options keep only those this jaxlib takes."""
    from envs import _runtime

    bogus = {"xla_jaxrl_no_such_option": True}
    assert _runtime.accepted_options(bogus) is None
    with pytest.raises(Exception, match="No such compile option"):  # what it would do unfiltered
        jax.jit(lambda x: x + 1, compiler_options=bogus).lower(np.float32(0)).compile()
    assert _runtime.accepted_options({**bogus, "xla_backend_optimization_level": 0}) == {
        "xla_backend_optimization_level": 0}


def test_short_program_options_compile_the_same_rollout_faster_settings_only(cartpole4, monkeypatch):
    """Sim2sim programs are compiled with `short_program_options` on CPU, and programs of at most
    `FEW_STEPS` env steps (a short sim2sim or eval, a VecEnv step called from Python) with
    `few_steps_options`: a 10-step rollout (auto-resets included) compiled with either and with
    XLA's defaults gives the same states to float tolerance, and ``JAXRL_SHORT_PROGRAM_OPTIONS=0``
    switches them off."""
    from envs import _runtime

    options = _runtime.short_program_options()  # the suite runs on CPU; jaxlib 0.12 has no such option
    assert options == ({"xla_cpu_use_fusion_emitters": False} if jax.__version_info__ < (0, 12) else None)
    few = _runtime.few_steps_options(_runtime.FEW_STEPS)
    assert few == {**(options or {}), "xla_backend_optimization_level": 0}
    assert _runtime.few_steps_options(_runtime.FEW_STEPS + 1) is None  # long runs: the caller's own
    actions = jnp.sin(jnp.arange(10.0))[:, None, None] * jnp.ones((10, 4, cartpole4.action_size))

    def rollout(state):
        def body(s, a):
            s = cartpole4.step(s, a)
            return s, (s.obs["state"], s.reward)
        return jax.lax.scan(body, state, actions)[1]

    state = cartpole4.reset(jax.random.PRNGKey(3))
    plain = jax.jit(rollout).lower(state).compile()(state)
    for opts in (options, few):
        quick = jax.jit(rollout).lower(state).compile(compiler_options=opts)(state)
        for a, b in zip(quick, plain):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # A VecEnv's reset / step called from Python compile the few-steps way, and give the states
    # the XLA-default program gives; traced into a program (the rollout above) they take none.
    assert _runtime.eager_env_options() == few and cartpole4._step_eager is not cartpole4._step_jit
    eager = cartpole4.step(state, actions[0])
    np.testing.assert_allclose(np.asarray(eager.obs["state"]), np.asarray(plain[0][0]), rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("JAXRL_SHORT_PROGRAM_OPTIONS", "0")
    assert _runtime.short_program_options() is None and _runtime.few_steps_options(1) is None
    assert _runtime.eager_env_options() is None
    plain_env = envs.make("CartpoleBalance", num_envs=4)
    assert plain_env._step_eager is plain_env._step_jit and plain_env._reset_eager is plain_env._reset_jit


def test_reset_and_step_states_have_one_signature_so_a_jitted_rollout_compiles_once():
    """MJX's reset leaves ``data.time`` weakly typed (CheetahRun, T1) and a step makes it strong:
    a jitted function fed a fresh state and then a stepped one would compile twice (a 17 s
    recompile per T1 rollout on an H100).  The wrapper hands out one signature."""
    env = envs.make("CheetahRun", num_envs=2, episode_length=5, impl="warp")  # warp: compiles fast on CPU

    def signature(state):
        return [(jax.tree_util.keystr(p), x.shape, x.dtype, x.weak_type)
                for p, x in jax.tree_util.tree_flatten_with_path(state)[0]]

    step = jax.jit(lambda s: env.step(s, jnp.zeros((2, env.action_size))))
    fresh = env.reset(jax.random.PRNGKey(0))
    stepped = step(fresh)
    assert signature(fresh) == signature(stepped)
    step(stepped)
    assert step._cache_size() == 1


def test_a_task_traces_its_reset_once_for_its_observation_size_and_every_program(monkeypatch):
    """Playground's ``observation_size`` traces the task's reset on each access (~1.4 s for
    CartpoleBalance, ~5 s for CheetahRun).  The size comes instead from the one-env reset that
    every program resetting the task vmaps, so a task object traces its reset once: for its size,
    its evaluation envs (`with_num_envs`) and the programs that reset or step it.  The size equals
    Playground's own."""
    env = envs.make("CartpoleBalance", num_envs=2, episode_length=5)
    playground_size = env.env.observation_size  # Playground's property, before counting
    calls = []
    plain = type(env.env).reset
    monkeypatch.setattr(type(env.env), "reset", lambda self, key: calls.append(self) or plain(self, key))
    key = jax.random.PRNGKey(0)
    other = env.with_num_envs(3, seed=1)
    jax.eval_shape(env.reset, key)
    jax.eval_shape(other.reset, key)
    assert other.spec.obs == env.spec.obs and other.spec.num_envs == 3 and calls == []
    assert env.spec.obs["state"].shape == (playground_size,)

    fresh = envs.make("CartpoleBalance", num_envs=2, episode_length=5)
    assert len(calls) == 1 and calls[0] is fresh.env and fresh.spec == env.spec
    state = jax.eval_shape(fresh.reset, key)
    jax.eval_shape(fresh.step, state, jnp.zeros((2, fresh.action_size)))  # its auto-reset too
    jax.eval_shape(fresh.with_num_envs(4, seed=1).reset, key)
    assert len(calls) == 1


def test_a_domain_randomised_task_traces_its_reset_once_too(monkeypatch):
    """With randomised models the size comes from the one-env reset on one env's model, the trace
    that the vectorised reset and auto-reset vmap: one trace, for a randomiser whose ``in_axes``
    name fields and for one that batches the whole model (a prefix ``0``)."""
    plain = envs.make("CartpoleBalance", num_envs=3, episode_length=5)
    calls = []
    task_reset = type(plain.env).reset
    monkeypatch.setattr(type(plain.env), "reset", lambda self, key: calls.append(self) or task_reset(self, key))

    def per_field(m, keys):
        damping = jax.vmap(lambda k: m.dof_damping * jax.random.uniform(k, (), minval=0.5, maxval=1.5))(keys)
        axes = jax.tree.map(lambda _: None, m).tree_replace({"dof_damping": 0})
        return m.tree_replace({"dof_damping": damping}), axes

    def whole(m, keys):
        return jax.vmap(lambda k: m.tree_replace({"dof_damping": m.dof_damping * jax.random.uniform(k, ())}))(keys), 0

    for randomiser in (per_field, whole):
        calls.clear()
        env = envs.make("CartpoleBalance", num_envs=3, episode_length=5, randomization_fn=randomiser)
        state = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
        jax.eval_shape(env.step, state, jnp.zeros((3, env.action_size)))
        assert len(calls) == 1 and env.spec.obs == plain.spec.obs, randomiser.__name__


def _damping(m, keys):
    damping = jax.vmap(lambda k: m.dof_damping * jax.random.uniform(k, (), minval=0.1, maxval=10.0))(keys)
    return m.tree_replace({"dof_damping": damping}), jax.tree.map(lambda _: None, m).tree_replace({"dof_damping": 0})


def test_each_member_of_a_seed_vmap_steps_the_models_its_own_seed_draws():
    """A run of K seeds vmaps one env (`VecEnv.across`): with a randomiser, member i steps the
    models env seed i draws, as its separate run would, not member 0's (K correlated seeds)."""
    def rollout(env, key):
        s = env.reset(key)
        for _ in range(3):
            s = env.step(s, jnp.ones((3, env.action_size)))
        return s.inner.data.qvel

    key = jax.random.PRNGKey(5)
    alone = [np.asarray(jax.jit(rollout, static_argnums=0)(
        envs.make("CartpoleBalance", num_envs=3, episode_length=50, seed=s, randomization_fn=_damping), key))
        for s in (7, 8)]
    assert not np.allclose(alone[0], alone[1])  # the draws matter
    env = envs.make("CartpoleBalance", num_envs=3, episode_length=50, seed=7, randomization_fn=_damping)
    members = env.across("seeds", [7, 8])
    together = jax.jit(jax.vmap(lambda k: rollout(members, k), axis_name="seeds"))(jnp.stack([key, key]))
    np.testing.assert_allclose(np.asarray(together), np.stack(alone), rtol=1e-5, atol=1e-6)
    # a training loop of 2 seeds hands each its own env seed's draws, training and eval envs alike
    from jaxrl.train import registry

    ppo = registry.get("ppo")
    loop = ppo.make_loop(ppo.config.cpu(num_envs=3, unroll_length=4, num_minibatches=1), env,
                         env.with_num_envs(3, seed=8), 24, 7, 1, seeds=2)
    for member_env, first in ((loop.env, 7), (loop.eval_env, 8)):
        for i in range(2):
            own = envs.make("CartpoleBalance", 3, 50, seed=first + i, randomization_fn=_damping)._model_batch
            np.testing.assert_array_equal(np.asarray(member_env._seed_models.dof_damping[i]),
                                          np.asarray(own.dof_damping))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_reset_pool_must_be_a_count(bad, cartpole4):
    with pytest.raises(ValueError, match="reset_pool must be an int >= 0"):
        envs.wrappers.VecEnv(cartpole4.env, 4, 5, reset_pool=bad)


@pytest.mark.parametrize("r", [1, 2])
def test_reset_pool_restarts_each_env_from_its_own_start_states_without_the_task_reset(r, cartpole4, monkeypatch):
    """``reset_pool=R``: the first reset is the fresh env's (same key), the pool holds R start
    states per env, and an env whose episode ends (staggered here) restarts from one of ITS
    entries (with R = 2 both get used) with a fresh task random stream, while the others keep
    their stepped state; final observations are the stepped states' and the first episodes score
    as the fresh env's.  The step's auto-reset traces no task reset at all (that is what it
    saves: CheetahRun settles 200 physics steps per reset).  On 2 devices the pool is split with
    the envs and a rollout equals the one-device rollout."""
    from envs.wrappers import VecEnv
    from jaxrl.train import parallel

    pooled = VecEnv(cartpole4.env, 4, 5, reset_pool=r)
    assert repr(pooled).endswith(f"episode_length=5, reset_pool={r})") and "reset_pool" not in repr(cartpole4)
    key = jax.random.PRNGKey(3)
    stagger = jnp.arange(4, dtype=jnp.int32)  # env i ends its first episode after 5 - i steps
    state = pooled.reset(key).replace(episode_step=stagger)
    fresh = cartpole4.reset(key).replace(episode_step=stagger)
    assert fresh.start_pool is None
    # one-episode rollouts (evaluation) reset without drawing a pool
    assert jax.eval_shape(pooled.without_auto_reset().reset, key).start_pool is None
    pool_q = np.asarray(state.start_pool.data.qpos)  # [N, R, nq]
    assert pool_q.shape == (4, r, 2)
    np.testing.assert_array_equal(state.inner.data.qpos, fresh.inner.data.qpos)
    np.testing.assert_array_equal(pool_q[:, 0], fresh.inner.data.qpos)
    if r > 1:
        assert not np.allclose(pool_q[:, 0], pool_q[:, 1])
    pool_rng = np.asarray(state.start_pool.info["rng"])

    actions = jnp.full((4, 1), 0.3)
    no_reset = pooled.without_auto_reset()  # the reference: the same step, never resetting
    used, ended = set(), np.zeros(4, bool)
    for t in range(12):
        before, state = state, pooled.step(state, actions)
        ref = no_reset.step(before, actions)
        done = np.asarray(state.done)
        np.testing.assert_array_equal(done, np.asarray(ref.done))
        np.testing.assert_array_equal(state.final_obs["state"], ref.obs["state"])
        q = np.asarray(state.inner.data.qpos)
        for i in range(4):
            if not done[i]:
                np.testing.assert_array_equal(q[i], np.asarray(ref.inner.data.qpos)[i])
                continue
            match = [j for j in range(r) if np.array_equal(q[i], pool_q[i, j])]
            assert match, f"env {i} restarted from a state outside its pool"
            used.add(match[0])
            assert not np.array_equal(np.asarray(state.inner.info["rng"])[i], pool_rng[i, match[0]])
        if t == 4:  # every env has ended its first episode by now: as the fresh env scored it
            first = fresh
            for _ in range(5):
                first = cartpole4.step(first, actions)
            np.testing.assert_allclose(state.stats.last_return, first.stats.last_return, rtol=1e-6)
        ended |= done
    assert ended.all() and used == set(range(r))
    np.testing.assert_array_equal(state.obs["state"], jax.vmap(pooled.env._get_obs)(
        state.inner.data, state.inner.info))

    def no_task_reset(*_a, **_k):
        raise AssertionError("the task's reset was traced into the step")

    monkeypatch.setattr(VecEnv, "_reset_envs", no_task_reset)
    jax.make_jaxpr(pooled._step)(before, actions)  # does not raise
    with pytest.raises(AssertionError, match="task's reset was traced"):
        jax.make_jaxpr(cartpole4._step)(fresh, actions)
    monkeypatch.undo()
    if r == 1:
        return

    assert envs.make("CartpoleBalance", num_envs=2, reset_pool=2).make_kwargs["reset_pool"] == 2
    two = pooled.distribute(parallel.make_mesh(2))

    @jax.jit
    def rollout(k):  # 6 steps: every env's episode ends at the 5th
        return jax.lax.fori_loop(0, 6, lambda _, s: two.step(s, actions), two.reset(k))

    one = pooled.reset(key)
    for _ in range(6):
        one = pooled.step(one, actions)
    got = rollout(key)
    assert got.start_pool.data.qpos.sharding.spec[0] == parallel.AXIS
    np.testing.assert_allclose(got.inner.data.qpos, one.inner.data.qpos, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.start_pool.data.qpos, one.start_pool.data.qpos, rtol=1e-6, atol=1e-6)
