"""Does a compiled program fit the device?  XLA's buffer assignment says before the program runs.

The replay preflight (`jaxrl.data.replay.check_memory`) counts what a run keeps (buffer, env
state, agent, sampled rows) before anything compiles.  What it cannot count are XLA's
temporaries: the update's activations at the batch size, the physics step's intermediates for
every env.  Once a program is compiled its `memory_analysis()` gives them exactly, so the loop
checks each program there, before its first call: a run that would run out of device memory
stops with the knobs to turn, instead of an allocator error some minutes in (GPU), or swapping
the host to a halt (CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any

GIB = 2**30


class ProgramMemoryError(MemoryError):
    """A compiled program needs more device memory than the device has free."""


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes of one compiled program, per device (XLA's buffer assignment)."""

    name: str
    arguments: int  # already resident when it is called (the carry: buffer, env state, agent)
    outputs: int  # all its results
    aliased: int  # results written into donated arguments: no new memory
    temporaries: int  # intermediates: activations, sampled rows, the physics step's arrays

    @property
    def new(self) -> int:
        """Bytes a call allocates beyond its arguments."""
        return self.temporaries + self.outputs - self.aliased

    def as_dict(self) -> dict[str, int]:
        return {"arguments": self.arguments, "outputs": self.outputs, "aliased": self.aliased,
                "temporaries": self.temporaries, "new": self.new}


def program_memory(name: str, compiled: Any) -> ProgramMemory | None:
    """The sizes of ``compiled`` (a `jax.stages.Compiled`), or None where the backend says nothing."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis (some plugins) raise
        return None
    if stats is None:
        return None
    return ProgramMemory(name, int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                         int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes))


def free_bytes(devices: Any = None) -> int | None:
    """Free memory of the emptiest of ``devices`` (default: this process's first device), now:
    what is already allocated (the carry) is not free."""
    import jax

    from jaxrl.data import replay

    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    have = [replay.device_memory_bytes(d) for d in devices]
    return None if any(h is None for h in have) else min(have)


def check(memory: ProgramMemory, knobs: str, free: int | None, fraction: float = 0.95) -> None:
    """Raise `ProgramMemoryError` when one call of the program needs more than ``fraction`` of the
    ``free`` bytes (unknown free memory passes).  ``knobs`` names the settings that shrink it."""
    if free is None or memory.new <= fraction * free:
        return
    raise ProgramMemoryError(
        f"the compiled {memory.name} program needs {memory.new / GIB:.2f} GiB beyond its "
        f"{memory.arguments / GIB:.2f} GiB of arguments ({memory.temporaries / GIB:.2f} GiB of XLA "
        f"temporaries, {(memory.outputs - memory.aliased) / GIB:.2f} GiB of new results), but the "
        f"device has {free / GIB:.2f} GiB free ({fraction:.0%} usable).  Nothing has run yet.  "
        f"Lower {knobs}; or free device memory (another process, a smaller buffer_size)")


def describe(memory: ProgramMemory, free: int | None) -> str:
    """One line for the run's log."""
    have = "unknown" if free is None else f"{free / GIB:.2f} GiB"
    return (f"{memory.name} program: {memory.temporaries / GIB:.2f} GiB of XLA temporaries and "
            f"{(memory.outputs - memory.aliased) / GIB:.2f} GiB of new results beside its "
            f"{memory.arguments / GIB:.2f} GiB of arguments (per device); device free memory {have}")
