"""jaxrl: JAX-native, massively parallel robotics RL on MJX."""

import envs as _envs  # noqa: F401  (applies the JAX runtime settings: compilation cache, precision)

__version__ = "0.1.0"
