"""Reset types, physically validated reset-state datasets, and their generation on MJX.

A `ResetType` is a name, a sampler ``key -> SimState`` (pure JAX, vmapped) and the
`ValidationLimits` a candidate must meet.  `build_dataset` samples candidates of every type in
one batch, simulates all of them in parallel (vmap) holding their position targets for
``settle_steps`` control steps (optionally shaking the arm first: the grasp shake test), and
keeps a candidate only if at the end its joint speeds are small, no contact penetrates deeper
than ``max_penetration`` at any time, and its drift points (object, grip point, object relative
to grip) moved less than ``max_drift``.  The stored state is the settled one, with the held
actuators' targets set to the settled joint positions, so re-simulating a stored state is quiet.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envs._runtime import few_steps_options, notice, short_program_options
from envs.manipulation.base import ManipulationTask, SimState

DATASET_VERSION = 1

MAX_CANDIDATES = 8192  # candidates simulated per round over all types (device memory; rounds repeat)
QUICK_VALIDATION_STEPS = 8_192
"""Candidates × physics steps of one validation call up to which it compiles the quick way on
CPU (`short_program_options`): a small build (a test, a first look) is mostly compile.  Measured
2026-12-06 (2-core Xeon, empty cache): PegInsertion 64 candidates × 40 steps compiled in 30 s
instead of 43-52 and ran a round in 1.6 s instead of 1.9-2.1; PushToSlot 192 × 25: 11 s instead
of 16.5-18, rounds alike; at 512 × 40 the compile saves 10-14 s but a round runs ~20% slower."""


def _validation_options(candidates: int, steps: int) -> dict | None:
    """Compile options of a validation simulating ``candidates`` × ``steps`` env steps: at most
    `envs._runtime.FEW_STEPS` (a small `revalidate`: 8 states × 40 steps per type), XLA's
    optimisation level 0 as well (`few_steps_options`; measured 2026-12-06, 2-core AVX2 EPYC,
    empty cache: PegInsertion's revalidation compiled in 6.6 s instead of 15.9 and took 24.6 s
    instead of 31.7 for its four types; a whole small build ran no faster that way, its rounds
    being slower by what the compile saved)."""
    total = candidates * steps
    return few_steps_options(total) or (short_program_options() if total <= QUICK_VALIDATION_STEPS else None)


SETTLE_SECONDS = 2.0  # every candidate is held ~2 s with zero action before it is judged (the paper)


@dataclasses.dataclass(frozen=True)
class ValidationLimits:
    """What a candidate reset state must satisfy after settling."""

    max_qvel: float = 0.05  # rad/s or m/s, every dof at the end of settling
    max_penetration: float = 0.003  # metres, deepest contact at any time during settling
    max_drift: float = 0.02  # metres, displacement of the task's drift points
    settle_steps: int = 100  # control steps held with zero action: 2 s at 50 Hz (the paper: ~2 s)
    shake_amplitude: float = 0.0  # arm target shake (joint units) during the first steps; 0 = none
    shake_steps: int = 0  # control steps of shaking (<= settle_steps)


@dataclasses.dataclass(frozen=True)
class ResetType:
    """One family of reset states: ``sampler(key) -> SimState`` plus its validation limits."""

    name: str
    sampler: Callable[[jax.Array], SimState]
    limits: ValidationLimits = ValidationLimits()


class DatasetMismatchError(ValueError):
    """A reset dataset does not belong to the model it is loaded for."""


@dataclasses.dataclass
class ResetDataset:
    """Per-type arrays of validated states + the metadata that ties them to one model."""

    task_name: str
    type_names: tuple[str, ...]
    qpos: list[np.ndarray]  # per type [n_t, nq]
    qvel: list[np.ndarray]  # per type [n_t, nv]
    ctrl: list[np.ndarray]  # per type [n_t, nu]
    nq: int
    nv: int
    nu: int
    body_names: tuple[str, ...]
    acceptance: dict[str, float] = dataclasses.field(default_factory=dict)
    version: int = DATASET_VERSION
    # seconds every candidate was held with zero action before it was judged; None: saved before
    # stop 36, when it was not recorded (PegInsertion's types then settled 1.2 s, PushToSlot's 0.5 s)
    settle_seconds: float | None = None

    def __post_init__(self):
        k = len(self.type_names)
        if not (len(self.qpos) == len(self.qvel) == len(self.ctrl) == k):
            raise ValueError("qpos/qvel/ctrl need one array per reset type")
        for name, q, v, c in zip(self.type_names, self.qpos, self.qvel, self.ctrl):
            n = q.shape[0]
            if q.shape != (n, self.nq) or v.shape != (n, self.nv) or c.shape != (n, self.nu):
                raise ValueError(
                    f"reset type {name!r}: arrays have shapes qpos {q.shape}, qvel {v.shape}, "
                    f"ctrl {c.shape}; expected [n, {self.nq}], [n, {self.nv}], [n, {self.nu}]"
                )

    @property
    def counts(self) -> dict[str, int]:
        return {n: int(q.shape[0]) for n, q in zip(self.type_names, self.qpos)}

    def states(self, type_name: str) -> SimState:
        i = self.type_names.index(type_name)
        return SimState(self.qpos[i], self.qvel[i], self.ctrl[i])

    # ------------------------------------------------------------ checks
    def check_compatible(self, task: ManipulationTask) -> None:
        """Raise `DatasetMismatchError` naming what differs between this dataset and ``task``."""
        problems = []
        if (self.nq, self.nv, self.nu) != (task.nq, task.nv, task.nu):
            problems.append(
                f"sizes differ: dataset nq={self.nq}, nv={self.nv}, nu={self.nu}; "
                f"model nq={task.nq}, nv={task.nv}, nu={task.nu}"
            )
        if tuple(self.body_names) != tuple(task.body_names):
            missing = sorted(set(self.body_names) - set(task.body_names))
            extra = sorted(set(task.body_names) - set(self.body_names))
            problems.append(
                f"body names differ: only in dataset {missing}, only in model {extra}"
                + ("" if missing or extra else " (same names, different order)")
            )
        if problems:
            raise DatasetMismatchError(
                f"reset dataset built for task {self.task_name!r} does not fit model "
                f"{task.name!r}: " + "; ".join(problems)
            )

    # --------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> None:
        meta = {
            "version": self.version,
            "task_name": self.task_name,
            "type_names": list(self.type_names),
            "nq": self.nq,
            "nv": self.nv,
            "nu": self.nu,
            "body_names": list(self.body_names),
            "acceptance": self.acceptance,
            "settle_seconds": self.settle_seconds,
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for i in range(len(self.type_names)):
            arrays[f"qpos_{i}"] = self.qpos[i]
            arrays[f"qvel_{i}"] = self.qvel[i]
            arrays[f"ctrl_{i}"] = self.ctrl[i]
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, task: ManipulationTask | None = None) -> ResetDataset:
        """Load a dataset; with ``task``, also check it fits that model (else a clear error)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            version = meta.get("version")
            if version != DATASET_VERSION:
                raise DatasetMismatchError(
                    f"{path}: reset dataset version {version}, this code reads version {DATASET_VERSION}; "
                    "rebuild it with envs.omnireset.build_and_save"
                )
            k = len(meta["type_names"])
            ds = cls(
                task_name=meta["task_name"],
                type_names=tuple(meta["type_names"]),
                qpos=[np.asarray(z[f"qpos_{i}"]) for i in range(k)],
                qvel=[np.asarray(z[f"qvel_{i}"]) for i in range(k)],
                ctrl=[np.asarray(z[f"ctrl_{i}"]) for i in range(k)],
                nq=int(meta["nq"]),
                nv=int(meta["nv"]),
                nu=int(meta["nu"]),
                body_names=tuple(meta["body_names"]),
                acceptance={k_: float(v) for k_, v in meta.get("acceptance", {}).items()},
                version=version,
                settle_seconds=meta.get("settle_seconds"),
            )
        if task is not None:
            ds.check_compatible(task)
        ds._notice_short_settle(path)
        return ds

    def _notice_short_settle(self, path) -> None:
        """A dataset whose candidates settled less than the paper's ~2 s (or an unknown time)
        holds states that may still be moving: say so where it is loaded."""
        if self.settle_seconds is None:
            notice(f"{path}: saved without its settle time (before stop 36, when candidates settled "
                   f"less than the paper's ~{SETTLE_SECONDS:g} s); rebuild it with `jaxrl resets build`")
        elif self.settle_seconds < SETTLE_SECONDS - 1e-6:
            notice(f"{path}: candidates settled {self.settle_seconds:g} s before they were judged, "
                   f"less than the paper's ~{SETTLE_SECONDS:g} s")


# ------------------------------------------------------------------ validation
def simulate_and_check(
    task: ManipulationTask,
    sims: SimState,  # batched [B, ...]
    limits: dict[str, jax.Array],  # each [B]: max_qvel, max_penetration, max_drift, shake_amplitude
    key: jax.Array,
    settle_steps: int,
    shake_steps: int,
) -> tuple[SimState, dict[str, jax.Array]]:
    """Hold every candidate's targets for ``settle_steps`` (after optional shaking) on MJX: the
    paper's "zero action" in its relative action space (set points unchanged, a grasp stays
    closed), not the env's action 0, whose absolute gripper command is half open.

    Returns the settled states (held targets reset to the settled joint positions) and per-candidate
    measurements plus the boolean ``ok``.
    """
    hold_act = jnp.asarray(task._hold_act)

    def one(sim: SimState, amp: jax.Array, key: jax.Array):
        data = task.make_data(sim)
        p0 = task.drift_points(data)
        base_ctrl = data.ctrl
        direction = jax.random.normal(key, (hold_act.shape[0],))
        direction = direction / (jnp.linalg.norm(direction) + 1e-6)
        freq = 2.0 * math.pi * 2.0 * task.dt  # 2 Hz shake

        def body(carry, t):
            d, pen = carry
            wobble = amp * jnp.sin(freq * t) * direction * (t < shake_steps)
            ctrl = base_ctrl.at[hold_act].add(wobble) if hold_act.shape[0] else base_ctrl
            d = task.physics_step(d.replace(ctrl=ctrl))
            return (d, jnp.maximum(pen, task.penetration(d))), None

        (data, pen), _ = jax.lax.scan(
            body, (data, task.penetration(data)), jnp.arange(settle_steps, dtype=jnp.float32)
        )
        qvel_max = jnp.max(jnp.abs(data.qvel))
        drift = jnp.max(jnp.linalg.norm(task.drift_points(data) - p0, axis=-1))
        finite = jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel))
        out = SimState(data.qpos, data.qvel, task.hold_ctrl(data.qpos, base_ctrl))
        return out, {"qvel_max": qvel_max, "penetration": pen, "drift": drift, "finite": finite}

    keys = jax.random.split(key, sims.qpos.shape[0])
    out, m = jax.vmap(one)(sims, limits["shake_amplitude"], keys)
    ok = (
        m["finite"]
        & (m["qvel_max"] <= limits["max_qvel"])
        & (m["penetration"] <= limits["max_penetration"])
        & (m["drift"] <= limits["max_drift"])
    )
    return out, {**m, "ok": ok}


def _limit_arrays(reset_types: Sequence[ResetType], n: int) -> dict[str, jax.Array]:
    fields = ("max_qvel", "max_penetration", "max_drift", "shake_amplitude")
    return {
        f: jnp.repeat(jnp.array([getattr(t.limits, f) for t in reset_types], jnp.float32), n)
        for f in fields
    }


def build_dataset(
    task: ManipulationTask,
    reset_types: Sequence[ResetType],
    per_type: int,
    key: jax.Array,
    *,
    oversample: float = 2.0,
    max_rounds: int | None = None,
    verbose: bool = False,
    max_candidates: int = MAX_CANDIDATES,
) -> ResetDataset:
    """Generate ``per_type`` validated states of every reset type (see the module docstring).

    Each round samples ``ceil(per_type * oversample)`` candidates per type (at most
    ``max_candidates`` over all types: a 10k-per-type build then runs in rounds of that size
    instead of one simulation of 20k candidates per type), validates all types' candidates in one
    vmapped simulation, and keeps the accepted ones until every type has ``per_type`` (at most
    ``max_rounds`` rounds, default 8 times the rounds the candidate cap alone needs; a type that
    falls short gets a warning, one with none is kept empty and the mixture wrapper refuses to
    draw from it).  The acceptance rate of a type is accepted / simulated candidates, over the
    rounds it took part in.
    """
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    if max_candidates < len(reset_types):
        raise ValueError(f"max_candidates must be >= the number of reset types ({len(reset_types)}), "
                         f"got {max_candidates}")
    if not reset_types:
        raise ValueError("need at least one reset type")
    names = [t.name for t in reset_types]
    if len(set(names)) != len(names):
        raise ValueError(f"reset type names must be unique, got {names}")
    settle = max(t.limits.settle_steps for t in reset_types)
    shake = max(t.limits.shake_steps for t in reset_types)
    k = len(reset_types)
    wanted = math.ceil(per_type * oversample)
    n = min(wanted, max_candidates // k)
    if max_rounds is None:
        max_rounds = 8 * math.ceil(wanted / n)
    limits = _limit_arrays(reset_types, n)

    @functools.partial(jax.jit, compiler_options=_validation_options(n * k, settle))
    def round_fn(key):
        keys = jax.random.split(key, k + 1)
        parts = [
            jax.vmap(t.sampler)(jax.random.split(keys[i], n)) for i, t in enumerate(reset_types)
        ]
        sims = jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *parts)
        return simulate_and_check(task, sims, limits, keys[k], settle, shake)

    kept: list[list[SimState]] = [[] for _ in range(k)]
    have = np.zeros(k, int)
    tried = np.zeros(k, int)
    accepted = np.zeros(k, int)
    for r in range(max_rounds):
        if np.all(have >= per_type):
            break
        key, sub = jax.random.split(key)
        out, m = round_fn(sub)
        out = jax.tree.map(np.asarray, out)
        ok = np.asarray(m["ok"]).reshape(k, n)
        for i in range(k):
            if have[i] >= per_type:
                continue
            tried[i] += n
            accepted[i] += int(ok[i].sum())
            idx = np.flatnonzero(ok[i])[: per_type - have[i]] + i * n
            kept[i].append(SimState(out.qpos[idx], out.qvel[idx], out.ctrl[idx]))
            have[i] += len(idx)
        if verbose:
            print(f"round {r}: kept {dict(zip(names, have.tolist()))}")
    acceptance = {nm: float(accepted[i] / max(tried[i], 1)) for i, nm in enumerate(names)}
    for i, nm in enumerate(names):
        if have[i] < per_type:
            warnings.warn(
                f"reset type {nm!r}: only {have[i]} of {per_type} states after {max_rounds} rounds "
                f"(acceptance {acceptance[nm]:.3f})",
                stacklevel=2,
            )

    def cat(parts, field, width):
        arrs = [getattr(p, field) for p in parts]
        return (
            np.concatenate(arrs, 0).astype(np.float32) if arrs else np.zeros((0, width), np.float32)
        )

    return ResetDataset(
        task_name=task.name,
        type_names=tuple(names),
        qpos=[cat(kept[i], "qpos", task.nq) for i in range(k)],
        qvel=[cat(kept[i], "qvel", task.nv) for i in range(k)],
        ctrl=[cat(kept[i], "ctrl", task.nu) for i in range(k)],
        nq=task.nq,
        nv=task.nv,
        nu=task.nu,
        body_names=task.body_names,
        acceptance=acceptance,
        settle_seconds=round(settle * task.dt, 6),
    )


def revalidate(
    task: ManipulationTask, dataset: ResetDataset, reset_types: Sequence[ResetType], key: jax.Array
) -> dict[str, np.ndarray]:
    """Re-simulate every stored state (no shaking) and return each type's ``ok`` flags."""
    result = {}
    for t in reset_types:
        sims = jax.tree.map(jnp.asarray, dataset.states(t.name))
        n = sims.qpos.shape[0]
        lim = {
            "max_qvel": jnp.full((n,), t.limits.max_qvel),
            "max_penetration": jnp.full((n,), t.limits.max_penetration),
            "max_drift": jnp.full((n,), t.limits.max_drift),
            "shake_amplitude": jnp.zeros((n,)),
        }
        quick = _validation_options(n, t.limits.settle_steps)
        _, m = jax.jit(simulate_and_check, static_argnums=(0, 4, 5), compiler_options=quick)(
            task, sims, lim, key, t.limits.settle_steps, 0
        )
        result[t.name] = np.asarray(m["ok"])
    return result
