"""MuJoCo C physics inside a traced MJX task step: the swap sim-to-sim (`jaxrl.io.sim2sim`) and
the finetuning targets simulated by MuJoCo C (`envs.variants`) share.

How the physics is swapped without rewriting each task: a task's ``step`` computes the control,
advances physics through one function (Playground's ``mjx_env.step(model, data, action,
n_substeps)``, our tasks' ``physics_step(data)``), then reads observation and reward off the new
``mjx.Data``.  `mujoco_physics` replaces that one function, while a step is traced, with a
``jax.pure_callback`` into `CPhysics`: it copies the state (qpos, qvel, act, ctrl, mocap, applied
forces, warm start, time) into an ``mujoco.MjData``, calls ``mujoco.mj_step`` ``n_substeps``
times and converts the result back with ``mjx.put_data``, so every derived quantity the task reads
(sensors, site frames, contacts) is the C simulator's (float64, its own solver and collisions).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# mjx.Data array fields that define the state mj_step advances from (plus ``time``).
_STATE_FIELDS = ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat", "qacc_warmstart",
                 "qfrc_applied", "xfrc_applied", "eq_active", "history", "userdata")


class CPhysics:
    """MuJoCo C stepping of one model, callable from inside jit through `step_data`."""

    def __init__(self, mj_model):
        import mujoco

        self.model = mj_model
        self.data = mujoco.MjData(mj_model)
        self.calls = 0  # host calls so far (tests use it to prove the C path ran)
        self.warnings = 0  # MuJoCo instability warnings (bad qacc -> auto reset) seen
        # MjData -> mjx.Data as numpy, without `mjx.put_data`'s device transfer (85% of a host call:
        # ~8 ms of put_data against ~3 µs of mj_step for a cartpole).  None until the first call
        # compares it with put_data; False: they differed, so every call uses put_data.
        self.fast_conversion: bool | None = None

    def _host_step(self, template: Any, state: dict, n_substeps: np.ndarray) -> Any:
        """The state fields (numpy) -> numpy mjx.Data shaped like ``template`` after ``n_substeps``
        C steps."""
        import mujoco
        from mujoco import mjx

        d = self.data
        mujoco.mj_resetData(self.model, d)
        d.time = float(state["time"])
        for name, value in state.items():
            if name != "time":
                target = getattr(d, name)
                target[...] = np.asarray(value).reshape(target.shape).astype(target.dtype)
        for _ in range(int(n_substeps)):
            mujoco.mj_step(self.model, d)
        self.warnings += int(d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number)  # (reset zeroed it)
        self.calls += 1
        as_data = lambda out: jax.tree.map(lambda t, x: np.asarray(x, dtype=t.dtype).reshape(t.shape), template, out)
        if self.fast_conversion is None:  # decided once: the fast path must equal mjx.put_data
            official = as_data(mjx.put_data(self.model, d, impl="jax"))
            try:
                fast = as_data(_put_data_numpy(self.model, d))
                same = jax.tree.structure(fast) == jax.tree.structure(official) and all(
                    np.array_equal(a, b, equal_nan=True) for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(official)))
            except Exception:  # noqa: BLE001 (another MuJoCo version's internals: stay on the public path)
                same = False
            self.fast_conversion = same
            return official
        if self.fast_conversion:
            return as_data(_put_data_numpy(self.model, d))
        return as_data(mjx.put_data(self.model, d, impl="jax"))

    def step_data(self, data: Any, n_substeps: int = 1) -> Any:
        """Traceable: the mjx.Data after ``n_substeps`` C steps from ``data`` (ctrl as set in it).

        Only the state fields go to the host, and the new mjx.Data comes back packed into one
        flat array per dtype, unpacked here: JAX moves each leaf of a callback's arguments and
        results separately, and for the ~90 leaves of a whole mjx.Data that transfer was most of
        a call (cartpole: ~13 of ~15 ms per step; packed, ~2 ms)."""
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), data)
        leaves, treedef = jax.tree.flatten(template)
        dtypes = sorted({np.dtype(t.dtype).str for t in leaves})
        groups = [[i for i, t in enumerate(leaves) if np.dtype(t.dtype).str == dt] for dt in dtypes]
        sizes = [int(np.prod(t.shape)) for t in leaves]
        packed = tuple(jax.ShapeDtypeStruct((sum(sizes[i] for i in g),), np.dtype(dt)) for dt, g in zip(dtypes, groups))
        state = {name: getattr(data, name) for name in _STATE_FIELDS
                 if hasattr(data, name) and hasattr(self.data, name) and np.size(getattr(self.data, name))}
        state["time"] = data.time

        def host(state: dict, n: np.ndarray) -> tuple:
            out = jax.tree.leaves(self._host_step(template, state, n))
            return tuple(np.concatenate([out[i].reshape(-1) for i in g]) for g in groups)

        flats = jax.pure_callback(host, packed, state, np.int32(n_substeps), vmap_method="sequential")
        out = [None] * len(leaves)
        for flat, g in zip(flats, groups):
            offset = 0
            for i in g:
                out[i] = flat[offset:offset + sizes[i]].reshape(leaves[i].shape)
                offset += sizes[i]
        return jax.tree.unflatten(treedef, out)


class _JaxWithoutDevicePut:
    """`jax` as `mujoco.mjx._src.io` sees it while `_put_data_numpy` runs: everything but
    ``device_put``, which returns its (numpy) argument."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jax, name)

    @staticmethod
    def device_put(x: Any, device: Any = None) -> Any:
        return x


_IO_LOCK = threading.Lock()


def _put_data_numpy(model: Any, d: Any) -> Any:
    """``mjx.put_data(model, d, impl="jax")`` with numpy leaves: MJX's own conversion (contacts,
    constraint rows, mass matrix) minus the device transfer and weak-type pass.  Uses MJX
    internals, so `CPhysics` checks it against `mjx.put_data` once before relying on it."""
    from mujoco.mjx._src import io

    with _IO_LOCK:
        saved = io.jax, io._strip_weak_type
        io.jax, io._strip_weak_type = _JaxWithoutDevicePut(), lambda tree: tree
        try:
            tree = io._put_data_jax(model, d)
        finally:
            io.jax, io._strip_weak_type = saved
    # what device_put does to MuJoCo's float64 without x64: round to float32
    narrow = not jax.config.jax_enable_x64
    return jax.tree.map(lambda x: np.asarray(x, np.float32) if narrow and np.asarray(x).dtype == np.float64
                        else np.asarray(x), tree)


@contextlib.contextmanager
def mujoco_physics(task: Any, physics: CPhysics):
    """While active, traced ``task.step`` calls advance physics with `physics` (MuJoCo C)."""
    if hasattr(task, "physics_step"):  # jaxrl tasks (envs.manipulation): one method per task
        n = int(getattr(task, "n_substeps", 1))
        task.physics_step = lambda data: physics.step_data(data, n)
        try:
            yield
        finally:
            del task.physics_step
        return
    from mujoco_playground._src import mjx_env

    if not isinstance(task, mjx_env.MjxEnv):
        raise NotImplementedError(
            f"sim2sim supports MuJoCo Playground tasks and jaxrl's own tasks; {type(task).__name__} "
            "steps physics another way (Brax pipelines are not MuJoCo C compatible)"
        )
    original = mjx_env.step

    def c_step(model, data, action, n_substeps=1):
        return physics.step_data(data.replace(ctrl=action), n_substeps)

    mjx_env.step = c_step
    try:
        yield
    finally:
        mjx_env.step = original
