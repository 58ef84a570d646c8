"""`envs.make(name, num_envs, ...)`: one entry point for our tasks, Playground's and Brax's.

Name lookup order: our own tasks (registered with `register`), then MuJoCo Playground's 54
registry names, then Brax's environments (``ant``, ``halfcheetah``, ...).

MJX implementation (``impl``): Playground defaults every task to ``"warp"``.  Measured on this
2-core CPU with uniform random actions, 16 envs (experiments/impl_speed.py;
results/impl_speed_cpu_16envs.json): jax is faster everywhere in steady state -- CartpoleBalance
jax 53.9k vs warp 1.6k env-steps/s, CheetahRun 18.7k vs 737, T1JoystickFlatTerrain 797 vs 42 --
but compiles slower (T1: 60 s vs 17 s).  (Older numbers that favoured warp timed a recompilation, see
`envs.wrappers.strong_types`.)  So the CPU default is ``"jax"`` except for the humanoids in
`CPU_WARP_TASKS`, kept on warp until the test suite's T1 runs are re-budgeted for jax's longer
compile; on GPU/TPU we keep Playground's own default.  Pass ``impl=`` to override.  Where
warp-lang is not installed (many offline GPU boxes), a warp default falls back to ``"jax"`` with
a one-line notice.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from envs import menagerie
from envs.wrappers import RandomizationFn, VecEnv

_OWN: dict[str, Callable[..., Any]] = {}
_OWN_DEFAULT_LENGTH: dict[str, int] = {}

# Tasks that default to impl="warp" on CPU (see module docstring: only for compile time).
CPU_WARP_TASKS = ("G1Joystick", "T1Joystick")


def register(name: str, episode_length: int = 1000):
    """Decorator registering a task constructor ``fn(**overrides) -> env`` under ``name``.

    The env needs ``reset(key) -> State``, ``step(State, action) -> State``, ``observation_size``
    (int or dict with ``state`` / ``privileged_state``) and ``action_size``, i.e. Playground's
    ``MjxEnv`` API.
    """

    def deco(fn):
        if name in _OWN or name in _playground_names() or name in _brax_names():
            raise ValueError(f"env name {name!r} is already registered")
        _OWN[name] = fn
        _OWN_DEFAULT_LENGTH[name] = int(episode_length)
        return fn

    return deco


def unregister(name: str) -> None:
    _OWN.pop(name, None)
    _OWN_DEFAULT_LENGTH.pop(name, None)


def _playground_names() -> tuple[str, ...]:
    from mujoco_playground import registry

    return tuple(registry.ALL_ENVS)


def _brax_names() -> tuple[str, ...]:
    from brax import envs as brax_envs

    return tuple(sorted(brax_envs._envs))


def _import_own_tasks() -> None:
    # Our task modules register themselves on import.
    import envs.manipulation
    import envs.variants  # noqa: F401


def list_envs(source: str | None = None) -> list[str]:
    """All task names, or those of one source: ``'jaxrl'``, ``'playground'`` or ``'brax'``."""
    _import_own_tasks()
    groups = {
        "jaxrl": sorted(_OWN),
        "playground": list(_playground_names()),
        "brax": list(_brax_names()),
    }
    if source is None:
        return [n for g in groups.values() for n in g]
    if source not in groups:
        raise ValueError(f"source must be one of {sorted(groups)}, got {source!r}")
    return groups[source]


def source_of(name: str) -> str:
    _import_own_tasks()
    if name in _OWN:
        return "jaxrl"
    if name in _playground_names():
        return "playground"
    if name in _brax_names():
        return "brax"
    close = difflib.get_close_matches(name, list_envs(), n=5, cutoff=0.5)
    if not close:
        close = [n for n in list_envs() if name.lower() in n.lower()][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown env name {name!r}.{hint} See envs.list_envs() for all names.")


def default_impl(name: str, backend: str | None = None) -> str | None:
    """The MJX implementation we use when the caller gives none (see module docstring)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None  # Playground's own default
    return "warp" if name.startswith(CPU_WARP_TASKS) else "jax"


def warp_available() -> bool:
    """Whether MJX-Warp can run here (warp-lang importable; GPU boxes often lack it)."""
    import importlib.util

    return importlib.util.find_spec("warp") is not None


def _choose_impl(name: str, asked: str | None, task_default: str | None) -> str | None:
    """The MJX implementation to build ``name`` with: the caller's, else ours, else the task's;
    a default of 'warp' falls back to 'jax' (one-line notice) when warp-lang is missing."""
    if asked == "warp" and not warp_available():
        raise ImportError(f"{name}: impl='warp' needs warp-lang (pip install warp-lang), which is not "
                          "installed; use impl='jax' instead")
    impl = asked or default_impl(name) or task_default
    if impl == "warp" and not warp_available():
        from envs import _runtime

        _runtime.notice(f"{name}: warp-lang is not installed, using MJX impl='jax' instead of 'warp'")
        return "jax"
    return impl


def _quiet_warp_model(env: Any) -> None:
    """Switch off MJX-Warp's per-step overflow printf (solver / line-search iteration limits,
    contact buffers): thousands of console lines per second on a humanoid.  The loops count
    solver-limit hits instead (`EnvState.solver_limit_hits`).  `envs.set_verbose(True)` keeps them."""
    from envs import _runtime

    inner = getattr(env, "unwrapped", env)
    model = getattr(inner, "_mjx_model", None)
    impl_opt = getattr(getattr(model, "opt", None), "_impl", None)
    if _runtime.verbose() or impl_opt is None or not hasattr(impl_opt, "warn_overflow"):
        return
    inner._mjx_model = model.replace(opt=model.opt.replace(_impl=impl_opt.replace(warn_overflow=0)))


def override_pairs(pairs: Any, where: str) -> tuple:
    """A config's ``env_overrides`` as a tuple of (config key, value) pairs, JSON round trips
    (lists, nested too) normalised back to tuples; a ValueError naming ``where`` for a malformed
    pair, a TypeError for a dict value (configs must stay hashable)."""
    def frozen(v):  # configs are static under jit: hashable values only
        if isinstance(v, (list, tuple)):
            return tuple(frozen(x) for x in v)
        if isinstance(v, dict):
            raise TypeError(f"{where}: value {v!r} is a dict; give each entry its own dotted key")
        return v

    out = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"{where}={pairs!r} is invalid: it must be a tuple of (config key, value) "
                             "pairs, e.g. (('push_config.enable', False),)")
        out.append((pair[0], frozen(pair[1])))
    return tuple(out)


def expand_overrides(name: str, overrides: dict, default: Any) -> dict:
    """Dotted Playground config keys (``push_config.enable=False``, as presets and config.json
    carry them) as whole top-level sub-configs (the task's default with those values replaced)."""
    out = {k: v for k, v in overrides.items() if "." not in k}
    for key, value in overrides.items():
        if "." not in key:
            continue
        top, *path = key.split(".")
        if top not in default:
            raise ValueError(f"{name}: config override {key!r}: no config key {top!r}; "
                             f"valid keys: {sorted(default.keys())}")
        node = out.setdefault(top, default[top].to_dict())
        for part in path[:-1]:
            node = node[part]
        if path[-1] not in node:
            raise ValueError(f"{name}: config override {key!r}: {top} has no key {path[-1]!r}; "
                             f"valid keys: {sorted(node)}")
        node[path[-1]] = value
    return out


def playground_randomizer(name: str) -> RandomizationFn:
    """Playground's own domain randomiser of ``name`` (clear error when the task has none)."""
    from mujoco_playground import registry

    fn = registry.get_domain_randomizer(name) if name in _playground_names() else None
    if fn is None:
        raise ValueError(f"{name}: domain_randomization=True, but MuJoCo Playground has no domain "
                         "randomiser for this task")
    return fn


def _load_playground(name: str, impl: str | None, menagerie_path, overrides: dict) -> tuple[Any, int]:
    from mujoco_playground import registry

    how = menagerie.prepare(name, menagerie_path)
    cfg = registry.get_default_config(name)
    overrides = expand_overrides(name, overrides, cfg)
    impl = _choose_impl(name, impl, cfg.get("impl"))
    if impl is not None and "impl" in cfg:
        overrides["impl"] = impl
    if impl == "warp":
        from envs import _runtime

        _runtime.quiet_warp()
    unknown = [k for k in overrides if k not in cfg]
    if unknown:
        raise ValueError(f"{name}: unknown config override(s) {unknown}; valid keys: {sorted(cfg.keys())}")
    try:
        env = registry.load(name, config_overrides=overrides or None)
    except Exception as e:  # a Menagerie file the stand-in cannot provide
        if how != "standin":
            raise
        raise menagerie.MenagerieMissingError(menagerie.missing_message(name, f"loading failed: {e}")) from e
    if how == "standin":
        menagerie.check_standin_physics(name, env.mj_model, env.xml_path, env._model_assets)
    if impl == "warp":
        _quiet_warp_model(env)
    # the built task's own config: a constructor may set its length (Cartpole's vision=True: 250)
    built = getattr(env, "_config", None)
    return env, int((built if built is not None and "episode_length" in built else cfg).get("episode_length", 1000))


def _load_brax(name: str, overrides: dict) -> tuple[Any, int]:
    from brax import envs as brax_envs

    overrides = dict(overrides)
    overrides.setdefault("backend", "mjx")
    return brax_envs.get_environment(name, **overrides), 1000


def make(
    name: str,
    num_envs: int = 1,
    episode_length: int | None = None,
    seed: int = 0,
    *,
    impl: str | None = None,
    menagerie_path: str | os.PathLike | None = None,
    randomization_fn: RandomizationFn | None = None,
    domain_randomization: bool = False,
    reset_pool: int = 0,
    **overrides: Any,
) -> VecEnv:
    """Make a batched environment.

    Args:
      name: our task, a MuJoCo Playground name (``CartpoleBalance``, ``T1JoystickFlatTerrain``)
        or a Brax name (``ant``).
      num_envs: envs stepped in parallel (vmap).
      episode_length: time limit in env steps; default from the task's config (1000 for most).
      seed: default key for ``reset()`` and domain randomisation.
      impl: MJX implementation, ``"jax"`` or ``"warp"`` (Playground tasks); None picks by platform.
      menagerie_path: a MuJoCo Menagerie checkout for robot tasks (else ``$JAXRL_MENAGERIE_PATH``,
        else an offline stand-in where that keeps physics unchanged).
      randomization_fn: ``(mjx_model, keys[N]) -> (model_batch, in_axes)``, e.g. Playground's
        ``registry.get_domain_randomizer(name)``.
      domain_randomization: use Playground's own randomiser of the task (`playground_randomizer`).
      reset_pool: 0 (default): every episode starts from a fresh task reset.  R >= 1: the first
        reset draws R start states per env and later episodes start from one of them (R = 1:
        each env restarts from its first physics state, as Brax's and Playground's auto-reset);
        for tasks whose reset runs physics (CheetahRun: 200 steps, 20% of an episode).  See
        `envs.wrappers`.
      **overrides: task config overrides (Playground config keys, dotted keys such as
        ``push_config.enable`` for one entry of a sub-config; Brax constructor kwargs).
    """
    if not isinstance(domain_randomization, (bool, np.bool_)):  # "False" would be truthy
        raise TypeError(f"domain_randomization must be True or False, got {domain_randomization!r}")
    src = source_of(name)  # an unknown name is named as such, before anything else is looked up
    if domain_randomization and randomization_fn is None:
        randomization_fn = playground_randomizer(name)
    if impl is not None and impl not in ("jax", "warp"):
        raise ValueError(f"impl must be 'jax' or 'warp', got {impl!r}")
    if src == "jaxrl":
        env = _OWN[name](**_own_task_kwargs(name, impl, menagerie_path), **overrides)
        default_len = _OWN_DEFAULT_LENGTH[name]
    elif src == "playground":
        env, default_len = _load_playground(name, impl, menagerie_path, overrides)
    else:
        env, default_len = _load_brax(name, overrides)
    _model_on_this_host(env)
    length = default_len if episode_length is None else episode_length
    vec = VecEnv(env, num_envs, length, name=name, seed=seed, randomization_fn=randomization_fn,
                 reset_pool=reset_pool)
    if vec.spec.has_privileged_state:
        vec.state_in_privileged = _state_in_privileged(name, src, env)
    if randomization_fn is None or domain_randomization:  # a hand-made randomiser is no keyword
        given = {"impl": impl, "menagerie_path": None if menagerie_path is None else str(menagerie_path),
                 "domain_randomization": domain_randomization or None, "reset_pool": reset_pool or None}
        vec.make_kwargs = {"episode_length": length, **{k: v for k, v in given.items() if v}, **overrides}
    return vec


def _own_task_kwargs(name: str, impl: str | None, menagerie_path: Any) -> dict:
    """``impl`` / ``menagerie_path`` for a registered constructor that takes them (the finetuning
    variants of Playground tasks); one that does not is MJX's JAX implementation on its own
    assets, so asking it for warp or a Menagerie checkout is refused, not silently ignored."""
    import inspect

    params = inspect.signature(_OWN[name]).parameters  # named: **overrides are the task's config
    out = {}
    for key, value, ignored in (("impl", impl, "jax"), ("menagerie_path", menagerie_path, None)):
        if value is None:
            continue
        if key in params:
            out[key] = value
        elif value != ignored:
            raise ValueError(f"{name} does not take {key}={value!r}: it is built from its own MJCF and "
                             "stepped with MJX's JAX implementation; leave it out")
    return out


def _model_on_this_host(env: Any) -> None:
    """Under several hosts (``jax.distributed``), move the task's MJX model to this host's first
    device: ``mjx.put_model`` places it on ``jax.devices()[0]``, which is host 0's device on every
    other host (whose arrays it could then neither read nor pass into a program)."""
    if jax.process_count() == 1:
        return
    from mujoco import mjx

    inner = getattr(env, "unwrapped", env)
    model = getattr(inner, "_mjx_model", None)
    if model is None or not hasattr(inner, "mj_model"):
        return
    local = jax.local_devices()[0]
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(model)):
        return
    inner._mjx_model = mjx.put_model(inner.mj_model, impl=model.impl, device=local)
    if hasattr(inner, "_data_template"):  # our manipulation tasks keep an mjx.Data to copy from
        inner._data_template = jax.device_put(mjx.make_data(inner._mjx_model), local)


def _state_in_privileged(name: str, source: str, env: Any) -> bool:
    """Whether ``privileged_state`` begins with ``state``: our tasks say so (``STATE_IN_PRIVILEGED``),
    and every Playground locomotion task builds it as ``hstack([state, ...])`` (checked by value
    for T1 and G1 in tests/envs/test_menagerie.py)."""
    if source == "jaxrl":
        return bool(getattr(getattr(env, "unwrapped", env), "STATE_IN_PRIVILEGED", False))
    if source == "playground":
        from mujoco_playground._src import locomotion

        return name in locomotion.ALL_ENVS
    return False
