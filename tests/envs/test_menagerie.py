"""Offline robot assets: stand-in meshes keep physics unchanged, or a clear error."""

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

import envs
from envs import menagerie


@pytest.fixture(scope="module")
def t1():
    return envs.make("T1JoystickFlatTerrain", num_envs=2)


def _explicit_inertials(env):
    spec = menagerie._parse_spec(env.unwrapped.xml_path, env.unwrapped._model_assets)
    return [(b.name, b.mass, np.array(b.inertia)) for b in spec.bodies if b.explicitinertial]


def test_t1_loads_and_steps_offline_with_privileged_obs(t1):
    assert t1.spec.has_privileged_state
    assert t1.obs_spec["privileged_state"].shape[0] > t1.obs_spec["state"].shape[0]
    state = t1.reset(jax.random.PRNGKey(0))
    for _ in range(3):
        state = t1.step(state, jnp.zeros((2, t1.action_size)))
    assert state.obs["state"].shape == (2,) + t1.obs_spec["state"].shape
    assert np.isfinite(np.asarray(state.obs["privileged_state"])).all()


@pytest.mark.parametrize("name", ["T1JoystickFlatTerrain", "G1JoystickFlatTerrain"])
def test_standin_model_masses_and_inertias_equal_the_xml(name, t1):
    env = t1 if name.startswith("T1") else envs.make(name, num_envs=1)
    model = env.unwrapped.mj_model
    bodies = _explicit_inertials(env)
    assert len(bodies) >= 20  # every robot link
    for body, mass, inertia in bodies:
        i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
        assert model.body_mass[i] == pytest.approx(mass, rel=1e-6), body
        np.testing.assert_allclose(np.sort(model.body_inertia[i]), np.sort(inertia), rtol=1e-5)
    # All robot links carry explicit inertia, so no mass came from a placeholder mesh.
    robot = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i) for i in range(1, model.nbody)]
    massive = [b for b in robot if model.body_mass[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b)] > 0]
    assert set(massive) <= {b for b, _, _ in bodies}


def test_g1_steps_offline():
    env = envs.make("G1JoystickFlatTerrain", num_envs=1)
    state = env.step(env.reset(), jnp.zeros((1, env.action_size)))
    assert np.isfinite(np.asarray(state.obs["state"])).all()


@pytest.mark.parametrize("name", ["LeapCubeReorient", "PandaPickCube"])
def test_tasks_whose_meshes_matter_refuse_with_the_env_var_named(name, monkeypatch):
    monkeypatch.delenv(menagerie.ENV_VAR, raising=False)
    with pytest.raises(menagerie.MenagerieMissingError, match=menagerie.ENV_VAR):
        envs.make(name, num_envs=1)


def test_user_path_is_honoured_and_validated(monkeypatch, tmp_path):
    monkeypatch.setenv(menagerie.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(menagerie.MenagerieMissingError, match="is not a directory"):
        envs.make("T1JoystickFlatTerrain", num_envs=1)
    monkeypatch.setenv(menagerie.ENV_VAR, str(tmp_path))
    with pytest.raises(menagerie.MenagerieMissingError, match="booster_t1"):
        envs.make("T1JoystickFlatTerrain", num_envs=1)
    # A folder laid out like Menagerie (here: the stand-in itself) is used as given.
    root = menagerie.build_standin("T1JoystickFlatTerrain", tmp_path / "m")
    assert menagerie.prepare("T1JoystickFlatTerrain", root) == "user"
    assert menagerie.robot_dirs("CartpoleBalance") == ()
