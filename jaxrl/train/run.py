"""A training run: any algorithm's loop plus metrics files, checkpoints, progress and resume.

A loop (`OffPolicyLoop`, the on-policy loop) exposes ``init_carry()``, ``run_chunk(carry) ->
(carry, row)``, ``finished(carry)``, ``env_steps(carry)`` and ``compile_s``; this module owns
everything on the host side of it:

    RUN_DIR/config.json      algo, env, steps, seed, the full algorithm config
    RUN_DIR/metrics.jsonl    one row per evaluation (env_steps, wall_s, eval_return, losses, sps)
    RUN_DIR/tensorboard/     TensorBoard events
    RUN_DIR/checkpoints/     the whole carry (agent, replay buffer, env state, RNG, counters)
    RUN_DIR/summary.json     algo, env, env_steps, wall_s, compile_s, final_eval_return

``resume(run_dir)`` rebuilds the loop from config.json, restores the newest verified checkpoint
and continues; because the carry is everything, the resumed run equals an uninterrupted one.
A loop may name carry subtrees a checkpoint can leave out (``optional_state``, the replay buffer:
left out with ``save_buffer=False`` or when it would not fit on the disk) and rebuild them after a
restore (``refill``); such a resume is then no longer exact, and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import jax

import envs
from envs.wrappers import VecEnv

ALGOS = ("flashsac", "ppo")
NUM_EVAL_ENVS = 16


def algo_module(name: str):
    """The entry module of an algorithm: make_loop, policy_layers, Config."""
    if name == "flashsac":
        from jaxrl import flashsac as m
    elif name == "ppo":
        from jaxrl import ppo as m
    else:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGOS)}")
    return m


def config_to_dict(cfg: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(cls: type, d: dict) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"config has fields {unknown} that {cls.__name__} does not know")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kw)


def config_hash(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _make_envs(env: str | VecEnv, num_envs: int, seed: int, env_kwargs: dict, resets: dict | None = None):
    """(train env, eval env, task name).  Evaluation always runs on the task's NOMINAL resets, so
    an OmniReset run (``resets={'path': FILE, 'probs': [...]}``) is scored from the start state."""
    if isinstance(env, VecEnv):
        name = env.name.split("/")[0]  # "PushToSlot/omnireset" -> "PushToSlot"
        try:
            eval_env = envs.make(name, num_envs=NUM_EVAL_ENVS, seed=seed + 1, **env_kwargs)
        except ValueError:  # a hand-built env without a registered name: no separate eval envs
            eval_env = None
        if env.num_envs != num_envs:
            raise ValueError(f"env has {env.num_envs} envs but the config asks for {num_envs}")
        return env, eval_env, name
    if resets:
        from envs import omnireset

        train_env = omnireset.make_mixture_env(env, resets["path"], resets.get("probs"),
                                               num_envs=num_envs, seed=seed, **env_kwargs)
    else:
        train_env = envs.make(env, num_envs=num_envs, seed=seed, **env_kwargs)
    eval_env = envs.make(env, num_envs=NUM_EVAL_ENVS, seed=seed + 1, **env_kwargs)
    return train_env, eval_env, env


def _metadata(record: dict, env: VecEnv) -> dict:
    return {
        **record,
        "config_hash": config_hash(record),
        "obs_layout": {k: list(v.shape) for k, v in env.obs_spec.items()},
        "action_size": env.action_size,
    }


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
    progress_fn=None,
    tensorboard: bool = True,
    wandb: bool = False,
    overwrite: bool = False,
) -> tuple[Any, list[dict]]:
    """Train ``algo`` on ``env``; returns (final carry, metrics rows).

    ``out_dir`` must not already hold a run: its checkpoints would mix with this run's (resume and
    export pick the newest step of either).  Continue it with `resume`, or pass ``overwrite=True``
    to delete that run's files (only the files a run writes) first.
    """
    mod = algo_module(algo)
    if not isinstance(config, mod.Config):
        raise TypeError(f"{algo} needs a {mod.Config.__name__}, got {type(config).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if out_dir is not None:
        _claim_run_dir(Path(out_dir), overwrite)
    env_kwargs = dict(env_kwargs or {})
    train_env, eval_env, env_name = _make_envs(env, config.num_envs, seed, env_kwargs, resets)
    record = {
        "algo": algo, "env": env_name, "steps": int(steps), "seed": int(seed),
        "num_evals": int(num_evals), "env_kwargs": env_kwargs, "resets": resets,
        "config": config_to_dict(config),
    }
    loop = mod.make_loop(config, train_env, eval_env, steps, seed, num_evals=num_evals)
    session = _Session(loop, mod, config, record, train_env, out_dir, progress, checkpoint_every_s,
                       keep_last, save_buffer, progress_fn, tensorboard, wandb)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.json").write_text(json.dumps(record, indent=1))
    return session.run(loop.init_carry(), rows=[])


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints", "eval.json",
             "sim2sim.json", "rollout.mp4", "policy.onnx", "policy.onnx.card.json", "policy.npz",
             "policy.npz.card.json", "learning_curve.png", "wandb")


def _claim_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds a run unless ``overwrite``; then remove that run's files."""
    import shutil

    if not ((out / "config.json").exists() or (out / "checkpoints").exists()):
        return
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}). Continue it with `jaxrl resume {out}`, "
            "train into a new folder, or pass overwrite=True (CLI: --overwrite) to delete that run first."
        )
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def read_record(run_dir: str | Path) -> dict:
    """The run's config.json (algo, env, steps, seed, env_kwargs, resets, config)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxrl run folder (no config.json)")
    return json.loads(path.read_text())


def rebuild(record: dict, with_eval: bool = True) -> tuple[Any, Any, VecEnv, Any]:
    """(algo module, config, train env, loop) of a run, exactly as `train` built them."""
    mod = algo_module(record["algo"])
    config = config_from_dict(mod.Config, record["config"])
    train_env, eval_env, _ = _make_envs(record["env"], config.num_envs, record["seed"],
                                        record["env_kwargs"], record.get("resets"))
    loop = mod.make_loop(config, train_env, eval_env if with_eval else None, record["steps"],
                         record["seed"], num_evals=record["num_evals"])
    return mod, config, train_env, loop


def resume(run_dir: str | Path, *, progress: bool = True, wandb: bool | None = None,
           **kwargs) -> tuple[Any, list[dict]]:
    """Continue the run in ``run_dir`` from its newest verified checkpoint.

    ``wandb=None`` logs to Weights & Biases again when the run did (it continues the same W&B run).
    """
    from jaxrl.io import metrics as metrics_io

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    mod, config, train_env, loop = rebuild(record)
    session = _Session(loop, mod, config, record, train_env, run_dir, progress,
                       kwargs.get("checkpoint_every_s", 600.0), kwargs.get("keep_last", 3),
                       kwargs.get("save_buffer", True), kwargs.get("progress_fn"), True,
                       (run_dir / "wandb" / "jaxrl_run_id").exists() if wandb is None else wandb)
    carry, _, step = session.ckpt.restore(loop.init_carry(), expected_metadata=session.metadata)
    if session.ckpt.last_restore_skipped:
        import warnings

        warnings.warn(
            f"checkpoint step {step} of {run_dir} was saved without {', '.join(loop.optional_state)} "
            "(save_buffer=False or not enough disk space); refilling it with fresh warm-up "
            "transitions: the resumed run will not equal an uninterrupted one exactly",
            RuntimeWarning, stacklevel=2)
        carry = loop.refill(carry)
    log = run_dir / "metrics.jsonl"
    rows = [r for r in metrics_io.read_jsonl(log) if r["env_steps"] <= step] if log.exists() else []
    # Rows logged after the checkpoint will be produced again: drop them.
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return session.run(carry, rows=rows, wall_offset=rows[-1]["wall_s"] if rows else 0.0)


class _Session:
    def __init__(self, loop, mod, config, record, env, out_dir, progress, checkpoint_every_s,
                 keep_last, save_buffer, progress_fn, tensorboard, wandb):
        self.loop, self.mod, self.config, self.record = loop, mod, config, record
        self.out = Path(out_dir) if out_dir is not None else None
        self.metadata = _metadata(record, env)
        self.save_buffer = save_buffer
        self._warned_disk = False
        self.progress_fn = progress_fn
        self.show_progress = progress
        self.ckpt = self.logger = None
        if self.out is not None:
            from jaxrl.io.checkpoint import CheckpointManager
            from jaxrl.io.metrics import MetricsLogger

            self.ckpt = CheckpointManager(self.out, keep_last=keep_last,
                                          save_interval_s=checkpoint_every_s)
            self.logger = MetricsLogger(self.out, tensorboard=tensorboard, wandb=wandb,
                                        config=self.metadata)

    def run(self, carry, rows: list[dict], wall_offset: float = 0.0):
        from jaxrl.io.progress import Progress

        bar = Progress(self.record["steps"], desc=f"{self.record['algo']} {self.record['env']}") \
            if self.show_progress else None
        t0 = time.perf_counter()
        failed = True
        try:
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
                    self.ckpt.save(row["env_steps"], carry, self.metadata,
                                   eval_return=row.get("eval_return"),
                                   force=self.loop.finished(carry), skip=self._skip(carry))
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
        if self.out is not None:
            self._summary(rows)
        return carry, rows

    def _skip(self, carry):
        """Which carry paths to leave out of this checkpoint: none (exact resume) unless
        ``save_buffer=False`` or the optional state (replay buffer) would not fit on the disk."""
        import shutil
        import warnings

        prefixes = tuple(getattr(self.loop, "optional_state", ()))
        if not prefixes:
            return None
        if self.save_buffer:
            sizes = jax.tree_util.tree_flatten_with_path(carry)[0]
            optional = sum(leaf.nbytes for path, leaf in sizes  # (metadata: no device copy)
                           if jax.tree_util.keystr(path).startswith(prefixes))
            free = shutil.disk_usage(self.out).free
            if optional < 0.5 * free:
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
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
