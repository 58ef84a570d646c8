"""jaxrl environments: ``envs.make(name, num_envs)`` over our tasks, MuJoCo Playground and Brax.

    import envs
    envs.list_envs("playground")            # all 54 Playground names
    env = envs.make("CartpoleBalance", num_envs=8)
    state = env.reset()                       # EnvState pytree, batched over 8 envs
    state = env.step(state, jnp.zeros((8, env.action_size)))
"""

import os as _os

# XLA:CPU logs a spurious "machine type ... doesn't match" ERROR for every executable loaded from
# the persistent compilation cache (tuning flags like +prefer-no-scatter, not CPU features).
# Hide C++ ERROR-level logs unless the user chose a level; Python exceptions are unaffected.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from envs import _runtime

_runtime.configure()

from envs._runtime import set_verbose
from envs.menagerie import MenagerieMissingError
from envs.registry import default_impl, list_envs, make, register, source_of, warp_available
from envs.specs import ArraySpec, EnvSpec
from envs.wrappers import EnvState, EpisodeStats, VecEnv

__all__ = [
    "ArraySpec",
    "EnvSpec",
    "EnvState",
    "EpisodeStats",
    "MenagerieMissingError",
    "VecEnv",
    "default_impl",
    "list_envs",
    "make",
    "register",
    "set_verbose",
    "source_of",
    "warp_available",
]
