"""Process-wide settings, applied once when `envs` (and so `jaxrl`) is imported.

* Persistent compilation cache, on by default in ``~/.cache/jaxrl/xla`` (override the folder with
  ``JAXRL_COMPILATION_CACHE=/path``, switch it off with ``JAXRL_COMPILATION_CACHE=off``).  On CPU
  compiling an MJX step takes longer than running thousands of them; the cache makes the second
  run of a script or test start in seconds.  It must be set before the first compilation.
* Matmul precision is NOT set process-wide: the env step is traced under 'highest'
  (`envs.wrappers.PHYSICS_MATMUL_PRECISION`) and learners use their config's precision, so a GPU
  learner can still use TF32 / bf16.
* Short programs compile the quick way: `short_program_options` gives the XLA options that
  programs which run briefly after compiling (sim2sim's single-env reset and step) use, and
  `few_steps_options` the cheaper ones for a program known to simulate only a few env steps
  (``jaxrl sim2sim --max-steps 5``, a short ``jaxrl eval``, a `VecEnv` reset or step called from
  Python: `eager_env_options`; a short training run's chunk, init and first reset:
  `short_run_options`).
* A quiet console: MJX-Warp's per-step overflow prints and warp's module-load lines are off
  unless ``JAXRL_VERBOSE=1`` or `set_verbose(True)` (CLI ``--verbose``).
* One CPU device per core: XLA:CPU shows one device by default, so a data-parallel program
  (`jaxrl.train.parallel`) would leave all cores but one idle for simulation.  Before JAX starts
  its backends we ask for one host device per usable core (`usable_cores`) (``--xla_force_host_platform_device_count``),
  unless the user's own ``XLA_FLAGS`` already set it or ``JAXRL_CPU_DEVICES=N`` chooses N
  (``JAXRL_CPU_DEVICES=1`` restores XLA's default).  Not with a jaxlib whose batched LAPACK
  kernels deadlock on several CPU devices (`lapack_deadlock_prone`; excluded by pyproject.toml
  too).  GPUs and TPUs are unaffected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

_DONE = False
_VERBOSE = os.environ.get("JAXRL_VERBOSE", "").lower() in ("1", "true", "yes")
_NOTICES: set[str] = set()


def default_cache_dir() -> Path | None:
    value = os.environ.get("JAXRL_COMPILATION_CACHE", "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "jaxrl" / "xla"


def _quick_compiles() -> bool:
    """The quick options below apply: on CPU, unless ``JAXRL_SHORT_PROGRAM_OPTIONS=0``."""
    return os.environ.get("JAXRL_SHORT_PROGRAM_OPTIONS", "1") != "0" and jax.default_backend() == "cpu"


_ACCEPTED: dict[tuple[str, object], bool] = {}


def accepted_options(options: dict) -> dict | None:
    """The entries of ``options`` this jaxlib's XLA takes (None if none): compile options come and
    go between versions (jaxlib 0.12 refuses ``xla_cpu_use_fusion_emitters``, "No such compile
    option"), and a refused one fails the whole compile.  Each is tried once per process on a
    one-op program (milliseconds)."""
    import numpy as np

    for name, value in options.items():
        if (name, value) not in _ACCEPTED:
            try:
                jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
                _ACCEPTED[name, value] = True
            except Exception as e:  # jax.errors.JaxRuntimeError: INVALID_ARGUMENT
                if "compile option" not in str(e):
                    raise
                _ACCEPTED[name, value] = False
    kept = {k: v for k, v in options.items() if _ACCEPTED[k, v]}
    return kept or None


SHORT_PROGRAM_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
"""`short_program_options`' wish: XLA:CPU's loop emitters instead of its newer fusion emitters
(jaxlib 0.9-0.11; jaxlib 0.12 has only the fusion emitters and refuses the option)."""


def short_program_options() -> dict | None:
    """XLA compiler options for programs that run for moments after compiling: on CPU, XLA's
    loop emitters instead of its newer fusion emitters (`SHORT_PROGRAM_OPTIONS`, where this
    jaxlib takes it: `accepted_options`).
    Measured 2026-12-02 (2-core AMD EPYC with AVX-512, jax 0.9.2, empty cache): sim2sim's T1
    single-env reset compiles in 17.5 s instead of 25.2, its step in 20.7 instead of 27.4.  A
    training run's evaluations compile this way too (`jaxrl.train.loop.HostLoop.make_evaluate`:
    1-3.5 s sooner, as fast to run since they hold no auto-reset; measured 2026-12-07).  Not for
    training chunks: the cpu presets' updates ran ~20% slower this way (SAC 15.7 vs 12.5 s,
    FlashSAC 12.9 vs 10.6 s per 200 iterations).  None (XLA's defaults) on GPU/TPU, with
    ``JAXRL_SHORT_PROGRAM_OPTIONS=0``, or where XLA refuses it."""
    return accepted_options(SHORT_PROGRAM_OPTIONS) if _quick_compiles() else None


FEW_STEPS = 2_000
"""Env steps (all envs together) up to which `few_steps_options` compiles with XLA's backend
optimisation level 0: below it the compile time saved exceeds the slower steps."""


def few_steps_options(env_steps: int) -> dict | None:
    """XLA compiler options for a program that simulates at most `FEW_STEPS` env steps in all
    (episodes × steps): `SHORT_PROGRAM_OPTIONS` plus ``xla_backend_optimization_level=0``, those
    of them this jaxlib takes (`accepted_options`).
    Measured 2026-12-05 (2-core Intel Xeon, AVX-512, jax 0.9.2, empty cache), T1's single-env
    programs: reset compiles in 10.4 s instead of 18.1, step in 9.8 instead of 19.5, and a step
    then runs in 15.6 ms instead of 6.7 — a saving up to ~1,900 steps.  None (the caller's
    usual options) above `FEW_STEPS`, on GPU/TPU, or with ``JAXRL_SHORT_PROGRAM_OPTIONS=0``."""
    if not _quick_compiles() or env_steps > FEW_STEPS:
        return None
    return accepted_options({**SHORT_PROGRAM_OPTIONS, "xla_backend_optimization_level": 0})


FEW_ROWS = 16_384
"""Rows read by a run's gradient steps (updates × batch, per seed) up to which `short_run_options`
counts a training run as short: at level 0 a cpu-preset FlashSAC update (batch 128) runs ~40 ms
slower, so 16k rows cost at most ~5 s against the ~15 s its chunk's compile saves."""


def short_run_options(env_steps: int, gradient_rows: int) -> dict | None:
    """XLA compiler options for the programs of a training run short enough that compiling is
    nearly all its cost: at most `FEW_STEPS` env steps and `FEW_ROWS` rows through gradient steps
    per seed (a smoke run, a test's tiny run): `few_steps_options`' quick settings, for its chunk,
    its first reset and its init (`jaxrl.train.loop.HostLoop.quick_if_short`).  Measured 2026-12-06
    (2-core AMD EPYC, AVX2, jax 0.9.2, no cache), CartpoleBalance, 4 envs, 8-wide networks:
    FlashSAC's chunk compiles in 15.5 s instead of 27.2 (an iteration 2.9 ms instead of 1.5), PPO's
    in 11.6 instead of 19.6.  A run's numbers may differ from a longer run's in the last bits (no
    FMA contraction at level 0); a run and its resume use the same options.  None for longer runs,
    on GPU/TPU or with ``JAXRL_SHORT_PROGRAM_OPTIONS=0``."""
    if gradient_rows > FEW_ROWS:
        return None
    return few_steps_options(env_steps)


def run_once_options() -> dict | None:
    """XLA compiler options for a program run once or a few times from Python, where compiling
    is all its cost: an agent's ``init`` called eagerly (`jaxrl.algos.compiled_init`), a world
    model's.  `few_steps_options`' quick settings; the values may differ from the default
    options' in the last bits (no FMA contraction at level 0).  Measured 2026-12-06 (2-core AMD
    EPYC, AVX2, jax 0.9.2, no cache): FlashSAC's init compiles in 1.9 s instead of 6.6 (cpu
    preset).  None on GPU/TPU or with ``JAXRL_SHORT_PROGRAM_OPTIONS=0``."""
    return few_steps_options(0)


def eager_env_options() -> dict | None:
    """XLA compiler options for a `VecEnv`'s reset and step called from Python (not traced into
    another program): `few_steps_options`' quick settings.  Such calls come from notebooks, tests
    and debugging, a few steps at a time; training, evaluation, sim2sim and a user's jitted or
    scanned rollout trace the env into their own programs and are unaffected.  A long Python loop
    over ``env.step`` on CPU pays for it per step (T1, one env: 15.6 instead of 6.7 ms), on top of
    the ~1 ms each call from Python costs anyway: put such loops under ``jax.jit`` / ``lax.scan``.
    None on GPU/TPU or with ``JAXRL_SHORT_PROGRAM_OPTIONS=0``."""
    return few_steps_options(0)


_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_count() -> int:
    """Host devices we ask XLA:CPU for: ``JAXRL_CPU_DEVICES`` or one per core."""
    value = os.environ.get("JAXRL_CPU_DEVICES", "")
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"JAXRL_CPU_DEVICES={value!r}: give a positive integer (1 = XLA's default)")
        return n
    return usable_cores()


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (containers and `taskset` limit it), else
    ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def lapack_deadlock_prone(version: str | None = None) -> bool:
    """Whether this jaxlib's batched LAPACK kernels (QR of orthogonal initialisers, MJX's
    Cholesky) can deadlock with several CPU devices: they split their batch over the intra-op
    thread pool and wait for it from a pool thread, so devices running one at once exhaust the
    pool.  Reproduced here with a replicated batched QR on 2 CPU devices: jaxlib 0.10.2 and 0.11.0
    hang; 0.9.2, 0.11.2 and 0.12 finish (0.11.1 is treated as prone too: it finished once, which
    proves nothing for a race; 0.11.2 builds the parallel path out)."""
    version = jaxlib_version() if version is None else version
    return version.startswith("0.10.") or version.split("+")[0] in ("0.11.0", "0.11.1")


def cached_collectives_hang(version: str | None = None) -> bool:
    """Whether a program loaded from the persistent compilation cache deadlocks in its first
    cross-process collective on CPU (gloo: every process waits to receive).  Reproduced here with
    two processes and one ``psum``: the run that compiles finishes, the next one, which loads the
    program from the cache, hangs with jaxlib 0.12.1 (also when only one process loads it);
    0.9.2, 0.10.0, 0.11.2 and 0.12.0 finish.  Versions after 0.12.1 are assumed affected until
    measured."""
    version = (jaxlib_version() if version is None else version).split("+")[0]
    try:
        parts = tuple(int(p) for p in version.split(".")[:3])
    except ValueError:
        return True  # unknown build: the safe side (compiling costs time, a hang costs the run)
    return parts >= (0, 12, 1)


def jaxlib_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxlib")
    except PackageNotFoundError:
        return "unknown"


def _set_cpu_devices() -> None:
    """Ask for `cpu_device_count` host devices when nobody chose and JAX's backends are not up yet
    (XLA reads the flag once, when the CPU backend starts).  Not on a jaxlib that can deadlock
    with several CPU devices (`lapack_deadlock_prone`): one device there, with a notice."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _DEVICE_FLAG in flags:
        return  # the user's choice
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return  # too late for this process; nothing to do without a restart
    except (ImportError, AttributeError):  # private API moved: stay on the safe side
        return
    n = cpu_device_count()
    if n > 1 and lapack_deadlock_prone():
        notice(f"jaxlib {jaxlib_version()} can deadlock with several CPU devices (batched LAPACK "
               "kernels): using one CPU device; jax 0.9 or >= 0.11.2 gives one per core")
        return
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_FLAG}={n}".strip()


def configure() -> None:
    """Apply the settings above (idempotent)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    _set_cpu_devices()
    cache = default_cache_dir()
    if cache is not None and jax.config.jax_compilation_cache_dir is None:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        # Cache everything that took a noticeable time to compile, whatever its size.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def verbose() -> bool:
    return _VERBOSE


def set_verbose(on: bool = True) -> None:
    """Show the simulators' raw messages (warp module loads, solver-limit prints) again.
    Applies to envs made afterwards."""
    global _VERBOSE
    _VERBOSE = bool(on)
    if "warp" in sys.modules:
        quiet_warp()


def quiet_warp() -> None:
    """warp's own logging (init banner, "Module ... load on device") at warning level unless verbose."""
    import warp

    warp.config.log_level = getattr(warp, "LOG_INFO", 20) if _VERBOSE else getattr(warp, "LOG_WARNING", 30)
    if hasattr(warp.config, "quiet"):
        warp.config.quiet = not _VERBOSE


def notice(text: str) -> None:
    """One line on stderr, once per process per text (e.g. the warp -> jax fallback)."""
    if text not in _NOTICES:
        _NOTICES.add(text)
        print(f"jaxrl: {text}", file=sys.stderr, flush=True)
