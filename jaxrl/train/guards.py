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


def check_actions(nonfinite_actions: Any, env_steps: int) -> None:
    """Raise when the env saw NaN/inf actions (VecEnv counts them inside jit)."""
    n = int(nonfinite_actions)
    if n:
        raise NonFiniteError(f"policy actions ({n} non-finite)", env_steps, float("nan"))
