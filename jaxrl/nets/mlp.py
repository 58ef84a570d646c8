"""Plain MLPs: a swish trunk with a chosen compute dtype, and a twin-Q ensemble on [obs, action].

Mixed precision as in the large-batch SAC (ALGORITHMS.md §2): parameters are float32; the hidden
layers compute in ``compute_dtype`` (bfloat16 halves the matmul cost on GPUs and TPUs); the output
layer computes in float32 on the float32-cast last hidden activation, so Q-values and policy
statistics keep full precision.  Initialisation: lecun-uniform kernels, zero biases.  LayerNorm
only when asked (``layer_norm``: Dense → activation → LayerNorm per hidden layer, as Brax's
``q_network_layer_norm``); the LIFT recipe has none.

`hidden_layers` is the trunk every plain MLP here is made of (SAC's `MLP` and PPO's actor and
critic in `jaxrl.nets.sde`); each caller picks its activation, kernel init and compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LECUN_UNIFORM = nn.initializers.lecun_uniform()
# PyTorch's nn.Linear default: kernel and bias uniform in ±1/sqrt(fan_in) (kernel variance
# 1/(3·fan_in)); what rsl_rl's networks keep (OmniReset's official PPO never re-initialises them).
TORCH_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias(fan_in: int) -> Callable:
    """PyTorch's nn.Linear bias init for a layer with ``fan_in`` inputs: U(±1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, init: str, name: str, **kw) -> nn.Dense:
    """A Dense layer initialised as ``init`` says: "torch" (PyTorch's default, `TORCH_KERNEL` and
    `torch_bias`) or "lecun" (flax's default lecun-normal kernel, zero bias)."""
    if init == "torch":
        return nn.Dense(features, kernel_init=TORCH_KERNEL, bias_init=torch_bias(fan_in), name=name, **kw)
    if init == "lecun":
        return nn.Dense(features, name=name, **kw)
    raise ValueError(f"init must be 'torch' or 'lecun', got {init!r}")


def elu(x: jax.Array) -> jax.Array:
    """ELU (α = 1) as eˣ − 1 below zero, within 1.2e-7 of ``nn.elu``'s expm1 there (gradient 1 at 0).
    XLA:CPU evaluates exp faster than expm1: PPO's cpu-preset update on CartpoleBalance took
    37.4 instead of 40.0 ms (interleaved A/B, 2026-12-05, 2-core Xeon)."""
    return jnp.where(x > 0, x, jnp.exp(jnp.where(x > 0, 0.0, x)) - 1.0)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": elu, "relu": nn.relu, "swish": nn.swish, "tanh": jnp.tanh,
}


def hidden_layers(x: jax.Array, widths: Sequence[int], activation: str, *,
                  dtype: Any = None, kernel_init: Callable = nn.linear.default_kernel_init,
                  layer_norm: bool = False, torch_init: bool = False) -> jax.Array:
    """Dense + ``activation`` per width, named ``hidden_0`` ... ``hidden_{n-1}``; with
    ``layer_norm`` each is followed by a LayerNorm named ``norm_0`` ... ``norm_{n-1}`` (Brax's
    order: Dense → activation → LayerNorm; scale 1, bias 0 at init).

    Call it inside a ``@nn.compact`` method: the layers are created in (and their parameters
    belong to) the calling module.  ``dtype`` is the compute dtype (None: the inputs'); parameters
    are float32; biases start at zero (``torch_init``: kernels and biases as PyTorch's nn.Linear
    default, `dense`, instead of ``kernel_init``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
    act = ACTIVATIONS[activation]
    for i, width in enumerate(widths):
        if torch_init:
            layer = dense(width, x.shape[-1], "torch", f"hidden_{i}", dtype=dtype, param_dtype=jnp.float32)
        else:
            layer = nn.Dense(width, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                             name=f"hidden_{i}")
        x = act(layer(x))
        if layer_norm:
            # float32 output (LIFT's base_networks.py), whatever the compute dtype: the output layer
            # reads the last one in float32, the next hidden layer casts it to its own dtype
            x = nn.LayerNorm(dtype=jnp.float32, param_dtype=jnp.float32, name=f"norm_{i}")(x)
    return x


class MLP(nn.Module):
    """x [B, D] -> [B, out]: Dense + ``activation`` (+ LayerNorm with ``layer_norm``) per ``hidden``
    width (in ``compute_dtype``), then Dense.

    Parameter names: ``hidden_0`` ... ``hidden_{n-1}`` and ``out`` (each ``kernel`` [in, out] and
    ``bias`` [out]), plus ``norm_i`` (``scale``, ``bias``) with ``layer_norm``;
    `jaxrl.algos.sac.policy_layers` reads them for export.
    """

    hidden: Sequence[int]
    out: int
    compute_dtype: Any = jnp.float32
    activation: str = "swish"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        x = hidden_layers(x, self.hidden, self.activation, dtype=self.compute_dtype,
                          kernel_init=LECUN_UNIFORM, layer_norm=self.layer_norm)
        return nn.Dense(self.out, dtype=jnp.float32, param_dtype=jnp.float32,
                        kernel_init=LECUN_UNIFORM, name="out")(x.astype(jnp.float32))


class TwinQ(nn.Module):
    """``num_critics`` independent Q MLPs on [obs, action]: (obs [B, D], action [B, A]) -> [E, B].

    Every parameter leaf has a leading ensemble axis of size ``num_critics`` (``members``)."""

    hidden: Sequence[int]
    compute_dtype: Any = jnp.float32
    num_critics: int = 2
    activation: str = "swish"
    layer_norm: bool = False  # LayerNorm after each hidden activation (Brax's q_network_layer_norm)

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.num_critics)
        q = ensemble(hidden=tuple(self.hidden), out=1, compute_dtype=self.compute_dtype,
                     activation=self.activation, layer_norm=self.layer_norm,
                     name="members")(x)  # [E, B, 1]
        return q[..., 0]
