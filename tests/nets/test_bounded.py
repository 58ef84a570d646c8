"""Norm-bounded blocks: projection targets, BatchNorm statistics, identification by name."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs._runtime import run_once_options
from jaxrl.nets import bounded
from jaxrl.nets.heads import TanhGaussianActor, critic_ensemble

# Eager Flax inits, projections and normal draws compile one XLA program per op and shape
# (0.3-2 s each on a CPU): here each is one program, compiled the quick way (it runs once).
ONCE = run_once_options()
project = jax.jit(bounded.project, compiler_options=ONCE)


def _init(module, *args):
    return jax.jit(module.init, compiler_options=ONCE)(*args)


@pytest.fixture(scope="module")
def trunk_vars():
    trunk = bounded.BoundedTrunk(width=8, num_blocks=2, train=True, expansion=2)
    return trunk, _init(trunk, jax.random.PRNGKey(0), jnp.ones((4, 3)))


@functools.partial(jax.jit, compiler_options=ONCE)
def _perturbed(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x * 3.0 + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )


def _assert_bounded(params):
    kinds = bounded.bounded_leaves(params)
    assert kinds, "no bounded module found"

    def node(path):
        out = params
        for k in path.split("/") if path else []:
            out = out[k]
        return out

    for path, kind in kinds.items():
        p = node(path)
        if kind == "unit":
            norms = np.linalg.norm(np.asarray(p["unit_kernel"]), axis=-2)
            np.testing.assert_allclose(norms, 1.0, atol=1e-5, err_msg=path)
        elif kind == "bn":
            d = p["bn_scale"].shape[-1]
            sq = np.sum(np.square(p["bn_scale"]), -1) + np.sum(np.square(p["bn_bias"]), -1)
            np.testing.assert_allclose(np.sqrt(sq), np.sqrt(d), rtol=1e-5, err_msg=path)
        else:
            d = p["rms_scale"].shape[-1]
            norms = np.linalg.norm(np.asarray(p["rms_scale"]), axis=-1)
            np.testing.assert_allclose(norms, np.sqrt(d), rtol=1e-5, err_msg=path)
    return kinds


def test_project_bounds_every_unit_kernel_bn_and_rmsnorm_of_a_trunk(trunk_vars):
    _, variables = trunk_vars
    params = project(_perturbed(variables["params"], jax.random.PRNGKey(1)))
    kinds = _assert_bounded(params)
    # input BN + embed + 2 blocks x (2 unit + 2 BN) + RMSNorm
    assert sorted(kinds.values()).count("unit") == 5
    assert sorted(kinds.values()).count("bn") == 5
    assert list(kinds.values()).count("rms") == 1


def test_project_handles_ensemble_leading_axis_per_member():
    critic = critic_ensemble(2)(num_atoms=5, width=8, num_blocks=1, train=False, expansion=2)
    variables = _init(critic, jax.random.PRNGKey(0), jnp.ones((3, 4)), jnp.ones((3, 2)))
    params = project(_perturbed(variables["params"], jax.random.PRNGKey(2)))
    kinds = _assert_bounded(params)
    k = params["trunk"]["embed"]["unit_kernel"]
    assert k.shape == (2, 6, 8)  # per member, normalised over its own `in` axis
    assert kinds["logits"] == "unit" and params["logits"]["unit_kernel"].shape == (2, 8, 5)


def test_project_leaves_plain_dense_params_and_head_biases_untouched():
    params = {
        "head": {"kernel": jnp.full((3, 2), 5.0), "bias": jnp.full((2,), 7.0)},
        "unit_head": {"unit_kernel": jnp.full((3, 2), 5.0), "bias": jnp.full((2,), 7.0)},
    }
    out = bounded.project(params)
    np.testing.assert_array_equal(out["head"]["kernel"], params["head"]["kernel"])
    np.testing.assert_array_equal(out["head"]["bias"], params["head"]["bias"])
    np.testing.assert_array_equal(out["unit_head"]["bias"], params["unit_head"]["bias"])
    np.testing.assert_allclose(out["unit_head"]["unit_kernel"], 1 / np.sqrt(3), rtol=1e-6)


@pytest.mark.parametrize("which", ["actor", "critic"])
def test_heads_are_orthogonal_unit_kernels_with_a_free_zero_init_bias(which):
    """Actor mean / log-std and critic logits: orthogonal init (orthonormal columns, in >= out),
    bias zero at init and left alone by `project`, the kernel re-projected."""
    if which == "actor":
        module = TanhGaussianActor(action_size=3, width=8, num_blocks=1, train=False, expansion=2)
        params = _init(module, jax.random.PRNGKey(0), jnp.ones((2, 5)))["params"]
        heads = ("mean", "log_std")
    else:
        module = critic_ensemble(2)(num_atoms=7, width=8, num_blocks=1, train=False, expansion=2)
        params = _init(module, jax.random.PRNGKey(0), jnp.ones((2, 4)), jnp.ones((2, 1)))["params"]
        heads = ("logits",)
    perturbed = project(_perturbed(params, jax.random.PRNGKey(3)))
    for head in heads:
        k = np.asarray(params[head]["unit_kernel"]).reshape(-1, 8, params[head]["bias"].shape[-1])
        for member in k:
            np.testing.assert_allclose(member.T @ member, np.eye(member.shape[1]), atol=1e-5)
        np.testing.assert_array_equal(params[head]["bias"], 0.0)
        want_bias = _perturbed(params, jax.random.PRNGKey(3))[head]["bias"]
        np.testing.assert_array_equal(perturbed[head]["bias"], want_bias)
        norms = np.linalg.norm(np.asarray(perturbed[head]["unit_kernel"]), axis=-2)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_project_refuses_batchnorm_missing_its_bias():
    with pytest.raises(ValueError, match="bn_bias"):
        bounded.project({"bn": {"bn_scale": jnp.ones(3)}})


def test_batchnorm_train_mode_updates_running_stats_with_flax_momentum_and_unbiased_variance():
    """Normalises with the batch's biased variance; the running variance takes the unbiased one
    (numpy ``ddof=1``), as PyTorch's BatchNorm and the official FlashSAC layer."""
    bn = bounded.BoundedBatchNorm(train=True, momentum=0.9)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 3)) * 2.0 + 1.0
    v = bn.init(jax.random.PRNGKey(1), x)
    y, upd = bn.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        upd["batch_stats"]["var"], 0.9 + 0.1 * np.asarray(x).var(0, ddof=1), rtol=1e-5
    )
    # eval mode uses the running statistics, not the batch's
    ev = bounded.BoundedBatchNorm(train=False, eps=1e-5).apply(
        {"params": v["params"], "batch_stats": upd["batch_stats"]}, x
    )
    s = upd["batch_stats"]
    want = (np.asarray(x) - s["mean"]) / np.sqrt(s["var"] + 1e-5)
    np.testing.assert_allclose(ev, want, rtol=1e-5, atol=1e-5)


def test_rmsnorm_output_has_unit_root_mean_square_at_init():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 16)) * 7.0
    m = bounded.BoundedRMSNorm()
    y = m.apply(m.init(jax.random.PRNGKey(1), x), x)
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(y), -1)), 1.0, rtol=1e-4)


def _bf16_f64(a):
    """``a`` rounded to bfloat16, then widened to float64: the operands the products must use."""
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)


def test_low_precision_matmul_and_its_gradients_are_float64_products_of_bfloat16_operands():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)  # leading axes, as a [2B] or [E, B] batch
    k = rng.normal(size=(16, 8)).astype(np.float32)
    g = rng.normal(size=(3, 5, 8)).astype(np.float32)
    y, vjp = jax.vjp(lambda x, k: bounded.low_precision_matmul(x, k, jnp.bfloat16), x, k)
    dx, dk = vjp(jnp.asarray(g))
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    tol = {"rtol": 1e-5, "atol": 1e-5}  # float32 accumulation of exact bfloat16 products
    np.testing.assert_allclose(y, _bf16_f64(x) @ _bf16_f64(k), **tol)
    np.testing.assert_allclose(dx, _bf16_f64(g) @ _bf16_f64(k).T, **tol)
    np.testing.assert_allclose(dk, np.einsum("abi,abo->io", _bf16_f64(x), _bf16_f64(g)), **tol)
    # the rounding is real: the float32 product differs by far more than the tolerance
    assert np.abs(np.asarray(y) - x.astype(np.float64) @ k).max() > 1e-3


def test_low_precision_matmul_under_vmap_equals_each_member_alone():
    """Ensembles (`nn.vmap`) batch the custom gradient over a members axis."""
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    ks = jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32)

    def loss(x, k):
        return jnp.sum(jnp.tanh(bounded.low_precision_matmul(x, k, jnp.bfloat16)))

    both = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))(xs, ks)
    for m in range(2):
        one = jax.value_and_grad(loss, argnums=(0, 1))(xs[m], ks[m])
        for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(one)):
            np.testing.assert_allclose(a[m], b, rtol=1e-6, atol=1e-6)


def test_unit_dense_in_bfloat16_keeps_float32_parameters_and_output():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6)), jnp.float32)
    exact, low = bounded.UnitDense(3), bounded.UnitDense(3, dtype=jnp.bfloat16)
    params = exact.init(jax.random.PRNGKey(0), x)
    assert jax.tree.leaves(low.init(jax.random.PRNGKey(0), x))[0].dtype == jnp.float32
    y32, y16 = exact.apply(params, x), low.apply(params, x)
    assert y16.dtype == jnp.float32
    kernel = params["params"][bounded.UNIT_KERNEL]
    np.testing.assert_allclose(y16, _bf16_f64(x) @ _bf16_f64(kernel), rtol=1e-5, atol=1e-5)
    assert 0 < float(jnp.abs(y16 - y32).max()) < 0.05


def test_each_critic_member_keeps_its_own_batchnorm_statistics_and_paired_rows_equal_a_concatenation():
    """The ensemble vmaps params AND batch stats: member i's training-mode output and updated
    running statistics are those of one `CategoricalCritic` with member i's variables (computed
    alone, another way); and `pair_rows` gives BatchNorm the rows a concatenation would (same
    statistics, the same outputs in the other order)."""
    from jaxrl.nets.heads import CategoricalCritic, pair_rows

    kw = {"num_atoms": 5, "width": 8, "num_blocks": 1, "train": True, "expansion": 2}
    ens = critic_ensemble(2)(**kw)
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    c_obs, f_obs = jax.random.normal(k[0], (6, 3)), 3.0 + jax.random.normal(k[1], (6, 3))
    c_act, f_act = jax.random.normal(k[2], (6, 2)), jax.random.normal(k[3], (6, 2))
    variables = _init(ens, jax.random.PRNGKey(0), c_obs, c_act)
    apply = jax.jit(lambda v, o, a: ens.apply(v, o, a, mutable=["batch_stats"]), compiler_options=ONCE)
    paired, new = apply(variables, pair_rows(c_obs, f_obs), pair_rows(c_act, f_act))
    concat, new_c = apply(variables, jnp.concatenate([c_obs, f_obs]), jnp.concatenate([c_act, f_act]))
    order = np.arange(12).reshape(2, 6).T.reshape(-1)  # concatenation row of each paired row
    np.testing.assert_allclose(np.asarray(paired), np.asarray(concat)[:, order], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new_c)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    one = CategoricalCritic(**kw)
    for i in range(2):
        member = jax.tree.map(lambda x, i=i: x[i], variables)
        out, stats = jax.jit(lambda v, o, a: one.apply(v, o, a, mutable=["batch_stats"]),
                             compiler_options=ONCE)(member, pair_rows(c_obs, f_obs), pair_rows(c_act, f_act))
        np.testing.assert_allclose(np.asarray(paired[i]), np.asarray(out), rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], new)), jax.tree.leaves(stats)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    stats0, stats1 = (jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], new["batch_stats"])) for i in range(2))
    assert any(not np.allclose(a, b) for a, b in zip(stats0, stats1))  # two members, two sets of statistics
