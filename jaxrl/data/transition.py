"""The one record every off-policy learner stores and samples."""

from __future__ import annotations

from typing import NamedTuple

import jax


class Transition(NamedTuple):
    """One env step for a batch of envs (leading axis B).

    ``next_obs`` is the TRUE next observation: on a time-out it is the final observation of the
    finished episode (``EnvState.final_obs``), not the first of the next one, so that learners can
    bootstrap.  Only ``terminated`` stops the bootstrap.
    """

    obs: dict[str, jax.Array]  # 'state' [B, D], 'privileged_state' [B, P]
    action: jax.Array  # [B, A]
    reward: jax.Array  # [B]
    next_obs: dict[str, jax.Array]  # like obs
    terminated: jax.Array  # [B] bool
    truncated: jax.Array  # [B] bool
