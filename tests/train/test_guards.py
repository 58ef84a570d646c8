"""A NaN stops training with a report of which quantity went non-finite, and when."""

import copy

import jax
import jax.numpy as jnp
import pytest

import envs
from envs.wrappers import VecEnv
from jaxrl.train import guards
from jaxrl.train.offpolicy import OffPolicyAgent, OffPolicyLoop, OffPolicySettings

# The guards are the shared loop's, not an algorithm's: a linear policy fitted to the replayed
# actions drives the loop (its programs compile in seconds, FlashSAC's in a minute here).


def _linear_agent(env, nan_actions=False, nan_loss=False) -> OffPolicyAgent:
    n_obs, n_act = env.spec.obs["state"].shape[0], env.action_size

    def act(w, obs, key):
        return jnp.tanh(obs["state"] @ w)

    def explore(w, obs, key):
        a = jnp.tanh(obs["state"] @ w + 0.3 * jax.random.normal(key, (obs["state"].shape[0], n_act)))
        return (a * jnp.nan if nan_actions else a), w

    def update(w, batch, key):
        loss, g = jax.value_and_grad(lambda w: jnp.mean((batch.obs["state"] @ w - batch.action) ** 2))(w)
        return w - 0.01 * g, {"critic_loss": loss * jnp.nan if nan_loss else loss}

    return OffPolicyAgent(init=lambda key: jnp.zeros((n_obs, n_act)), explore=explore, act=act,
                          observe=lambda w, tr: w, update=update)


def test_check_finite_names_the_first_bad_quantity():
    guards.check_finite({"a": 1.0, "b": jnp.ones(3)}, 10)
    with pytest.raises(guards.NonFiniteError, match=r"critic_loss became non-finite .* env step 64"):
        guards.check_finite({"critic_loss": jnp.array([1.0, jnp.nan]), "z": 0.0}, 64)


@pytest.fixture(scope="module")
def env():
    return envs.make("CartpoleBalance", num_envs=4, episode_length=20)


SETTINGS = OffPolicySettings(total_steps=64, batch_size=16, updates_per_step=1,
                             buffer_size=256, min_buffer=16, num_evals=2)


def _loop(env, **bad):
    return OffPolicyLoop(env, _linear_agent(env, **bad), SETTINGS, None, seed=0)


def test_nan_loss_stops_the_loop_with_a_report(env):
    loop = _loop(env, nan_loss=True)
    carry, _ = loop.run_chunk(loop.init_carry())  # warm-up has no updates
    with pytest.raises(guards.NonFiniteError, match="critic_loss"):
        loop.run_chunk(carry)


def test_nan_actions_stop_the_loop_with_a_report(env):
    loop = _loop(env, nan_actions=True)
    carry, _ = loop.run_chunk(loop.init_carry())
    with pytest.raises(guards.NonFiniteError, match="policy actions"):
        loop.run_chunk(carry)


def _nan_after(env, steps: int, field: str) -> VecEnv:
    """``env``'s task, whose reward (or observation) turns NaN from its ``steps``-th step on in
    every episode (the physics stays finite)."""
    task = copy.copy(env.env)
    task.__dict__ = {k: v for k, v in vars(task).items() if not k.startswith("_jaxrl")}  # own traces

    class Broken(type(task)):
        def step(self, state, action):
            s = super().step(state, action)
            late = s.data.time > (steps - 0.5) * self.dt
            if field == "reward":
                return s.replace(reward=jnp.where(late, jnp.nan, s.reward))
            return s.replace(obs=jnp.where(late, jnp.nan, s.obs))

    task.__class__ = Broken
    return VecEnv(task, env.num_envs, env.episode_length, name="CartpoleBalance")


@pytest.mark.parametrize("field", ["reward", "obs"])
def test_nan_rewards_and_observations_stop_the_loop_in_the_warm_up_already(env, field):
    """The update below never reads rewards, and the warm-up makes none: only the check of the
    transitions themselves can stop the run before a NaN reaches the replay buffer's checkpoints.
    The same env without the NaN trains through (the check does not fire on finite values)."""
    loop = OffPolicyLoop(_nan_after(env, 3, field), _linear_agent(env), SETTINGS, None, seed=0)
    name = "rewards" if field == "reward" else "observations"
    with pytest.raises(guards.NonFiniteError, match=f"{name}.* became non-finite .* env step 16"):
        loop.run_chunk(loop.init_carry())  # the warm-up: 4 vector steps of 4 envs
    healthy = _loop(env)
    carry, _ = healthy.run_chunk(healthy.init_carry())
    healthy.run_chunk(carry)


def test_off_policy_settings_refuse_bad_values_with_the_fix():
    ok = {"total_steps": 64, "batch_size": 16, "updates_per_step": 1, "buffer_size": 256, "min_buffer": 16}
    with pytest.raises(ValueError, match="warmup_actions must be 'uniform' or 'policy', got 'random'"):
        OffPolicySettings(**ok, warmup_actions="random")
    with pytest.raises(ValueError, match="obs_dtype must be 'float32' or 'bfloat16'"):
        OffPolicySettings(**ok, obs_dtype="float16")
    with pytest.raises(ValueError, match="exceeds buffer_size 8: raise buffer_size"):
        OffPolicySettings(**(ok | {"buffer_size": 8}))
    assert OffPolicySettings(**ok).warmup_actions == "uniform"


def test_the_transition_check_covers_bfloat16_and_stops_every_host_together(env, monkeypatch):
    """bfloat16 observations (numpy kind "V") are checked too; on several hosts a NaN that one
    host finds in its envs stops all of them (alone, it would leave the others waiting in the
    next chunk's collectives); finite values on every host pass."""
    import numpy as np
    from jax.experimental import multihost_utils

    s = env.reset(jax.random.PRNGKey(0))
    guards.check_transitions(s, 4)
    half = {k: v.astype(jnp.bfloat16) for k, v in s.obs.items()}
    bad = s.replace(obs={k: v.at[0, 0].set(jnp.nan) for k, v in half.items()}, final_obs=half)
    with pytest.raises(guards.NonFiniteError, match=r"observations \(.*state\) became non-finite"):
        guards.check_transitions(bad, 4)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for others, stops in (([0, 0], False), ([0, 1], True)):
        monkeypatch.setattr(multihost_utils, "process_allgather", lambda x, o=others: np.array(o, np.int32))
        if stops:
            with pytest.raises(guards.NonFiniteError, match="a reward or observation on process 1"):
                guards.check_transitions(s, 4)
        else:
            guards.check_transitions(s, 4)
