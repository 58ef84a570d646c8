"""FlashSAC policy and value heads on top of the norm-bounded trunk."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.nets.bounded import BoundedTrunk

LOG_2 = 0.6931471805599453


def _trunk(head: nn.Module) -> BoundedTrunk:
    """The shared trunk of a head, built from the head's own trunk fields (inside its compact call)."""
    return BoundedTrunk(head.width, head.num_blocks, head.train, head.expansion, head.bn_momentum,
                        head.bn_eps, head.rms_eps, name="trunk")


class TanhGaussianActor(nn.Module):
    """Trunk -> plain dense mean (init N(0, 1e-3)) and log-std (zero init).

    log sigma = log_std_min + (log_std_max - log_std_min) / 2 * (1 + tanh(raw)), so in
    [log_std_min, log_std_max] (= [-5, 0] by default, i.e. -5 + 2.5 (1 + tanh(raw))).
    Returns (mean [B, A], log_std [B, A]) of the Gaussian BEFORE the tanh squashing.
    """

    action_size: int
    width: int
    num_blocks: int
    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    rms_eps: float = 1e-6
    log_std_min: float = -5.0
    log_std_max: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = _trunk(self)(obs)
        mean = nn.Dense(self.action_size, kernel_init=nn.initializers.normal(1e-3), name="mean")(z)
        raw = nn.Dense(self.action_size, kernel_init=nn.initializers.zeros, name="log_std")(z)
        half_range = 0.5 * (self.log_std_max - self.log_std_min)
        log_std = self.log_std_min + half_range * (1.0 + jnp.tanh(raw))
        return mean, log_std


class CategoricalCritic(nn.Module):
    """Trunk on [obs, action] -> logits over ``num_atoms`` value atoms."""

    num_atoms: int
    width: int
    num_blocks: int
    train: bool
    expansion: int = 4
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    rms_eps: float = 1e-6

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        z = _trunk(self)(jnp.concatenate([obs, action], -1))
        return nn.Dense(self.num_atoms, name="logits")(z)  # [B, num_atoms]


def critic_ensemble(size: int) -> type[nn.Module]:
    """`CategoricalCritic` vmapped ``size`` times over params AND batch stats (output [E, B, K])."""
    return nn.vmap(
        CategoricalCritic,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=size,
    )


def sample_tanh_gaussian(
    key: jax.Array, mean: jax.Array, log_std: jax.Array, noise: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """a = tanh(mean + std * eps) and its log-prob with the tanh change-of-variables correction.

    ``noise`` (eps, [B, A]) overrides sampling, for held exploration noise.  Returns
    (action [B, A], log_prob [B]).
    """
    eps = jax.random.normal(key, mean.shape, mean.dtype) if noise is None else noise
    u = mean + jnp.exp(log_std) * eps
    gauss = -0.5 * jnp.square(eps) - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    log_det = 2.0 * (LOG_2 - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(gauss - log_det, -1)
