"""Shared fixtures.  JIT compilation dominates on CPU: envs are made once per session."""

import os

os.environ.setdefault("JAXRL_SMALL", "1")  # notebooks and demos pick their small settings
# Before jax loads: hide XLA:CPU's spurious cache-loading ERROR logs (see envs/__init__.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

import envs  # noqa: E402  (applies the compilation cache)


def pytest_collection_modifyitems(config, items):
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cartpole4():
    return envs.make("CartpoleBalance", num_envs=4, episode_length=5, seed=0)


@pytest.fixture(scope="session")
def solved_cartpole_run(tmp_path_factory):
    """One FlashSAC run (cpu preset, CartpoleBalance, 40k steps) with a run folder, shared by the
    learning test and the lifecycle tests (eval, video, export, sim2sim): trained once (~3 min)."""
    from jaxrl import flashsac

    run_dir = tmp_path_factory.mktemp("solved") / "cartpole"
    _, rows = flashsac.train("CartpoleBalance", flashsac.FlashSACConfig.cpu(), steps=40_000,
                             num_evals=8, progress=False, out_dir=run_dir)
    return run_dir, rows
