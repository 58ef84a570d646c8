"""FlashSAC: each test proves one claim of the recipe (ALGORITHMS.md §1) on tiny networks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.specs import ArraySpec, EnvSpec
from jaxrl.algos import distributional
from jaxrl.algos import flashsac as fs
from jaxrl.data.transition import Transition
from jaxrl.nets import bounded

N, D, P, A, B = 4, 3, 5, 2, 16
CFG = fs.FlashSACConfig(
    num_envs=N,
    batch_size=B,
    buffer_size=1000,
    min_buffer=10,
    actor_width=8,
    critic_width=16,
    num_blocks=1,
    expansion=2,
    num_atoms=11,
    total_updates=100,
)
SPEC = EnvSpec(
    name="tiny",
    obs={"state": ArraySpec((D,)), "privileged_state": ArraySpec((P,))},
    action=ArraySpec((A,), low=-1.0, high=1.0),
    num_envs=N,
    episode_length=10,
    dt=0.01,
    has_privileged_state=True,
)


def _batch(key, b=B):
    ks = jax.random.split(key, 6)
    obs = {
        "state": jax.random.normal(ks[0], (b, D)),
        "privileged_state": jax.random.normal(ks[1], (b, P)),
    }
    nxt = {
        "state": jax.random.normal(ks[2], (b, D)),
        "privileged_state": jax.random.normal(ks[3], (b, P)),
    }
    return Transition(
        obs=obs,
        action=jax.random.uniform(ks[4], (b, A), minval=-1, maxval=1),
        reward=jax.random.normal(ks[5], (b,)),
        next_obs=nxt,
        terminated=jnp.arange(b) % 5 == 0,
        truncated=jnp.arange(b) % 7 == 0,
    )


@pytest.fixture(scope="module")
def update_fn():
    return jax.jit(functools.partial(fs.update, cfg=CFG))


@pytest.fixture(scope="module")
def states(update_fn):
    """Initial state and the states after 1 and 2 updates."""
    s0 = fs.init(jax.random.PRNGKey(0), SPEC, CFG)
    s1, m1 = update_fn(s0, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    s2, m2 = update_fn(s1, _batch(jax.random.PRNGKey(3)), jax.random.PRNGKey(4))
    return s0, (s1, m1), (s2, m2)


def _max_abs_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ----------------------------------------------------------------------- projection
def _check_bounded(params):
    for path, kind in bounded.bounded_leaves(params).items():
        p = params
        for k in path.split("/"):
            p = p[k]
        if kind == "unit":
            np.testing.assert_allclose(np.linalg.norm(p["unit_kernel"], axis=-2), 1.0, atol=1e-5)
        elif kind == "bn":
            d = p["bn_scale"].shape[-1]
            sq = np.sum(np.square(p["bn_scale"]), -1) + np.sum(np.square(p["bn_bias"]), -1)
            np.testing.assert_allclose(np.sqrt(sq), math.sqrt(d), rtol=1e-5)
        else:
            d = p["rms_scale"].shape[-1]
            np.testing.assert_allclose(
                np.linalg.norm(p["rms_scale"], axis=-1), math.sqrt(d), rtol=1e-5
            )


def test_projection_keeps_norm_bounds_after_update(states):
    s0, _, (s2, _) = states
    assert _max_abs_diff(s0.critic_params, s2.critic_params) > 0
    assert _max_abs_diff(s0.actor_params, s2.actor_params) > 0
    _check_bounded(s2.critic_params)
    _check_bounded(s2.actor_params)


def test_target_network_is_polyak_average_and_not_reprojected(states):
    s0, (s1, _), _ = states
    want = jax.tree.map(
        lambda o, t: CFG.tau * o + (1 - CFG.tau) * t, s1.critic_params, s0.target_params
    )
    assert _max_abs_diff(want, s1.target_params) < 1e-6
    k = np.asarray(s1.target_params["trunk"]["embed"]["unit_kernel"])
    assert np.abs(np.linalg.norm(k, axis=-2) - 1.0).max() > 1e-7  # columns drift off the sphere


# ----------------------------------------------------------------------- actor schedule
def test_actor_and_alpha_update_only_every_second_critic_step(states):
    s0, (s1, m1), (s2, m2) = states
    assert _max_abs_diff(s0.critic_params, s1.critic_params) > 0
    assert _max_abs_diff(s0.actor_params, s1.actor_params) == 0.0
    assert float(s0.log_alpha) == float(s1.log_alpha)
    assert float(m1["actor_updated"]) == 0.0 and float(m2["actor_updated"]) == 1.0
    assert _max_abs_diff(s1.actor_params, s2.actor_params) > 0
    assert float(s2.log_alpha) != float(s1.log_alpha)


def test_update_metrics_are_finite_float32_scalars(states):
    _, _, (_, m) = states
    for name in (
        "critic_loss",
        "actor_loss",
        "alpha",
        "entropy",
        "q_mean",
        "reward_scale",
        "critic_grad_norm",
        "actor_grad_norm",
    ):
        assert m[name].shape == () and m[name].dtype == jnp.float32, name
        assert np.isfinite(float(m[name])), name


# ----------------------------------------------------------------------- C51 projection
def _slow_project(tz, probs, v_min, v_max):
    b, k = probs.shape
    dz = (v_max - v_min) / (k - 1)
    out = np.zeros((b, k))
    for i in range(b):
        for j in range(k):
            t = min(max(tz[i, j], v_min), v_max)
            pos = (t - v_min) / dz
            lo, hi = int(np.floor(pos)), int(np.ceil(pos))
            if lo == hi:
                out[i, lo] += probs[i, j]
            else:
                out[i, lo] += probs[i, j] * (hi - pos)
                out[i, hi] += probs[i, j] * (pos - lo)
    return out


def test_c51_projection_matches_loop_reference_and_preserves_mass():
    rng = np.random.default_rng(0)
    k = 11
    tz = rng.uniform(-7, 7, (6, k)).astype(np.float32)
    tz[0] = np.linspace(-5, 5, k)  # exactly on the grid
    probs = rng.dirichlet(np.ones(k), 6).astype(np.float32)
    got = np.asarray(distributional.project(jnp.asarray(tz), jnp.asarray(probs), -5.0, 5.0))
    np.testing.assert_allclose(got, _slow_project(tz, probs, -5.0, 5.0), atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got[0], probs[0], atol=1e-6)


def test_c51_projection_clips_atoms_outside_the_support_to_the_end_atoms():
    k = 11
    probs = jnp.full((2, k), 1.0 / k)
    tz = jnp.stack([jnp.full((k,), 50.0), jnp.full((k,), -9.0)])
    got = np.asarray(distributional.project(tz, probs, -5.0, 5.0))
    np.testing.assert_allclose(got[0], np.eye(k)[-1], atol=1e-6)
    np.testing.assert_allclose(got[1], np.eye(k)[0], atol=1e-6)


# ----------------------------------------------------------------------- critic target
def _point_logits(values, k=CFG.num_atoms):
    """Logits putting (almost) all mass on the atom nearest each value. values [E, B]."""
    z = np.linspace(CFG.v_min, CFG.v_max, k)
    idx = np.abs(np.asarray(values)[..., None] - z).argmin(-1)
    return jnp.asarray(np.where(np.arange(k) == idx[..., None], 30.0, -30.0), jnp.float32)


def test_critic_target_uses_member_with_lower_expected_q_per_sample():
    values = np.array([[2.0, -1.0, 3.0], [1.0, 2.0, -4.0]])  # member 0 / member 1
    logits = _point_logits(values)
    zero = jnp.zeros(3)
    target = fs.critic_target(logits, zero, zero, jnp.zeros(3, bool), 0.0, CFG.replace(gamma=1.0))
    z = np.linspace(-5, 5, CFG.num_atoms)
    np.testing.assert_allclose(np.asarray(target) @ z, values.min(0), atol=1e-4)


def test_terminated_zeroes_bootstrap_but_truncated_does_not():
    values = np.full((2, 2), 3.0)
    logits = _point_logits(values)
    r = jnp.array([1.0, 1.0])
    terminated = jnp.array([True, False])  # sample 1 stands for a time-out: not terminated
    target = fs.critic_target(logits, jnp.zeros(2), r, terminated, 0.0, CFG.replace(gamma=0.5))
    z = np.linspace(-5, 5, CFG.num_atoms)
    np.testing.assert_allclose(np.asarray(target) @ z, [1.0, 1.0 + 0.5 * 3.0], atol=1e-4)


def test_critic_target_subtracts_entropy_term_alpha_log_prob():
    logits = _point_logits(np.zeros((2, 1)))
    target = fs.critic_target(
        logits, jnp.array([-2.0]), jnp.zeros(1), jnp.zeros(1, bool), 0.5, CFG.replace(gamma=1.0)
    )
    z = np.linspace(-5, 5, CFG.num_atoms)
    np.testing.assert_allclose(np.asarray(target) @ z, [1.0], atol=1e-4)


# ----------------------------------------------------------------------- reward scaling
def test_reward_scaling_statistics_match_numpy_reference():
    gamma = 0.9
    cfg = CFG.replace(gamma=gamma)
    state = fs.init(jax.random.PRNGKey(0), SPEC, cfg)
    rng = np.random.default_rng(1)
    G = np.zeros(N)
    seen = []
    observe = jax.jit(functools.partial(fs.observe, cfg=cfg))
    for t in range(25):
        r = rng.normal(1.0, 2.0, N).astype(np.float32)
        term = rng.random(N) < 0.1
        trunc = rng.random(N) < 0.1
        G = gamma * (1.0 - (term | trunc)) * G + r
        seen.append(G.copy())
        obs = {"state": jnp.zeros((N, D)), "privileged_state": jnp.zeros((N, P))}
        tr = Transition(
            obs, jnp.zeros((N, A)), jnp.asarray(r), obs, jnp.asarray(term), jnp.asarray(trunc)
        )
        state = observe(state, tr)
    rs = state.reward_stats
    all_g = np.concatenate(seen)
    prior = 1e-4  # gym-style prior count with mean 0, var 1
    n = all_g.size
    mean = all_g.sum() / (n + prior)
    var = (
        prior * 1.0
        + np.sum(np.square(all_g - all_g.mean()))
        + n * prior / (n + prior) * all_g.mean() ** 2
    ) / (n + prior)
    np.testing.assert_allclose(rs.G, G, rtol=1e-5)
    np.testing.assert_allclose(float(rs.mean), mean, rtol=1e-4)
    np.testing.assert_allclose(float(rs.var), var, rtol=1e-4)
    np.testing.assert_allclose(float(rs.max_abs), np.abs(all_g).max(), rtol=1e-6)
    denom = max(np.sqrt(var + 1e-8), np.abs(all_g).max() / 5.0)
    np.testing.assert_allclose(
        fs.scale_reward(state, jnp.array([2.0]), cfg), [2.0 / denom], rtol=1e-4
    )


# ----------------------------------------------------------------------- exploration
def test_zeta_repeat_frequencies_follow_inverse_square_law():
    n = 200_000
    k = np.asarray(fs.sample_repeat(jax.random.PRNGKey(0), CFG, (n,)))
    assert k.min() >= 1 and k.max() <= 16
    p = np.arange(1, 17, dtype=np.float64) ** -2.0
    p /= p.sum()
    counts = np.bincount(k, minlength=17)[1:]
    chi2 = np.sum(np.square(counts - n * p) / (n * p))
    assert chi2 < 45.0, chi2  # 15 dof: the 99.99% quantile is ~ 44


def test_exploration_noise_is_held_for_k_steps_then_redrawn():
    state = fs.init(jax.random.PRNGKey(0), SPEC, CFG)
    obs = {"state": jnp.zeros((N, D)), "privileged_state": jnp.zeros((N, P))}
    step = jax.jit(functools.partial(fs.explore, cfg=CFG))
    key = jax.random.PRNGKey(5)
    noises, repeats = [], []
    for _ in range(40):
        key, sub = jax.random.split(key)
        _, state = step(state, obs, sub)
        noises.append(np.asarray(state.explore.noise))
        repeats.append(int(state.explore.repeat))
    t = 0
    holds = 0
    while t < len(noises):
        k = repeats[t]
        for j in range(t, min(t + k, len(noises))):
            np.testing.assert_array_equal(noises[j], noises[t])  # same vector for k steps
        if t + k < len(noises):
            assert not np.allclose(noises[t + k], noises[t])  # fresh vector afterwards
        holds += 1
        t += k
    assert holds >= 2
    assert not np.allclose(noises[0][0], noises[0][1])  # one vector per env


# ----------------------------------------------------------------------- policy / entropy
def test_target_entropy_for_one_action_dim_is_about_minus_0_478():
    assert fs.target_entropy(1, CFG) == pytest.approx(-0.478, abs=1e-3)
    assert fs.target_entropy(3, CFG) == pytest.approx(3 * -0.478, abs=3e-3)


def test_log_std_stays_within_minus_5_and_0():
    state = fs.init(jax.random.PRNGKey(0), SPEC, CFG)
    raw = state.actor_params["log_std"]
    big = jax.tree.map(lambda x: x + 100.0, raw)
    small = jax.tree.map(lambda x: x - 100.0, raw)
    obs = {"state": jax.random.normal(jax.random.PRNGKey(1), (N, D)) * 10}
    for p in (raw, big, small):
        st = state.replace(actor_params={**state.actor_params, "log_std": p})
        _, extras = fs.act(st, obs, jax.random.PRNGKey(0), CFG)
        ls = np.asarray(extras["log_std"])
        assert ls.min() >= -5.0 and ls.max() <= 0.0
    st = state.replace(actor_params={**state.actor_params, "log_std": big})
    np.testing.assert_allclose(
        fs.act(st, obs, jax.random.PRNGKey(0), CFG)[1]["log_std"], 0.0, atol=1e-6
    )


# ----------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"batch_size": 4096, "buffer_size": 1000, "min_buffer": 10}, "batch_size"),
        ({"gamma": -0.1}, "gamma"),
        ({"num_atoms": 0}, "num_atoms"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_invalid_config_raises_value_error_naming_field(kw, field):
    with pytest.raises(ValueError, match=field) as err:
        fs.FlashSACConfig(**kw)
    if field == "batch_size":
        assert "raise buffer_size" in str(err.value)


def test_presets_paper_gamma_and_cpu_are_valid():
    assert fs.FlashSACConfig.paper("T1JoystickFlatTerrain").gamma == 0.97
    assert fs.FlashSACConfig.paper("G1JoystickRoughTerrain").gamma == 0.97
    assert fs.FlashSACConfig.paper("CartpoleBalance").gamma == 0.99
    cpu = fs.FlashSACConfig.cpu()
    assert cpu.num_envs <= 64 and cpu.buffer_size <= 200_000
    hash(cpu)  # static under jit


# ----------------------------------------------------------------------- export
def _interpret(ops, x):
    """The shipped numpy-only runtime (itself checked against ONNX and jnp in tests/io)."""
    from jaxrl.io.numpy_policy import forward

    return forward(ops, np.asarray(x, np.float32))


def test_policy_layers_interpreted_in_numpy_equal_deterministic_act(states):
    _, _, (s2, _) = states  # trained a little: non-trivial BN running stats and projections
    ops = fs.policy_layers(s2, CFG)
    for op in ops:
        for v in op.values():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32
    obs = {"state": jax.random.normal(jax.random.PRNGKey(9), (7, D)) * 3.0}
    want, _ = fs.act(s2, obs, None, CFG, deterministic=True)
    got = _interpret(ops, np.asarray(obs["state"], np.float64))
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
