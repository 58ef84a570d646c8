"""Process-wide settings, applied once when `envs` (and so `jaxrl`) is imported.

* Persistent compilation cache, on by default in ``~/.cache/jaxrl/xla`` (override the folder with
  ``JAXRL_COMPILATION_CACHE=/path``, switch it off with ``JAXRL_COMPILATION_CACHE=off``).  On CPU
  compiling an MJX step takes longer than running thousands of them; the cache makes the second
  run of a script or test start in seconds.  It must be set before the first compilation.
* Matmul precision is NOT set process-wide: the env step is traced under 'highest'
  (`envs.wrappers.PHYSICS_MATMUL_PRECISION`) and learners use their config's precision, so a GPU
  learner can still use TF32 / bf16.
* A quiet console: MJX-Warp's per-step overflow prints and warp's module-load lines are off
  unless ``JAXRL_VERBOSE=1`` or `set_verbose(True)` (CLI ``--verbose``).
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


def configure() -> None:
    """Apply the settings above (idempotent)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
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
