"""An agent's ``init(key, spec, cfg)`` as one compiled program.

Called eagerly (a notebook, a script, a test building an agent by hand), a Flax ``init`` runs
every initializer as its own XLA program, one per parameter shape: the normal draws, the
orthogonal heads' QR, the projections, the optimiser's zeros.  On a CPU each of those compiles
in 0.3-2 s, so FlashSAC's eager init compiled ~40 programs.  `compiled_init` traces the whole
init once per (spec, config) and compiles it as one program with the quick options of a program
run once (`envs._runtime.run_once_options`: with XLA's default options the one program took as
long as the ops one by one), which the persistent compilation cache then serves to every later
process.  Inside a trace (the training loop's jitted `_init_agent`, a vmap over seeds,
``jax.eval_shape``) the init is inlined as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from envs._runtime import run_once_options


def compiled_init(init: Callable[[jax.Array, Any, Any], Any]) -> Callable[[jax.Array, Any, Any], Any]:
    """Decorate ``init(key, spec, cfg)``.  One program per (spec, config): configs are frozen
    dataclasses (hashable) and a spec is keyed by its repr (an `envs.EnvSpec` holds a dict)."""
    programs: dict[tuple[str, Any], Callable[[jax.Array], Any]] = {}

    @functools.wraps(init)
    def wrapper(key: jax.Array, spec: Any, cfg: Any) -> Any:
        if isinstance(key, jax.core.Tracer):
            return init(key, spec, cfg)
        try:
            fn = programs.get((repr(spec), cfg))
        except TypeError:  # an unhashable config: eager, as before
            return init(key, spec, cfg)
        if fn is None:
            fn = programs[repr(spec), cfg] = jax.jit(functools.partial(init, spec=spec, cfg=cfg),
                                                    compiler_options=run_once_options())
        return fn(key)

    return wrapper
