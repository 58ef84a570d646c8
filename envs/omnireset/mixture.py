"""`ResetMixture`: start every episode from a state drawn from a mixture of reset datasets.

On each ``reset(key)``: draw a type ``k ~ Categorical(probs)``, an index uniform among that type's
states, restore qpos/qvel, set EVERY position-actuator target (gripper included) to its joint's
restored position (`ManipulationTask.restore`), run ``mjx.forward``, and record
``state.info['reset_type'] = k`` (int32; the task's own nominal reset reports -1).

Per-type success without host round-trips: every state carries, for each type ``k``,
``metrics['type_k']`` (1 if the running episode started from type k) and
``metrics['success_type_k']`` (= ``metrics['success'] * metrics['type_k']``).  Summing these over
envs at the last step of the episodes (e.g. inside a jitted evaluation scan of
``episode_length - 1`` steps, or from the pre-step state when ``episode_step == length - 1``)
gives the per-type success rate; `success_by_type` does exactly that for a policy (and, on a
plain env of the task, from the nominal start).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs.manipulation.base import ManipulationTask, SimState
from envs.omnireset.dataset import ResetDataset


def validate_probs(probs: Sequence[float], type_names: Sequence[str]) -> np.ndarray:
    """Mixture weights: one per type, finite, non-negative, summing to 1 (within 1e-6)."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 1 or p.shape[0] != len(type_names):
        raise ValueError(
            f"probs must have one entry per reset type {list(type_names)} "
            f"({len(type_names)}), got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError(f"probs must be finite, got {p.tolist()}")
    if np.any(p < 0):
        bad = [n for n, x in zip(type_names, p) if x < 0]
        raise ValueError(f"probs must be non-negative; negative for {bad}: {p.tolist()}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"probs must sum to 1 (within 1e-6), got sum {p.sum():.9g}: {p.tolist()}")
    return p


class ResetMixture:
    """Single-env task wrapper with the task's API; see the module docstring."""

    def __init__(self, task: ManipulationTask, dataset: ResetDataset, probs: Sequence[float]):
        dataset.check_compatible(task)
        p = validate_probs(probs, dataset.type_names)
        empty = [
            n
            for n, c, pk in zip(dataset.type_names, dataset.counts.values(), p)
            if c == 0 and pk > 0
        ]
        if empty:
            raise ValueError(
                f"reset type(s) {empty} have zero valid states in the dataset but positive "
                f"probability; rebuild the dataset or give them probability 0"
            )
        self.task = task
        self.dataset = dataset
        self.probs = p
        self.type_names = tuple(dataset.type_names)
        counts = np.array([dataset.counts[n] for n in self.type_names], np.int32)
        n_max = max(int(counts.max()), 1)

        def pad(arrs, width):
            out = np.zeros((len(arrs), n_max, width), np.float32)
            for i, a in enumerate(arrs):
                out[i, : a.shape[0]] = a
            return out

        self._qpos = jnp.asarray(pad(dataset.qpos, task.nq))  # [K, N, nq]
        self._qvel = jnp.asarray(pad(dataset.qvel, task.nv))
        self._ctrl = jnp.asarray(pad(dataset.ctrl, task.nu))
        self._counts = jnp.asarray(np.maximum(counts, 1))
        self._logits = jnp.asarray(
            np.where(p > 0, np.log(np.maximum(p, 1e-30)), -np.inf), jnp.float32
        )

    # ------------------------------------------------------ task passthrough
    @property
    def unwrapped(self) -> ManipulationTask:
        return self.task

    @property
    def observation_size(self):
        return self.task.observation_size

    @property
    def action_size(self) -> int:
        return self.task.action_size

    @property
    def dt(self) -> float:
        return self.task.dt

    @property
    def mj_model(self):
        return self.task.mj_model

    @property
    def mjx_model(self):
        return self.task.mjx_model

    @property
    def _mjx_model(self):
        return self.task._mjx_model

    @property
    def xml_path(self) -> str:
        return self.task.xml_path

    # --------------------------------------------------------------- API
    def sample(self, key: jax.Array) -> tuple[jax.Array, jax.Array, SimState]:
        """(type k, index i, stored state) drawn from the mixture."""
        k_type, k_idx = jax.random.split(key)
        k = jax.random.categorical(k_type, self._logits).astype(jnp.int32)
        i = jax.random.randint(k_idx, (), 0, self._counts[k])
        sim = SimState(self._qpos[k, i], self._qvel[k, i], self._ctrl[k, i])
        return k, i, sim

    def reset(self, key: jax.Array):
        key, sub = jax.random.split(key)
        k, i, sim = self.sample(sub)
        state = self.task.reset_to(self.task.restore(sim), k, key)
        state.info["reset_index"] = i.astype(jnp.int32)
        return state.replace(metrics=self._type_metrics(state))

    def step(self, state, action):
        state = self.task.step(state, action)
        return state.replace(metrics=self._type_metrics(state))

    def _type_metrics(self, state) -> dict[str, jax.Array]:
        metrics = dict(state.metrics)
        k = state.info["reset_type"]
        for j in range(len(self.type_names)):
            is_j = (k == j).astype(jnp.float32)
            metrics[f"type_{j}"] = is_j
            metrics[f"success_type_{j}"] = metrics["success"] * is_j
        return metrics


def make_mixture_env(
    task_name: str,
    dataset: ResetDataset | str | os.PathLike,
    probs: Sequence[float] | None = None,
    num_envs: int = 1,
    episode_length: int | None = None,
    seed: int = 0,
    **task_overrides: Any,
):
    """A `VecEnv` of ``task_name`` whose resets come from ``dataset`` (object or .npz path) with
    mixture weights ``probs`` (default uniform over the dataset's types)."""
    from envs import registry
    from envs.wrappers import VecEnv

    if "reset_pool" in task_overrides:
        raise ValueError("reset_pool does not apply to an OmniReset mixture: its resets already draw "
                         "from a dataset of start states (no physics at reset); leave reset_pool out")
    registry._import_own_tasks()
    if registry.source_of(task_name) != "jaxrl":
        raise ValueError(f"OmniReset resets need one of our MJCF tasks, got {task_name!r}")
    task = registry._OWN[task_name](**task_overrides)
    if not isinstance(dataset, ResetDataset):
        dataset = ResetDataset.load(dataset, task)
    if probs is None:
        probs = np.full(len(dataset.type_names), 1.0 / len(dataset.type_names))
    env = ResetMixture(task, dataset, probs)
    length = registry._OWN_DEFAULT_LENGTH[task_name] if episode_length is None else episode_length
    vec = VecEnv(env, num_envs, length, name=f"{task_name}/omnireset", seed=seed)
    vec.make_kwargs = {"episode_length": length, **task_overrides}  # the dataset: `run.keep_resets`
    return vec


SCRATCH_TYPE = "anywhere"  # reset type (1): the whole task from scratch, the one OmniReset scores on


def scratch_env(mixture_env, num_envs: int | None = None, seed: int = 0):
    """The envs OmniReset evaluates on (ALGORITHMS.md §3: "Evaluation uses only reset type (1):
    the whole task from scratch"): a `VecEnv` over the same task and dataset as the mixture
    `VecEnv` ``mixture_env``, drawing only `SCRATCH_TYPE` states.  None when ``mixture_env`` is
    not a mixture or its dataset holds no such states (the caller then scores the nominal start).
    """
    from envs.wrappers import VecEnv

    mixture = mixture_env.env
    if not isinstance(mixture, ResetMixture) or not mixture.dataset.counts.get(SCRATCH_TYPE):
        return None
    probs = [float(name == SCRATCH_TYPE) for name in mixture.type_names]
    return VecEnv(ResetMixture(mixture.task, mixture.dataset, probs),
                  mixture_env.num_envs if num_envs is None else num_envs, mixture_env.episode_length,
                  name=mixture_env.name, seed=seed)


NOMINAL = "nominal"  # the key `success_by_type` reports for an env that starts from the nominal state


def success_by_type(
    vec_env,
    policy: Callable[..., jax.Array],
    key: jax.Array,
    steps: int | None = None,
    params: Any = None,
) -> dict[str, float]:
    """Success rate per reset type of ``policy`` over one fresh reset of every env of ``vec_env``.

    Runs ``steps`` (default ``episode_length``: the whole episode, its auto-reset off) and counts
    an env a success iff ``metrics['success'] == 1`` after the LAST step, as the training loops'
    evaluations score ``eval_success`` (before stop 49 the default was one step short, since the
    auto-reset replaced the last step's state).  ``vec_env`` is a mixture
    env (`make_mixture_env`; types of probability 0 are left out, so ``probs=[1, 0, 0]`` evaluates
    reset type 0 alone, e.g. OmniReset's "anywhere") or a plain env of the task, which starts from
    the nominal state and reports ``{'nominal': rate}``.  A type with positive probability that no
    env drew reports nan.

    ``policy(obs, key) -> actions``; with ``params``, ``policy(params, obs, key)`` and ``params``
    enter as a jit argument, so that evaluating many agents compiles once per (env, policy, steps).
    One jitted scan, one host transfer at the end.
    """
    steps = vec_env.episode_length if steps is None else int(steps)
    if not 1 <= steps <= vec_env.episode_length:
        raise ValueError(f"steps ({steps}) must be in [1, episode_length] = [1, {vec_env.episode_length}]")
    vec_env = vec_env.without_auto_reset()
    mixture = vec_env.env
    if isinstance(mixture, ResetMixture):
        shown = [j for j, p in enumerate(mixture.probs) if p > 0]
        names = [mixture.type_names[j] for j in shown]
    else:
        shown, names = [], [NOMINAL]
    if params is None:
        run = _success_run(vec_env, lambda _, obs, k: policy(obs, k), steps, tuple(shown))
    else:
        run = _success_run(vec_env, policy, steps, tuple(shown))
    succ, count = jax.device_get(run(params, key))
    return {n: float(s / c) if c > 0 else float("nan") for n, s, c in zip(names, succ, count)}


@functools.lru_cache(maxsize=32)
def _success_run(vec_env, policy, steps: int, types: tuple[int, ...]):
    """Jitted (params, key) -> (successes [K], envs [K]) per type in ``types`` (all envs if empty)."""

    def run(params, key):
        k0, k1 = jax.random.split(key)
        s = vec_env.reset(k0)

        def body(s, k):
            return vec_env.step(s, policy(params, s.obs, k)), None

        s, _ = jax.lax.scan(body, s, jax.random.split(k1, steps))
        m = s.inner.metrics
        if not types:
            return m["success"].sum()[None], jnp.full((1,), m["success"].shape[0], jnp.float32)
        return (
            jnp.stack([m[f"success_type_{j}"].sum() for j in types]),
            jnp.stack([m[f"type_{j}"].sum() for j in types]),
        )

    return jax.jit(run)
