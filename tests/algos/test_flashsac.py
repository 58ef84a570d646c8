"""FlashSAC: each test proves one claim of the recipe (ALGORITHMS.md §1) on tiny networks."""

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from envs._runtime import run_once_options
from envs.specs import ArraySpec, EnvSpec
from jaxrl.algos import distributional
from jaxrl.algos import flashsac as fs
from jaxrl.data.transition import Transition
from jaxrl.nets import bounded

# Most tests read the module's compiled update and its `history`: one xdist worker builds them once.
pytestmark = pytest.mark.xdist_group("flashsac_update")

N, D, P, A, B = 4, 3, 5, 2, 16
ONCE = run_once_options()  # programs a test runs a few times: the quick compile (CPU)
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


@functools.partial(jax.jit, static_argnames="b")
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
    return jax.jit(functools.partial(fs.update, cfg=CFG), compiler_options=ONCE)


@pytest.fixture(scope="module")
def history(update_fn):
    """[(state, metrics of the update that produced it)] for the initial state and 4 updates."""
    out = [(fs.init(jax.random.PRNGKey(0), SPEC, CFG), None)]
    for i in range(4):
        out.append(update_fn(out[-1][0], _batch(jax.random.PRNGKey(2 * i + 1)),
                             jax.random.PRNGKey(2 * i + 2)))
    return out


@pytest.fixture(scope="module")
def states(history):
    """Initial state and the states after 1 and 2 updates."""
    return history[0][0], history[1], history[2]


def _max_abs_diff(a, b):
    # numpy, not jnp: op-by-op jnp compiles a program per op and leaf shape (~0.05 s each on a CPU)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
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


def test_every_projected_kernel_heads_included_has_unit_columns_while_head_biases_stay_free(
    history,
):
    s0, s4 = history[0][0], history[-1][0]  # 4 updates: 2 actor and 4 critic steps
    for params, heads in ((s4.actor_params, ("mean", "log_std")), (s4.critic_params, ("logits",))):
        kinds = bounded.bounded_leaves(params)
        for head in heads:
            assert kinds[head] == "unit", head
            k = np.asarray(params[head]["unit_kernel"])  # (in, out), ensemble axis first
            np.testing.assert_allclose(np.linalg.norm(k, axis=-2), 1.0, atol=1e-5, err_msg=head)
            bias = np.asarray(params[head]["bias"])
            norm = np.linalg.norm(bias, axis=-1)
            assert (norm > 0).all(), head  # trained away from its zero init ...
            d = bias.shape[-1]
            for bound in (1.0, math.sqrt(d)):  # ... and not re-projected to any norm
                assert (np.abs(norm - bound) > 1e-3).all(), (head, norm)
            # projecting again leaves the bias alone but would fix a drifted kernel
            again = bounded.project({"h": {"unit_kernel": 2.0 * k, "bias": bias}})["h"]
            np.testing.assert_array_equal(again["bias"], bias)
            np.testing.assert_allclose(np.linalg.norm(again["unit_kernel"], axis=-2), 1.0, atol=1e-5)
        _check_bounded(params)
    assert _max_abs_diff(s0.actor_params["mean"]["unit_kernel"],
                         s4.actor_params["mean"]["unit_kernel"]) > 0


def test_target_network_is_polyak_average_and_not_reprojected(states, update_fn):
    s0, (s1, _), _ = states
    want = jax.tree.map(
        lambda o, t: CFG.tau * o + (1 - CFG.tau) * t, s1.critic_params, s0.target_params
    )
    assert _max_abs_diff(want, s1.target_params) < 1e-6
    # From a target far from the critic (its unit columns negated), the average of two unit
    # columns lies well inside the sphere (norm ~1 - 2 tau) and the target keeps it there.
    far = s0.replace(target_params=jax.tree.map(lambda x: -x, s0.critic_params))
    s1f, _ = update_fn(far, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    k = np.asarray(s1f.target_params["trunk"]["embed"]["unit_kernel"])
    want_k = (CFG.tau * np.asarray(s1f.critic_params["trunk"]["embed"]["unit_kernel"])
              + (1 - CFG.tau) * np.asarray(far.target_params["trunk"]["embed"]["unit_kernel"]))
    np.testing.assert_allclose(k, want_k, atol=1e-6)
    assert np.abs(np.linalg.norm(k, axis=-2) - 1.0).min() > CFG.tau  # not projected back onto it


# ----------------------------------------------------------------------- actor schedule
def test_actor_and_alpha_step_on_updates_0_2_4_only(history):
    (s0, _), (s1, m1), (s2, m2), (s3, m3) = history[:4]
    assert [float(m["actor_updated"]) for m in (m1, m2, m3)] == [1.0, 0.0, 1.0]
    # update 0 already moves the actor and alpha (official: actor first), update 1 does not
    assert _max_abs_diff(s0.actor_params, s1.actor_params) > 0
    assert float(s1.log_alpha) != float(s0.log_alpha)
    assert _max_abs_diff(s1.actor_params, s2.actor_params) == 0.0
    assert float(s2.log_alpha) == float(s1.log_alpha)
    assert _max_abs_diff(s2.actor_params, s3.actor_params) > 0
    for a, b in itertools.pairwise(history):  # the critic moves on every update
        assert _max_abs_diff(a[0].critic_params, b[0].critic_params) > 0


def test_update_period_equals_consecutive_updates_and_has_no_branch(history):
    """`update_period` (the loop's path when updates_per_step is a multiple of the actor period)
    gives the states and metrics of `update` applied twice from step 0, with the same batches and
    keys, to float tolerance; its program has no `cond` (the seed vmap would make it a select)."""
    batches = jax.tree.map(lambda *x: jnp.stack(x), *[_batch(jax.random.PRNGKey(2 * i + 1)) for i in range(2)])
    keys = jnp.stack([jax.random.PRNGKey(2 * i + 2) for i in range(2)])
    fn = functools.partial(fs.update_period, cfg=CFG)
    state, metrics = jax.jit(fn, compiler_options=ONCE)(history[0][0], batches, keys)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(history[2][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    for i in range(2):
        for k, v in history[i + 1][1].items():
            np.testing.assert_allclose(float(metrics[k][i]), float(v), rtol=1e-5, atol=1e-6, err_msg=k)
    assert "cond[" not in str(jax.make_jaxpr(fn)(history[0][0], batches, keys))


def test_update_order_is_actor_then_alpha_then_critic_on_the_new_actor_then_polyak(states):
    """update == the hand-composed sequence; composing the critic first gives another result, so
    the comparison can tell the orders apart."""
    s0 = states[0]
    batch, key = _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2)  # = history update 0
    want = states[1][0]
    k_actor, k_critic = jax.random.split(key)  # update's own key split

    @functools.partial(jax.jit, compiler_options=ONCE)
    def official(s):
        s, m = fs.actor_step(s, batch, k_actor, CFG)
        s, _ = fs.temperature_step(s, m["entropy"], CFG)
        s, _ = fs.critic_step(s, batch, k_critic, CFG)
        return fs.polyak_step(s, CFG)

    @functools.partial(jax.jit, compiler_options=ONCE)
    def critic_first(s):
        s, _ = fs.critic_step(s, batch, k_critic, CFG)
        s, m = fs.actor_step(s, batch, k_actor, CFG)
        s, _ = fs.temperature_step(s, m["entropy"], CFG)
        return fs.polyak_step(s, CFG)

    got = official(s0)
    for field in ("actor_params", "actor_stats", "log_alpha", "critic_params", "critic_stats",
                  "target_params", "critic_opt", "actor_opt", "alpha_opt"):
        assert _max_abs_diff(getattr(got, field), getattr(want, field)) < 1e-6, field
    other = critic_first(s0)
    # the critic trained on a target from the OLD actor differs; the actor's gradient against
    # the NEW critic differs too (Adam's first step is sign-like, so compare its moments)
    assert _max_abs_diff(other.critic_params, want.critic_params) > 1e-6
    mu = [optax.tree_utils.tree_get(st.actor_opt, "mu") for st in (other, want)]
    assert _max_abs_diff(*mu) > 0


def test_actor_gradient_ignores_next_state_values_but_its_batchnorm_sees_next_states(states):
    s0 = states[0]
    batch, key = _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(7)
    grad = jax.jit(jax.grad(fs.actor_loss, has_aux=True), static_argnames="cfg", compiler_options=ONCE)
    alpha = jnp.exp(s0.log_alpha)

    def run(b):
        g, (stats, log_p) = grad(s0.actor_params, s0, b, key, alpha, cfg=CFG)
        return g, stats, log_p

    def with_obs(which, name, scale):
        obs = dict(getattr(batch, which))
        obs[name] = obs[name] * scale + 3.0
        return batch._replace(**{which: obs})

    g, stats, log_p = run(batch)
    assert log_p.shape == (B,)  # loss and entropy over the B current states only
    # Q of next states never enters: the critic's view of s' is irrelevant to the actor
    g2, stats2, _ = run(with_obs("next_obs", "privileged_state", 10.0))
    assert _max_abs_diff(g, g2) == 0.0 and _max_abs_diff(stats, stats2) == 0.0
    # ... but the actor's train-mode BatchNorm does see s' (statistics and, through them, grads)
    g3, stats3, _ = run(with_obs("next_obs", "state", 10.0))
    assert _max_abs_diff(stats, stats3) > 1e-3 and _max_abs_diff(g, g3) > 0
    # sanity: the critic's view of s does matter
    g4, _, _ = run(with_obs("obs", "privileged_state", 10.0))
    assert _max_abs_diff(g, g4) > 0


def test_temperature_loss_gradient_is_entropy_gap_wrt_alpha(states):
    h_bar = fs.target_entropy(A, CFG)
    for alpha, entropy in ((0.01, 0.3), (0.5, -2.0), (2.0, h_bar)):
        g = jax.grad(fs.temperature_loss)(jnp.float32(alpha), jnp.float32(entropy), h_bar)
        assert float(g) == pytest.approx(entropy - h_bar, abs=1e-6)
    # the optimised log alpha gets alpha * (H - H̄): read back from Adam's first moment
    s0 = states[0]
    entropy = jnp.float32(0.7)
    s1, m = fs.temperature_step(s0, entropy, CFG)
    mu = optax.tree_utils.tree_get(s1.alpha_opt, "mu")
    alpha0 = math.exp(float(s0.log_alpha))
    np.testing.assert_allclose(float(mu) / (1 - 0.9), alpha0 * (0.7 - h_bar), rtol=1e-5)
    assert float(m["alpha_loss"]) == pytest.approx(alpha0 * (0.7 - h_bar), rel=1e-5)
    assert float(s1.log_alpha) < float(s0.log_alpha)  # entropy above target: alpha shrinks


# ----------------------------------------------------------------------- learning rates
def _cosine(step, total=CFG.total_updates):
    c = min(step, total) / total
    return CFG.lr_final + (CFG.lr_init - CFG.lr_final) * 0.5 * (1 + math.cos(math.pi * c))


def test_lr_schedule_is_cosine_from_3e_4_to_1_5e_4_over_total_updates():
    sched = fs.lr_schedule(CFG)
    for step in (0, 1, 37, 50, 99, 100, 150):
        assert float(sched(step)) == pytest.approx(_cosine(step), rel=1e-5), step
    assert _cosine(CFG.total_updates // 2) == pytest.approx(2.25e-4)


def test_actor_and_alpha_schedules_advance_only_on_actor_steps(history, update_fn):
    for n, (s, m) in enumerate(history[1:], start=1):  # metrics: lr used by update n - 1
        assert float(m["critic_lr"]) == pytest.approx(_cosine(n - 1), rel=1e-6)
        if m["actor_updated"]:
            assert float(m["actor_lr"]) == pytest.approx(_cosine((n - 1) // 2), rel=1e-6)
    s4 = history[-1][0]
    assert int(s4.critic_opt.count) == 4
    assert int(s4.actor_opt.count) == 2 and int(s4.alpha_opt.count) == 2
    # run to the end of the budget: the critic ends at lr_final, actor and alpha mid-cosine
    s = s4
    for i in range(4, CFG.total_updates):
        s, m = update_fn(s, _batch(jax.random.PRNGKey(100 + i)), jax.random.PRNGKey(i))
    assert float(m["critic_lr"]) == pytest.approx(_cosine(CFG.total_updates - 1), rel=1e-6)
    half = CFG.total_updates // 2
    for opt in (s.actor_opt, s.alpha_opt):
        assert int(opt.count) == half
        assert float(opt.hyperparams["learning_rate"]) == pytest.approx(_cosine(half - 1), rel=1e-6)
    assert float(s.actor_opt.hyperparams["learning_rate"]) == pytest.approx(2.25e-4, rel=0.02)


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
        "alpha_loss",
        "critic_lr",
        "actor_lr",
    ):
        assert m[name].shape == () and m[name].dtype == jnp.float32, name
        assert np.isfinite(float(m[name])), name


def test_loop_reports_actor_metrics_as_means_over_the_actor_steps_alone(history):
    """The actor and temperature step runs on every 2nd update and reports zeros on the others;
    the off-policy loop's chunk mean (`unsparse`) must give the mean over the actor steps, not
    half of it (which would put the logged entropy near its target when it is not)."""
    from jaxrl.train.offpolicy import unsparse
    from jaxrl.train.registry import flashsac_agent

    ms = [m for _, m in history[1:]]  # updates 0..3: actor steps at 0 and 2
    over_all = {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}
    got = unsparse(over_all, fs.ACTOR_METRICS, "actor_updated")
    for k in fs.ACTOR_METRICS:
        want = (float(ms[0][k]) + float(ms[2][k])) / 2
        assert float(ms[1][k]) == 0.0 and want != 0.0, k
        assert float(got[k]) == pytest.approx(want, rel=1e-6), k
    for k in ("critic_loss", "actor_lr", "actor_updated"):  # dense metrics stay plain means
        assert got[k] == over_all[k]
    assert unsparse({**over_all, "actor_updated": 0.0}, fs.ACTOR_METRICS, "actor_updated")["entropy"] == 0.0
    # the registry's agent declares them, so every FlashSAC run's rows use this mean
    agent = flashsac_agent(CFG, type("E", (), {"spec": SPEC})())
    assert agent.sparse_metrics == fs.ACTOR_METRICS and agent.sparse_weight == "actor_updated"


def test_critic_loss_is_the_mean_over_members_and_samples_as_the_official_code(states):
    """Official ``update.py``: ``ce_loss.mean()`` over [members, batch] — not summed over members."""
    s0 = states[0]
    batch = _batch(jax.random.PRNGKey(11))
    next_action = jax.random.uniform(jax.random.PRNGKey(12), (B, A), minval=-1, maxval=1)
    target = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(13), (B, CFG.num_atoms)))
    loss, _ = fs.critic_loss(s0.critic_params, s0, batch, next_action, target, CFG)
    logits, _ = fs._critic(CFG, train=True, half=0, amp=True).apply(
        {"params": s0.critic_params, "batch_stats": s0.critic_stats},
        fs.pair_rows(batch.obs["privileged_state"], batch.next_obs["privileged_state"]),
        fs.pair_rows(batch.action, next_action), mutable=["batch_stats"])
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))  # [E, B, K]
    ce = -(np.asarray(target, np.float64)[None] * logp).sum(-1)
    assert ce.shape == (2, B)
    assert float(loss) == pytest.approx(ce.mean(), rel=1e-5)


def test_bfloat16_update_is_finite_and_near_float32_while_acting_stays_float32(states):
    """`compute_dtype="bfloat16"` (the official use_amp): the same update from the same state,
    batch and key; losses and gradient norms within 1% of float32 (measured: ≤ 0.4%), yet not
    bit-equal (the products really are bfloat16); acting is float32 in both."""
    s0, (s32, m32), _ = states
    cfg16 = CFG.replace(compute_dtype="bfloat16")
    s16, m16 = jax.jit(functools.partial(fs.update, cfg=cfg16), compiler_options=ONCE)(
        s0, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))  # as `history`'s first update
    assert all(np.isfinite(float(v)) for v in m16.values())
    for name in ("critic_loss", "actor_loss", "alpha_loss", "critic_grad_norm", "actor_grad_norm"):
        assert float(m16[name]) == pytest.approx(float(m32[name]), rel=1e-2), name
    assert _max_abs_diff(s16.critic_params, s32.critic_params) > 0
    obs = {"state": jax.random.normal(jax.random.PRNGKey(3), (N, D))}
    for det in (True, False):
        a32, _ = fs.act(s32, obs, jax.random.PRNGKey(4), CFG, deterministic=det)
        a16, _ = fs.act(s32, obs, jax.random.PRNGKey(4), cfg16, deterministic=det)
        np.testing.assert_array_equal(a16, a32)


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


def test_c51_projection_equals_slow_loop_reference_to_1e_6_and_preserves_mass():
    rng = np.random.default_rng(0)
    for k in (11, 101):  # the production grid: 101 atoms on [-5, 5]
        tz = rng.uniform(-7, 7, (32, k)).astype(np.float32)
        tz[0] = np.linspace(-5, 5, k)  # exactly on the grid
        tz[1] = np.linspace(-9, -6, k)  # all below the support
        probs = rng.dirichlet(np.ones(k), 32).astype(np.float32)
        got = np.asarray(distributional.project(jnp.asarray(tz), jnp.asarray(probs), -5.0, 5.0))
        np.testing.assert_allclose(got, _slow_project(tz, probs, -5.0, 5.0), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got[0], probs[0], atol=1e-6)
        # leading axes are kept (the ensemble's [E, B, K])
        batched = distributional.project(jnp.asarray(tz[None]), jnp.asarray(probs[None]), -5.0, 5.0)
        np.testing.assert_allclose(np.asarray(batched)[0], got, atol=1e-7)


def test_c51_projection_in_float64_equals_reference_for_peaked_distributions():
    """In float32 the residual error is the input atoms' rounding (~ulp(5)/Δz); in float64 the
    scatter agrees with the reference far below 1e-6 even for near-one-hot distributions."""
    rng = np.random.default_rng(1)
    k = 101
    tz = rng.uniform(-7, 7, (16, k))
    probs = rng.dirichlet(np.full(k, 0.05), 16)
    with jax.enable_x64(True):
        got = np.asarray(distributional.project(jnp.asarray(tz), jnp.asarray(probs), -5.0, 5.0))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _slow_project(tz, probs, -5.0, 5.0), atol=1e-9, rtol=0)


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


def test_log_std_is_minus_10_plus_6_times_1_plus_tanh_raw_within_minus_10_and_2():
    state = fs.init(jax.random.PRNGKey(0), SPEC, CFG)
    head = state.actor_params["log_std"]
    obs = {"state": jax.random.normal(jax.random.PRNGKey(1), (N, D)) * 10}

    def log_std(kernel_scale, bias):
        h = {"unit_kernel": head["unit_kernel"] * kernel_scale, "bias": jnp.full((A,), bias)}
        st = state.replace(actor_params={**state.actor_params, "log_std": h})
        return np.asarray(fs.act(st, obs, jax.random.PRNGKey(0), CFG)[1]["log_std"])

    for raw in (0.0, 0.5, -0.9):  # constant raw output: the kernel zeroed, raw = the bias
        np.testing.assert_allclose(log_std(0.0, raw), -10 + 6 * (1 + math.tanh(raw)), atol=1e-5)
    np.testing.assert_allclose(log_std(1.0, 100.0), 2.0, atol=1e-6)
    np.testing.assert_allclose(log_std(1.0, -100.0), -10.0, atol=1e-6)
    ls = log_std(1.0, 0.0)
    assert ls.min() > -10.0 and ls.max() < 2.0 and ls.std() > 0  # depends on the observation


# ----------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw, field",
    [
        ({"batch_size": 4096, "buffer_size": 1000, "min_buffer": 10}, "batch_size"),
        ({"gamma": -0.1}, "gamma"),
        ({"num_atoms": 0}, "num_atoms"),
        ({"tau": 0.0}, "tau"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
        ({"env_overrides": (("push_config.enable", False, 1),)}, "env_overrides"),
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
    # every Playground humanoid task, joystick or not, and no quadruped: the robot read from the
    # package Playground files the task's class in (locomotion/<robot>/...)
    from mujoco_playground._src import locomotion

    humanoid_robots = {"apollo", "berkeley_humanoid", "g1", "h1", "op3", "t1"}
    for name, cls in locomotion._envs.items():
        robot = getattr(cls, "func", cls).__module__.split(".")[3]
        assert fs.FlashSACConfig.paper(name).gamma == (0.97 if robot in humanoid_robots else 0.99), (name, robot)
    assert fs.FlashSACConfig.paper("CartpoleBalance").compute_dtype == "bfloat16"  # use_amp
    assert fs.FlashSACConfig.cpu().compute_dtype == "float32"
    cpu = fs.FlashSACConfig.cpu()
    assert cpu.num_envs <= 64 and cpu.buffer_size <= 200_000
    hash(cpu)  # static under jit
    # the headline numbers' env: pushes off on the G1/T1 joystick tasks, nothing changed elsewhere
    t1 = fs.FlashSACConfig.paper("T1JoystickFlatTerrain")
    assert t1.env_overrides == (("push_config.enable", False),)
    assert fs.FlashSACConfig.paper("G1JoystickRoughTerrain").env_overrides == t1.env_overrides
    assert fs.FlashSACConfig.paper("CartpoleBalance").env_overrides == ()
    assert fs.FlashSACConfig.paper("H1JoystickGaitTracking").env_overrides == ()  # no push_config
    from jaxrl.io import runfolder  # a run's config.json (lists) gives the same config back

    assert runfolder.config_from_dict(fs.FlashSACConfig, json.loads(json.dumps(runfolder.config_to_dict(t1)))) == t1
    nested = fs.FlashSACConfig(env_overrides=[["a.b", [[1, 2], [3, 4]]]])  # as JSON gives it back
    assert nested.env_overrides == (("a.b", ((1, 2), (3, 4))),)
    hash(nested)
    with pytest.raises(TypeError, match="is a dict; give each entry its own dotted key"):
        fs.FlashSACConfig(env_overrides=(("push_config", {"enable": False}),))


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
    # bfloat16 replay: acting and the export see observations rounded as the updates read them
    bf16 = CFG.replace(replay_obs_dtype="bfloat16")
    ops = fs.policy_layers(s2, bf16)
    assert ops[0] == {"op": "round_bf16"} and fs.policy_layers(s2, CFG)[0]["op"] == "affine"
    rounded = {"state": obs["state"].astype(jnp.bfloat16).astype(jnp.float32)}
    want, _ = fs.act(s2, obs, None, bf16, deterministic=True)
    np.testing.assert_array_equal(np.asarray(want), np.asarray(fs.act(s2, rounded, None, CFG, deterministic=True)[0]))
    assert not np.array_equal(np.asarray(want), np.asarray(fs.act(s2, obs, None, CFG, deterministic=True)[0]))
    np.testing.assert_allclose(_interpret(ops, np.asarray(obs["state"])), np.asarray(want), atol=1e-5)


def test_an_eager_init_is_one_compiled_program_and_equals_the_traced_init():
    """`jaxrl.algos.compiled_init`: called from Python, ``init`` compiles ONE program (op by op it
    was ~40 on this config, 0.3-2 s each on a CPU), none the second time; inside a trace it is
    inlined, and both give the same agent (to float tolerance: the eager program compiles with
    the quick options)."""
    from jax import monitoring

    from envs._runtime import run_once_options

    cfg = CFG.replace(actor_width=4)  # a config no other test builds: a fresh program
    run_once_options()  # its one-off option probe is not the init's compile
    k3, k4 = jax.random.PRNGKey(3), jax.random.PRNGKey(4)  # nor are the keys' programs
    compiles = []

    def listen(event, secs, **kw):
        if event.endswith("backend_compile_duration"):  # also fired for a program the cache served
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(listen)
    try:
        eager = fs.init(k3, SPEC, cfg)
        first = len(compiles)
        again = fs.init(k4, SPEC, cfg)
        second = len(compiles) - first
    finally:
        monitoring.unregister_event_duration_listener(listen)
    traced = jax.jit(lambda k: fs.init(k, SPEC, cfg))(k3)
    assert first == 1 and second == 0, (first, second)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert _max_abs_diff(eager.actor_params, again.actor_params) > 0  # the key is an argument
