"""OmniReset: reset-state datasets and the reset-mixture wrapper (ALGORITHMS.md §3).

    import jax, envs.omnireset as omr
    from envs.manipulation import PushToSlot
    task = PushToSlot()
    types = omr.default_reset_types(task)                  # anywhere / near_object / near_goal
    ds = omr.build_dataset(task, types, per_type=1000, key=jax.random.PRNGKey(0))
    ds.acceptance                                           # {'anywhere': 0.8, ...}
    ds.save("push_resets.npz")
    env = omr.make_mixture_env("PushToSlot", "push_resets.npz", probs=None, num_envs=1024)
    eval_env = omr.scratch_env(env, num_envs=16)           # evaluation: "anywhere" states only

Command line (wired by ``jaxrl resets build``): `build_and_save`.
"""

from __future__ import annotations

import os

import jax

from envs.manipulation.base import NOMINAL_RESET, SimState
from envs.omnireset.dataset import (
    DATASET_VERSION,
    SETTLE_SECONDS,
    DatasetMismatchError,
    ResetDataset,
    ResetType,
    ValidationLimits,
    build_dataset,
    revalidate,
    simulate_and_check,
)
from envs.omnireset.mixture import (
    SCRATCH_TYPE,
    ResetMixture,
    make_mixture_env,
    scratch_env,
    success_by_type,
    validate_probs,
)
from envs.omnireset.render import render_reset_grid
from envs.omnireset.task_resets import default_reset_types


def make_task(task_name: str, **overrides):
    """One of our registered MJCF tasks as a single (unbatched) env."""
    from envs import registry

    registry._import_own_tasks()
    if registry.source_of(task_name) != "jaxrl":
        raise ValueError(f"OmniReset resets need one of our MJCF tasks, got {task_name!r}")
    return registry._OWN[task_name](**overrides)


def build_and_save(
    task_name: str,
    per_type: int,
    out_path: str | os.PathLike,
    seed: int = 0,
    settle_steps: int | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Build the default reset dataset of ``task_name`` and save it; returns acceptance rates."""
    task = make_task(task_name)
    types = default_reset_types(task, settle_steps)
    ds = build_dataset(task, types, per_type, jax.random.PRNGKey(seed), verbose=verbose)
    ds.save(out_path)
    if verbose:
        print(f"saved {ds.counts} to {out_path}; acceptance {ds.acceptance}; "
              f"candidates settled {ds.settle_seconds:g} s")
    return dict(ds.acceptance)


__all__ = [
    "DATASET_VERSION",
    "NOMINAL_RESET",
    "SCRATCH_TYPE",
    "SETTLE_SECONDS",
    "DatasetMismatchError",
    "ResetDataset",
    "ResetMixture",
    "ResetType",
    "SimState",
    "ValidationLimits",
    "build_and_save",
    "build_dataset",
    "default_reset_types",
    "make_mixture_env",
    "make_task",
    "render_reset_grid",
    "revalidate",
    "scratch_env",
    "simulate_and_check",
    "success_by_type",
    "validate_probs",
]
