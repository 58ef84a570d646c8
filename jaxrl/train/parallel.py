"""Data parallelism over devices and hosts: one program under a 1-D `Mesh` whose axis is ``data``.

What is sharded and how (the issue's rule: each device simulates, inserts and samples its own
share; nothing buffer-sized crosses devices on the hot path):

* **Simulation** — `envs.wrappers.VecEnv.distribute(mesh)`: the env axis of the env state is split
  over the devices and the per-env physics (vmapped MJX step + auto-reset) runs under
  `jax.shard_map`, each device on its own envs.  Counters (episodes, returns, NaN actions) are
  global sums; reset keys are split for all envs first and then handed out, so a D-device run
  draws the same resets as a one-device run.
* **Replay** — `jaxrl.data.replay`: the buffer is laid out [time, env, ...] and split on the env
  axis, so the rows a device inserts are the rows it holds; `replay.sample` runs under
  `shard_map` and draws each device's share of the batch from its own rows.  The layout does not
  depend on the device count: a checkpoint written on D devices restores onto D'.
* **Learner** — plain GSPMD: parameters and optimiser states are replicated, the batch is split
  on its leading axis, and XLA's partitioner inserts the all-reduces that make every statistic
  global (gradient means, BatchNorm batch moments, observation-normaliser moments, FlashSAC's
  reward-scale moments).  So one update on D devices equals the one-device update on the same
  global batch to float tolerance, and the algorithms are written for one device only.

Why `shard_map` for the simulator but GSPMD for the learner: GSPMD partitions a vmapped MJX step
correctly but keeps the solver's batched while-loops in lock-step across devices (the loop
condition of a split batch needs one all-reduce per solver iteration), while under `shard_map`
each device iterates only as long as its own envs need and nothing crosses devices.
`experiments/throughput.py` measures both ("raw" rows, modes ``shard_map`` and ``gspmd``;
README "Throughput").  MJX's solver trips `shard_map`'s
varying-manual-axes check, hence ``check_vma=False`` (every input is either split or really
replicated, which is what the check would verify).  Explicit-sharding mesh axes
(`jax.sharding.AxisType.Explicit`) break vmapped env steps, so the mesh uses the default axis type.

Several hosts: call ``jax.distributed.initialize()`` before anything else (`initialize_distributed`);
``jax.devices()`` then lists every host's devices, the mesh spans them all and the same program
runs on every host (README: launch commands).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def visible_devices() -> int:
    """Devices of the default backend, over all hosts."""
    return jax.device_count()


def resolve_devices(requested: int | None, divisors: dict[str, int]) -> int:
    """How many devices a run uses.

    ``requested`` None (automatic): the most devices that divide every quantity in ``divisors``
    (e.g. ``{"num_envs": 16, "batch_size": 128}``), all visible ones when they all divide, at most
    ``$JAXRL_DEVICES`` when that is set.  On CPU the automatic choice is ONE device unless
    ``$JAXRL_DEVICES`` says more: one XLA:CPU program already spreads a vmapped batch over every
    core, and splitting it over two host devices measured slower on a 2-core machine (raw MJX
    0.51×, PPO loop 0.66×: README "Throughput").  An explicit ``requested`` must be visible and
    divide them all, else a ValueError says what to change.
    """
    visible = visible_devices()
    cap = os.environ.get("JAXRL_DEVICES", "").strip()
    if requested is None and jax.process_count() == 1:
        if cap and (not cap.isdigit() or int(cap) < 1):
            raise ValueError(f"JAXRL_DEVICES must be a positive integer, got {cap!r}")
        default = int(cap) if cap else (1 if jax.default_backend() == "cpu" else visible)
        visible = min(visible, default)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
            raise ValueError(f"devices must be a positive integer, got {requested!r}")
        if requested > visible:
            raise ValueError(
                f"devices={requested} but only {visible} {jax.default_backend()} device(s) are visible; "
                "use --devices <= that (on CPU, JAXRL_CPU_DEVICES or XLA_FLAGS="
                "--xla_force_host_platform_device_count=N before starting Python gives N host devices)")
        if jax.process_count() > 1 and requested != visible:
            raise ValueError(
                f"devices={requested} in a run over {jax.process_count()} processes: a multi-host run "
                f"uses every device of every host ({visible}); omit --devices or pass {visible}")
        bad = {k: v for k, v in divisors.items() if v % requested}
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            fewer = "" if jax.process_count() > 1 else " or fewer devices"  # several hosts: all of them
            raise ValueError(f"devices={requested} must divide {what}: each device takes an equal "
                             f"share; choose multiples of {requested}{fewer}")
        return int(requested)
    if jax.process_count() > 1:
        # Every host must take part: no silent shrinking below the global device count.
        return resolve_devices(visible, divisors)
    g = 0
    for v in divisors.values():
        g = math.gcd(g, int(v))
    g = g or 1
    return max(d for d in range(1, visible + 1) if g % d == 0)


def make_mesh(devices: int) -> Mesh | None:
    """A 1-D mesh over the first ``devices`` devices (None for one device: no sharding at all)."""
    if devices <= 1:
        return None
    return Mesh(np.asarray(jax.devices()[:devices]), (AXIS,))


def mesh_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_spec(leading: int) -> P:
    """The spec of an array whose axis ``leading`` is the split one (env or batch axis)."""
    return P(*([None] * leading + [AXIS]))


def shardings(tree: Any, mesh: Mesh | None, rule: Callable[[str, Any], P]) -> Any:
    """`NamedSharding`s for every leaf of ``tree`` (arrays or ShapeDtypeStructs) from
    ``rule(path, leaf) -> PartitionSpec``; None without a mesh.  Empty leaves (an MJX model
    without actuator activations has ``act`` of shape [N, 0]) are replicated whatever the rule
    says: XLA canonicalises their sharding so, and a split one would not match a compiled program."""
    if mesh is None:
        return None

    def one(path, x):
        spec = P() if 0 in np.shape(x) else rule(jax.tree_util.keystr(path), x)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def split_leading(n: int) -> Callable[[str, Any], P]:
    """A rule that splits every leaf whose first axis has length ``n`` and replicates the rest
    (scalars, keys, unbatched placeholder leaves)."""

    def rule(_path: str, x: Any) -> P:
        shape = np.shape(x)
        return P(AXIS) if len(shape) >= 1 and shape[0] == n else P()

    return rule


def local_map(fn: Callable, mesh: Mesh | None, in_specs: Any, out_specs: Any) -> Callable:
    """``fn`` run per device on its shard (`jax.shard_map`, ``check_vma=False``: see the module
    docstring); ``fn`` itself without a mesh."""
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def axis_index(mesh: Mesh | None) -> jax.Array | int:
    """This device's position on the data axis inside `local_map` (0 without a mesh)."""
    return 0 if mesh is None else jax.lax.axis_index(AXIS)


def host_value(x: Any) -> np.ndarray:
    """A replicated (or fully addressable) array as numpy on this host; under several hosts a
    replicated array is not fully addressable, but each host holds a whole copy of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def initialize_distributed() -> bool:
    """Join a multi-host run when this process was launched as one of several; returns whether it
    was.  Two launch forms (README, "Several hosts"):

    * SLURM with several tasks (``srun``): JAX finds coordinator, process count and id itself;
    * by hand: ``JAX_COORDINATOR_ADDRESS=host:port`` with ``JAXRL_NUM_PROCESSES`` and
      ``JAXRL_PROCESS_ID`` on every host.

    Must run before the first JAX computation (`jaxrl.cli` calls it first)."""
    if jax.distributed.is_initialized():
        guard_compilation_cache()
        return True
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        missing = [k for k in ("JAXRL_NUM_PROCESSES", "JAXRL_PROCESS_ID") if k not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not: set "
                             "JAXRL_NUM_PROCESSES (hosts in the run) and JAXRL_PROCESS_ID (0 .. N-1) too")
        jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAXRL_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAXRL_PROCESS_ID"]))
        guard_compilation_cache()
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        guard_compilation_cache()
        return True
    return False


def guard_compilation_cache() -> bool:
    """Several processes on CPU with a jaxlib whose cache-loaded programs hang in cross-process
    collectives (`envs._runtime.cached_collectives_hang`: 0.12.1): switch the persistent
    compilation cache off for this process, with a notice, so every program is compiled rather
    than loaded.  Returns whether it did.  Takes effect only before the process's first compile
    (JAX decides once whether to use the cache): `initialize_distributed` and `run.train` call it."""
    from envs._runtime import cached_collectives_hang, jaxlib_version, notice

    if (jax.process_count() == 1 or jax.default_backend() != "cpu" or not cached_collectives_hang()
            or not jax.config.jax_enable_compilation_cache):
        return False
    jax.config.update("jax_enable_compilation_cache", False)
    notice(f"jaxlib {jaxlib_version()}: programs loaded from the compilation cache hang in CPU "
           "collectives across processes; compiling every program of this multi-process run instead")
    return True
