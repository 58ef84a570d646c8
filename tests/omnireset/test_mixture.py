"""The reset-mixture wrapper: probabilities, empty types, frequencies, exact restore."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs.omnireset as omr


@pytest.mark.parametrize(
    "probs, match",
    [
        ([0.5, 0.5], "one entry per reset type"),
        ([0.5, 0.6, -0.1], "non-negative"),
        ([0.3, 0.3, 0.3], "sum to 1"),
        ([float("nan"), 0.5, 0.5], "finite"),
    ],
)
def test_bad_probs_raise(push_task, push_dataset, probs, match):
    with pytest.raises(ValueError, match=match):
        omr.ResetMixture(push_task, push_dataset, probs)


def test_probs_within_tolerance_are_accepted(push_task, push_dataset):
    omr.ResetMixture(push_task, push_dataset, [0.2, 0.3, 0.5 + 5e-7])


def test_type_with_zero_valid_states_is_refused(push_task, push_dataset):
    empty = dataclasses.replace(
        push_dataset,
        qpos=[push_dataset.qpos[0], push_dataset.qpos[1], np.zeros((0, 4), np.float32)],
        qvel=[push_dataset.qvel[0], push_dataset.qvel[1], np.zeros((0, 4), np.float32)],
        ctrl=[push_dataset.ctrl[0], push_dataset.ctrl[1], np.zeros((0, 2), np.float32)],
    )
    with pytest.raises(ValueError, match=r"\['near_goal'\] have zero valid states"):
        omr.ResetMixture(push_task, empty, [0.4, 0.3, 0.3])
    omr.ResetMixture(push_task, empty, [0.5, 0.5, 0.0])  # probability 0: allowed


def test_mixture_draws_types_with_given_frequencies_and_restores_exact_qpos(
    push_task, push_dataset
):
    probs = [0.5, 0.3, 0.2]
    mix = omr.ResetMixture(push_task, push_dataset, probs)
    n = 3000
    states = jax.jit(jax.vmap(mix.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    types = np.asarray(states.info["reset_type"])
    idx = np.asarray(states.info["reset_index"])
    freq = np.bincount(types, minlength=3) / n
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))  # 4 sigma
    stored = np.stack([np.asarray(push_dataset.qpos[k][i]) for k, i in zip(types, idx)])
    np.testing.assert_array_equal(np.asarray(states.data.qpos), stored)
    np.testing.assert_array_equal(
        np.asarray(states.data.qvel),
        np.stack([push_dataset.qvel[k][i] for k, i in zip(types, idx)]),
    )
    # held position targets equal the restored joint positions (pusher x, y)
    np.testing.assert_array_equal(np.asarray(states.data.ctrl), stored[:, :2])
    # every index of a type is reachable (uniform within the type)
    assert len(np.unique(idx[types == 0])) == 32


def test_mixture_vecenv_steps_and_reports_success_per_type(push_dataset, tmp_path):
    path = tmp_path / "push.npz"
    push_dataset.save(path)
    env = omr.make_mixture_env("PushToSlot", path, [0.2, 0.3, 0.5], num_envs=8, episode_length=3)
    s = env.reset()
    for _ in range(4):  # crosses an auto-reset
        s = env.step(s, jnp.zeros((8, env.action_size)))
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(s.obs))
    m = s.inner.metrics
    onehot = np.stack([np.asarray(m[f"type_{k}"]) for k in range(3)], -1)
    np.testing.assert_array_equal(onehot.sum(-1), 1.0)
    np.testing.assert_array_equal(np.argmax(onehot, -1), np.asarray(s.inner.info["reset_type"]))
    for k in range(3):
        np.testing.assert_array_equal(m[f"success_type_{k}"], m["success"] * m[f"type_{k}"])
    env2 = omr.make_mixture_env("PushToSlot", push_dataset, None, num_envs=4, episode_length=10)
    rates = omr.success_by_type(env2, lambda obs, k: jnp.zeros((4, 2)), jax.random.PRNGKey(0), 5)
    assert set(rates) == {"anywhere", "near_object", "near_goal"}
