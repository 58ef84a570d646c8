"""A NaN stops training with a report of which quantity went non-finite, and when."""

import jax.numpy as jnp
import pytest

import envs
from jaxrl import flashsac
from jaxrl.train import guards
from jaxrl.train.offpolicy import OffPolicyLoop, OffPolicySettings

CFG = flashsac.FlashSACConfig.cpu().replace(num_envs=4, batch_size=16, min_buffer=16,
                                            actor_width=8, critic_width=8, num_blocks=1)


def test_check_finite_names_the_first_bad_quantity():
    guards.check_finite({"a": 1.0, "b": jnp.ones(3)}, 10)
    with pytest.raises(guards.NonFiniteError, match=r"critic_loss became non-finite .* env step 64"):
        guards.check_finite({"critic_loss": jnp.array([1.0, jnp.nan]), "z": 0.0}, 64)


@pytest.fixture(scope="module")
def env():
    return envs.make("CartpoleBalance", num_envs=4, episode_length=20)


def _loop(env, **agent_changes):
    agent = flashsac.make_agent(CFG, env)._replace(**agent_changes)
    settings = OffPolicySettings(total_steps=64, batch_size=16, updates_per_step=1,
                                 buffer_size=256, min_buffer=16, num_evals=2)
    return OffPolicyLoop(env, agent, settings, None, seed=0)


def test_nan_loss_stops_the_loop_with_a_report(env):
    base = flashsac.make_agent(CFG, env)

    def bad_update(state, batch, key):
        state, m = base.update(state, batch, key)
        return state, {**m, "critic_loss": m["critic_loss"] * jnp.nan}

    loop = _loop(env, update=bad_update)
    carry, _ = loop.run_chunk(loop.init_carry())  # warm-up has no updates
    with pytest.raises(guards.NonFiniteError, match="critic_loss"):
        loop.run_chunk(carry)


def test_nan_actions_stop_the_loop_with_a_report(env):
    base = flashsac.make_agent(CFG, env)

    def bad_explore(state, obs, key):
        a, state = base.explore(state, obs, key)
        return a * jnp.nan, state

    loop = _loop(env, explore=bad_explore)
    carry, _ = loop.run_chunk(loop.init_carry())
    with pytest.raises(guards.NonFiniteError, match="policy actions"):
        loop.run_chunk(carry)
