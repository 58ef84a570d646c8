"""The batched environment every jaxrl learner talks to.

`VecEnv` wraps one single-env MJX task (MuJoCo Playground's ``MjxEnv``, a Brax ``Env``, or one
of our own tasks: anything with ``reset(key) -> State`` and ``step(State, action) -> State``)
and adds, all inside jit:

* vmap over ``num_envs``;
* auto-reset inside ``step`` with a fresh key per finished env, keeping the true final
  observation of the finished episode in ``EnvState.final_obs`` so that off-policy learners
  can bootstrap on time-outs;
* separate ``terminated`` (the task ended the episode) and ``truncated`` (time limit) flags;
  at a step that ended an episode the whole task state (``info``, ``metrics``: a success flag)
  is already the next episode's, unlike Brax's auto-reset, which keeps the finished one's
  metrics: read end-of-episode metrics from `VecEnv.without_auto_reset` (the evaluations do);
* episode statistics (`EpisodeStats`) that a training loop reads from the state pytree, with
  no host round-trip;
* dict observations: ``state`` for the actor and ``privileged_state`` for the critic; flat
  observations are wrapped so that learners see one interface;
* an optional domain-randomisation hook (one randomised model per env).

The auto-reset runs under ``lax.cond(any(done))``: tasks with fixed-length episodes (every env
finishes at the same step) pay for resets once per episode, not every step.  Rollouts of exactly
one episode (evaluation) step `VecEnv.without_auto_reset` instead: no reset physics in the step.

``reset_pool=R`` (R >= 1) makes the auto-reset cheap for tasks whose reset runs physics: the first
reset draws R start states per env and each later episode of that env starts from one of them,
drawn at random: the whole start state (physics, observation and the task's info, e.g. a joystick
command) with a fresh task random stream (``info['rng']``).  With R = 1 each env restarts from
its first physics state and observation, as Brax's and Playground's training wrappers do; they
keep the task's info running across episodes instead (so there the next episode's observation
and info can disagree).  Evaluations draw no pool.  Why: CheetahRun
settles its start pose with 200 physics steps, 20% of a 1,000-step episode.  Measured on 2 CPU
cores, 256 envs, random actions over 1,000-step windows (`experiments/reset_pool.py`): 46.9k
env-steps/s with fresh resets, 60.3k with ``reset_pool=1``, 57.5k through Playground's
`wrap_for_brax_training`; and the training program no longer holds the reset physics (PPO's
first chunk 34.5 -> 23.6 s).  The default (0) keeps fresh resets: every episode starts from a new
draw of the task's start distribution.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from envs.specs import ArraySpec, EnvSpec

Obs = dict[str, jax.Array]
# (mjx_model, keys[N]) -> (batched model, in_axes pytree): Playground's randomizer signature.
RandomizationFn = Callable[[Any, jax.Array], tuple[Any, Any]]


@struct.dataclass
class EpisodeStats:
    """Running episode statistics over all envs; counters are cumulative since `reset`.

    A loop reads e.g. the mean return of episodes finished during a chunk as
    ``(after.return_sum - before.return_sum) / (after.completed - before.completed)``.
    """

    completed: jax.Array  # [] int32, episodes finished since reset
    return_sum: jax.Array  # [] float32, sum of their returns
    length_sum: jax.Array  # [] float32, sum of their lengths
    last_return: jax.Array  # [N] return of each env's last finished episode (nan before one)
    last_length: jax.Array  # [N] int32


@struct.dataclass
class EnvState:
    """Batched environment state; every field has a leading ``num_envs`` axis unless noted."""

    inner: Any  # the wrapped task's own State, batched
    obs: Obs  # observation to act on now (after any auto-reset)
    reward: jax.Array  # [N] reward of the transition that produced this state
    terminated: jax.Array  # [N] bool: the task ended the episode (no bootstrap)
    truncated: jax.Array  # [N] bool: the time limit ended it (bootstrap from final_obs)
    final_obs: Obs  # true next observation of the last transition (== obs unless it ended)
    episode_return: jax.Array  # [N] return so far in the running episode
    episode_step: jax.Array  # [N] int32 steps so far in the running episode
    stats: EpisodeStats
    nonfinite_actions: jax.Array  # [] int32: actions with NaN/inf seen since reset
    key: jax.Array  # [] PRNG key for auto-resets
    # [] int32: env steps whose constraint solver stopped at its iteration limit (MJX exposes
    # solver_niter); the loops report it per chunk instead of the simulator's console prints.
    solver_limit_hits: jax.Array
    # The start states auto-resets draw from (`VecEnv` ``reset_pool=R``): ``inner``'s pytree with
    # [N, R, ...] leaves where ``inner`` has [N, ...] ones.  None: auto-resets run the task's reset.
    start_pool: Any = None

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


def split_obs(obs: Any) -> Obs:
    """Flat array -> {'state': x, 'privileged_state': x}; dicts keep both keys."""
    if isinstance(obs, dict) or hasattr(obs, "keys"):
        state = obs["state"]
        return {"state": state, "privileged_state": obs.get("privileged_state", state)}
    return {"state": obs, "privileged_state": obs}


def strong_types(tree: Any) -> Any:
    """``tree`` without weak types.  MJX's reset leaves ``data.time`` weakly typed while a step
    returns it strongly typed (and T1's step makes some reward metrics weak that its reset makes
    strong); without this every jitted function fed a fresh state, then a stepped one, compiles
    twice (measured: a T1 rollout's second call was a 17 s recompile on an H100)."""
    return jax.tree.map(lambda x: lax.convert_element_type(x, jnp.result_type(x)), tree)


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per-env where over a batched pytree."""

    def pick(n, o):
        if o.ndim == 0 or o.shape[0] != mask.shape[0]:
            return o  # not batched (e.g. empty placeholder fields of MJX-Warp data)
        m = mask.reshape(mask.shape + (1,) * (o.ndim - 1))
        return jnp.where(m, n, o)

    return jax.tree.map(pick, new, old)


PHYSICS_MATMUL_PRECISION = "highest"


def _traced(tree: Any) -> bool:
    """Whether any leaf is a tracer: the call is part of a program being traced (a training chunk,
    a user's jit or scan), not a call from Python."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


@functools.cache
def _reset_tracing_size_properties() -> tuple:
    """The ``observation_size`` properties that run the task's reset on each access:
    Playground's `MjxEnv` (traces it) and Brax's `PipelineEnv` (runs it)."""
    found = []
    try:
        from mujoco_playground._src import mjx_env

        found.append(mjx_env.MjxEnv.__dict__["observation_size"])
    except (ImportError, KeyError):
        pass
    try:
        from brax.envs import base

        found.append(base.PipelineEnv.__dict__["observation_size"])
    except (ImportError, KeyError):
        pass
    return tuple(found)


def _size_traces_reset(env: Any) -> bool:
    """Whether ``env``'s class inherits one of `_reset_tracing_size_properties` unchanged."""
    return getattr(type(env), "observation_size", None) in _reset_tracing_size_properties()


class _TaskOnly:
    """What `VecEnv._env_call` reads of its VecEnv (the task), and nothing else: the per-task
    jitted functions must not keep a VecEnv alive."""

    def __init__(self, env: Any):
        self.env = env


class VecEnv:
    """``num_envs`` copies of a task stepped in lock-step; see the module docstring."""

    def __init__(
        self,
        env: Any,
        num_envs: int,
        episode_length: int,
        name: str = "",
        seed: int = 0,
        randomization_fn: RandomizationFn | None = None,
        reset_pool: int = 0,
    ):
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool):
            raise TypeError(f"num_envs must be an int, got {type(num_envs).__name__}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if int(episode_length) < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if not isinstance(reset_pool, (int, np.integer)) or isinstance(reset_pool, bool) or reset_pool < 0:
            raise ValueError(f"reset_pool must be an int >= 0 (0: a fresh task reset per episode; R >= 1: "
                             f"R start states per env drawn at the first reset), got {reset_pool!r}")
        self.env = env
        self.name = name or type(env).__name__
        self.num_envs = int(num_envs)
        self.episode_length = int(episode_length)
        self.seed = int(seed)
        self._randomization_fn = randomization_fn
        self.reset_pool = int(reset_pool)  # start states per env that auto-resets draw from (0: none)
        self.mesh = None  # a `jax.sharding.Mesh` after `distribute`: the env axis is split over it
        self._model_batch = None
        self._model_axes = None
        if randomization_fn is not None:
            if getattr(getattr(env, "unwrapped", env), "_mjx_model", None) is None:
                raise TypeError(f"{self.name}: randomization_fn randomises an MJX model (`mjx_model`), and this "
                                "task keeps none (a Brax pipeline env keeps its model in `sys`): use a MuJoCo "
                                "Playground or jaxrl task, or Brax's own DomainRandomizationVmapWrapper")
            self._model_batch, self._model_axes = self._draw_models(self.seed)
        self.spec = self._make_spec()
        # True when the actor's `state` is the first entries of `privileged_state` (always for
        # flat tasks; `envs.make` knows it for tasks that build privileged_state as [state, ...]):
        # replay then stores privileged_state alone.
        self.state_in_privileged = not self.spec.has_privileged_state
        self.seed_axis: str | None = None  # a named vmap axis the auto-reset decides across
        # Under a seed vmap (`across` with seeds): every member's randomised models, batched
        # leaves stacked [K, N, ...], so that each member steps its own draws.
        self._seed_models = None
        self.no_auto_reset = False  # `without_auto_reset`: one-episode rollouts need none
        # The keyword arguments that rebuild this env's task with `envs.make(name, ...)` (set
        # there; a training run records them, so `jaxrl resume` / `eval` / `export` rebuild the
        # same task); None for a VecEnv built by hand or with a hand-made randomiser.
        self.make_kwargs: dict | None = None
        self._make_jits()

    def _make_jits(self) -> None:
        """Jitted reset / step: one pair traced into other programs (a training chunk, a user's
        scan), and one pair called from Python.  Both share one trace; the eager pair compiles
        the quick way on CPU (`envs._runtime.eager_env_options`): a notebook or a test calls it a
        few times, so its compile is most of its cost (CartpoleBalance, 4 envs: reset 5.2 -> 1.6 s,
        step 8.7 -> 2.5 s, a step then runs in the same ~1.4 ms)."""
        from envs._runtime import eager_env_options

        self._reset_jit = jax.jit(self._reset)
        self._step_jit = jax.jit(self._step)
        quick = eager_env_options()
        self._reset_eager = jax.jit(self._reset, compiler_options=quick) if quick else self._reset_jit
        self._step_eager = jax.jit(self._step, compiler_options=quick) if quick else self._step_jit

    # ----------------------------------------------------------------- spec
    def _observation_size(self) -> Any:
        """The task's observation size, asked once per task object: Playground's
        ``observation_size`` traces ``reset`` on every access (CartpoleBalance ~1.4 s of the
        2.1 s an `envs.make` takes; Brax's runs it), and every VecEnv over the task
        (`with_num_envs` for a run's evaluation envs, a mixture's wrappers) asks again.  For those
        tasks the answer comes from the shapes of `_one_env`'s reset instead: the trace that every
        program resetting this task (first reset, auto-reset, evaluation) vmaps anyway, so an
        `envs.make` followed by a run traces the task's reset once, not twice."""
        try:
            memo = self.env.__dict__
        except AttributeError:  # a task without a __dict__: ask every time
            return self.env.observation_size
        if "_jaxrl_observation_size" not in memo:
            memo["_jaxrl_observation_size"] = (self._size_from_reset_trace() if _size_traces_reset(self.env)
                                               else self.env.observation_size)
        return memo["_jaxrl_observation_size"]

    def _size_from_reset_trace(self) -> Any:
        """``observation_size`` as Playground / Brax define it (a dict of shapes for dict
        observations, else the last axis), from the shared one-env reset traced as `_vmapped`
        traces it: under the physics matmul precision (the trace cache keys on it) and, for
        randomised models, on one env's model (``in_axes`` may be a prefix of the model tree)."""
        key = jax.random.PRNGKey(0)
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            if self._model_batch is None:
                obs = jax.eval_shape(self._one_env("reset", False), key).obs
            else:  # one env's model, as `_vmapped` hands it over: split leaves lose their env axis
                def one(axis, sub):
                    return sub if axis is None else jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                        x.shape[1:], x.dtype, weak_type=getattr(x, "weak_type", False)), sub)

                model = jax.tree.map(one, self._model_axes, self._model_batch, is_leaf=lambda a: a is None)
                obs = jax.eval_shape(self._one_env("reset", True), model, key).obs
        if isinstance(obs, Mapping):
            return jax.tree.map(lambda x: x.shape, obs)
        return obs.shape[-1]

    def _make_spec(self) -> EnvSpec:
        size = self._observation_size()
        if isinstance(size, dict) or hasattr(size, "keys"):
            if "state" not in size:
                raise ValueError(
                    f"{self.name}: dict observations need a 'state' key, got {sorted(size)}"
                )
            shapes = {"state": size["state"], "privileged_state": size.get("privileged_state", size["state"])}
            privileged = "privileged_state" in size
        else:
            shapes = {"state": size, "privileged_state": size}
            privileged = False
        shapes = {k: (v,) if isinstance(v, (int, np.integer)) else tuple(v) for k, v in shapes.items()}
        obs = {k: ArraySpec(shape=v) for k, v in shapes.items()}
        low, high = getattr(self.env, "action_bounds", (-1.0, 1.0))
        action = ArraySpec(shape=(int(self.env.action_size),), low=float(low), high=float(high))
        dt = float(getattr(self.env, "dt", 0.0))
        return EnvSpec(self.name, obs, action, self.num_envs, self.episode_length, dt, privileged)

    @property
    def obs_spec(self) -> dict[str, ArraySpec]:
        return self.spec.obs

    @property
    def act_spec(self) -> ArraySpec:
        return self.spec.action

    @property
    def action_size(self) -> int:
        return self.spec.action.size

    @property
    def unwrapped(self) -> Any:
        return self.env

    # --------------------------------------------------------- single env
    def _env_call(self, fn_name: str, model: Any, *args):
        """Call env.reset/step, with this env's randomised model swapped in when there is one."""
        fn = getattr(self.env, fn_name)
        if model is None:
            return fn(*args)
        inner = getattr(self.env, "unwrapped", self.env)
        saved = inner._mjx_model
        inner._mjx_model = model
        try:
            return fn(*args)
        finally:
            inner._mjx_model = saved

    def _vmapped(self, fn_name: str, model_batch: Any, *args):
        """env.reset / env.step vmapped over the envs of ``args`` (all of them, or one device's
        share under `distribute`); ``model_batch`` holds those envs' randomised models."""
        # Physics is traced under 'highest' matmul precision, and only physics: MJX's solver is
        # sensitive to the TF32 / bf16 matmuls a GPU uses by default (the NaNs reported for
        # Playground humanoids), while learners keep the precision their config asks for.
        with jax.default_matmul_precision(PHYSICS_MATMUL_PRECISION):
            one = self._one_env(fn_name, model_batch is not None)
            if model_batch is None:
                return jax.vmap(one)(*args)
            return jax.vmap(one, in_axes=(self._model_axes,) + (0,) * len(args))(model_batch, *args)

    def _one_env(self, fn_name: str, with_model: bool) -> Callable:
        """The task's reset / step for ONE env, jitted and kept on the task object: every VecEnv
        over the same task (the training envs and their evaluation envs, any num_envs, any
        device split) vmaps this one trace instead of re-tracing MJX (seconds per trace on CPU,
        a minute for a humanoid).  vmap of a jitted function batches its jaxpr, it does not
        re-run Python."""
        try:
            memo = self.env.__dict__.setdefault("_jaxrl_one_env", {})
        except AttributeError:  # a task without a __dict__: no sharing, still correct
            memo = {}
        if (fn_name, with_model) not in memo:
            call = VecEnv._env_call.__get__(_TaskOnly(self.env))
            memo[fn_name, with_model] = (jax.jit(lambda m, *a: call(fn_name, m, *a)) if with_model
                                         else jax.jit(lambda *a: call(fn_name, None, *a)))
        return memo[fn_name, with_model]

    def one_env_reset(self) -> Callable | None:
        """The task's reset of ONE env on its nominal model: the jitted function every program
        resetting this task vmaps, whose trace the observation size already made.  A caller that
        calls it under `PHYSICS_MATMUL_PRECISION` (the trace cache keys on it) inside its own
        program reuses that trace instead of tracing the task's reset again (sim2sim: T1 with
        impl "jax" ~4 s).  None when this VecEnv's envs reset on randomised models."""
        return None if self._model_batch is not None else self._one_env("reset", False)

    def with_num_envs(self, num_envs: int, seed: int) -> VecEnv:
        """Another VecEnv over the SAME task object (same config, same episode length and
        randomiser), e.g. a run's evaluation envs: it shares the task's traced reset / step."""
        other = VecEnv(self.env, num_envs, self.episode_length, name=self.name, seed=seed,
                       randomization_fn=self._randomization_fn, reset_pool=self.reset_pool)
        other.state_in_privileged = self.state_in_privileged
        other.make_kwargs = self.make_kwargs
        return other

    def resets_like(self, other: VecEnv) -> bool:
        """True when ``other.reset`` is the same program as this env's: the same task object
        and env count, the same device layout and seed axis, and no randomised models (drawn per
        seed).  A run's evaluation then resets through its training envs' first-reset program
        (`jaxrl.train.loop.HostLoop.reset_program`)."""
        return (type(self) is type(other) and self.env is other.env and self.num_envs == other.num_envs
                and self.mesh == other.mesh and self.seed_axis == other.seed_axis
                # a pool of R > 1 start states makes the first reset R times the physics, which an
                # evaluation does not need: it then resets inside its own program, without a pool
                and self.reset_pool == other.reset_pool <= 1 and self.no_auto_reset == other.no_auto_reset
                and self._model_batch is None and other._model_batch is None)

    @property
    def _pooled(self) -> bool:
        """Whether `reset` draws a start-state pool: asked for, and this env auto-resets."""
        return self.reset_pool > 0 and not self.no_auto_reset

    # -------------------------------------------------------------- devices
    def distribute(self, mesh: Any) -> VecEnv:
        """This env with its env axis split over ``mesh`` (`jaxrl.train.parallel`): each device
        resets and steps its own ``num_envs / mesh.size`` envs under `jax.shard_map`; counters
        stay global sums.  None (or a one-device mesh): an undistributed copy."""
        size = 1 if mesh is None else mesh.size
        if self.num_envs % size:
            raise ValueError(f"{self.name}: num_envs={self.num_envs} cannot be split over {size} "
                             f"devices; use a multiple of {size} envs or fewer devices")
        # One copy per mesh, kept: every loop built on this env (and the same mesh) then reuses
        # its traced reset / step instead of re-tracing MJX.
        return self._variant("_distributed", None if size == 1 else mesh, "mesh")

    def across(self, axis_name: str, seeds: Sequence[int] | None = None) -> VecEnv:
        """This env stepped under a `jax.vmap` named ``axis_name`` (the trainers' seed axis):
        the auto-reset's ``lax.cond(any(done))`` then decides once for all members of that axis
        (a ``psum`` of the flags), so it stays a branch.  Under a plain vmap its predicate is
        batched and the cond becomes a select that resets every step: a task whose reset is
        costly (CheetahRun settles its start pose with hundreds of physics steps) ran 400x
        slower per step with 8 seeds.  Only valid inside such a vmap.

        ``seeds``: the env seed of each member of the axis.  A randomised env then steps each
        member on the models its own seed draws, as that member's separate env would (without
        them every member would share this env's draws: K correlated seeds)."""
        own = None if seeds is None or self._randomization_fn is None else tuple(int(s) for s in seeds)

        def setup(env: VecEnv) -> None:
            env.seed_axis = axis_name
            if own is not None:
                with jax.ensure_compile_time_eval():  # concrete arrays even when asked inside a trace
                    env._seed_models = env._stack_models(own)

        return self._variant("_across", (axis_name, own), setup)

    def _draw_models(self, seed: int) -> tuple[Any, Any]:
        """(model batch, in_axes): the randomiser's models for ``num_envs`` envs seeded ``seed``."""
        keys = jax.random.split(jax.random.PRNGKey(seed ^ 0x5EED), self.num_envs)
        return self._randomization_fn(self.env.mjx_model, keys)

    def _stack_models(self, seeds: tuple[int, ...]) -> Any:
        """`_draw_models` of each seed, batched leaves stacked on a leading member axis."""
        draws = [self._model_batch if s == self.seed else self._draw_models(s)[0] for s in seeds]

        def stack(axis, *subs):
            return subs[0] if axis is None else jax.tree.map(lambda *x: jnp.stack(x), *subs)

        return jax.tree.map(stack, self._model_axes, *draws, is_leaf=lambda a: a is None)

    def _models(self) -> Any:
        """The randomised models this env steps (None: the nominal one); under a seed vmap whose
        members drew their own (`across`), the current member's."""
        if self._seed_models is None:
            return self._model_batch
        i = jax.lax.axis_index(self.seed_axis)

        def pick(axis, sub):
            return sub if axis is None else jax.tree.map(lambda x: x[i], sub)

        return jax.tree.map(pick, self._model_axes, self._seed_models, is_leaf=lambda a: a is None)

    def without_auto_reset(self) -> VecEnv:
        """This env with a ``step`` that never resets: for rollouts of exactly one episode
        (evaluation, `jaxrl.io.lifecycle.evaluate`), which mask every step after an env's episode
        ended anyway.  Their programs then hold the task's reset physics once (the first reset)
        instead of twice (CheetahRun settles its start pose with 200 physics steps: seconds of
        compile on CPU), and the last step of a fixed-length episode no longer resets every env
        for nothing.  Steps after the end continue the finished episode's physics."""
        return self._variant("_no_reset", True, "no_auto_reset")

    def _variant(self, memo_name: str, value: Any, attr: str | Callable[[VecEnv], None]) -> VecEnv:
        """A copy of this env with ``attr = value`` (or set up by ``attr(copy)``) and jitted
        reset / step of its own, kept in the memo ``memo_name`` under ``value`` (`distribute`,
        `across`, `without_auto_reset`): loops built on the same env reuse one variant and its
        traces."""
        import copy

        memo = self.__dict__.setdefault(memo_name, {})
        if value not in memo:
            env = copy.copy(self)
            if callable(attr):
                attr(env)
            else:
                setattr(env, attr, value)
            env._make_jits()
            if attr == "mesh":
                env.__dict__.pop("_inner_specs", None)
            env._distributed, env._across, env._no_reset = {}, {}, {}
            memo[value] = env
        return memo[value]

    @functools.cached_property
    def _inner_specs(self) -> Any:
        """Partition specs of the task's batched state: env-axis leaves split, the rest (unbatched
        placeholders in MJX-Warp data) replicated.  Traced once on abstract shapes."""
        from jax.sharding import PartitionSpec as P

        shapes = jax.eval_shape(
            lambda k: self._vmapped("reset", self._model_batch, jax.random.split(k, self.num_envs)),
            jax.random.PRNGKey(0))
        split = P(self.mesh.axis_names[0])
        return jax.tree.map(lambda x: split if x.ndim and x.shape[0] == self.num_envs else P(), shapes)

    def _local(self, fn: Callable, n_split: int, out_specs: Any, inner: bool = True,
               pool: bool | None = None) -> Callable:
        """``fn(model_batch, inner, *arrays)`` on each device's envs: ``inner`` (may be None) is
        the task state, the ``n_split`` arrays have a leading env axis.  ``pool`` not None:
        ``inner`` is the pair (task state, start pool or None), the pool split over the envs as
        the state.  Itself without a mesh."""
        if self.mesh is None:
            return fn
        from jax.sharding import PartitionSpec as P

        split = P(self.mesh.axis_names[0])
        model = P() if self._model_batch is None else jax.tree.map(
            lambda a: split if a == 0 else P(), self._model_axes, is_leaf=lambda a: a is None)
        state = self._inner_specs if inner else P()
        if pool is not None:  # the pool's [N, R, ...] leaves split as the state's [N, ...] ones
            state = (state, state if pool else P())
        # check_vma=False: MJX's solver trips the varying-manual-axes check (every input here is
        # either split over the envs or really replicated).
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(model, state) + (split,) * n_split,
                             out_specs=out_specs, check_vma=False)

    # ---------------------------------------------------------------- reset
    def reset(self, key: jax.Array | None = None) -> EnvState:
        """Reset all envs. ``key`` defaults to one made from ``seed``."""
        if key is None:
            key = jax.random.PRNGKey(self.seed)
        # Traced or not, through a jitted function: inside a training program the trace of
        # this env's reset / step is then made once and reused by every program that calls it
        # (warm-up, chunk, ...), instead of re-tracing MJX each time (seconds per trace on CPU).
        return self._reset_jit(key) if _traced(key) else self._reset_eager(key)

    def _reset_envs(self, model: Any, _inner: Any, keys: jax.Array) -> Any:
        return strong_types(self._vmapped("reset", model, keys))

    def _reset(self, key: jax.Array) -> EnvState:
        key, sub = jax.random.split(key)
        # Keys for ALL envs, then each device takes its share: D devices draw what one device does.
        keys = jax.random.split(sub, self.num_envs)
        specs = self._inner_specs if self.mesh is not None else None
        reset_envs = self._local(self._reset_envs, 1, specs, inner=False)
        if self._pooled:
            inner, pool = self._start_pool(reset_envs, keys, key)
        else:
            inner, pool = reset_envs(self._models(), None, keys), None
        obs = split_obs(inner.obs)
        n = self.num_envs
        zeros_f = jnp.zeros((n,), jnp.float32)
        false = jnp.zeros((n,), bool)
        stats = EpisodeStats(
            completed=jnp.zeros((), jnp.int32),
            return_sum=jnp.zeros((), jnp.float32),
            length_sum=jnp.zeros((), jnp.float32),
            last_return=jnp.full((n,), jnp.nan, jnp.float32),
            last_length=jnp.zeros((n,), jnp.int32),
        )
        return EnvState(
            inner=inner,
            obs=obs,
            reward=zeros_f,
            terminated=false,
            truncated=false,
            final_obs=obs,
            episode_return=zeros_f,
            episode_step=jnp.zeros((n,), jnp.int32),
            stats=stats,
            nonfinite_actions=jnp.zeros((), jnp.int32),
            key=key,
            solver_limit_hits=jnp.zeros((), jnp.int32),
            start_pool=pool,
        )

    def _start_pool(self, reset_envs: Callable, keys: jax.Array, key: jax.Array) -> tuple[Any, Any]:
        """(first state [N, ...], pool [N, R, ...]): ``reset_pool`` start states per env, the
        first drawn with ``keys`` as an unpooled reset would, and the envs' first state.  R > 1:
        every draw under one `lax.map`, so the program holds the reset physics once."""
        n, r = self.num_envs, self.reset_pool

        def batched(x):
            return x.ndim > 0 and x.shape[0] == n

        if r == 1:
            first = reset_envs(self._models(), None, keys)
            return first, jax.tree.map(lambda x: x[:, None] if batched(x) else x, first)
        more = jax.random.split(jax.random.fold_in(key, 0x9001), (r - 1, n))
        models = self._models()
        draws = jax.lax.map(lambda k: reset_envs(models, None, k),
                            jnp.concatenate([keys[None], more]))  # [R, N, ...]
        first = jax.tree.map(lambda x: x[0], draws)
        return first, jax.tree.map(lambda x, f: jnp.swapaxes(x, 0, 1) if batched(f) else f, draws, first)

    def _pool_draw(self, pool: Any, keys: jax.Array) -> Any:
        """One start state per env from its own pool entries (this device's envs), with a fresh
        task random stream (``info['rng']``) so that a reused start does not replay its episode's
        random draws (pushes, command changes)."""
        n = keys.shape[0]
        k_pick, k_rng = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
        r = self.reset_pool
        idx = jax.vmap(lambda k: jax.random.randint(k, (), 0, r))(k_pick) if r > 1 else jnp.zeros((n,), jnp.int32)
        rows = jnp.arange(n)
        drawn = jax.tree.map(lambda x: x[rows, idx] if x.shape[:2] == (n, r) else x, pool)  # [N, R, ...] -> [N, ...]
        info = getattr(drawn, "info", None)
        rng = info.get("rng") if isinstance(info, Mapping) else None
        if rng is not None and rng.shape == k_rng.shape and rng.dtype == k_rng.dtype:
            drawn = drawn.replace(info={**info, "rng": k_rng})
        return drawn

    # ----------------------------------------------------------------- step
    def check_action(self, action: Any) -> jax.Array:
        """Shape and dtype check (at trace time under jit); returns a float32 array."""
        shape = tuple(np.shape(action))
        want = (self.num_envs, self.action_size)
        if shape != want:
            raise ValueError(
                f"{self.name}: action has shape {shape}, expected {want} "
                f"(num_envs={self.num_envs}, action_size={self.action_size})"
            )
        dtype = jnp.result_type(action)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{self.name}: actions must be floating point (float32), got dtype {dtype}"
            )
        return jnp.asarray(action, jnp.float32)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Step all envs, auto-resetting finished ones.

        Called eagerly (notebooks), it also refuses NaN/inf actions with a ValueError.  Inside a
        jitted loop it counts them in ``state.nonfinite_actions`` instead: our trainers stop
        with a report when that counter moves.
        """
        action = self.check_action(action)
        if _traced((state, action)):
            return self._step_jit(state, action)  # a cached trace (see `reset`)
        bad = ~np.isfinite(np.asarray(action)).all(axis=-1)
        if bad.any():
            raise ValueError(
                f"{self.name}: non-finite action (NaN or inf) for env(s) "
                f"{np.flatnonzero(bad)[:8].tolist()}; stepping MJX with it would silently "
                "produce NaN states"
            )
        return self._step_eager(state, action)

    def _physics(self, model: Any, inner_pool: tuple, action: jax.Array, keys: jax.Array,
                 step: jax.Array):
        """The per-env part of `step` (each device's envs under `distribute`): the task's step,
        its end-of-episode flags, and a fresh reset (or a start state from the pool) for the
        envs that ended."""
        inner, pool = inner_pool
        stepped = strong_types(self._vmapped("step", model, inner, action))
        reward = stepped.reward.astype(jnp.float32)
        done_raw = stepped.done
        terminated = done_raw.astype(bool) if done_raw.dtype == bool else done_raw > 0.5
        truncated = (step >= self.episode_length) & ~terminated
        done = terminated | truncated

        def with_reset(x):
            fresh = self._reset_envs(model, None, keys) if pool is None else self._pool_draw(pool, keys)
            return _select(done, fresh, x)

        if self.no_auto_reset:
            return stepped, stepped.obs, reward, terminated, truncated, self._solver_limit_hit(stepped)
        any_done = jnp.any(done)
        if self.seed_axis is not None:  # one branch decision for every seed (see `across`)
            any_done = jax.lax.psum(any_done.astype(jnp.int32), self.seed_axis) > 0
        new_inner = jax.lax.cond(any_done, with_reset, lambda x: x, stepped)
        return new_inner, stepped.obs, reward, terminated, truncated, self._solver_limit_hit(stepped)

    def _step(self, state: EnvState, action: jax.Array) -> EnvState:
        action = self.check_action(action)
        finite = jnp.all(jnp.isfinite(action), axis=-1)
        step = state.episode_step + 1
        key, sub = jax.random.split(state.key)
        keys = jax.random.split(sub, self.num_envs)  # all envs' reset keys (see `_reset`)
        if self.mesh is not None:
            from jax.sharding import PartitionSpec as P

            split = P(self.mesh.axis_names[0])
            out = (self._inner_specs, split, split, split, split, split)
        else:
            out = None
        pool = state.start_pool
        new_inner, raw_next_obs, reward, terminated, truncated, hit = self._local(
            self._physics, 3, out, pool=pool is not None)(self._models(), (state.inner, pool), action, keys, step)
        next_obs = split_obs(raw_next_obs)
        done = terminated | truncated
        ep_return = state.episode_return + reward

        stats = state.stats
        done_f = done.astype(jnp.float32)
        stats = EpisodeStats(
            completed=stats.completed + done.sum(dtype=jnp.int32),
            return_sum=stats.return_sum + jnp.sum(ep_return * done_f),
            length_sum=stats.length_sum + jnp.sum(step.astype(jnp.float32) * done_f),
            last_return=jnp.where(done, ep_return, stats.last_return),
            last_length=jnp.where(done, step, stats.last_length),
        )
        return EnvState(
            inner=new_inner,
            obs=split_obs(new_inner.obs),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=next_obs,
            episode_return=jnp.where(done, 0.0, ep_return),
            episode_step=jnp.where(done, 0, step),
            stats=stats,
            nonfinite_actions=state.nonfinite_actions + (~finite).sum(dtype=jnp.int32),
            key=key,
            solver_limit_hits=state.solver_limit_hits + hit.sum(dtype=jnp.int32),
            start_pool=pool,
        )

    # ------------------------------------------------------------- helpers
    def _solver_limit_hit(self, inner: Any) -> jax.Array:
        """[N] bool: envs of this step whose MJX solver used all its iterations (all False when
        the backend does not expose it)."""
        niter = getattr(getattr(getattr(inner, "data", None), "_impl", None), "solver_niter", None)
        model = getattr(getattr(self.env, "unwrapped", self.env), "mjx_model", None)
        iterations = getattr(getattr(model, "opt", None), "iterations", None)
        n = jnp.shape(inner.reward)[0]
        if niter is None or iterations is None:
            return jnp.zeros((n,), bool)
        return jnp.broadcast_to(niter >= iterations, (n,)) if jnp.ndim(niter) <= 1 else \
            jnp.any(niter >= iterations, axis=tuple(range(1, jnp.ndim(niter))))

    @functools.cached_property
    def random_action_fn(self) -> Callable[[jax.Array], jax.Array]:
        """key -> uniform random actions [N, A] within the action bounds."""
        a = self.act_spec

        def sample(key):
            return jax.random.uniform(
                key, (self.num_envs, a.size), minval=a.low, maxval=a.high, dtype=jnp.float32
            )

        return sample

    def __repr__(self) -> str:
        o = self.obs_spec
        return (
            f"VecEnv({self.name!r}, num_envs={self.num_envs}, obs={o['state'].shape}, "
            f"privileged={o['privileged_state'].shape}, action={self.act_spec.shape}, "
            f"episode_length={self.episode_length}"
            + (f", reset_pool={self.reset_pool}" if self.reset_pool else "") + ")"
        )
