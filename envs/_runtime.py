"""Process-wide JAX settings, applied once when `envs` (and so `jaxrl`) is imported.

Why here: both choices must be made before the first compilation.

* Persistent compilation cache, on by default in ``~/.cache/jaxrl/xla`` (override the folder with
  ``JAXRL_COMPILATION_CACHE=/path``, switch it off with ``JAXRL_COMPILATION_CACHE=off``).  On CPU
  compiling an MJX step takes longer than running thousands of them; the cache makes the second
  run of a script or test start in seconds.
* ``JAX_DEFAULT_MATMUL_PRECISION=highest`` unless the user set it.  MJX's constraint solver is
  sensitive to the TF32 matmuls JAX uses on recent NVIDIA GPUs by default, the cause of the NaNs
  and collapses reported for Playground humanoids with JAX > 0.4.38.  On CPU it changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_DONE = False


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
    if "JAX_DEFAULT_MATMUL_PRECISION" not in os.environ:
        jax.config.update("jax_default_matmul_precision", "highest")
    cache = default_cache_dir()
    if cache is not None and jax.config.jax_compilation_cache_dir is None:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        # Cache everything that took a noticeable time to compile, whatever its size.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
