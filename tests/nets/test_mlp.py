"""PPO's nets on the shared MLP trunk keep the parameter names and initialisation that checkpoints
and export rely on (SAC's MLP on the same trunk is checked in tests/algos/test_sac.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.nets import sde


def test_ppo_nets_keep_their_parameter_tree_and_initialisation():
    x = jnp.ones((2, 5))
    actor = sde.Actor((16, 8), 3, "tanh", init_log_std=-0.5, layer_init="lecun").init(jax.random.PRNGKey(0), x)["params"]
    critic = sde.Critic((16, 8), "tanh", layer_init="lecun").init(jax.random.PRNGKey(1), x)["params"]
    assert set(actor) == {"hidden_0", "hidden_1", "mean", "log_std"}
    assert set(critic) == {"hidden_0", "hidden_1", "value"}
    assert actor["hidden_0"]["kernel"].shape == (5, 16) and actor["log_std"].shape == (8, 3)
    np.testing.assert_array_equal(actor["log_std"], -0.5)
    for layer in ("hidden_0", "hidden_1", "mean"):
        np.testing.assert_array_equal(actor[layer]["bias"], 0.0)
    # "lecun" (the cpu preset): flax's default kernel init in the trunk; N(0, 0.01 / fan_in) for the mean
    assert 0.2 < float(jnp.std(actor["hidden_0"]["kernel"])) * np.sqrt(5) < 1.5
    assert float(jnp.std(actor["mean"]["kernel"])) * np.sqrt(8) < 0.2
    with pytest.raises(ValueError, match="init must be 'torch' or 'lecun'"):
        sde.Critic((4,), "tanh", layer_init="xavier").init(jax.random.PRNGKey(1), x)



def test_elu_matches_float64_expm1_and_its_gradient():
    """`mlp.elu` (eˣ − 1 below zero, for speed) against ELU computed in float64 with
    expm1: values within 2e-7 absolute, gradients (1 above zero, eˣ below) within 1e-6."""
    from jaxrl.nets import mlp

    x = np.concatenate([-np.logspace(-9, 2, 400), [0.0], np.logspace(-9, 2, 400)]).astype(np.float32)
    want = np.where(x > 0, x, np.expm1(np.minimum(x.astype(np.float64), 0.0)))
    np.testing.assert_allclose(np.asarray(mlp.elu(jnp.asarray(x))), want, rtol=1e-6, atol=2e-7)
    grad = np.asarray(jax.vmap(jax.grad(mlp.elu))(jnp.asarray(x)))
    np.testing.assert_allclose(grad, np.where(x > 0, 1.0, np.exp(np.minimum(x.astype(np.float64), 0.0))),
                               rtol=1e-6, atol=1e-6)


def test_layer_norm_outputs_float32_under_bfloat16_compute_as_lift():
    """LIFT's MLP keeps its LayerNorm in float32 (`LayerNorm(dtype=jnp.float32)`): with bfloat16
    hidden layers the norms still return float32, so the float32 output layer reads the last one
    unrounded; the Dense layers compute in bfloat16."""
    from jaxrl.nets.mlp import MLP

    net = MLP(hidden=(16, 8), out=3, compute_dtype=jnp.bfloat16, layer_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = net.init(jax.random.PRNGKey(1), x)
    y, seen = net.apply(params, x, capture_intermediates=True)
    inner = seen["intermediates"]
    assert inner["norm_0"]["__call__"][0].dtype == inner["norm_1"]["__call__"][0].dtype == jnp.float32
    assert inner["hidden_0"]["__call__"][0].dtype == jnp.bfloat16
    assert y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()


def test_networks_refuse_an_unknown_activation_or_initialisation_by_name():
    from jaxrl.nets.mlp import MLP

    x = jnp.zeros((1, 3))
    with pytest.raises(ValueError, match="activation must be one of 'elu', 'relu', 'swish', 'tanh', got 'gelu'"):
        MLP(hidden=(4,), out=1, activation="gelu").init(jax.random.PRNGKey(0), x)
    for net in (sde.Actor((4,), 2, "elu", 1.0, "xavier"), sde.Critic((4,), "elu", "xavier")):
        with pytest.raises(ValueError, match="must be 'torch' or 'lecun', got 'xavier'"):
            net.init(jax.random.PRNGKey(0), x)
