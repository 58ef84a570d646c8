"""Shared fixtures.  JIT compilation dominates on CPU: envs are made once per session."""

import os

os.environ.setdefault("JAXRL_SMALL", "1")  # notebooks and demos pick their small settings
# Before jax loads: hide XLA:CPU's spurious cache-loading ERROR logs (see envs/__init__.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest

import envs

# Notebooks that run the same small programs as a test: on one xdist worker, after it, so they
# find those programs in the compilation cache instead of compiling them at the same time.
_SHARES_PROGRAMS_WITH = {
    "humanoid_pretraining.ipynb": "lift",  # tests/algos/test_sac.py lift-smoke T1 run
    "test_lift_smoke_trains_checkpoints_and_exports_t1": "lift",
    "quickstart.ipynb": "resume",  # tests/train/test_resume.py TINY FlashSAC runs
    "finetuning.ipynb": "finetune",  # tests/train/test_finetune.py PRE / FT runs
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _SHARES_PROGRAMS_WITH.get(item.name)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
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
