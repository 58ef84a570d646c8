"""A training run: any algorithm's loop plus metrics files, checkpoints, progress and resume.

A loop is a `jaxrl.train.loop.HostLoop` (``init_carry``, ``run_chunk``, ``finished``,
``env_steps``, ``compile_s``; optional ``optional_state`` / ``refill`` / ``preflight``); the
algorithm comes from the registry (`jaxrl.train.registry`).  This module owns everything on the
host side of it:

    RUN_DIR/config.json      the record: algo, env, steps, seed, config, init_from (`runfolder`)
    RUN_DIR/metrics.jsonl    one row per evaluation (env_steps, wall_s, eval_return, losses, sps)
    RUN_DIR/tensorboard/     TensorBoard events
    RUN_DIR/checkpoints/     the whole carry (agent, replay buffer, env state, RNG, counters)
    RUN_DIR/summary.json     algo, env, env_steps, wall_s, compile_s, final_eval_return,
                             program_bytes (XLA's memory of the chunk and evaluation, per device)
    RUN_DIR/learning_curve.png  eval return vs env steps (several seeds: mean, 95% band, each seed)

``resume(run_dir)`` rebuilds the loop from config.json, restores the newest verified checkpoint
and continues; because the carry is everything, the resumed run equals an uninterrupted one.  A
run killed before its first checkpoint (compilation: the first minutes of a GPU run) starts
again from step 0, so a cluster's requeue script can call ``jaxrl resume`` blindly.  A loop may
name carry subtrees a checkpoint can leave out (``optional_state``, the replay buffer) and
rebuild them after a restore (``refill``); such a resume is then no longer exact, and says so.

``init_from=RUN_DIR`` starts a fresh run from chosen agent subtrees (parameters, normaliser
statistics, optimiser states) of another run's checkpoint: how finetuning starts.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import envs
from envs.wrappers import VecEnv
from jaxrl.io import runfolder
from jaxrl.io.checkpoint import CheckpointError, CheckpointManager, file_sha256
from jaxrl.train import parallel, registry
from jaxrl.train.loop import notice

NUM_EVAL_ENVS = 16  # evaluation envs of a config without its own ``num_eval_envs`` field
SCRATCH_EVAL = "anywhere"  # a run record's ``eval_start`` when it is scored from OmniReset's type (1)
# `train`'s checkpoint and logging defaults, recorded with each run (``session``) for its resume
SESSION_DEFAULTS = {"checkpoint_every_s": 600.0, "keep_last": 3, "save_buffer": True, "tensorboard": True}


def eval_env_count(config: Any) -> int:
    """How many envs a run of ``config`` evaluates on: its ``num_eval_envs`` (SAC: LIFT evaluates
    on 1024), else `NUM_EVAL_ENVS`."""
    return int(getattr(config, "num_eval_envs", NUM_EVAL_ENVS))


def make_envs(env: str | VecEnv, num_envs: int, seed: int, env_kwargs: dict, resets: dict | None = None,
              num_eval_envs: int = NUM_EVAL_ENVS, scratch_eval: bool = True):
    """(train env, eval env, task name).  A run evaluates on ``num_eval_envs`` envs of its task.
    An OmniReset run (``resets={'path': FILE, 'probs': [...]}``, or a mixture `VecEnv` as ``env``)
    is scored from reset type (1) only, "anywhere": the whole task from scratch, as the paper
    scores it (`envs.omnireset.scratch_env`); a dataset without such states falls back to the
    task's nominal start, as does ``scratch_eval=False`` (runs recorded before stop 35).
    ``num_eval_envs=0``: no eval envs.  ``env_kwargs`` go to `envs.make` (dotted Playground keys,
    ``domain_randomization=True``)."""
    if isinstance(env, VecEnv):
        name, train_env = env.name.split("/")[0], env  # "PushToSlot/omnireset" -> "PushToSlot"
        if env.num_envs != num_envs:
            raise ValueError(f"env has {env.num_envs} envs but the config asks for {num_envs}")
    elif resets:
        from envs import omnireset

        name, train_env = env, omnireset.make_mixture_env(env, resets["path"], resets.get("probs"),
                                                          num_envs=num_envs, seed=seed, **env_kwargs)
    else:
        name, train_env = env, shared_env(env, num_envs, seed, env_kwargs)
    if not num_eval_envs:
        return train_env, None, name
    eval_env = _scratch_eval_env(train_env, num_eval_envs, seed + 1) if scratch_eval else None
    if eval_env is None and not isinstance(env, VecEnv):
        eval_env = shared_env(env, num_eval_envs, seed + 1, env_kwargs)
    elif eval_env is None and _draws_from_dataset(env):  # no "anywhere" states: the nominal start
        eval_env = envs.make(name, num_envs=num_eval_envs, seed=seed + 1, **env_kwargs)
    elif eval_env is None:  # the same task object (overrides, randomiser): its trace shared
        eval_env = env.with_num_envs(num_eval_envs, seed + 1)
    return train_env, eval_env, name


def recorded_env_kwargs(vec_env: VecEnv, quiet: bool = False) -> dict:
    """The `envs.make` keywords that rebuild ``vec_env``'s task (`VecEnv.make_kwargs`: episode
    length, task overrides, impl, ...), for the record of a run trained on it: `resume`, `jaxrl
    eval` and `export` rebuild a run from its record, and without them would silently rebuild the
    task's defaults (another episode length, another task).  An env built without `envs.make`, or
    with a hand-made randomiser, has none to record: {} and a notice (unless ``quiet``: a run
    without a folder, which nothing rebuilds)."""
    kwargs = vec_env.make_kwargs
    try:
        json.dumps(kwargs)
    except TypeError:
        kwargs = None
    if kwargs is None and not quiet:
        notice(f"{vec_env.name}: this env was not made by envs.make with JSON keyword arguments (or has a "
               "hand-made randomiser), so the run's record cannot rebuild it: resume, eval and export "
               "will make the task with its defaults plus the run's env_kwargs")
    return {} if kwargs is None else dict(kwargs)


def _draws_from_dataset(vec_env: VecEnv) -> bool:
    """Whether ``vec_env`` resets from an OmniReset dataset (no import for any other env)."""
    return type(vec_env.env).__module__.startswith("envs.omnireset")


def keep_resets(mixture_env: VecEnv, out_dir: str | Path | None, env_kwargs: dict, write: bool = True
                ) -> tuple[dict | None, dict]:
    """(``resets``, ``env_kwargs``) that rebuild the hand-built mixture `VecEnv` ``mixture_env``
    the way ``train(resets=...)`` builds one: its dataset saved as ``out_dir/resets.npz`` (by
    the process that ``write``s the run folder) with its mixture weights, and its episode length.
    Why: `resume`, `jaxrl eval` and `export` rebuild a run from its record, and a run whose resets
    were not recorded would silently continue from the task's nominal start.  Task overrides come
    with the env's ``make_kwargs`` (`envs.omnireset.make_mixture_env` sets them; a mixture VecEnv
    built by hand has none: pass ``env_kwargs``).  Without ``out_dir`` nothing is written and
    ``resets`` is None."""
    env_kwargs = {"episode_length": mixture_env.episode_length, **env_kwargs}
    if out_dir is None:
        return None, env_kwargs
    mixture = mixture_env.env
    path = (Path(out_dir) / runfolder.RESETS_FILE).resolve()
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        mixture.dataset.save(tmp)
        tmp.replace(path)  # atomic: a crash leaves the old file or none, never half of one
    return {"path": str(path), "probs": [float(p) for p in np.asarray(mixture.probs)]}, env_kwargs


def _scratch_eval_env(train_env: VecEnv, num_envs: int, seed: int) -> VecEnv | None:
    """OmniReset's evaluation envs for a mixture ``train_env``; None for any other env."""
    if not _draws_from_dataset(train_env):
        return None
    from envs import omnireset

    eval_env = omnireset.scratch_env(train_env, num_envs, seed)
    if eval_env is None:
        notice(f"the reset dataset has no {omnireset.SCRATCH_TYPE!r} states: evaluating from the "
               "task's nominal start instead")
    return eval_env


_ENVS: dict[tuple[str, int, int], VecEnv] = {}  # the last few envs runs were built on (see `shared_env`)


def shared_env(name: str, num_envs: int, seed: int, env_kwargs: dict) -> VecEnv:
    """`envs.make`, reusing what an earlier call in this process built: the same arguments give
    the same env (its traced reset / step reused: tracing MJX takes seconds per program on CPU, so
    re-running a notebook cell, a sweep over budgets, a resume or `jaxrl eval` / `evaluate_run`
    after training traces the physics once), and
    the same task with another ``num_envs`` / ``seed`` (a run's evaluation envs) gets a VecEnv
    over the same task object, which shares its per-env trace.  Runs never modify their envs."""
    import json

    task_key = json.dumps([name, env_kwargs], sort_keys=True, default=repr)  # kwargs may hold lists
    key = (task_key, num_envs, seed)
    if key not in _ENVS:
        if len(_ENVS) >= 8:
            _ENVS.pop(next(iter(_ENVS)))
        sibling = next((e for k, e in _ENVS.items() if k[0] == task_key), None)
        _ENVS[key] = (sibling.with_num_envs(num_envs, seed) if sibling is not None
                      else envs.make(name, num_envs=num_envs, seed=seed, **env_kwargs))
    return _ENVS[key]


_LOOPS: dict[tuple, tuple] = {}  # the last few loops runs were built as (see `shared_loop`)


def shared_loop(spec: registry.Algorithm, config: Any, train_env: VecEnv, eval_env: VecEnv | None, steps: int,
                seed: int, num_evals: int, devices: int | None, seeds: int) -> Any:
    """``spec.make_loop(...)``, reusing the loop an earlier run in this process built from the same
    arguments, compiled programs included.  Why: a loop's programs are traced anew for every loop
    object (MJX and the update: 5-20 s each on CPU), and a resume, a run stopped and started
    again or a notebook cell run twice builds exactly the same loop (`jaxrl eval` / export build
    theirs without evaluation, on one device: shared among them).  A loop holds no run's state
    (that is the carry); its compile-time counter starts again, and its programs' memory, checked
    when they compiled, is not checked again.

    Shared only between envs `shared_env` keeps (a hand-built or OmniReset VecEnv is new each
    time: nothing to find, and holding it would hold its dataset), on one host (several hosts
    must compile, and gather their memory checks, together), with ``$JAXRL_DEVICES`` part of the
    key; the process-wide JAX settings a trace reads (matmul precision, x64) are assumed unchanged."""
    import os

    def build():
        return spec.make_loop(config, train_env, eval_env, steps, seed, num_evals, devices=devices, seeds=seeds)

    kept = list(_ENVS.values())
    if (jax.process_count() > 1 or not any(train_env is e for e in kept)
            or not (eval_env is None or any(eval_env is e for e in kept))):
        return build()
    # (the envs are held with the loop, so their ids cannot be another object's while it is kept)
    key = (spec.name, config, id(train_env), id(eval_env), int(steps), int(seed), int(num_evals), devices,
           int(seeds), os.environ.get("JAXRL_DEVICES", ""))
    try:
        hit = _LOOPS.pop(key, None)  # (popped: put back last, so the least recently used goes first)
    except TypeError:  # an unhashable config field
        return build()
    if hit is not None:
        hit[2].compile_s = 0.0
    else:
        if len(_LOOPS) >= 4:
            _LOOPS.pop(next(iter(_LOOPS)))
        hit = (train_env, eval_env, build())
    _LOOPS[key] = hit
    return hit[2]


def metadata(record: dict, env: VecEnv) -> dict:
    """What a checkpoint must match to be restored into this run."""
    ident = runfolder.identity(record)
    return {**ident, "config_hash": runfolder.config_hash(ident),
            "obs_layout": {k: list(v.shape) for k, v in env.obs_spec.items()},
            "action_size": env.action_size}


def resets_of(record: dict, run_dir: str | Path | None) -> dict | None:
    """The record's reset dataset (``resets``), found where it is now: the recorded path, or
    else ``RUN_DIR/resets.npz`` (a run folder moved or copied to another machine: a hand-built
    mixture's dataset is saved there).  The record itself keeps the recorded path (it is part of
    the run's identity, which its checkpoints carry).  A dataset recorded with its ``sha256``
    (runs started with a dataset file, since stop 49) must still be that file: one rebuilt at
    the same path (`jaxrl resets build --out` again) is refused instead of silently changing
    where a resumed or evaluated run starts."""
    resets = record.get("resets")
    if not resets:
        return resets
    if not Path(resets["path"]).exists() and run_dir is not None:
        here = Path(run_dir) / runfolder.RESETS_FILE
        if not here.exists():
            raise FileNotFoundError(
                f"{run_dir} trained on the reset dataset {resets['path']}, which is not there (nor is {here}): "
                f"copy the dataset back to that path, or into the run folder as {runfolder.RESETS_FILE}")
        resets = {**resets, "path": str(here.resolve())}
    if resets.get("sha256") and Path(resets["path"]).exists() and file_sha256(resets["path"]) != resets["sha256"]:
        raise ValueError(
            f"the reset dataset {resets['path']} is not the file this run trained on (its sha256 "
            f"differs from the recorded {resets['sha256'][:12]}...): it was rebuilt or replaced since.  "
            "Put the run's dataset back at that path, or train a new run on the new dataset")
    return resets


def rebuild(record: dict, with_eval: bool = True, devices: int | None = None,
            run_dir: str | Path | None = None) -> tuple[registry.Algorithm, Any, VecEnv, Any]:
    """(algorithm, config, train env, loop) of a run, as `train` built them, on ``devices``
    devices (None: automatic; the device count is not part of a run's identity, so a run
    continues on another machine).  ``run_dir``: where the run's folder is now, to find its
    reset dataset there when the recorded path is gone (`resets_of`)."""
    algo = registry.get(record["algo"])
    config = runfolder.config_from_dict(algo.config, record["config"])
    # Records from before stop 35 evaluated on NUM_EVAL_ENVS envs (SAC had no ``num_eval_envs``)
    # and, trained on reset datasets, from the nominal start: a resumed run keeps scoring the same.
    n_eval = eval_env_count(config) if "num_eval_envs" in record["config"] else NUM_EVAL_ENVS
    scratch = record.get("eval_start") == SCRATCH_EVAL
    train_env, eval_env, _ = make_envs(record["env"], config.num_envs, record["seed"], record["env_kwargs"],
                                       resets_of(record, run_dir), n_eval if with_eval else 0, scratch)
    loop = shared_loop(algo, config, train_env, eval_env if with_eval else None, record["steps"],
                       record["seed"], record["num_evals"], devices, record.get("seeds", 1))
    return algo, config, train_env, loop


def _preflight(loop) -> None:
    """Before allocating or compiling: the loop's memory check and report (replay buffers)."""
    if hasattr(loop, "preflight"):
        loop.preflight()


def read_record(run_dir: str | Path) -> dict:
    return runfolder.read_record(run_dir)


def config_env_kwargs(config: Any, env_kwargs: dict | None) -> dict:
    """The `envs.make` keywords of a run on a named task: the config's env changes (``env_overrides``,
    e.g. LIFT: pushes off), then ``env_kwargs``, which win.  They go into the record, so resume /
    eval / export rebuild the same env."""
    return {**dict(getattr(config, "env_overrides", ())), **(env_kwargs or {})}


def train(
    algo: str,
    env: str | VecEnv,
    config: Any,
    *,
    steps: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    num_evals: int = 10,
    progress: bool = True,
    checkpoint_every_s: float = 600.0,
    keep_last: int = 3,
    save_buffer: bool = True,
    env_kwargs: dict | None = None,
    resets: dict | None = None,
    init_from: str | Path | None = None,
    init_parts: Sequence[str] | None = None,
    progress_fn=None,
    tensorboard: bool = True,
    wandb: bool = False,
    overwrite: bool = False,
    devices: int | None = None,
    seeds: int = 1,
) -> tuple[Any, list[dict]]:
    """Train ``algo`` on ``env``; returns (final carry, metrics rows).

    ``devices``: data parallel over that many devices (None: on GPU/TPU every visible device that
    divides num_envs and the batch, on CPU one; `jaxrl.train.parallel.resolve_devices`).  ``seeds``: K > 1 trains seeds ``seed ...
    seed + K - 1`` as one vmapped program; every carry leaf then has a leading seed axis and each
    metrics row holds the mean over seeds, ``seed{i}/NAME`` per seed and a 95% interval of the
    returns.

    ``out_dir`` must not already hold a run: its checkpoints would mix with this run's (resume and
    export pick the newest step of either).  Continue it with `resume`, or pass ``overwrite=True``
    to delete that run's files (only the files a run writes) once every request (devices, seeds,
    memory, ``init_from``'s layout) has been checked and under the folder's writer lock (after
    the fresh carry is built, before the first chunk).

    ``init_from`` (a run folder) loads the agent subtrees named by ``init_parts`` (agent fields or
    their prefixes, e.g. ``actor`` = actor_params, actor_stats, actor_opt; default: the whole
    agent) from that run's newest verified checkpoint before the first chunk.
    """
    spec = registry.get(algo)
    if not isinstance(config, spec.config):
        name = spec.config.__name__
        raise TypeError(f"{algo} needs a {name}, got {type(config).__name__} {config!r:.60}: e.g. {name}.cpu(), "
                        f"or a preset by name, registry.get({algo!r}).preset(NAME, env) (presets: "
                        f"{', '.join(spec.presets)})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(num_evals, bool) or not isinstance(num_evals, (int, np.integer)) or num_evals < 1:
        raise ValueError(f"num_evals must be >= 1, got {num_evals!r}: an integer, the evaluations (and "
                         "metrics rows) over the run")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    seeds = int(seeds)
    if init_from is not None and not runfolder.is_run(init_from):
        raise FileNotFoundError(f"--init-from {init_from}: not a jaxrl run folder (no config.json)")
    primary = jax.process_index() == 0  # several hosts: one of them writes the run folder
    parallel.guard_compilation_cache()  # several CPU processes on jaxlib 0.12.1: no cached programs
    if out_dir is not None and not overwrite:
        runfolder.claim(Path(out_dir), False)  # a folder holding a run is refused at once
    if out_dir is not None and overwrite:  # what the overwrite would delete must not be an input
        inputs = {"init_from": init_from, "resets": (resets or {}).get("path")}
        for name, path in inputs.items():
            if path is not None and Path(out_dir).resolve() in (Path(path).resolve(), *Path(path).resolve().parents):
                raise ValueError(f"overwrite=True would delete {out_dir}, which holds this run's {name} "
                                 f"({path}): train into another folder, or move that input out first")
    if init_from is not None:
        check_init_source(algo, init_from)
    if resets and resets.get("path") and Path(resets["path"]).is_file():
        # the dataset's fingerprint: a resume, eval or export refuses a file rebuilt at that path
        resets = {**resets, "sha256": file_sha256(resets["path"])}
    env_kwargs = config_env_kwargs(config, env_kwargs) if isinstance(env, str) else dict(env_kwargs or {})
    dataset_env = None  # a hand-built mixture VecEnv whose dataset the run folder keeps
    if isinstance(env, VecEnv):
        env_kwargs = {**recorded_env_kwargs(env, quiet=out_dir is None), **env_kwargs}
        if not resets and _draws_from_dataset(env):
            dataset_env = env
            resets, env_kwargs = keep_resets(env, out_dir, env_kwargs, write=False)
    train_env, eval_env, env_name = make_envs(env, config.num_envs, seed, env_kwargs, resets,
                                              eval_env_count(config))
    record = {
        "algo": algo, "env": env_name, "steps": int(steps), "seed": int(seed),
        "num_evals": int(num_evals), "env_kwargs": env_kwargs, "resets": resets,
        "config": runfolder.config_to_dict(config), "seeds": int(seeds),
    }
    if eval_env is not None and _draws_from_dataset(eval_env):
        record["eval_start"] = SCRATCH_EVAL  # scored from OmniReset's type (1): `rebuild` keeps it
    loop = shared_loop(spec, config, train_env, eval_env, steps, seed, num_evals, devices, seeds)
    record["devices"] = loop.devices  # information only: not part of the run's identity
    _preflight(loop)
    if init_from is not None:  # a layout mismatch is refused before anything compiles
        load_parts(jax.eval_shape(loop._lift(loop._init), loop._keys()), init_from, init_parts, check_only=True)
    carry = loop.init_carry()
    if init_from is not None:
        carry, record["init_from"] = load_parts(carry, init_from, init_parts)
    # how the run is checkpointed and logged: its resume keeps it (information, not identity)
    record["session"] = {"checkpoint_every_s": float(checkpoint_every_s), "keep_last": int(keep_last),
                         "save_buffer": bool(save_buffer), "tensorboard": bool(tensorboard)}
    # `overwrite` deletes the old run only now, when every request has been checked (a refused
    # run leaves it intact) and under the writer's lock (a run still training there is refused)
    session = _Session(loop, record, train_env, out_dir, progress, checkpoint_every_s,
                       keep_last, save_buffer, progress_fn, tensorboard, wandb, overwrite=overwrite)
    try:  # the folder's writer now (its lock): its files go in
        if dataset_env is not None and primary:
            keep_resets(dataset_env, out_dir, env_kwargs)
        if out_dir is not None and primary:
            runfolder.write_record(out_dir, record)
    except BaseException:
        session.close(failed=True)
        raise
    return session.run(carry, rows=[])


def finetune(run_dir: str | Path, env: str, *, real_steps: int, config: Any = None, preset: str = "cpu",
             out_dir: str | Path | None = None, seed: int = 0, **kwargs) -> tuple[Any, list[dict]]:
    """World-model finetuning (`jaxrl.train.finetune`) of the `sac` run in ``run_dir`` on the
    target task ``env`` with a budget of ``real_steps`` REAL env steps.

    The config defaults to ``FinetuneConfig.<preset>`` around the pretraining run's networks, and
    the target env takes the pretraining config's env changes (`FinetuneConfig.env_overrides`;
    LIFT: pushes off, T1 observation noise 0; ``env_kwargs`` win); everything but α is loaded
    from the run's newest verified checkpoint (`FINETUNE_PARTS`), with
    the layout checked against the target env (observation / action sizes) before compiling.
    Other keyword arguments are `train`'s (``num_evals``, ``progress``, ``checkpoint_every_s``, ...).
    """
    from jaxrl.algos import sac as sac_algo
    from jaxrl.train.finetune import FINETUNE_PARTS, FinetuneConfig

    record = runfolder.read_record(run_dir)
    if record["algo"] != "sac":
        raise ValueError(f"{run_dir} is a {record['algo']!r} run: world-model finetuning loads a large-batch "
                         "SAC agent (train one with `jaxrl train sac`)")
    pretrained = runfolder.config_from_dict(sac_algo.SACConfig, record["config"])
    if config is None:
        if preset not in ("cpu", "paper"):
            raise ValueError(f"finetune preset must be 'cpu' or 'paper', got {preset!r}")
        config = (FinetuneConfig.cpu(pretrained) if preset == "cpu"
                  else FinetuneConfig.paper(env, pretrained))
    check_same_layout(record, env, config_env_kwargs(config, kwargs.get("env_kwargs")))  # the target `train` makes
    return train("finetune", env, config, steps=real_steps, seed=seed, out_dir=out_dir, init_from=run_dir,
                 init_parts=list(FINETUNE_PARTS), **kwargs)


def check_same_layout(record: dict, target: str, target_kwargs: dict, purpose: str = "finetune") -> None:
    """The run's observations and actions must be the target's (a policy cannot be finetuned or
    evaluated across layouts): a ValueError naming what differs, before anything compiles."""
    src = shared_env(record["env"], 1, record["seed"], record["env_kwargs"]).spec
    dst = shared_env(target, 1, record["seed"], target_kwargs).spec
    have = {k: v.shape for k, v in src.obs.items()} | {"action": src.action.shape}
    want = {k: v.shape for k, v in dst.obs.items()} | {"action": dst.action.shape}
    diff = [f"{k}: {have.get(k)} vs {want.get(k)}" for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if diff:
        raise ValueError(f"cannot {purpose} the {record['env']} policy on {target}: observation / action layout "
                         f"differs (the run vs target) — {'; '.join(diff)}. Use a variant of "
                         f"{record['env']} (same observations and actions), e.g. from `jaxrl list-envs --source jaxrl`")


def check_init_source(algo: str, init_from: str | Path) -> None:
    """Refuse ``init_from`` a run of another algorithm, naming both (its agent has other parts).
    A finetuning run's agent is a large-batch SAC agent: the two start from each other."""
    source = runfolder.read_record(init_from)["algo"]
    family = {"finetune": "sac"}
    if family.get(source, source) != family.get(algo, algo):
        raise ValueError(f"--init-from {init_from} is a {source!r} run and this one trains {algo!r}: "
                         f"its agent has other parts; start from a {algo!r} run (or train {source!r})")


def load_parts(carry: Any, run_dir: str | Path, parts: Sequence[str] | None,
               check_only: bool = False, step: int | None = None) -> tuple[Any, dict]:
    """``carry`` with the agent subtrees ``parts`` read from ``run_dir``'s newest verified
    checkpoint, or its checkpoint ``step`` (layout checked leaf by leaf); returns it and the
    provenance for config.json.

    A part is an agent field (``actor_params``), a field prefix (``actor`` = every ``actor_*``
    field) or a dotted path inside one (``params.actor``); None loads the whole agent.
    ``check_only``: the checks alone on a ``carry`` of shapes (`jax.eval_shape`), nothing read."""
    from jaxrl.io.checkpoint import path_str

    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(carry.agent)[0]]
    fields = sorted({p.split(".")[0] for p in paths})
    parts = list(parts) if parts else fields

    def covers(part: str, path: str) -> bool:
        field = path.split(".")[0]
        return path == part or path.startswith(part + ".") or field.startswith(part + "_")

    for part in parts:
        if not any(covers(part, p) for p in paths):
            raise ValueError(f"init parts: {part!r} is not a part of this agent; parts: {', '.join(fields)}")

    def select(path: str) -> bool:
        return path.startswith("agent.") and any(covers(part, path[len("agent."):]) for part in parts)

    ckpt = CheckpointManager(run_dir, save_interval_s=float("inf"))
    carry, meta, step, loaded = ckpt.restore_matching(carry, select, step=step, check_only=check_only)
    return carry, {"run": str(Path(run_dir).absolute()), "step": int(step), "parts": parts,
                   "algo": meta.get("algo"), "env": meta.get("env"),
                   "config_hash": meta.get("config_hash"), "leaves": len(loaded)}


def resume(run_dir: str | Path, *, progress: bool = True, wandb: bool | None = None,
           devices: int | None = None, **kwargs) -> tuple[Any, list[dict]]:
    """Continue the run in ``run_dir`` from its newest verified checkpoint, on ``devices``
    devices (None: automatic; need not be the count it was trained on).

    A run folder without any committed checkpoint (killed while compiling) starts again from
    step 0, with a notice: requeue scripts can call resume blindly.  ``wandb=None`` logs to
    Weights & Biases again when the run did (it continues the same W&B run).  Checkpoints and
    logging go on as the run was started (its recorded ``checkpoint_every_s``, ``keep_last``,
    ``save_buffer``, ``tensorboard``), unless given here.
    """
    run_dir = Path(run_dir)
    record = runfolder.read_record(run_dir)
    _, _, train_env, loop = rebuild(record, devices=devices, run_dir=run_dir)
    if record.get("devices") not in (None, loop.devices):
        notice(f"{run_dir} trained on {record['devices']} device(s) and resumes on {loop.devices}: each device "
               "samples its own replay shard and minibatches with its own key, so the run goes on "
               "correctly but not bit for bit as on its own device count (`--devices N` keeps it)")
    # the run's own checkpoint and logging settings (runs recorded before stop 49: the defaults),
    # unless given here
    kept = {**SESSION_DEFAULTS, **record.get("session", {}),
            **{k: v for k, v in kwargs.items() if k in SESSION_DEFAULTS}}
    session = _Session(loop, record, train_env, run_dir, progress, kept["checkpoint_every_s"],
                       kept["keep_last"], kept["save_buffer"], kwargs.get("progress_fn"), kept["tensorboard"],
                       (run_dir / "wandb" / "jaxrl_run_id").exists() if wandb is None else wandb)
    try:
        carry, rows, done = _resume_state(loop, record, run_dir, session)
    except BaseException:
        session.close(failed=True)  # the writer's lock and the metrics sinks: a failed resume holds nothing
        raise
    if done:
        session.close()
        return carry, rows
    return session.run(carry, rows=rows, wall_offset=rows[-1]["wall_s"] if rows else 0.0)


def _resume_state(loop, record: dict, run_dir: Path, session: _Session) -> tuple[Any, list[dict], bool]:
    """(carry, rows kept, whether the run had already finished) of `resume`: its newest verified
    checkpoint (or a fresh start), the metrics rows up to it (the log rewritten to them)."""
    from jaxrl.io import metrics as metrics_io

    log = run_dir / "metrics.jsonl"
    _preflight(loop)
    carry = loop.init_carry()
    if not session.ckpt.steps():
        notice(f"{run_dir} has no committed checkpoint yet (stopped before the first one): "
               "starting it again from step 0")
        if record.get("init_from"):
            # the step it started from, not the source's newest: the source may have trained on
            src = record["init_from"]
            try:
                carry, _ = load_parts(carry, src["run"], src["parts"], step=src.get("step"))
            except CheckpointError as e:
                raise CheckpointError(
                    f"{run_dir} started from step {src.get('step')} of {src['run']}, which cannot be "
                    f"read now ({e}); start the run again with --init-from (Python: init_from=) to "
                    "take the source's newest checkpoint") from e
        step = 0
    else:
        carry, _, step = session.ckpt.restore(carry, expected_metadata=session.metadata)
        if loop.finished(carry) and (run_dir / "summary.json").exists():
            # Nothing to train: leave the run folder as its last session wrote it.
            notice(f"{run_dir} already finished its budget ({loop.env_steps(carry):,} env steps): nothing "
                   "to resume.  To train on from it, start a new run with --init-from (Python: init_from=)")
            return carry, metrics_io.read_jsonl(log) if log.exists() else [], True
        if session.ckpt.last_restore_skipped:
            warnings.warn(
                f"checkpoint step {step} of {run_dir} was saved without {', '.join(loop.optional_state)} "
                f"(save_buffer=False or not enough disk space); {loop.refill_note}: the resumed run "
                "will not equal an uninterrupted one exactly",
                RuntimeWarning, stacklevel=3)
            carry = loop.refill(carry)
    rows = [r for r in metrics_io.read_jsonl(log) if r["env_steps"] <= step] if log.exists() else []
    if session.logger is not None:  # (process 0's) rows logged after the checkpoint come again
        session.logger.rewrite(rows)
    return carry, rows, False


class _Session:
    """Drives a loop to the end of its budget: metrics, checkpoints, progress bar, summary."""

    def __init__(self, loop, record, env, out_dir, progress, checkpoint_every_s,
                 keep_last, save_buffer, progress_fn, tensorboard, wandb, overwrite=False):
        self.loop, self.record = loop, record
        self.out = Path(out_dir) if out_dir is not None else None
        self.metadata = metadata(record, env)
        self.save_buffer = save_buffer
        self._warned_disk = False
        self.progress_fn = progress_fn
        self.show_progress = progress and jax.process_index() == 0
        self.ckpt = self.logger = None
        if self.out is not None:
            from jaxrl.io.metrics import MetricsLogger

            self.ckpt = CheckpointManager(self.out, keep_last=keep_last,
                                          save_interval_s=checkpoint_every_s)
            # the folder's one writer before anything is written into it: another process
            # training into it (even one still compiling) is refused here, its files untouched
            self.ckpt.claim()
            if jax.process_index() == 0:  # one metrics file, one TensorBoard, one W&B run
                try:
                    if overwrite:  # the old run goes while this one holds the lock (not before)
                        runfolder.claim(self.out, True, keep=(self.ckpt.lock_path,))
                    self.logger = MetricsLogger(self.out, tensorboard=tensorboard, wandb=wandb,
                                                config=self.metadata)
                except BaseException:
                    self.ckpt.release()
                    raise

    def run(self, carry, rows: list[dict], wall_offset: float = 0.0):
        from jaxrl.io.progress import Progress

        # (a resumed run's bar starts where it stopped, so rate and ETA count this session only)
        bar = Progress(self.record["steps"], desc=f"{self.record['algo']} {self.record['env']}",
                       initial=self.loop.env_steps(carry)) if self.show_progress else None
        t0 = time.perf_counter()
        failed = True
        try:
            self.claim()
            while not self.loop.finished(carry):
                carry, row = self.loop.run_chunk(carry)
                # NaN marks "no value this chunk" (e.g. no training episode ended): leave it out.
                row = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                row["wall_s"] = wall_offset + time.perf_counter() - t0
                row["compile_s"] = self.loop.compile_s
                rows.append(row)
                if self.logger is not None:
                    self.logger.log(row)
                if self.ckpt is not None:
                    k = getattr(self.loop, "num_seeds", 1)
                    per_seed = [row.get(f"seed{i}/eval_return", math.nan) for i in range(k)]
                    if self.logger is not None:
                        # on disk before any checkpoint: after a power cut a committed checkpoint
                        # must not outlive its rows, which a resume keeps only up to its step
                        # (every row: one fsync per chunk, and no race with the save's clock)
                        self.logger.sync()
                    self.ckpt.save(row["env_steps"], carry, self.metadata,
                                   eval_return=row.get("eval_return"), force=self.loop.finished(carry),
                                   skip=self._skip(carry),
                                   eval_returns=per_seed if k > 1 else None)  # NaN: not evaluated
                if bar is not None:
                    bar.update(row)
                if self.progress_fn is not None:
                    self.progress_fn(row)
            failed = False
        finally:
            if bar is not None:
                bar.close()
            if self.logger is not None:
                self.logger.close(failed=failed)
            if failed and self.ckpt is not None:
                self.ckpt.release()
        if self.out is not None and jax.process_index() == 0:
            self._summary(rows)
        if self.ckpt is not None:  # the summary written, another process may take the folder
            self.ckpt.release()
        return carry, rows

    def claim(self) -> None:
        """Become the run folder's one writer (`CheckpointManager.claim`): a second process
        training into it is refused before it writes anything."""
        if self.ckpt is not None:
            self.ckpt.claim()

    def close(self, failed: bool = False) -> None:
        """Close the metrics sinks (``failed``: W&B records a failed run) and the writer's lock
        of a session that will not run."""
        if self.logger is not None:
            self.logger.close(failed=failed)
        if self.ckpt is not None:
            self.ckpt.release()

    def _skip(self, carry):
        """Which carry paths to leave out of this checkpoint: none (exact resume) unless
        ``save_buffer=False`` or the optional state (replay buffer) would not fit on the disk."""
        import shutil

        prefixes = tuple(getattr(self.loop, "optional_state", ()))
        if not prefixes:
            return None
        if self.save_buffer:
            sizes = jax.tree_util.tree_flatten_with_path(carry)[0]
            optional = sum(leaf.nbytes for path, leaf in sizes  # (metadata: no device copy)
                           if jax.tree_util.keystr(path).startswith(prefixes))
            free = shutil.disk_usage(self.out).free
            fits = optional < 0.5 * free
            if jax.process_count() > 1:  # process 0's disk decides: every process saves the same tree
                from jax.experimental import multihost_utils

                fits = bool(multihost_utils.broadcast_one_to_all(np.asarray(fits)))
            if fits:
                return None
            if not self._warned_disk:
                warnings.warn(f"{', '.join(prefixes)} needs {optional / 2**30:.1f} GiB but {self.out} "
                              f"has {free / 2**30:.1f} GiB free: checkpoints leave it out (resume "
                              "refills it)", RuntimeWarning, stacklevel=2)
                self._warned_disk = True
        return lambda path: path.startswith(prefixes)

    def _summary(self, rows):
        last = rows[-1] if rows else {}
        evals = [r["eval_return"] for r in rows if "eval_return" in r]
        summary = {
            "algo": self.record["algo"], "env": self.record["env"],
            "env_steps": last.get("env_steps", 0), "wall_s": last.get("wall_s", 0.0),
            "compile_s": self.loop.compile_s, "final_eval_return": evals[-1] if evals else None,
            "best_eval_return": max(evals) if evals else None, "config_hash": self.metadata["config_hash"],
            "program_bytes": getattr(self.loop, "program_bytes", {}),
        }
        if self.record.get("seeds", 1) > 1:
            summary["seeds"] = [self.record["seed"] + i for i in range(self.record["seeds"])]
            for key in ("eval_return_ci_low", "eval_return_ci_high"):
                if key in last:
                    summary[f"final_{key}"] = last[key]
        runfolder.write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=1))
        if evals:
            from jaxrl.io.metrics import plot_learning_curve

            try:
                plot_learning_curve({f"{self.record['algo']} {self.record['env']}": rows},
                                    self.out / "learning_curve.png")
            except ImportError as e:  # an offline GPU box installed without it: the run still ends well
                notice(f"no learning_curve.png: {e.name or 'matplotlib'} is not installed (pip install "
                       "matplotlib); metrics.jsonl and TensorBoard hold the curve")
