"""PPO pieces in isolation: GAE, advantage and observation normalisation, adaptive-KL schedule,
σ(s) and its gradient path, export ops, config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from envs._runtime import run_once_options
from envs.specs import ArraySpec, EnvSpec
from jaxrl.algos import ppo
from jaxrl.data import normalizer
from jaxrl.io import runfolder

ONCE = run_once_options()  # programs a test runs a few times: the quick compile (CPU)

D, P, A = 5, 7, 3


def _spec():
    obs = {"state": ArraySpec((D,)), "privileged_state": ArraySpec((P,))}
    return EnvSpec("fake", obs, ArraySpec((A,), low=-1.0, high=1.0), 4, 10, 0.01, True)


@pytest.fixture(scope="module")
def cfg():
    return ppo.PPOConfig.cpu(num_envs=4, unroll_length=6, num_minibatches=2, hidden=(16, 8))


@pytest.fixture(scope="module")
def trained_stats_state(cfg):
    """A state whose normaliser has non-trivial statistics (so the affine op matters)."""
    state = ppo.init(jax.random.PRNGKey(0), _spec(), cfg)
    rng = np.random.default_rng(0)
    stats = {
        "state": normalizer.update(state.obs_stats["state"], rng.normal(2.0, 3.0, (50, D)).astype(np.float32)),
        "privileged_state": state.obs_stats["privileged_state"],
    }
    return state.replace(obs_stats=stats)


# ----------------------------------------------------------------------------- GAE
def _gae_reference(r, v, nv, term, trunc, gamma, lam):
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if term[t, n]:
                next_v, cont = 0.0, 0.0
            elif trunc[t, n]:
                next_v, cont = nv[t, n], 0.0  # bootstrap V(final_obs), cut the trace
            else:
                next_v, cont = nv[t, n], 1.0
            delta = r[t, n] + gamma * next_v - v[t, n]
            running = delta + gamma * lam * cont * running
            adv[t, n] = running
    return adv, adv + v


def test_gae_matches_python_loop_with_terminated_and_truncated():
    rng = np.random.default_rng(0)
    T, N = 12, 5
    r, v, nv = (rng.normal(size=(T, N)).astype(np.float32) for _ in range(3))
    term = rng.random((T, N)) < 0.15
    trunc = (rng.random((T, N)) < 0.15) & ~term
    term[3, 0], trunc[7, 0] = True, True  # both cases surely present
    adv, ret = ppo.gae(r, v, nv, term, trunc, 0.97, 0.9)
    ref_adv, ref_ret = _gae_reference(r, v, nv, term, trunc, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_truncation_bootstraps_final_value_and_termination_does_not():
    r = np.zeros((1, 2), np.float32)
    v = np.zeros((1, 2), np.float32)
    nv = np.full((1, 2), 10.0, np.float32)
    adv, _ = ppo.gae(r, v, nv, np.array([[True, False]]), np.array([[False, True]]), 0.5, 1.0)
    np.testing.assert_allclose(adv, [[0.0, 5.0]])


def test_advantages_are_standardised_once_over_the_whole_rollout(cfg):
    """rollout_batch: GAE, then (A − mean) / (std + 1e-8) over all T·N steps (torch's unbiased
    std, as rsl_rl), returns from the raw advantages, flattened env-major (each env's steps
    together, so envs split over devices stay contiguous); checked against numpy."""
    rng = np.random.default_rng(5)
    T, N = cfg.unroll_length, cfg.num_envs
    r = rng.normal(1.0, 2.0, (T, N)).astype(np.float32)
    r[:, 0] += 5.0  # one env far better than the others: per-env or per-minibatch stats would differ
    v, nv = (rng.normal(size=(T, N)).astype(np.float32) for _ in range(2))
    term = np.zeros((T, N), bool)
    trunc = np.zeros((T, N), bool)
    term[2, 1], trunc[4, 2] = True, True
    zeros = np.zeros((T, N, A), np.float32)
    obs = {"state": np.zeros((T, N, D), np.float32), "privileged_state": np.zeros((T, N, P), np.float32)}
    rollout = ppo.Rollout(obs, zeros, np.zeros((T, N), np.float32), zeros, zeros + 1.0, v, nv, r, term, trunc)
    batch = ppo.rollout_batch(rollout, cfg)
    ref_adv, ref_ret = _gae_reference(r, v, nv, term, trunc, cfg.gamma, cfg.gae_lambda)
    want = (ref_adv - ref_adv.mean()) / (ref_adv.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(batch["advantage"], want.T.reshape(-1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch["return"], ref_ret.T.reshape(-1), rtol=1e-4, atol=1e-4)
    assert batch["advantage"].shape == (T * N,) and batch["obs"]["state"].shape == (T * N, D)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_minibatches_partition_the_batch_with_an_equal_share_of_every_shard(shards):
    """Every row lands in exactly one minibatch of an epoch; with S shards (one per device) each
    minibatch takes n/(S·M) rows from each shard's contiguous block, so no row crosses devices;
    one shard is a single shuffle of the whole batch; bad sizes are refused."""
    n, m = 48, 3
    mbs = np.asarray(ppo.minibatches({"i": jnp.arange(n)}, jax.random.PRNGKey(2), m, shards)["i"])
    assert mbs.shape == (m, n // m)
    assert sorted(mbs.reshape(-1).tolist()) == list(range(n))
    for mb in mbs:
        per_shard = np.bincount(mb // (n // shards), minlength=shards)
        assert per_shard.tolist() == [n // (shards * m)] * shards
        # the rows of shard s sit in the s-th slice of the minibatch (device order kept)
        blocks = mb.reshape(shards, -1) // (n // shards)
        assert (blocks == np.arange(shards)[:, None]).all()
    if shards == 1:
        assert (mbs.reshape(-1) != np.arange(n)).any()  # shuffled
    with pytest.raises(ValueError, match="cannot be cut into"):
        ppo.minibatches({"i": jnp.arange(n)}, jax.random.PRNGKey(2), 5, shards)


def test_paper_epochs_reuse_one_partition_into_minibatches_as_rsl_rl():
    """rsl_rl's generator draws one permutation before its epoch loop: every epoch the same
    minibatches.  The paper preset does so; the cpu preset reshuffles each epoch."""
    def partitions(cfg):
        keys = ppo.epoch_keys(jax.random.PRNGKey(5), cfg)
        return [np.asarray(ppo.minibatches({"i": jnp.arange(48)}, k, 4)["i"]) for k in keys]

    paper, cpu = ppo.PPOConfig.paper(), ppo.PPOConfig.cpu()
    assert not paper.reshuffle_each_epoch and cpu.reshuffle_each_epoch
    same = partitions(paper)
    assert len(same) == paper.num_epochs and all((p == same[0]).all() for p in same)
    fresh = partitions(cpu)
    assert len(fresh) == cpu.num_epochs and not (fresh[0] == fresh[1]).all()
    assert (same[0] == fresh[0]).all()  # the first epoch's partition is the same either way


@pytest.mark.parametrize("n", [1000, 8192, 3])
def test_permutation_is_numpys_stable_argsort_round_by_round_and_uniform(n):
    """`ppo.permutation` equals numpy's stable argsort of each round's random high bits applied
    round after round (ties keep the previous order); over 20,000 keys every value lands in every
    position about equally often."""
    key, bits = jax.random.PRNGKey(7), max(1, (n - 1).bit_length())
    want = np.arange(n)
    for k in jax.random.split(key, -(-(2 * bits + 10) // (32 - bits))):
        high = np.asarray(jax.random.bits(k, (n,), jnp.uint32)) >> bits  # per position
        want = want[np.argsort(high, kind="stable")]
    np.testing.assert_array_equal(np.asarray(ppo.permutation(key, n)), want)
    perms = np.asarray(jax.vmap(lambda k: ppo.permutation(k, 5))(jax.random.split(key, 20_000)))
    assert (np.sort(perms, axis=1) == np.arange(5)).all()
    counts = np.stack([np.bincount(perms[:, pos], minlength=5) for pos in range(5)])  # [position, value]
    assert np.abs(counts - 4000).max() < 5 * np.sqrt(20_000 * 0.2 * 0.8), counts  # 5σ of a binomial


def test_loss_uses_minibatch_advantages_as_given_not_restandardised(cfg):
    """At ratio 1 (π = π_old) the clipped surrogate is −mean(A) of the minibatch: a minibatch whose
    advantages average 3 must give policy_loss −3 (per-minibatch standardisation would give 0)."""
    state = ppo.init(jax.random.PRNGKey(6), _spec(), cfg)
    B = 8
    rng = np.random.default_rng(6)
    obs = {"state": rng.normal(size=(B, D)).astype(np.float32),
           "privileged_state": rng.normal(size=(B, P)).astype(np.float32)}
    _, ex = ppo.act(state, obs, jax.random.PRNGKey(7), cfg)
    adv = jnp.asarray(3.0 + rng.normal(size=B), jnp.float32)
    mb = {"obs": obs, "raw_action": ex["raw_action"], "log_prob": ex["log_prob"], "mean": ex["mean"],
          "std": ex["std"], "value": ex["value"], "advantage": adv, "return": ex["value"]}
    _, m = ppo.loss_fn(state.params, state, mb, cfg)
    np.testing.assert_allclose(float(m["policy_loss"]), -float(adv.mean()), rtol=1e-5)


# ----------------------------------------------------------------------------- normaliser
def test_observation_normaliser_is_rsl_rl_form_without_clipping(cfg, trained_stats_state):
    """The actor sees (x − mean) / (std + 1e-2), unclipped, even 40σ away; the export's affine op
    is the same map."""
    st = trained_stats_state.obs_stats["state"]
    x = np.random.default_rng(7).normal(2.0, 3.0, (16, D)).astype(np.float32)
    x[0] = 2.0 + 120.0  # ≈ 40σ: a clip at ±5 would show
    want = (x - np.asarray(st.mean, np.float64)) / (np.sqrt(np.asarray(st.var, np.float64)) + 1e-2)
    got = ppo._norm(trained_stats_state, {"state": x}, "state", cfg)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(got)).max() > 30.0
    affine = ppo.policy_layers(trained_stats_state, cfg)[0]
    assert affine["op"] == "affine"
    np.testing.assert_allclose(x * affine["scale"] + affine["shift"], want, rtol=1e-5, atol=1e-4)


def test_observe_updates_statistics_each_step_and_update_leaves_them(cfg):
    """observe(state, one step's obs [N, ...]) merges that step into both normalisers; after T
    steps they hold numpy's mean / variance of all T·N observations; update() does not touch them."""
    state = ppo.init(jax.random.PRNGKey(8), _spec(), cfg)
    T, N = cfg.unroll_length, cfg.num_envs
    rng = np.random.default_rng(8)
    obs = {"state": rng.normal(-1.0, 4.0, (T, N, D)).astype(np.float32),
           "privileged_state": rng.normal(3.0, 0.5, (T, N, P)).astype(np.float32)}
    observe = jax.jit(lambda s, o: ppo.observe(s, o, cfg))
    for t in range(T):
        state = observe(state, {k: v[t] for k, v in obs.items()})
    for k, x in obs.items():
        s = state.obs_stats[k]
        flat = x.reshape(T * N, -1).astype(np.float64)
        assert float(s.count) == T * N
        np.testing.assert_allclose(s.mean, flat.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.var, flat.var(0), rtol=1e-4)
    _, ex = ppo.act(state, obs, jax.random.PRNGKey(9), cfg)
    rollout = ppo.Rollout(obs, ex["raw_action"], ex["log_prob"], ex["mean"], ex["std"], ex["value"],
                          ex["value"], jnp.ones((T, N)), jnp.zeros((T, N), bool), jnp.zeros((T, N), bool))
    new, _ = ppo.update(state, rollout, jax.random.PRNGKey(10), cfg)
    for a, b in zip(jax.tree.leaves(new.obs_stats), jax.tree.leaves(state.obs_stats)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    off = cfg.replace(normalize_obs=False)
    assert ppo.observe(state, {k: v[0] for k, v in obs.items()}, off) is state


# ----------------------------------------------------------------------------- adaptive KL
def test_adaptive_kl_lowers_lr_when_kl_high_and_raises_when_low(cfg):
    lr = jnp.asarray(1e-3)
    k = cfg.desired_kl
    assert float(ppo.adapt_lr(lr, 2.5 * k, cfg)) == pytest.approx(1e-3 / 1.5)
    assert float(ppo.adapt_lr(lr, 0.4 * k, cfg)) == pytest.approx(1e-3 * 1.5)
    assert float(ppo.adapt_lr(lr, 1.0 * k, cfg)) == pytest.approx(1e-3)
    # rsl_rl's guard: a KL of exactly 0 (the policy has not moved yet) does not raise the rate
    assert float(ppo.adapt_lr(lr, 0.0, cfg)) == pytest.approx(1e-3)
    assert float(ppo.adapt_lr(lr, 1e-9, cfg)) == pytest.approx(1e-3 * 1.5)


def test_adaptive_kl_is_bounded_and_can_be_switched_off(cfg):
    assert float(ppo.adapt_lr(jnp.asarray(cfg.lr_max), 1e-6, cfg)) == pytest.approx(cfg.lr_max)
    assert float(ppo.adapt_lr(jnp.asarray(cfg.lr_min), 1.0, cfg)) == pytest.approx(cfg.lr_min)
    fixed = dataclasses.replace(cfg, desired_kl=None)
    assert float(ppo.adapt_lr(jnp.asarray(1e-3), 1.0, fixed)) == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- σ(s)
def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def test_state_dependent_std_matches_direct_formula(cfg, trained_stats_state):
    state = trained_stats_state
    p = jax.tree.map(np.asarray, state.params["actor"]["params"])
    # Make log_std non-uniform so that a wrong axis would show.
    log_std = np.random.default_rng(1).normal(-1.0, 0.5, p["log_std"].shape).astype(np.float32)
    params = jax.tree.map(lambda x: x, state.params)
    params["actor"]["params"]["log_std"] = jnp.asarray(log_std)
    state = state.replace(params=params)
    obs = {"state": np.random.default_rng(2).normal(size=(6, D)).astype(np.float32),
           "privileged_state": np.zeros((6, P), np.float32)}
    _, std = ppo.policy(state.params, state, obs, cfg)

    st = state.obs_stats["state"]
    x = (obs["state"] - np.asarray(st.mean)) / (np.sqrt(np.asarray(st.var)) + 1e-2)
    phi = _elu(_elu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"]) @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
    want = np.zeros((6, A))
    for b in range(6):
        for a in range(A):
            want[b, a] = np.sqrt(sum(phi[b, j] ** 2 * np.exp(2 * log_std[j, a]) for j in range(phi.shape[1])) + 1e-6)
    np.testing.assert_allclose(std, want, rtol=1e-4)


def _phi(p, x):
    """The actor's last hidden layer for normalised input x (the cfg fixture's (16, 8) ELU trunk)."""
    h = _elu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
    return _elu(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])


def test_initial_log_std_is_zero_so_sigma_is_the_norm_of_the_real_features(cfg):
    """ppo.init: every log_std entry is log 1 = 0 (exploration weights of std 1), hence at init
    σ_a(s) = sqrt(Σ_j φ_j(s)² + 1e-6) with φ the real trunk's features, the same for every a."""
    state = ppo.init(jax.random.PRNGKey(11), _spec(), cfg)
    p = jax.tree.map(np.asarray, state.params["actor"]["params"])
    assert p["log_std"].shape == (cfg.hidden[-1], A)
    np.testing.assert_array_equal(p["log_std"], 0.0)
    np.testing.assert_array_equal(np.exp(p["log_std"]), 1.0)
    x = np.random.default_rng(12).normal(size=(6, D)).astype(np.float32)
    _, std = ppo.policy(state.params, state, {"state": x}, cfg)
    phi = _phi(p, x / (1.0 + 1e-2))  # fresh normaliser: mean 0, std 1
    want = np.sqrt((phi**2).sum(-1) + 1e-6)
    np.testing.assert_allclose(std, np.repeat(want[:, None], A, 1), rtol=1e-4)
    assert np.all(want > 0.1)  # real, non-trivial features


def test_trunk_receives_gradient_from_the_std_path(cfg):
    """No stop-gradient on φ: a loss of σ(s) alone has a non-zero gradient on every trunk layer
    (and on log_std), none on the mean head."""
    state = ppo.init(jax.random.PRNGKey(13), _spec(), cfg)
    obs = {"state": jnp.asarray(np.random.default_rng(14).normal(size=(32, D)), jnp.float32)}

    def std_only(actor_params):
        _, std = ppo.policy({**state.params, "actor": actor_params}, state, obs, cfg)
        return jnp.sum(jnp.log(std))  # the entropy bonus's dependence on the parameters

    g = jax.grad(std_only)(state.params["actor"])["params"]
    for name in ("hidden_0", "hidden_1"):
        assert float(jnp.abs(g[name]["kernel"]).max()) > 1e-6, name
    assert float(jnp.abs(g["log_std"]).max()) > 1e-6
    assert float(jnp.abs(g["mean"]["kernel"]).max()) == 0.0


# ----------------------------------------------------------------------------- export
def _interpret(ops, x):
    """The shipped numpy-only runtime (itself checked against ONNX and jnp in tests/io)."""
    from jaxrl.io.numpy_policy import forward

    return forward(ops, np.asarray(x, np.float32))


def test_policy_layers_reproduce_deterministic_act(cfg, trained_stats_state):
    state = trained_stats_state
    # Scale the mean head up so that the final clip to [-1, 1] is exercised too.
    params = jax.tree.map(lambda x: x, state.params)
    params["actor"]["params"]["mean"]["kernel"] = params["actor"]["params"]["mean"]["kernel"] * 300.0
    state = state.replace(params=params)
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 30.0, (32, D)).astype(np.float32)  # far out: no obs clip may appear
    obs = {"state": x, "privileged_state": np.zeros((32, P), np.float32)}
    want, extras = ppo.act(state, obs, jax.random.PRNGKey(0), cfg, deterministic=True)
    ops = ppo.policy_layers(state, cfg)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for op in ops for v in op.values() if hasattr(v, "dtype"))
    got = _interpret(ops, x)
    assert [op["op"] for op in ops].count("clip") == 1  # only the action clip, none on observations
    assert extras == {}
    assert np.abs(want).max() == pytest.approx(1.0)  # the clip matters in this check
    np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- act / update
def test_act_stochastic_extras_and_update_runs(cfg):
    spec = _spec()
    state = ppo.init(jax.random.PRNGKey(1), spec, cfg)
    T, N = cfg.unroll_length, cfg.num_envs
    rng = np.random.default_rng(4)
    obs = {"state": rng.normal(size=(T, N, D)).astype(np.float32),
           "privileged_state": rng.normal(size=(T, N, P)).astype(np.float32)}
    actions, ex = ppo.act(state, obs, jax.random.PRNGKey(2), cfg)
    assert actions.shape == (T, N, A) and float(jnp.abs(actions).max()) <= 1.0
    np.testing.assert_allclose(ex["log_prob"], ppo.gaussian_log_prob(ex["raw_action"], ex["mean"], ex["std"]))
    rollout = ppo.Rollout(
        obs=obs, raw_action=ex["raw_action"], log_prob=ex["log_prob"], mean=ex["mean"],
        std=ex["std"], value=ex["value"], next_value=ex["value"],
        reward=jnp.asarray(rng.normal(size=(T, N)), jnp.float32),
        terminated=jnp.zeros((T, N), bool), truncated=jnp.zeros((T, N), bool),
    )
    new, metrics = jax.jit(lambda s, r, k: ppo.update(s, r, k, cfg), compiler_options=ONCE)(
        state, rollout, jax.random.PRNGKey(3))
    assert int(new.updates) == cfg.num_epochs * cfg.num_minibatches
    assert float(new.obs_stats["state"].count) == 0  # statistics are `observe`'s job, not update's
    assert cfg.lr_min <= float(metrics["lr"]) <= cfg.lr_max
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "lr"):
        assert np.isfinite(float(metrics[k])), k


def _np_clip(tree, max_norm):
    """Reference clip in float64: scale every leaf of ``tree`` by min(1, max_norm / ‖tree‖)."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    norm = np.sqrt(sum(float((x ** 2).sum()) for x in leaves))
    return jax.tree.map(lambda x: np.asarray(x, np.float64) * min(1.0, max_norm / norm), tree), norm


@pytest.mark.parametrize("mode", ["separate", "global"])
def test_gradient_clip_per_network_as_the_rsl_rl_fork_or_over_both(cfg, mode):
    """"separate" (the cpu preset's): the actor's gradient (norm ~25) is scaled to norm 1 and the
    critic's (norm 0.5) is left alone; "global" (the default, OmniReset's rsl_rl fork: one
    ``clip_grad_norm_`` over all parameters) scales both by one factor.  The optimiser `update` steps with applies exactly that clip before Adam."""
    params = ppo.init(jax.random.PRNGKey(0), _spec(), cfg).params
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    grads = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), params)
    for net, target in (("actor", 25.0), ("critic", 0.5)):
        norm = float(optax.tree.norm(grads[net]))
        grads[net] = jax.tree.map(lambda g, f=target / norm: g * f, grads[net])
    c = cfg.replace(grad_clip=mode)
    got = ppo.clip_gradients(grads, c)
    if mode == "separate":
        want = {net: _np_clip(grads[net], c.max_grad_norm)[0] for net in grads}
        assert float(optax.tree.norm(got["actor"])) == pytest.approx(1.0, rel=1e-5)
        assert float(optax.tree.norm(got["critic"])) == pytest.approx(0.5, rel=1e-5)
    else:
        want, norm = _np_clip(grads, c.max_grad_norm)
        assert norm == pytest.approx(np.hypot(25.0, 0.5), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), got, want)
    # Two optimiser steps, the second with gradients 50x smaller (under the clip): Adam's first step
    # is scale free, its second weighs the two clipped gradients, so only the right clip matches.
    opt, adam = ppo._optimizer(c), optax.scale_by_adam()
    state, ref_state = opt.init(params), adam.init(params)
    for g in (grads, jax.tree.map(lambda x: x / 50, grads)):
        step, state = opt.update(g, state, params)
        ref, ref_state = adam.update(jax.tree.map(jnp.asarray, ppo.clip_gradients(g, c)), ref_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), step, ref)
    other = ppo.clip_gradients(grads, c.replace(grad_clip="global" if mode == "separate" else "separate"))
    _, wrong_state = adam.update(jax.tree.map(jnp.asarray, other), adam.init(params))
    step_wrong, _ = adam.update(jax.tree.map(lambda x: jnp.asarray(x) / 50, grads), wrong_state)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(step), jax.tree.leaves(step_wrong))) > 1e-2
    # the optimiser state keeps the layout of optax's global clip + Adam: old checkpoints restore
    old = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.scale_by_adam()).init(params)
    assert jax.tree.structure(opt.init(params)) == jax.tree.structure(old)


def test_runs_recorded_before_grad_clip_resume_with_the_global_clip():
    """A run's config.json from before ``grad_clip`` / ``layer_init`` existed rebuilds with what it
    trained with (one global norm; flax's init).  The paper preset is the fork's (one global clip,
    PyTorch's init); the cpu preset keeps the settings its CPU results were measured with."""
    record = runfolder.config_to_dict(ppo.PPOConfig.paper())
    for field in ("grad_clip", "layer_init", "reshuffle_each_epoch", "random_episode_start"):
        record.pop(field)
    old = runfolder.config_from_dict(ppo.PPOConfig, record)
    assert (old.grad_clip, old.layer_init) == ("global", "lecun")
    assert (ppo.PPOConfig.paper().grad_clip, ppo.PPOConfig.paper().layer_init) == ("global", "torch")
    assert (ppo.PPOConfig.cpu().grad_clip, ppo.PPOConfig.cpu().layer_init) == ("separate", "lecun")
    assert old.reshuffle_each_epoch and not old.random_episode_start


def test_paper_init_is_pytorchs_linear_default_so_exploration_starts_as_the_official_ppo():
    """rsl_rl keeps nn.Linear's default init (kernel and bias U(±1/√fan_in)) on every layer, and
    at log_std 0 the starting σ(s) is ‖φ(s)‖: at the paper's widths on unit-normal inputs it is
    ≈ 0.75 (flax's lecun trunk: ≈ 3.7, so most sampled actions would clip at ±1)."""
    cfg = ppo.PPOConfig.paper()
    state = ppo.init(jax.random.PRNGKey(0), _spec(), cfg)
    for net in ("actor", "critic"):
        p = state.params[net]["params"]
        for name, layer in p.items():
            if name == "log_std":
                continue
            fan_in = layer["kernel"].shape[0]
            bound = 1.0 / np.sqrt(fan_in)
            for leaf in (layer["kernel"], layer["bias"]):
                assert np.abs(np.asarray(leaf)).max() <= bound, (net, name)
            kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
            if kernel.size >= 1000:  # enough draws to see the uniform law's spread
                assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05), (net, name)
            if bias.size >= 64:
                assert np.abs(bias).max() > 0.9 * bound and bias.std() > 0.4 * bound, (net, name)
    x = np.random.default_rng(0).normal(size=(256, D)).astype(np.float32)
    _, std = ppo.policy(state.params, state, {"state": x}, cfg)
    assert 0.4 < float(np.mean(std)) < 1.2
    lecun = ppo.init(jax.random.PRNGKey(0), _spec(), cfg.replace(layer_init="lecun"))
    assert float(np.mean(ppo.policy(lecun.params, lecun, {"state": x}, cfg)[1])) > 2.0


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_envs": 10, "unroll_length": 3, "num_minibatches": 4}, "num_minibatches"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"clip_eps": 0.0}, "clip_eps"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"desired_kl": 0.0}, "desired_kl"),
        ({"learning_rate": 1.0}, "lr_max"),
        ({"hidden": ()}, "hidden"),
        ({"activation": "gelu"}, "activation"),
        ({"obs_norm_eps": 0.0}, "obs_norm_eps"),
        ({"grad_clip": "both"}, "grad_clip"),
        ({"layer_init": "xavier"}, "layer_init must be .torch. or .lecun."),
    ],
)
def test_invalid_config_raises_clear_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        ppo.PPOConfig(**overrides)


def test_presets_are_valid_and_paper_matches_section_3():
    p = ppo.PPOConfig.paper()
    assert (p.unroll_length, p.num_epochs, p.num_minibatches, p.clip_eps) == (32, 5, 4, 0.2)
    assert (p.value_coef, p.entropy_coef, p.gamma, p.gae_lambda) == (1.0, 0.006, 0.99, 0.95)
    assert (p.max_grad_norm, p.learning_rate, p.desired_kl) == (1.0, 1e-4, 0.01)
    assert p.hidden == (512, 256, 128, 64) and p.activation == "elu" and p.normalize_obs
    assert (p.init_log_std, p.obs_norm_eps, p.normalize_advantages) == (0.0, 1e-2, True)
    assert ppo.PPOConfig.cpu().init_log_std == 0.0
    assert ppo.PPOConfig.cpu().num_envs < p.num_envs


def test_init_rejects_missing_observation_key(cfg):
    bad = dataclasses.replace(cfg, critic_obs_key="nope")
    with pytest.raises(ValueError, match="nope"):
        ppo.init(jax.random.PRNGKey(0), _spec(), bad)
