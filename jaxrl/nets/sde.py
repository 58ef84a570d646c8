"""PPO's networks: a Gaussian actor with state-dependent exploration and a value MLP.

Both are `jaxrl.nets.mlp.hidden_layers` trunks (float32, the configured activation) with their own
output layer.  Initialisation (``layer_init``): "torch", PyTorch's nn.Linear default on every layer, heads
included — what OmniReset's rsl_rl networks keep, and what sets the starting exploration, since
σ(s) = ‖φ(s)‖ at log_std 0 (measured at the paper's widths on unit-normal inputs: mean σ ≈ 0.75;
flax's lecun-normal trunk gives ≈ 3.7, so ~80% of sampled actions clip at ±1); "lecun", flax's
lecun-normal kernels and zero biases with a small mean head (kernel ~ N(0, 0.01/fan_in)):

    Actor:  x -> φ(x) [.., H] -> mean = Dense(A),
            σ(x) = sqrt( Σ_j φ_j(x)² · exp(2·log_std[j, a]) + 1e-6 )      (`state_dependent_std`)
    Critic: x -> Dense(1) -> V(x)

``log_std`` is a ``[H, A]`` parameter, every entry starting at ``init_log_std``.  Gradients flow
through φ into the trunk (OmniReset's rsl_rl fork), so the std term shapes the trunk too.
Parameter names (``hidden_i``, ``mean``, ``log_std``, ``value``) are what checkpoints hold and
what `jaxrl.algos.ppo.policy_layers` reads for export.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.nets.mlp import dense, hidden_layers

SDE_EPS = 1e-6  # variance floor inside σ(s)


def state_dependent_std(phi: jax.Array, log_std: jax.Array) -> jax.Array:
    """σ(s) = sqrt(φ(s)² @ exp(2·log_std) + 1e-6); phi [.., H], log_std [H, A] -> [.., A]."""
    return jnp.sqrt(jnp.square(phi) @ jnp.exp(2.0 * log_std) + SDE_EPS)


class Actor(nn.Module):
    """MLP trunk → (mean [.., A], σ(s) [.., A]) with state-dependent exploration std."""

    hidden: tuple[int, ...]
    action_size: int
    activation: str = "elu"
    init_log_std: float = 0.0
    layer_init: str = "torch"

    @nn.compact
    def __call__(self, x):
        if self.layer_init not in ("torch", "lecun"):  # (the value net's `dense` refuses it too)
            raise ValueError(f"layer_init must be 'torch' or 'lecun', got {self.layer_init!r}")
        phi = hidden_layers(x, self.hidden, self.activation, torch_init=self.layer_init == "torch")
        if self.layer_init == "torch":
            mean = dense(self.action_size, phi.shape[-1], "torch", "mean")(phi)
        else:
            mean = nn.Dense(
                self.action_size, kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "normal"),
                name="mean",
            )(phi)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.hidden[-1], self.action_size)
        )
        return mean, state_dependent_std(phi, log_std)


class Critic(nn.Module):
    """MLP → V(s) [..]."""

    hidden: tuple[int, ...]
    activation: str = "elu"
    layer_init: str = "torch"

    @nn.compact
    def __call__(self, x):
        x = hidden_layers(x, self.hidden, self.activation, torch_init=self.layer_init == "torch")
        return dense(1, x.shape[-1], self.layer_init, "value")(x)[..., 0]


def actor(cfg: Any, action_size: int) -> Actor:
    """The actor a config describes (its ``hidden``, ``activation``, ``init_log_std``, ``layer_init``)."""
    return Actor(tuple(cfg.hidden), action_size, cfg.activation, cfg.init_log_std, cfg.layer_init)


def critic(cfg: Any) -> Critic:
    """The value net a config describes (its ``hidden``, ``activation`` and ``layer_init``)."""
    return Critic(tuple(cfg.hidden), cfg.activation, cfg.layer_init)
