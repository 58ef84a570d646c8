"""Observation and action specs: what an algorithm reads instead of guessing shapes."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """Shape (per env, without the batch axis) and dtype of one array, with optional bounds."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Everything about an environment's interface that a learner needs.

    ``obs`` always has the keys ``state`` (actor input) and ``privileged_state`` (critic input;
    equal to ``state`` for tasks without privileged information).  Actions are continuous in
    ``[action.low, action.high]`` (``[-1, 1]`` for every Playground and Brax task).
    """

    name: str
    obs: dict[str, ArraySpec]
    action: ArraySpec
    num_envs: int
    episode_length: int
    dt: float
    has_privileged_state: bool

    @property
    def action_size(self) -> int:
        return self.action.size
