"""The host side every training loop shares, and the protocol `jaxrl.train.run` drives.

A loop (`OffPolicyLoop`, `OnPolicyLoop`, the finetuning loop) is a `HostLoop`:

    init_carry() -> carry            everything the run needs to continue, one pytree
    run_chunk(carry) -> carry, row   one jitted chunk (+ evaluation) and its metrics row
    finished(carry) -> bool          the budget is spent
    env_steps(carry) -> int          env steps so far (host int: no int32 overflow)
    compile_s                        seconds spent compiling so far
    program_bytes                    XLA's memory of the chunk and evaluation (checked before they run)
    optional_state / refill(carry)   carry subtrees a checkpoint may leave out, and how to rebuild them

This module holds the pieces each loop would otherwise repeat: lifting one seed's pure
functions over K seeds and a device mesh, compile-and-time with a donated carry, the NaN guards,
the metrics row (per seed, with means and intervals), the training-episode statistics of a
chunk, the budget's split into chunks (`chunk_ends`: exactly the budget, whatever the number of
evaluations) and the evaluation key stream (its own, so evaluating never changes training).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from envs._runtime import short_program_options, short_run_options
from envs.wrappers import EnvState
from jaxrl.train import guards
from jaxrl.train.evaluate import eval_keys, evaluation, evaluation_from

# Salt of the evaluation key stream: evaluation keys never come from the training carry.
_EVAL_STREAM = 0xE7A1


SEED_AXIS = "seed"  # the name of the seed vmap (`HostLoop._lift`), for decisions shared by all seeds


def chunk_ends(total_iters: int, num_chunks: int) -> tuple[int, ...]:
    """Iterations done after each chunk when a budget of ``total_iters`` is split into
    min(``num_chunks``, ``total_iters``) chunks whose lengths differ by at most one: the budget
    exactly, whatever the number of evaluations.  (Rounding the budget up to equal chunks ran up
    to ``num_chunks`` − 1 iterations over it, and FlashSAC's schedules, whose length is the run's
    number of updates, depended on the number of evaluations.)  A chunk's length is an argument
    of its one compiled program (`repeat`)."""
    if num_chunks < 1:
        raise ValueError(f"num_evals must be >= 1, got {num_chunks}")
    total = max(int(total_iters), 1)
    chunks = min(int(num_chunks), total)
    return tuple((k + 1) * total // chunks for k in range(chunks))


def iterations_to_next(ends: tuple[int, ...], done: int) -> int:
    """The length of the chunk that starts after ``done`` iterations (of the plan `chunk_ends`;
    ``done`` < its last end: a finished run has no next chunk)."""
    import bisect

    if not 0 <= done < ends[-1]:
        raise ValueError(f"no chunk starts after {done} of {ends[-1]} iterations")
    return ends[bisect.bisect_right(ends, done)] - done


def repeat(body: Callable, carry: Any, n: jax.Array) -> tuple[Any, Any]:
    """``body(carry) -> (carry, metrics)`` applied ``n`` times -> (carry, mean of the metrics).

    ``n`` is traced (a while loop, not a scan of static length): one compiled chunk serves every
    chunk length, so the number of evaluations, the budget or a resume never recompiles it."""
    from jax.extend.core import jaxpr_as_fun

    # Traced once (the metrics' shapes come with it), replayed inside the loop: tracing the body
    # twice would double the chunk's tracing time, which rivals its compile time on CPU.
    jaxpr, shapes = jax.make_jaxpr(body, return_shape=True)(carry)
    replay, tree = jaxpr_as_fun(jaxpr), jax.tree.structure(shapes)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes[1])

    def step(_, c):
        carry, total = c
        carry, m = jax.tree.unflatten(tree, replay(*jax.tree.leaves(carry)))
        return carry, jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, m)

    carry, total = jax.lax.fori_loop(0, n, step, (carry, zeros))
    return carry, jax.tree.map(lambda t: t / jnp.maximum(n, 1).astype(jnp.float32), total)


def skip_when(pred: jax.Array, fn: Callable, state: Any, *args) -> tuple[Any, Any]:
    """``fn(state, *args) -> (state, metrics)``, or ``(state, zero metrics)`` where ``pred``:
    a `lax.cond` whose skip branch takes the metrics' shapes from ``fn``'s one trace."""
    from jax.extend.core import jaxpr_as_fun

    jaxpr, shapes = jax.make_jaxpr(fn, return_shape=True)(state, *args)
    run, tree = jaxpr_as_fun(jaxpr), jax.tree.structure(shapes)

    def do(operands):
        return jax.tree.unflatten(tree, run(*jax.tree.leaves(operands)))

    def skip(operands):
        return operands[0], jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1])

    return jax.lax.cond(pred, skip, do, (state, *args))


def init_keys(key: jax.Array) -> jax.Array:
    """A fresh run's key split (agent, envs, the loop's own stream): one rule for every loop,
    so `HostLoop.initial_env_state` resets the envs exactly as ``_init`` would."""
    return jax.random.split(key, 3)


def episode_metrics(before: Any, after: Any) -> dict:
    """Training episodes that ended between two `EpisodeStats` and their mean return
    (NaN when none ended: "no value", not a failure).  Traced inside a chunk."""
    done = after.completed - before.completed
    return {
        "train_episodes": done,
        "train_return": jnp.where(done > 0, (after.return_sum - before.return_sum)
                                  / jnp.maximum(done, 1), jnp.nan),
    }


COUNTERS = ("train_episodes", "train_return", "solver_limit_hits")  # `chunk_counters`' keys


def chunk_counters(before: EnvState, after: EnvState) -> dict:
    """Per-chunk metrics every loop reports from the env state: episodes, return, solver limits
    (`COUNTERS`; a warm-up's row has these alone)."""
    return {**episode_metrics(before.stats, after.stats),
            "solver_limit_hits": after.solver_limit_hits - before.solver_limit_hits}


def eval_key(seed: int, env_steps: int) -> jax.Array:
    """The key of the evaluation at ``env_steps``: a stream of its own, derived from the run's
    seed, so the number of evaluations (or none) never changes the training trajectory."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _EVAL_STREAM)
    return jax.random.fold_in(base, env_steps % (2**31 - 1))


def notice(text: str) -> None:
    """One line on stderr; above a running progress bar rather than through it (tqdm's write)."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"jaxrl: {text}", file=sys.stderr, flush=True)
    else:
        tqdm.write(f"jaxrl: {text}", file=sys.stderr)
        sys.stderr.flush()


class HostLoop:
    """Base of the loops: seeds, devices, compile-and-time, guards, metrics row, evaluation.

    A subclass writes ONE seed's run on ONE device's view of the data, as pure functions:

        _init(key) -> carry               the whole state of a fresh run
        _chunk_fn(carry, n, warm) -> carry, metrics  one chunk of ``n`` iterations (`repeat`); a
                                          warm-up or prefill (``warm``) is the same program taking
                                          the other branch of a `lax.cond` (one compiled program)
        make_evaluate(act)                optional: deterministic evaluation with ``act`` (sets ``evaluate``)

    and the host side (``finished``, ``env_steps``, ``_advance``).  `setup` then lifts them:
    vmapped over ``num_seeds`` seeds (the run is a pure function of its key, so K seeds are one
    program and each equals its own single-seed run), and partitioned over a device mesh
    (`jaxrl.train.parallel`: env and buffer axes split, everything else replicated, GSPMD
    inserting the all-reduces).  Every chunk donates its carry.
    """

    optional_state: tuple[str, ...] = ()  # carry paths a checkpoint may leave out (see refill)
    refill_note: str = ""  # what `refill` does about them, for the resume's warning
    per_env_paths: tuple[str, ...] = ()  # carry paths outside .env_state with a leading env axis
    env: Any
    seed: int
    num_seeds: int = 1
    mesh: Any = None
    evaluate: Callable | None = None
    compiler_options: dict | None = None  # XLA options of the chunk, init and reset (`quick_if_short`)
    eval_resets_apart: bool = False  # `_evaluation`: the eval envs reset like the training envs
    memory_knobs: str = "num_envs (the physics step's intermediates)"  # what shrinks a program's memory

    def __init__(self) -> None:
        self.compile_s = 0.0
        self._compiled: dict[str, Any] = {}
        self.program_bytes: dict[str, dict[str, int]] = {}  # XLA's memory of each compiled program

    # ------------------------------------------------------------------ set-up
    def setup(self, env: Any, eval_env: Any, seed: int, devices: int | None, seeds: int,
              divisors: dict[str, int]) -> None:
        """Choose the devices (``divisors``: quantities each device must take an equal share of)
        and seeds, and distribute the envs.  Call first in a subclass's ``__init__``."""
        from jaxrl.train import parallel

        if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
        self.seed, self.num_seeds = int(seed), int(seeds)
        self.devices = parallel.resolve_devices(devices, {"num_envs": env.num_envs, **divisors})
        self.mesh = parallel.make_mesh(self.devices)
        self.env = env.distribute(self.mesh)
        self.eval_env = None
        # eval envs that do not divide over the devices are not split: a device that steps
        # them holds them all (XLA may replicate that work; the memory preflight counts them whole)
        self.eval_split = (eval_env is not None and self.mesh is not None
                           and eval_env.num_envs % self.devices == 0)
        if eval_env is not None:
            self.eval_env = eval_env.distribute(self.mesh if self.eval_split else None)
        if self.num_seeds > 1:
            # The auto-reset branch decided across seeds (`VecEnv.across`), so it stays a
            # branch under the seed vmap (inside `shard_map` too: each device for its envs).
            # A randomised env draws each seed's models from that seed's env seed (`across`), as
            # the seed's separate run would: seed s trains on env seed ``env.seed + s - seeds[0]``.
            offsets = [s - self.seeds[0] for s in self.seeds]
            self.env = self.env.across(SEED_AXIS, [self.env.seed + o for o in offsets])
            if self.eval_env is not None:
                self.eval_env = self.eval_env.across(SEED_AXIS, [self.eval_env.seed + o for o in offsets])

    def quick_if_short(self, env_steps: int, gradient_rows: int) -> None:
        """Compile the chunk, init and first reset the quick way (`envs._runtime.short_run_options`)
        when one seed's run simulates ``env_steps`` env steps and its gradient steps read
        ``gradient_rows`` rows, few enough that compiling is nearly all the run costs.  Per seed
        and independent of the evaluations: K seeds, or another number of evaluations, leave the
        training programs as they are.  Call before `program`."""
        self.compiler_options = short_run_options(env_steps, gradient_rows)

    @property
    def seeds(self) -> list[int]:
        """The seeds of this run: ``seed, seed + 1, ...`` (one per vmapped run)."""
        return [self.seed + i for i in range(self.num_seeds)]

    def _lift(self, fn: Callable, shared: bool = False) -> Callable:
        """``fn`` vmapped over the seed axis when there are several seeds (``shared``: every
        argument after the first — a chunk's iteration count and warm-up flag — is the same for
        all seeds and stays unbatched, so a `lax.cond` on it still skips its branch under vmap
        instead of computing both and selecting)."""
        if self.num_seeds == 1:
            return fn
        if shared:
            return lambda carry, *args: jax.vmap(lambda c: fn(c, *args), axis_name=SEED_AXIS)(carry)
        return jax.vmap(fn, axis_name=SEED_AXIS)

    def _keys(self) -> jax.Array:
        keys = [jax.random.PRNGKey(s) for s in self.seeds]
        return keys[0] if self.num_seeds == 1 else jnp.stack(keys)

    def carry_sharding(self) -> Any:
        """The carry's shardings over the mesh (None without one): env-axis leaves of the env
        state split, the replay buffer split on its env axis, everything else replicated."""
        from jaxrl.train import parallel

        if self.mesh is None:
            return None
        abstract = jax.eval_shape(self._lift(lambda k: self._init(k)), self._keys())
        lead = 1 if self.num_seeds > 1 else 0
        n = self.env.num_envs

        per_env = (".env_state",) + tuple(self.per_env_paths)

        def rule(path: str, x) -> Any:
            shape = x.shape[lead:]
            if path.startswith(per_env) and shape and shape[0] == n:
                return parallel.batch_spec(lead)
            if path.startswith(".buffer.data"):
                return parallel.batch_spec(lead + 1)
            return parallel.P()

        return parallel.shardings(abstract, self.mesh, rule)

    def program(self, fn: Callable, carry_out: bool = True) -> Callable:
        """``fn(carry, *shared) -> carry`` or ``-> (carry, metrics)`` (``shared``: traced scalars
        common to all seeds, e.g. an iteration count) lifted over seeds and jitted with a donated
        carry that keeps its shardings."""
        lifted = self._lift(fn, shared=True)
        opts = self.compiler_options
        if self.mesh is None:
            return jax.jit(lifted, donate_argnums=0, compiler_options=opts)
        sharding = self.carry_sharding()
        return jax.jit(lifted, donate_argnums=0, out_shardings=sharding if carry_out else (sharding, None),
                       compiler_options=opts)

    # ------------------------------------------------------------------ protocol
    def _init(self, key: jax.Array, agent: Any = None, env_state: Any = None) -> Any:
        """The fresh carry of one seed; ``agent`` (from `_init_agent` of the same key) or None
        to initialise it here; ``env_state`` (`initial_env_state` of the same key) or None to
        reset the envs here.  Keys: ``init_keys(key)``."""
        raise NotImplementedError

    def reset_program(self, env: Any) -> Callable:
        """``env.reset`` lifted over seeds and jitted: its own program, kept on the env object.
        Compiling the physics reset takes seconds on CPU (CheetahRun: 11-16 s); apart from the
        chunk it is compiled once per env (and cached on disk) instead of once per agent
        configuration, and evaluations reuse it when their envs reset like the training envs
        (`_evaluation`)."""
        # Keyed by the env's id too: the env's copies (`VecEnv.distribute` / `across`) share its
        # __dict__ entries, and each entry's program holds its env, so an id is never reused.
        memo = env.__dict__.setdefault("_jaxrl_reset_program", {})
        opts = self.compiler_options
        key = (id(env), self.num_seeds, tuple(sorted((opts or {}).items())))
        if key not in memo:
            memo[key] = top_level_jit(self._lift(lambda k: env.reset(k)), opts)
        return memo[key]

    def initial_env_state(self, keys: jax.Array) -> Any:
        """The envs' first state for the run's key(s), as ``_init`` would reset them
        (`reset_program`)."""
        return self.reset_program(self.env)(self._lift(lambda k: init_keys(k)[1])(keys))

    def _init_agent(self, key: jax.Array) -> Any:
        """The fresh agent `_init` would make from ``key``."""
        raise NotImplementedError

    def init_carry(self) -> Any:
        """The fresh run: jitted, so the replay buffer is allocated where it lives, already split
        over the devices (`jax.eval_shape(loop.init_carry)` allocates nothing).

        With a mesh, the agent is initialised on one device and then replicated: jaxlib 0.10's
        batched LAPACK kernels (QR of orthogonal initialisers) deadlock when several CPU devices
        run them at once (see `envs._runtime`), and initialising once is cheaper anyway."""
        keys = self._keys()
        env_state = self.initial_env_state(keys)
        if self.mesh is None:
            if "init" not in self._compiled:
                self._compiled["init"] = top_level_jit(self._lift(lambda k, e: self._init(k, None, e)),
                                                       self.compiler_options)
            return self._compiled["init"](keys, env_state)
        from jaxrl.train import parallel

        if "init" not in self._compiled:
            sharding = self.carry_sharding()
            opts = self.compiler_options
            self._compiled["init_agent"] = top_level_jit(self._lift(self._init_agent), opts)
            self._compiled["init"] = top_level_jit(self._lift(self._init), opts, out_shardings=sharding)
        # On this host's first device, then through host memory onto every device of the mesh
        # (all hosts compute the same values; a device-to-device copy across hosts is not
        # available on every backend).
        agent = self._compiled["init_agent"](jax.device_put(keys, jax.local_devices()[0]))
        agent = jax.device_put(jax.device_get(agent), parallel.replicated(self.mesh))
        return self._compiled["init"](keys, agent, env_state)

    def finished(self, carry: Any) -> bool:
        raise NotImplementedError

    def env_steps(self, carry: Any) -> int:
        raise NotImplementedError

    def refill(self, carry: Any) -> Any:
        return carry

    def _advance(self, carry: Any) -> tuple[Any, dict]:
        """One jitted chunk (through `_call`); returns device metrics."""
        raise NotImplementedError

    @staticmethod
    def counter(x: Any) -> int:
        """A carry counter (replicated; one per seed, all equal) as a host int."""
        from jaxrl.train import parallel

        return int(parallel.host_value(x).reshape(-1)[0])

    def run_chunk(self, carry: Any) -> tuple[Any, dict]:
        """One chunk, the NaN guards, then evaluation; returns (carry, metrics row)."""
        from jaxrl.train import parallel

        if self.evaluate is not None and "evaluate" not in self._compiled:
            # Compiled (and its memory checked) before the first chunk: a refusal costs no training.
            self._evaluation(carry.agent, self._eval_key(self.env_steps(carry)), run=False)
        t0, compiled0 = time.perf_counter(), self.compile_s
        start = self.env_steps(carry)
        carry, metrics = self._advance(carry)
        metrics = {k: parallel.host_value(v) for k, v in metrics.items()}  # blocks on the chunk
        steps = self.env_steps(carry)
        # Actions first: a NaN action is the root cause of the NaN losses that follow it.
        guards.check_actions(parallel.host_value(carry.env_state.nonfinite_actions).sum(), steps)
        guards.check_transitions(carry.env_state, steps)
        guards.check_finite({k: v for k, v in metrics.items() if k != "train_return"}, steps)
        # training time only: a chunk that compiled (the first; a warm-up) leaves its compile to
        # ``compile_s``, or the first row's throughput (and the progress bar's) counts it as training
        elapsed = time.perf_counter() - t0 - (self.compile_s - compiled0)
        row = {"env_steps": steps, "chunk_s": elapsed,
               "sps": self.num_seeds * (steps - start) / max(elapsed, 1e-9)}
        if self.evaluate is not None:
            ev = {k: parallel.host_value(v)
                  for k, v in self._evaluation(carry.agent, self._eval_key(steps)).items()}
            guards.check_finite({"eval_return": ev["eval_return"]}, steps)
            metrics.update(ev)
        row.update(seed_summary(metrics, self.num_seeds))
        return carry, row

    def make_evaluate(self, act: Callable) -> None:
        """Set ``evaluate``: deterministic episodes on the eval envs, lifted over seeds.  Compiled
        (`_evaluation`) with `envs._runtime.short_program_options`, for every run: an evaluation
        runs a few dozen times at most, and on CPU XLA's loop emitters compile it 1-3.5 s sooner
        and run it as fast (measured 2026-12-07, 2-core AMD EPYC with AVX-512, jax 0.9.2, empty
        cache, cpu presets, 16 eval envs: FlashSAC CartpoleBalance 4.1 -> 2.4 s, CheetahRun 9.4 ->
        6.0 s; SAC 3.5 -> 2.4 s and 9.3 -> 5.8 s; PPO 5.9 -> 4.6 s and 17.8 -> 17.0 s; each
        evaluation then ran in 0.04-0.07 s and 0.4-0.5 s either way).  Only an evaluation's last
        bits differ from XLA's defaults; training never sees it."""
        if self.eval_env is not None:
            self.eval_resets_apart = self.eval_env.resets_like(self.env)
            form = evaluation_from if self.eval_resets_apart else evaluation
            self.evaluate = jax.jit(self._lift(form(self.eval_env, act)))

    def _eval_key(self, env_steps: int) -> jax.Array:
        """The evaluation's key after ``env_steps``: one per seed, stacked when there are several."""
        keys = [eval_key(s, env_steps) for s in self.seeds]
        return keys[0] if self.num_seeds == 1 else jnp.stack(keys)

    def _evaluation(self, agent: Any, key: jax.Array, run: bool = True) -> dict | None:
        """One evaluation keyed ``key``.  When the eval envs reset like the training envs
        (`VecEnv.resets_like`: the cpu presets' 16 envs), the training envs' first-reset program
        makes the start states and the evaluation program holds no reset physics (CheetahRun, cold:
        SAC's backend compile 62 -> 50 s, FlashSAC's 62 -> 56 s).  Otherwise the reset stays
        inside the evaluation program: compiled alone it cost more (PPO's 16-env reset 3.9 s,
        against 1.1 s less for its evaluation).  ``run=False`` compiles and checks it only."""
        if not self.eval_resets_apart:
            return self._call_evaluate(agent, key, run=run)
        k_reset, k_act = self._lift(eval_keys)(key)
        # The training envs' own jitted reset, called as `initial_env_state` calls it (uncommitted
        # keys): its compiled program is reused in memory.  (A second jit of the eval envs' reset
        # lowers to the same module only while JAX's trace caches happen to agree, and `_call`'s
        # committed arguments lower to another module.)
        start = self.reset_program(self.env)(k_reset)
        return self._call_evaluate(agent, start, k_act, run=run)

    def _call_evaluate(self, *args, run: bool = True) -> dict | None:
        """The evaluation program (nothing donated), compiled with the options `make_evaluate` names."""
        return self._call("evaluate", self.evaluate, *args, donate=False, options=short_program_options(),
                          run=run)

    # ------------------------------------------------------------------ helpers
    def place(self, args: tuple, donate: bool = True) -> tuple:
        """A program's arguments as `_call` passes them: a donated carry unaliased, and on one
        device everything committed to it — a fresh carry (uncommitted) and one restored from a
        checkpoint (orbax commits) would otherwise lower to different programs, and a resume or
        `init_from` run would miss the compilation cache (CPU: 10-20 s a chunk)."""
        if donate:
            args = (unalias(args[0]),) + tuple(args[1:])
        if self.mesh is None:
            args = jax.device_put(tuple(args), jax.local_devices()[0])
        return tuple(args)

    def _call(self, name: str, fn: Callable, *args, donate: bool = True, options: dict | None = None,
              run: bool = True):
        """Call jitted ``fn``, compiling it ahead of time on first use (with the XLA ``options``)
        to time compilation and check its memory; ``run=False`` stops there.  Chunks donate their
        carry: the replay buffer and env state are updated in place."""
        args = self.place(args, donate)
        if name not in self._compiled:
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile(compiler_options=options)
            self.compile_s += time.perf_counter() - t0
            self.check_memory(name, compiled)
            self._compiled[name] = compiled
        return self._compiled[name](*args) if run else None

    def check_memory(self, name: str, compiled: Any) -> None:
        """Before a program's first call: its XLA memory (`jaxrl.train.memory`) against the
        device's free memory, refused with ``memory_knobs`` (an evaluation: its envs) when it does
        not fit; kept in ``program_bytes`` (the run's summary) and said once for the chunk.  With
        several processes every one learns whether any refuses, so none waits alone in a
        collective."""
        from jaxrl.train import memory

        sizes = memory.program_memory(name, compiled)
        devices = None if self.mesh is None else [  # this process's own: another host's are not readable
            d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        free, sharing = memory.free_bytes(devices)
        knobs = self.memory_knobs if name == "chunk" else "num_eval_envs (the evaluation's envs)"
        if sizes is not None:
            self.program_bytes[name] = sizes.as_dict()
            if name == "chunk":
                notice(memory.describe(sizes, free))
        if jax.process_count() > 1:  # every process takes part, whatever its backend told it
            from jax.experimental import multihost_utils

            fits = sizes is None or memory.fits(sizes, free, sharing)
            # free memory in MiB: without jax_enable_x64 the gather's int64 would be cut to 32 bits
            mib = min((free or 0) >> 20, 2**31 - 1)
            every = np.asarray(multihost_utils.process_allgather(np.array([fits, mib], np.int32)))
            for p, (ok, have_mib) in enumerate(every.reshape(-1, 2)):
                have = int(have_mib) << 20
                if not ok and sizes is None:  # (this backend said nothing; another's did)
                    raise memory.ProgramMemoryError(f"the compiled {name} program does not fit process {p}'s "
                                                    f"device memory; it was not called.  Lower {knobs}")
                if not ok:
                    raise memory.refusal(sizes, knobs, have, sharing, where=f"process {p}'s device")
        elif sizes is not None:
            memory.check(sizes, knobs, free, sharing)

    def chunk(self, carry: Any, n: int, warm: bool = False) -> tuple[Any, dict]:
        """Run the compiled chunk (``self._chunk``, made by `program` from ``_chunk_fn``) for
        ``n`` iterations, as warm-up / prefill when ``warm``."""
        return self._call("chunk", self._chunk, carry, jnp.int32(n), jnp.bool_(warm))

    def lower_chunk(self, carry: Any, warm: bool = False) -> Any:
        """The training chunk lowered for ``carry`` (real or `jax.ShapeDtypeStruct`s): lets tests
        and tools trace GPU-sized presets on abstract shapes without allocating them."""
        return self._chunk.lower(carry, jax.ShapeDtypeStruct((), jnp.int32), jnp.bool_(warm))


def top_level_jit(fn: Callable, options: dict | None, **kw) -> Callable:
    """``jax.jit(fn, compiler_options=options, **kw)`` where JAX takes compiler options, a call
    from Python; called inside a trace (``jax.eval_shape(loop.init_carry)``) the plain jit."""
    if not options:
        return jax.jit(fn, **kw)
    quick, plain = jax.jit(fn, compiler_options=options, **kw), jax.jit(fn, **kw)

    def call(*args):
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args))
        return (plain if traced else quick)(*args)

    return call


def seed_summary(metrics: dict[str, Any], num_seeds: int) -> dict[str, float]:
    """One metrics row from per-seed values.  One seed: the values.  K seeds: each metric's mean
    over seeds, ``seed{i}/NAME`` per seed, and for returns a 95% Student-t interval over seeds
    (``NAME_ci_low`` / ``NAME_ci_high``).  NaNs ("no value") are left out of means."""
    if num_seeds == 1:
        return {k: np.asarray(v).item() for k, v in metrics.items()}
    import warnings

    row: dict[str, float] = {}
    for k, v in metrics.items():
        v = np.asarray(v, np.float64).reshape(num_seeds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no value this chunk
            row[k] = float(np.nanmean(v))
        for i, x in enumerate(v):
            row[f"seed{i}/{k}"] = float(x)
        if k in ("eval_return", "train_return"):
            lo, hi = confidence_interval(v)
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
    return row


def confidence_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaNs dropped; NaN with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def _buffer_id(x: jax.Array) -> tuple:
    try:
        return tuple(s.data.unsafe_buffer_pointer() for s in x.addressable_shards)
    except Exception:  # noqa: BLE001 - backends without raw pointers: object identity
        return (id(x),)


def unalias(tree: Any) -> Any:
    """``tree`` with every leaf that shares its device buffer with an earlier leaf copied.

    A jitted function returning the same value twice (flat tasks: ``obs['state']`` IS
    ``obs['privileged_state']``) may hand back one buffer for both; donating that carry would
    donate the buffer twice, which XLA refuses.  The copies are observation-sized, not buffers."""
    seen: set = set()

    def fix(x):
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or x.is_deleted():
            return x
        ident = _buffer_id(x)
        if ident in seen:
            return jnp.copy(x)
        seen.add(ident)
        return x

    return jax.tree.map(fix, tree)


