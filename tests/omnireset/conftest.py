"""Fixtures for the OmniReset tests: the cheap PushToSlot task and one small dataset, built once."""

import jax
import pytest

import envs.omnireset as omr


@pytest.fixture(scope="session")
def push_task():
    return omr.make_task("PushToSlot")


@pytest.fixture(scope="session")
def push_types(push_task):
    # 0.5 s of settling instead of the default ~2 s: a quarter of the simulation, same checks.
    return omr.default_reset_types(push_task, settle_steps=25)  # as the notebook's small settings


@pytest.fixture(scope="session")
def push_dataset(push_task, push_types):
    return omr.build_dataset(push_task, push_types, per_type=32, key=jax.random.PRNGKey(0))
