"""Never lose a run silently: stop on the first non-finite quantity, saying which and when."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class NonFiniteError(FloatingPointError):
    """A loss, gradient norm, Q-value or observation went NaN/inf during training."""

    def __init__(self, quantity: str, env_steps: int, value: Any):
        self.quantity, self.env_steps, self.value = quantity, env_steps, value
        super().__init__(
            f"training stopped: {quantity} became non-finite ({value}) at or before env step "
            f"{env_steps}; the last good checkpoint is kept.  Common causes: learning rate too "
            "high, reward scale, MJX instability (try JAX_DEFAULT_MATMUL_PRECISION=highest)."
        )


def check_finite(metrics: Mapping[str, Any], env_steps: int) -> None:
    """Raise NonFiniteError for the first metric (sorted by name) holding a NaN or inf.

    Per-step metric arrays (from a scanned chunk) are checked element-wise.
    """
    for name in sorted(metrics):
        value = np.asarray(metrics[name])
        if value.dtype.kind not in "fc" or np.isfinite(value).all():
            continue
        raise NonFiniteError(name, env_steps, value.reshape(-1)[~np.isfinite(value.reshape(-1))][0])


def check_transitions(env_state: Any, env_steps: int) -> None:
    """Raise when the envs produced a NaN/inf reward or observation, warm-up chunks included.

    Rewards are caught through the episode returns, which keep a non-finite reward: the running
    ones until their episode ends, then the completed-episode sum for good (``stats.return_sum``,
    never reset in a run).  Observations are checked as they stand at the end of the chunk, the
    last step's final ones included (a non-finite physics state persists, or, as the tasks
    compute rewards from it, shows in the returns).  Why here and not from the losses: a NaN
    stored in the replay buffer surfaces only when an update samples it, and every checkpoint
    saved before that would hold it and count as good.  On several hosts each checks its own
    envs and all stop together (one host stopping alone would leave the others waiting)."""
    import jax
    import jax.numpy as jnp

    returns = {"rewards (their episode return)": (env_state.episode_return, env_state.stats.return_sum)}
    obs = {f"observations ({k})": (v, env_state.final_obs[k]) for k, v in dict(env_state.obs).items()
           if jnp.issubdtype(v.dtype, jnp.inexact)}  # (pixels are integers: nothing to check, or copy)
    found = None
    for name, arrays in (returns | obs).items():
        for v in (np.asarray(part) for a in arrays for part in _on_this_host(a)):
            v = v if v.dtype.kind in "fc" else v.astype(np.float64)  # bfloat16 (kind "V")
            if not np.isfinite(v).all():
                found = (name, v.reshape(-1)[~np.isfinite(v.reshape(-1))][0])
                break
        if found is not None:
            break
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        bad = np.asarray(multihost_utils.process_allgather(np.int32(found is not None))).reshape(-1)
        if found is None and bad.any():
            found = (f"a reward or observation on process {int(np.flatnonzero(bad)[0])}", float("nan"))
    if found is not None:
        raise NonFiniteError(found[0], env_steps, found[1])


def _on_this_host(x: Any) -> list[np.ndarray]:
    """The parts of ``x`` this process holds (all of it on one host; its shards on several)."""
    if getattr(x, "is_fully_addressable", True):
        return [np.asarray(x)]
    return [np.asarray(shard.data) for shard in x.addressable_shards]


def check_actions(nonfinite_actions: Any, env_steps: int) -> None:
    """Raise when the env saw NaN/inf actions (VecEnv counts them inside jit)."""
    n = int(nonfinite_actions)
    if n:
        raise NonFiniteError(f"policy actions ({n} non-finite)", env_steps, float("nan"))
