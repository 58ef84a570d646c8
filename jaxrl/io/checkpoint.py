"""Checkpoints that resume a run exactly and never restore garbage silently.

One checkpoint is one folder ``run_dir/checkpoints/step_000000001234/``:

    state/              the arrays, written by orbax (one flat dict ``leaf_00000 ...``)
    structure.json      tree path, shape and dtype of every leaf of the saved pytree
    metadata.json       the caller's JSON metadata (config, env, observation layout, algo)
    manifest.json       step, eval return, size + SHA-256 of every file above
    COMMITTED           written last; holds the SHA-256 of manifest.json

Why our own bookkeeping instead of orbax's: orbax 0.12.8 restores random bytes written into a
data file silently with wrong values, raises a bare ``Exception`` on a truncated file and counts
an empty step folder as the latest step.  Here a checkpoint exists only once ``COMMITTED`` is
there; it is written into ``.tmp-step_...``, fsynced and renamed, so a crash leaves at most a
temporary folder, which is ignored, and removed by the next writer only (`claim`): reading a
run while it trains (eval, export, ``init_from``) never touches its files.  One process writes
into a folder at a time (a lock file); a second is refused.  Every restore re-hashes the files
it reads, and a checkpoint that verifies but cannot be read gives way to the one before it.

Several hosts (``jax.distributed``): the run folder must be on a filesystem every host sees.
Every process writes its own shards of the arrays through orbax; process 0 alone writes the
bookkeeping files, renames the folder and applies retention, with barriers in between; process
0's clock decides when a checkpoint is due.  Restoring reads the global arrays into whatever
shardings the target has, so a checkpoint restores onto another device or host count.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"
_MARKER = "COMMITTED"
_LOCK = ".writer.lock"
_MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint (none written, or every one failed verification)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run with a different state layout or config."""


# --------------------------------------------------------------------------- pytree description


def _key_name(k: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path: tuple) -> str:
    """``(GetAttrKey('obs_normaliser'), GetAttrKey('mean'))`` -> ``'obs_normaliser.mean'``."""
    return ".".join(_key_name(k) for k in path) or "<root>"


def _is_key_array(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_spec(x: Any) -> tuple[list[int], str]:
    """Shape and dtype name as stored; typed PRNG keys are stored as their uint32 key data."""
    if _is_key_array(x):
        data_shape = jax.eval_shape(jax.random.key_data, x).shape
        return list(data_shape), f"key<{jax.random.key_impl(x)}>"
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        return [], f"python_{type(x).__name__}"
    return list(np.shape(x)), str(np.dtype(x.dtype))


def describe(tree: Any) -> list[dict]:
    """One entry per leaf: ``{"path", "shape", "dtype"}``, in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in leaves:
        shape, dtype = _leaf_spec(leaf)
        out.append({"path": path_str(path), "shape": shape, "dtype": dtype})
    return out


def _fmt(entry: dict | None) -> str:
    if entry is None:
        return "nothing"
    return f"{entry['dtype']} {tuple(entry['shape'])}"


def compare_structure(stored: list[dict], expected: list[dict]) -> str | None:
    """A sentence naming the first difference between two ``describe`` results, or None."""
    stored_by_path = {e["path"]: e for e in stored}
    expected_by_path = {e["path"]: e for e in expected}
    for e in expected:
        s = stored_by_path.get(e["path"])
        if s is None:
            return f"{e['path']}: the checkpoint has no such entry, this run expects {_fmt(e)}"
        if s["shape"] != e["shape"] or s["dtype"] != e["dtype"]:
            return f"{e['path']}: checkpoint has {_fmt(s)}, this run expects {_fmt(e)}"
    for s in stored:
        if s["path"] not in expected_by_path:
            return f"{s['path']}: checkpoint has {_fmt(s)}, this run has no such entry"
    if [e["path"] for e in stored] != [e["path"] for e in expected]:
        return "the same entries in a different order (different pytree node types?)"
    return None


def _flatten_dict(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten_dict(v, name + "."))
        else:
            out[name] = v
    return out


def metadata_diff(stored: Mapping, expected: Mapping) -> dict[str, tuple]:
    """``{field: (stored, expected)}`` for every (dotted, nested) field of ``expected`` that differs."""
    flat_stored, missing = _flatten_dict(stored), "<missing>"
    diff = {}
    for k, v in _flatten_dict(expected).items():
        # Compare through JSON so tuples == lists, as they will be after a round trip.
        want = json.loads(json.dumps(v, default=str))
        have = flat_stored.get(k, missing)
        if have != want:
            diff[k] = (have, want)
    return diff


# --------------------------------------------------------------------------- files


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint files, policy files, reset
    datasets)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def _files_under(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != _MARKER
    )


# --------------------------------------------------------------------------- the manager


class CheckpointManager:
    """Atomic, verified checkpoints of a whole training-state pytree.

    Args:
      run_dir: the run folder; checkpoints go to ``run_dir/checkpoints``.
      keep_last: how many of the most recent checkpoints to keep.
      keep_best: also keep the checkpoint with the highest ``eval_return``.
      save_interval_s: ``save`` without ``force`` writes only when this many seconds passed since
        the last save (or since the manager was made).
      clock: seconds, monotonic; replaceable in tests.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        keep_last: int = 3,
        keep_best: bool = True,
        save_interval_s: float = 600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(run_dir).absolute() / "checkpoints"  # orbax needs absolute paths
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.save_interval_s, self._clock = save_interval_s, clock
        self._last_save = clock()
        self.last_restore_skipped: list[str] = []  # paths `restore` left as the target's (not saved)
        self._corrupt: dict[int, str] = {}  # step -> why it cannot be restored (retention does not count it)
        # steps written or verified by this manager -> their files' (path, size, mtime): hashed
        # again only when a file changed
        self._verified: dict[int, tuple] = {}
        self._written: set[int] = set()  # steps this manager saved (retention trusts them unhashed)
        self._lock = None  # the writer's lock file (`claim`; None where the file system has no locks)
        self._claimed = False

    # ---- the one writer

    def claim(self) -> None:
        """Become the folder's one writer (process 0; the others write shards under its barriers):
        take the lock, then clean up what a crashed writer left.  A folder another live process
        writes into raises `CheckpointError`.  `save` claims on its first call; a run claims
        before it writes anything else (`jaxrl.train.run`).  Idempotent; `release` ends it."""
        if self._claimed:
            return
        refused = None
        if jax.process_index() == 0:
            try:
                self._lock = _take_lock(self.directory / _LOCK)
                self._recover_temporaries()
            except CheckpointError as e:
                refused = e
        if jax.process_count() > 1:  # every process learns process 0's answer (none waits alone)
            from jax.experimental import multihost_utils

            ok = bool(multihost_utils.broadcast_one_to_all(np.asarray(refused is None)))
            if not ok and refused is None:
                refused = CheckpointError(f"process 0 could not claim {self.directory}: another process "
                                          "is writing checkpoints into it")
        if refused is not None:
            raise refused
        self._claimed = True

    @property
    def lock_path(self) -> Path:
        """The writer's lock file (`claim`)."""
        return self.directory / _LOCK

    def release(self) -> None:
        """Give up the writer's lock (another process may then write here)."""
        lock, self._lock, self._claimed = getattr(self, "_lock", None), None, False
        if lock is not None:
            lock.close()  # closing the file drops its flock

    def __del__(self) -> None:  # a manager dropped without `release` (the Python API): let go
        self.release()

    # ---- listing

    def _step_dir(self, step: int) -> Path:
        return self.directory / f"step_{step:012d}"

    def steps(self) -> list[int]:
        """Committed steps, ascending (not yet verified; ``restore`` verifies)."""
        out = []
        for p in self.directory.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / _MARKER).is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def _manifest(self, step: int) -> dict:
        with open(self._step_dir(step) / _MANIFEST) as f:
            return json.load(f)

    def best_step(self, seed_index: int | None = None) -> int | None:
        """The committed step with the highest eval return (None when none has one): of seed
        ``seed_index`` in a several-seed run (its own return, ``eval_returns``), else the mean.
        Steps found corrupt are passed over: retention keeps the best, and keeping a corrupt
        one would delete the good best that replaces it."""
        best, best_return = None, -np.inf
        for step in self.steps():
            if step in self._corrupt:
                continue
            try:
                manifest = self._manifest(step)
            except (OSError, ValueError):
                continue
            ret = manifest.get("eval_return")
            if seed_index is not None and manifest.get("eval_returns") is not None:
                ret = manifest["eval_returns"][seed_index]
            if ret is not None and np.isfinite(ret) and ret > best_return:
                best, best_return = step, ret
        return best

    def best_verified_step(self, seed_index: int | None = None, trust_written: bool = False) -> int | None:
        """`best_step` among the steps that verify: a corrupt best (warned about) gives way to
        the next best, as the newest gives way in `restore`.  ``trust_written``: a step this
        manager saved counts without hashing it again (retention, at every save)."""
        while (step := self.best_step(seed_index)) is not None:
            if trust_written and step in self._written:
                return step
            problem = self.verify(step)
            if problem is None:
                return step
            self._corrupt[step] = problem
            msg = f"skipping corrupt best checkpoint in {self.directory}: {problem}"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return None

    # ---- saving

    def should_save(self) -> bool:
        return self._clock() - self._last_save >= self.save_interval_s

    def save(
        self,
        step: int,
        state: Any,
        metadata: Mapping[str, Any],
        eval_return: float | None = None,
        force: bool = False,
        skip: Callable[[str], bool] | None = None,
        eval_returns: Sequence[float] | None = None,
    ) -> bool:
        """Write ``state`` for ``step`` when forced or the save interval elapsed; True if written.

        ``eval_return`` (a several-seed run: the mean) and ``eval_returns`` (each seed's) go into
        the manifest: `best_step` and ``keep_best`` read them.

        Leaves whose path ``skip(path)`` accepts are not written (e.g. a replay buffer too big for
        the disk); `restore` then keeps the target's leaves for them and lists them in
        ``last_restore_skipped``.
        """
        due = force or self.should_save()
        multi = jax.process_count() > 1
        if multi:  # every process must take part in the same saves: process 0's clock decides
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        if not due:
            return False
        step = int(step)
        primary = jax.process_index() == 0
        self.claim()
        tmp = self.directory / f"{_TMP_PREFIX}step_{step:012d}"
        if primary:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        _sync(f"jaxrl-ckpt-{step}-prepared")
        try:
            skipped = self._write_arrays(tmp, state, skip)  # every process writes its shards
            _sync(f"jaxrl-ckpt-{step}-written")
            if primary:
                self._write_record(tmp, step, state, metadata, eval_return, skipped, eval_returns)
                _fsync_tree(tmp)
                final = self._step_dir(step)
                if final.exists():  # re-saving a step (e.g. after resume): replace it
                    old = self.directory / f"{_TMP_PREFIX}old-{final.name}"
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, final)
                _fsync_dir(self.directory)
        except BaseException:
            if primary:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        _sync(f"jaxrl-ckpt-{step}-committed")
        self._corrupt.pop(step, None)  # a re-save of a step found corrupt: good again
        self._written.add(step)
        self._last_save = self._clock()
        if primary:
            self._apply_retention(len(eval_returns or ()))
        _sync(f"jaxrl-ckpt-{step}-retained")
        log.info("saved checkpoint step %d to %s", step, self._step_dir(step))
        return True

    def _write_arrays(self, folder: Path, state: Any, skip: Callable[[str], bool] | None) -> list[int]:
        """The arrays, through orbax (under several processes each writes its own shards);
        returns the leaf positions left out."""
        import orbax.checkpoint as ocp

        with_path = jax.tree_util.tree_flatten_with_path(state)[0]
        arrays, skipped = {}, []
        for i, (path, leaf) in enumerate(with_path):
            if skip is not None and skip(jax.tree_util.keystr(path)):
                skipped.append(i)
                continue
            if _is_key_array(leaf):
                leaf = jax.random.key_data(leaf)
            elif isinstance(leaf, (bool, int, float)):
                leaf = np.asarray(leaf)
            if np.size(leaf) == 0:
                continue  # orbax refuses empty arrays; structure.json records their shape
            arrays[f"leaf_{i:05d}"] = leaf
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            ckptr.save(folder / "state", arrays)
        return skipped

    def _write_record(self, folder: Path, step: int, state: Any, metadata: Mapping, eval_return,
                      skipped: list[int], eval_returns: Sequence[float] | None = None) -> None:
        """Our bookkeeping beside the arrays (one process): structure, metadata, manifest of
        every file's size and SHA-256, and the COMMITTED marker last."""
        _write_json(folder / "structure.json", describe(state))
        _write_json(folder / "metadata.json", dict(metadata))
        _write_json(folder / "skipped.json", skipped)
        files = {
            rel: {"sha256": file_sha256(folder / rel), "size": (folder / rel).stat().st_size}
            for rel in _files_under(folder)
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "eval_return": None if eval_return is None else float(eval_return),
            "eval_returns": None if eval_returns is None else [_finite_or_none(r) for r in eval_returns],
            "wall_time": time.time(),
            "files": files,
        }
        _write_json(folder / _MANIFEST, manifest)
        (folder / _MARKER).write_text(file_sha256(folder / _MANIFEST) + "\n")

    def _apply_retention(self, seeds: int = 0) -> None:
        """Keep the last ``keep_last`` and the best; steps known to be corrupt neither count nor
        go (a resume that fell back past them would otherwise lose each new checkpoint to them)."""
        steps = [s for s in self.steps() if s not in self._corrupt]
        keep = set(steps[-self.keep_last :])
        if self.keep_best:  # the best by the mean, and each of ``seeds`` seeds' own best, that verify
            best = functools.partial(self.best_verified_step, trust_written=True)
            keep |= {b for b in [best(), *map(best, range(seeds))] if b is not None}
        for step in steps:
            if step not in keep:
                shutil.rmtree(self._step_dir(step), ignore_errors=True)

    def _recover_temporaries(self) -> None:
        """What a crashed writer left: unfinished folders go; the old copy of a step whose re-save
        was cut between its two renames becomes that step again."""
        old_prefix = f"{_TMP_PREFIX}old-"
        for p in sorted(self.directory.iterdir()):
            if not p.name.startswith(_TMP_PREFIX):
                continue
            if p.name.startswith(old_prefix):
                final = self.directory / p.name[len(old_prefix):]
                if not final.exists() and (p / _MARKER).is_file():
                    log.info("restoring checkpoint %s (a re-save of it was cut short)", final)
                    os.replace(p, final)
                    continue
            log.info("removing unfinished checkpoint %s (left by a crash)", p)
            shutil.rmtree(p, ignore_errors=True)

    # ---- verifying and restoring

    def _stamp(self, step: int) -> tuple:
        """(path, size, mtime) of every file of ``step``: what a change to it would change."""
        try:
            return tuple(sorted((str(p), st.st_size, st.st_mtime_ns) for p in self._step_dir(step).rglob("*")
                                if p.is_file() and (st := p.stat())))
        except OSError:
            return ()

    def verify(self, step: int) -> str | None:
        """None when every file of ``step`` matches its checksum, else what failed (a file the
        disk cannot read included).  A step this manager wrote or verified already is not
        hashed again while its files keep their sizes and times (a replay buffer can be
        gigabytes, and `export --checkpoint best` verifies the best before restoring it)."""
        if step in self._verified and self._verified[step] == self._stamp(step):
            return None
        try:
            problem = self._verify(step)
            if problem is None:
                self._verified[step] = self._stamp(step)
            return problem
        except OSError as e:
            return f"step {step}: unreadable ({e})"

    def _verify(self, step: int) -> str | None:
        folder = self._step_dir(step)
        try:
            marker = (folder / _MARKER).read_text().strip()
        except OSError:
            return f"step {step}: no {_MARKER} marker (unfinished write)"
        manifest_path = folder / _MANIFEST
        if not manifest_path.is_file() or file_sha256(manifest_path) != marker:
            return f"step {step}: {_MANIFEST} is missing or does not match its checksum"
        try:
            files = self._manifest(step)["files"]
        except (ValueError, KeyError) as e:
            return f"step {step}: {_MANIFEST} unreadable ({e})"
        for rel, info in sorted(files.items()):
            path = folder / rel
            if not path.is_file():
                return f"step {step}: file {rel} is missing"
            if path.stat().st_size != info["size"]:
                return (
                    f"step {step}: file {rel} has {path.stat().st_size} bytes, "
                    f"{info['size']} were written (truncated?)"
                )
            if file_sha256(path) != info["sha256"]:
                return f"step {step}: file {rel} does not match its SHA-256 checksum (corrupted)"
        return None

    def _good_step(self, step: int | None) -> int:
        if step is not None:
            if not (self._step_dir(step) / _MARKER).is_file():
                raise CheckpointError(
                    f"no committed checkpoint for step {step} in {self.directory}; "
                    f"available: {self.steps()}"
                )
            if problem := self.verify(step):
                raise CheckpointError(f"checkpoint failed verification: {problem}")
            return step
        steps, problems = self.steps(), []
        for candidate in reversed(steps):
            if candidate in self._corrupt:  # found before (and warned about)
                problems.append(self._corrupt[candidate])
                continue
            problem = self.verify(candidate)
            if problem is None:
                return candidate
            problems.append(problem)
            self._corrupt[candidate] = problem
            msg = f"skipping corrupt checkpoint in {self.directory}: {problem}"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if not steps:
            raise CheckpointError(f"no committed checkpoint in {self.directory}")
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: every one failed verification or could not be read:\n  "
            + "\n  ".join(problems)
            + "\nThe files were modified or truncated after writing (disk full, copy interrupted?)."
        )

    def metadata(self, step: int | None = None) -> dict:
        step = self._good_step(step)
        with open(self._step_dir(step) / "metadata.json") as f:
            return json.load(f)

    def check_metadata(self, expected: Mapping[str, Any], step: int | None = None) -> None:
        """Raise ``CheckpointMismatchError`` naming each field of ``expected`` that differs."""
        _raise_on_metadata_diff(self.metadata(step), expected, step)

    def restore(
        self,
        target: Any,
        step: int | None = None,
        *,
        expected_metadata: Mapping[str, Any] | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> tuple[Any, dict, int]:
        """``(state, metadata, step)`` from ``step`` or the latest checkpoint that verifies.

        ``target`` is a pytree like the saved one (real arrays or ``jax.ShapeDtypeStruct``); the
        restored arrays take its structure and, for jax arrays, its shardings.  ``only(path)``
        (path as ``jax.tree_util.keystr`` gives it, e.g. ``".agent.actor..."``) restores just the
        leaves it accepts and leaves the others as they are in ``target``: loading a policy then
        does not read a multi-GB replay buffer into memory.
        """
        return self._with_fallback(step, lambda s: self._restore(target, s, expected_metadata, only))

    def _with_fallback(self, step: int | None, read: Callable[[int], Any]) -> Any:
        """``read(step)``, or from the newest step that verifies; there, a checkpoint that
        verifies but cannot be read (orbax fails: a damaged file system, an unreadable block)
        gives way to the one before it, with a warning."""
        if step is not None:
            return read(self._good_step(step))
        if jax.process_count() > 1:
            # One step for every process: process 0's choice, each process verifying it (their
            # own choices could differ where a file system shows hosts different files).  No
            # fallback past a step that cannot be read: the processes would have to agree again.
            from jax.experimental import multihost_utils

            mine, refused = -1, None
            if jax.process_index() == 0:
                try:
                    mine = self._good_step(None)
                except CheckpointError as e:
                    refused = e
            # (as two int32 words: without jax_enable_x64 an int64 would be cut to 32 bits)
            hi, lo = (int(w) for w in multihost_utils.broadcast_one_to_all(
                np.asarray([mine >> 31, mine & 0x7FFFFFFF], np.int32)))
            chosen = (hi << 31) | lo
            if chosen < 0:
                raise refused or CheckpointError(f"process 0 found no usable checkpoint in {self.directory}")
            return read(self._good_step(chosen))
        while True:
            chosen = self._good_step(None)
            try:
                return read(chosen)
            except _Unreadable as e:
                self._corrupt[chosen] = str(e)
                msg = f"skipping checkpoint in {self.directory}: {e}"
                log.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=4)

    def _restore(self, target: Any, step: int, expected_metadata: Mapping[str, Any] | None,
                 only: Callable[[str], bool] | None) -> tuple[Any, dict, int]:
        import orbax.checkpoint as ocp

        folder = self._step_dir(step)
        with open(folder / "metadata.json") as f:
            metadata = json.load(f)
        if expected_metadata is not None:
            _raise_on_metadata_diff(metadata, expected_metadata, step)
        with open(folder / "structure.json") as f:
            stored = json.load(f)
        if problem := compare_structure(stored, describe(target)):
            hint = ", ".join(f"{k}={metadata[k]!r}" for k in ("algo", "env") if k in metadata)
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit this run's state: "
                f"{problem}.  It was written by a run with a different configuration or "
                f"environment{' (' + hint + ')' if hint else ''}; restore it with the same "
                "config and env, or start a new run directory."
            )
        with_path, treedef = jax.tree_util.tree_flatten_with_path(target)
        leaves = [leaf for _, leaf in with_path]
        wanted = [only is None or only(jax.tree_util.keystr(p)) for p, _ in with_path]
        skipped_file = folder / "skipped.json"
        skipped = set(json.loads(skipped_file.read_text())) if skipped_file.exists() else set()
        self.last_restore_skipped = sorted(
            jax.tree_util.keystr(with_path[i][0]) for i in skipped if wanted[i])
        wanted = [w and i not in skipped for i, w in enumerate(wanted)]
        partial = not all(wanted)
        abstract = {
            f"leaf_{i:05d}": _abstract(leaf)
            for i, leaf in enumerate(leaves)
            if np.size(leaf) != 0 and wanted[i]
        }
        try:
            if not partial:
                with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
                    arrays = ckptr.restore(folder / "state", abstract)
            else:
                with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                    arrays = ckptr.restore(folder / "state", args=ocp.args.PyTreeRestore(
                        abstract, restore_args=jax.tree.map(_restore_args, abstract),
                        partial_restore=True))
        except Exception as e:  # orbax raises bare Exceptions on damaged files
            raise _Unreadable(f"orbax could not read checkpoint step {step}: {e!r}") from e
        restored = [
            leaf if not wanted[i]
            else _from_stored(leaf, arrays[f"leaf_{i:05d}"]) if np.size(leaf) != 0
            else _empty_like(leaf)
            for i, leaf in enumerate(leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, restored), metadata, step


    def restore_matching(self, target: Any, select: Callable[[str], bool], step: int | None = None,
                         check_only: bool = False) -> tuple[Any, dict, int, list[str]]:
        """Leaves of ``target`` whose `path_str` ``select`` accepts, read from a checkpoint of
        ANOTHER run (found by path, not position: that run's carry may differ elsewhere, e.g. a
        bigger replay buffer); the others keep ``target``'s values.  Returns (tree, metadata,
        step, loaded paths).  A selected leaf the checkpoint lacks, or whose shape / dtype
        differs, raises `CheckpointMismatchError` naming the field and both layouts.
        ``check_only``: those checks alone, nothing read (``target`` may be abstract: a run
        checks its ``init_from`` before compiling anything); returns ``target`` unchanged."""
        return self._with_fallback(step, lambda s: self._restore_matching(target, select, s, check_only))

    def _restore_matching(self, target: Any, select: Callable[[str], bool], step: int,
                          check_only: bool) -> tuple[Any, dict, int, list[str]]:
        import orbax.checkpoint as ocp

        folder = self._step_dir(step)
        with open(folder / "metadata.json") as f:
            metadata = json.load(f)
        with open(folder / "structure.json") as f:
            stored = json.load(f)
        skipped_file = folder / "skipped.json"
        skipped = set(json.loads(skipped_file.read_text())) if skipped_file.exists() else set()
        index = {e["path"]: i for i, e in enumerate(stored)}
        with_path, treedef = jax.tree_util.tree_flatten_with_path(target)
        pairs = []  # (target leaf position, stored leaf position)
        for j, (p, leaf) in enumerate(with_path):
            name = path_str(p)
            if not select(name):
                continue
            shape, dtype = _leaf_spec(leaf)
            expected = {"shape": shape, "dtype": dtype}
            i = index.get(name)
            if i is None:
                raise CheckpointMismatchError(
                    f"{self.directory} step {step}: {name}: the checkpoint has no such entry, this run "
                    f"expects {_fmt(expected)} (different algorithm or network?)")
            if stored[i]["shape"] != shape or stored[i]["dtype"] != dtype:
                raise CheckpointMismatchError(
                    f"{self.directory} step {step}: {name}: checkpoint has {_fmt(stored[i])}, this run "
                    f"expects {_fmt(expected)} ({_why_shapes_differ(stored[i]['shape'], shape)})")
            if i in skipped:
                raise CheckpointError(f"{self.directory} step {step}: {name} was not saved in that checkpoint")
            pairs.append((j, i))
        if not pairs:
            raise CheckpointMismatchError(f"{self.directory} step {step}: nothing of this run's state was selected")
        loaded = [path_str(with_path[j][0]) for j, _ in pairs]
        if check_only:
            return target, metadata, step, loaded
        leaves = [leaf for _, leaf in with_path]
        abstract = {f"leaf_{i:05d}": _abstract(leaves[j]) for j, i in pairs if np.size(leaves[j]) != 0}
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                arrays = ckptr.restore(folder / "state", args=ocp.args.PyTreeRestore(
                    abstract, restore_args=jax.tree.map(_restore_args, abstract), partial_restore=True))
        except Exception as e:  # orbax raises bare Exceptions on damaged files
            raise _Unreadable(f"orbax could not read checkpoint step {step}: {e!r}") from e
        for j, i in pairs:
            leaves[j] = (_from_stored(leaves[j], arrays[f"leaf_{i:05d}"]) if np.size(leaves[j]) != 0
                         else _empty_like(leaves[j]))
        return jax.tree_util.tree_unflatten(treedef, leaves), metadata, step, loaded


def _why_shapes_differ(stored: Sequence[int], wanted: Sequence[int]) -> str:
    """The likely cause of a leaf's other shape in another run's checkpoint: a seed axis (runs of
    K seeds carry one in front of every leaf) or the layout."""
    stored, wanted = list(stored), list(wanted)
    if wanted[1:] == stored:
        return (f"this run trains {wanted[0]} seeds at once and the checkpoint's run one: start each "
                "seed as its own run from it, or train the source with as many seeds")
    if stored[1:] == wanted:
        return (f"the checkpoint's run trained {stored[0]} seeds at once and this run one: export or "
                "load one seed of it, or train this run with as many seeds")
    return "different observation/action layout or network size?"


def writer_absent(run_dir: str | os.PathLike) -> None:
    """`CheckpointError` when a live process writes checkpoints into ``run_dir`` (holds its lock)."""
    path = Path(run_dir).absolute() / "checkpoints" / _LOCK
    if path.exists():
        lock = _take_lock(path)
        if lock is not None:
            lock.close()


class _Unreadable(CheckpointError):
    """A checkpoint that verified but that orbax could not read."""


def _take_lock(path: Path) -> Any:
    """An exclusive, non-blocking ``flock`` on ``path`` (held while the returned file is open);
    `CheckpointError` naming the holder when another process has it.  The kernel drops the
    lock when its process dies, so a killed run never leaves its folder locked.  Where the
    file system has no locks, a warning, and no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    f = open(path, "a+")  # noqa: SIM115 - held open: the lock lives as long as the file
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise CheckpointError(
            f"{holder} is writing checkpoints into {path.parent}: two runs writing one folder would "
            "mix their checkpoints.  Let it finish (or stop it), then `jaxrl resume` the run; or "
            "train into another folder.") from None
    except OSError as e:  # e.g. a network file system without locks
        f.close()
        warnings.warn(f"{path}: cannot lock the run folder ({e}); make sure one process writes into it",
                      RuntimeWarning, stacklevel=3)
        return None
    import socket

    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _sync(name: str) -> None:
    """A barrier of every process of a multi-host run (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _raise_on_metadata_diff(stored: Mapping, expected: Mapping, step: int | None) -> None:
    diff = metadata_diff(stored, expected)
    if diff:
        raise CheckpointMismatchError(
            f"checkpoint{'' if step is None else f' step {step}'} was written with a different "
            f"configuration: {diff} (field: (checkpoint, this run)).  Resume with the run's own "
            "config, or start a new run directory."
        )


def _restore_args(abstract: jax.ShapeDtypeStruct) -> Any:
    """Restore as a jax array with the target's sharding (default: first local device)."""
    import orbax.checkpoint as ocp

    sharding = abstract.sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=abstract.shape, dtype=abstract.dtype)


def _abstract(leaf: Any) -> Any:
    """What orbax should restore a target leaf as (typed keys as their uint32 data)."""
    if _is_key_array(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        sharding = getattr(leaf, "sharding", None) if isinstance(leaf, jax.Array) else None
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    arr = np.asarray(leaf)
    return jax.ShapeDtypeStruct(arr.shape, arr.dtype)


def _empty_like(leaf: Any) -> Any:
    """A zero-size leaf (never stored: orbax refuses them) rebuilt from the target."""
    if isinstance(leaf, np.ndarray):
        return np.zeros(leaf.shape, leaf.dtype)
    return jnp.zeros(np.shape(leaf), leaf.dtype)


def _from_stored(target_leaf: Any, value: Any) -> Any:
    if _is_key_array(target_leaf):
        return jax.random.wrap_key_data(value, impl=jax.random.key_impl(target_leaf))
    if isinstance(target_leaf, (bool, int, float)) and not isinstance(target_leaf, np.generic):
        return type(target_leaf)(np.asarray(value))
    if isinstance(target_leaf, np.ndarray):
        return np.asarray(value)
    return value
