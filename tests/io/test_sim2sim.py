"""MuJoCo C physics swapped into MJX tasks (`jaxrl.io.sim2sim`): it is really the C simulator that
runs (a changed C model changes the trajectory), and on the same model it tracks MJX closely."""

import contextlib
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from jaxrl.io import lifecycle, sim2sim

# The module's CheetahRun trajectory (`cheetah`, ~20 s to compile) is built once: on one worker.
pytestmark = pytest.mark.xdist_group("sim2sim_cheetah")


def _trajectory(task, actions, physics=None):
    """qpos after each step from the same reset, MJX physics (None) or MuJoCo C, through
    sim2sim's own programs — whose step compiles once although MJX's reset state is weakly typed
    where a stepped one is not (CheetahRun's ``data.time``)."""
    ctx = sim2sim.mujoco_physics(task, physics) if physics else contextlib.nullcontext()
    with ctx:
        reset, step = sim2sim._programs(task, len(actions))  # a few steps: `few_steps_options`
        state, out = reset(jax.random.PRNGKey(0)), []
        for a in actions:
            state = step(state, a)
            out.append(np.asarray(state.data.qpos))
        assert step._cache_size() == 1  # one signature: no second compile of the step
    return np.array(out)


@pytest.fixture(scope="module")
def cheetah():
    """A contact-rich Playground task (through `mjx_env.step`), MJX-JAX like sim2sim uses."""
    task = lifecycle.sim_task(envs.make("CheetahRun", num_envs=1, impl="jax"))
    actions = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (100, task.action_size)), jnp.float32)
    return task, actions, _trajectory(task, actions)


def test_c_physics_tracks_mjx_on_the_same_model(cheetah):
    task, actions, mjx_q = cheetah
    physics = sim2sim.CPhysics(task.mj_model)
    c_q = _trajectory(task, actions, physics)
    assert physics.calls == 1 + len(actions)  # the 200-substep settle in reset, then one per step
    gap = np.abs(c_q - mjx_q).max()
    assert 0 < gap < 1e-3, gap  # float64 C vs float32 MJX: close, not bit-identical
    # the host calls converted MjData without mjx.put_data's device transfer, and that conversion
    # equals put_data's on the last state (the cheetah touching the floor: contacts, constraint rows)
    from mujoco import mjx

    from envs.mujoco_c import _put_data_numpy

    assert physics.fast_conversion is True and physics.data.ncon > 0
    official = mjx.put_data(task.mj_model, physics.data, impl="jax")
    fast = _put_data_numpy(task.mj_model, physics.data)
    assert jax.tree.structure(fast) == jax.tree.structure(official)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(official)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_changed_c_model_changes_the_trajectory(cheetah):
    """Proves the C model drives the state the task reads (not MJX with a callback on the side)."""
    task, actions, mjx_q = cheetah
    heavier = copy.deepcopy(task.mj_model)
    heavier.opt.gravity[2] *= 1.5
    c_q = _trajectory(task, actions, sim2sim.CPhysics(heavier))
    assert np.abs(c_q - mjx_q).max() > 0.05


def test_own_tasks_swap_their_physics_step_too():
    """jaxrl's manipulation tasks step through `physics_step`; the swap is undone afterwards."""
    task = lifecycle.sim_task(envs.make("PushToSlot", num_envs=1))
    actions = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (30, task.action_size)), jnp.float32)
    mjx_q = _trajectory(task, actions)
    physics = sim2sim.CPhysics(task.mj_model)
    c_q = _trajectory(task, actions, physics)
    assert physics.calls == len(actions)
    assert np.abs(c_q - mjx_q).max() < 1e-3
    assert "physics_step" not in vars(task)  # the instance override is gone


def test_policy_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="jaxrl export"):
        sim2sim.load_policy(tmp_path / "missing.onnx")
    (tmp_path / "p.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=".onnx or .npz"):
        sim2sim.load_policy(tmp_path / "p.pt")


def test_brax_tasks_are_refused_with_a_reason():
    class NotMjx:
        pass

    with pytest.raises(NotImplementedError, match="Playground"), sim2sim.mujoco_physics(NotMjx(), None):
        pass
