"""Finetuning targets (`envs.variants`): the named change is in the model MJX steps, and nowhere
else (the ``.nominal`` task the world model is told about keeps the pretraining physics)."""

import jax
import numpy as np
import pytest

import envs
from envs import variants


def _bodies(env, name):
    import mujoco

    return mujoco.mj_name2id(env.mj_model, mujoco.mjtObj.mjOBJ_BODY, name)


def test_humanoid_targets_change_command_payload_and_friction():
    # Fast: forward 1.0-1.5 m/s (or the task's own 10% stand-still), never sideways or turning
    fast = envs.make("T1JoystickFlatTerrainFast", num_envs=1).env
    cmd = np.asarray(jax.vmap(fast.sample_command)(jax.random.split(jax.random.PRNGKey(0), 400)))
    moving = np.abs(cmd).sum(1) > 0
    assert 0.8 < moving.mean() < 0.97  # ~10% zero commands
    assert np.all((cmd[moving, 0] >= 1.0) & (cmd[moving, 0] <= 1.5)) and np.all(cmd[:, 1:] == 0)
    assert list(fast.nominal._config.lin_vel_x) == [1.0, 1.5]  # a task change: the nominal knows it

    # Payload: +5 kg on the trunk in the MuJoCo and MJX models; inertia scaled alike; nominal as before
    heavy = envs.make("T1JoystickFlatTerrainPayload", num_envs=1).env
    i = _bodies(heavy, "Trunk")
    m0 = heavy.nominal.mj_model.body_mass[i]
    assert heavy.mj_model.body_mass[i] == pytest.approx(m0 + 5.0)
    assert float(heavy.mjx_model.body_mass[i]) == pytest.approx(m0 + 5.0, rel=1e-6)
    np.testing.assert_allclose(heavy.mj_model.body_inertia[i], heavy.nominal.mj_model.body_inertia[i] * (m0 + 5) / m0)
    others = np.arange(heavy.mj_model.nbody) != i
    np.testing.assert_array_equal(heavy.mj_model.body_mass[others], heavy.nominal.mj_model.body_mass[others])

    # Slippery (G1: its feet touch the floor through explicit contact pairs): every sliding
    # friction halved, torsional and rolling unchanged
    slip = envs.make("G1JoystickFlatTerrainSlippery", num_envs=1).env
    nom = slip.nominal.mj_model
    assert nom.npair > 0
    np.testing.assert_allclose(slip.mj_model.geom_friction[:, 0], nom.geom_friction[:, 0] / 2)
    np.testing.assert_allclose(slip.mj_model.pair_friction[:, :2], nom.pair_friction[:, :2] / 2)
    np.testing.assert_array_equal(slip.mj_model.geom_friction[:, 1:], nom.geom_friction[:, 1:])
    np.testing.assert_allclose(np.asarray(slip.mjx_model.geom_friction[:, 0]), nom.geom_friction[:, 0] / 2, rtol=1e-6)

    assert set(variants.VARIANTS) | set(variants.C_TARGETS) <= set(envs.list_envs(source="jaxrl"))


def test_a_change_naming_a_missing_body_is_refused():
    env = envs.make("CartpoleBalance", num_envs=1).env
    with pytest.raises(ValueError, match="has no body 'Trunk'"):
        variants.edit_physics(env, variants.Change("CartpoleBalance", payload_kg={"Trunk": 5.0}))


@pytest.mark.parametrize("name, factor", [("CartpoleSwingupHeavyPole", 3.0), ("CartpoleSwingupVeryHeavyPole", 10.0)])
def test_heavy_pole_targets_scale_the_pole_and_nothing_else(name, factor):
    env = envs.make(name, num_envs=1).env
    nom, i = env.nominal.mj_model, _bodies(env, "pole_1")
    assert env.mj_model.body_mass[i] == pytest.approx(factor * nom.body_mass[i])
    np.testing.assert_allclose(env.mj_model.body_inertia[i], factor * nom.body_inertia[i])
    assert float(env.mjx_model.body_mass[i]) == pytest.approx(factor * nom.body_mass[i], rel=1e-6)
    others = np.arange(nom.nbody) != i
    np.testing.assert_array_equal(env.mj_model.body_mass[others], nom.body_mass[others])


def test_editing_a_tasks_physics_reaches_every_vecenv_built_after():
    """A VecEnv's jitted single-env step is kept on the task (`VecEnv._one_env`) with the MJX model
    traced in as a constant: `edit_physics` forgets it, so a VecEnv built after the edit steps
    the new physics, not the old (before, the edit changed `mj_model` but not what MJX stepped)."""
    vec = envs.make("CartpoleBalance", num_envs=1, episode_length=5)
    state, action = vec.reset(jax.random.PRNGKey(0)), np.full((1, 1), 0.7, np.float32)
    before = np.asarray(vec.step(state, action).obs["state"])
    variants.scale_masses(vec.env, {"pole_1": 10.0})
    after = np.asarray(envs.VecEnv(vec.env, 1, 5).step(state, action).obs["state"])
    assert not np.allclose(before, after)
