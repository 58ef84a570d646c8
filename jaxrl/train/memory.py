"""Does a compiled program fit the device?  XLA's buffer assignment says before the program runs.

The replay preflight (`jaxrl.data.replay.check_memory`) counts what a run keeps (buffer, env
state, agent, sampled rows) before anything compiles.  What it cannot count are XLA's
temporaries: the update's activations at the batch size, the physics step's intermediates for
every env.  Once a program is compiled its `memory_analysis()` gives them exactly, so the loop
checks each program there, before its first call: a run that would run out of device memory
stops with the knobs to turn, instead of an allocator error some minutes in (GPU), or swapping
the host to a halt (CPU).  The loops check the programs they compile and call themselves:
the training chunk and the evaluation (`HostLoop._call`), the evaluation first
(`HostLoop.run_chunk`), so neither refusal comes after any training.
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
        return ProgramMemory(name, int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes),
                             int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes))
    except Exception:  # noqa: BLE001 - backends without the analysis (None, missing fields) say nothing
        return None


def free_bytes(devices: Any = None) -> tuple[int | None, int]:
    """(free memory of the emptiest of ``devices``, how many of them draw on it), now: what is
    already allocated (the carry) is not free.  ``devices`` default to this process's first.
    CPU devices are one host's RAM, so N of them draw N times on the same free bytes."""
    import jax

    from jaxrl.data import replay

    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    have = [replay.device_memory_bytes(d) for d in devices]
    sharing = sum(d.platform == "cpu" for d in devices) or 1
    return (None if any(h is None for h in have) else min(have)), sharing


def fits(memory: ProgramMemory, free: int | None, sharing: int = 1, fraction: float = 0.95) -> bool:
    """Whether ``sharing`` calls of the program at once (one per device on one free pool) fit in
    ``fraction`` of ``free`` bytes; unknown free memory fits."""
    return free is None or sharing * memory.new <= fraction * free


def refusal(memory: ProgramMemory, knobs: str, free: int, sharing: int = 1, fraction: float = 0.95,
            where: str = "") -> ProgramMemoryError:
    """The error for a program that does not fit: the sizes, the free memory and ``knobs``."""
    devices = f" on each of {sharing} devices sharing this host's memory" if sharing > 1 else ""
    return ProgramMemoryError(
        f"the compiled {memory.name} program needs {memory.new / GIB:.2f} GiB{devices} beyond its "
        f"{memory.arguments / GIB:.2f} GiB of arguments ({memory.temporaries / GIB:.2f} GiB of XLA "
        f"temporaries, {(memory.outputs - memory.aliased) / GIB:.2f} GiB of new results), but "
        f"{where or 'the device'} has {free / GIB:.2f} GiB free ({fraction:.0%} usable); it was not "
        f"called.  Lower {knobs}; or free device memory (another process, a smaller buffer_size)")


def check(memory: ProgramMemory, knobs: str, free: int | None, sharing: int = 1, fraction: float = 0.95) -> None:
    """Raise `ProgramMemoryError` when the program does not fit (`fits`).  ``knobs`` names the
    settings that shrink it."""
    if not fits(memory, free, sharing, fraction):
        raise refusal(memory, knobs, free, sharing, fraction)


def describe(memory: ProgramMemory, free: int | None) -> str:
    """One line for the run's log."""
    have = "unknown" if free is None else f"{free / GIB:.2f} GiB"
    return (f"{memory.name} program: {memory.temporaries / GIB:.2f} GiB of XLA temporaries and "
            f"{(memory.outputs - memory.aliased) / GIB:.2f} GiB of new results beside its "
            f"{memory.arguments / GIB:.2f} GiB of arguments (per device); device free memory {have}")
