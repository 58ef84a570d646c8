"""Shared fixtures.  JIT compilation dominates on CPU: envs are made once per session."""

import os

os.environ.setdefault("JAXRL_SMALL", "1")  # notebooks and demos pick their small settings
# Exactly two CPU devices whatever the core count: the 2-device tests run, and mean the same, on a
# 1-core laptop and a 16-core CI box alike (a device count set in XLA_FLAGS is dropped here).
os.environ["JAXRL_CPU_DEVICES"] = "2"
if "XLA_FLAGS" in os.environ:
    os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ["XLA_FLAGS"].split()
                                       if not f.startswith("--xla_force_host_platform_device_count"))
# Before jax loads: hide XLA:CPU's spurious cache-loading ERROR logs (see envs/__init__.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest

import envs


class StopRun(Exception):
    """Raised by a `stop_after` progress_fn: the run is interrupted after its n-th metrics row."""


@pytest.fixture
def stop_after():
    """``stop_after(n)`` -> a progress_fn that interrupts a run after its n-th row (its checkpoint
    written), raising ``stop_after.Stop``: a run stopped mid-way, to resume or restore."""
    def make(n: int):
        seen = []

        def fn(row):
            seen.append(row)
            if len(seen) == n:
                raise StopRun
        return fn

    make.Stop = StopRun
    return make


# Notebooks that run the same small programs as a test: on one xdist worker, after it, so they
# find those programs in the compilation cache instead of compiling them at the same time.
_SHARES_PROGRAMS_WITH = {
    "test_lift_smoke_trains_checkpoints_and_exports_t1": "lift",
    "quickstart.ipynb": "resume",  # tests/train/test_resume.py TINY FlashSAC runs
    "finetuning.ipynb": "finetune",  # tests/train/test_finetune.py PRE / FT runs
    "omnireset.ipynb": "push_dataset",  # tests/omnireset's PushToSlot dataset (32 per type)
}


# Notebooks a test executes itself and then checks (name -> that test): their nbmake item would
# run the same work a second time, so it is dropped when the test is collected too.
_RUN_BY_A_TEST = {
    "humanoid_pretraining.ipynb": "test_lift_smoke_trains_checkpoints_and_exports_t1",  # test_sac.py
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    names = {item.name for item in items}
    twice = [item for item in items if _RUN_BY_A_TEST.get(item.name) in names]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item not in twice]
    for item in items:
        group = _SHARES_PROGRAMS_WITH.get(item.name)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


def _compile_profiler(out_dir: str):
    """`JAXRL_TEST_PROFILE=DIR pytest ...` writes, per test, the programs compiled (name, seconds,
    cache hit or not) and the tracing/lowering seconds to DIR/<worker>.jsonl: where the suite's
    time goes on CPU is compilation, and this says which test pays for which program.
    ``trace_s`` sums every trace and lowering, nested ones (a jitted env step inside a chunk)
    included; ``trace_wall_s`` is the wall time they covered, each moment counted once."""
    import json
    import pathlib
    import time

    from jax import monitoring

    current: dict = {}
    hits = [0]

    def on_duration(event, secs, **kw):
        if not current:
            return
        if event.endswith("backend_compile_duration"):
            if secs >= 0.5:  # the programs worth naming; the rest summed
                current["compiles"].append((kw.get("fun_name", "?"), round(secs, 1), hits[0] > 0))
            else:
                current["small_compiles_s"] += secs
            hits[0] = 0
        elif event.endswith(("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")):
            current["trace_s"] += secs
            end = time.perf_counter()
            current["_spans"].append((end - secs, end))

    def on_event(event, **kw):
        if event == "/jax/compilation_cache/cache_hits":
            hits[0] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    path = pathlib.Path(out_dir) / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        current.clear()
        current.update(test=item.nodeid, compiles=[], small_compiles_s=0.0, trace_s=0.0, _spans=[],
                       start=time.time())
        yield
        current["wall_s"] = round(time.time() - current.pop("start"), 2)
        current["trace_wall_s"] = round(_covered(current.pop("_spans")), 2)
        for k in ("trace_s", "small_compiles_s"):
            current[k] = round(current[k], 2)
        with path.open("a") as f:
            f.write(json.dumps(current) + "\n")
        current.clear()

    return pytest_runtest_protocol


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


if os.environ.get("JAXRL_TEST_PROFILE"):
    pytest_runtest_protocol = _compile_profiler(os.environ["JAXRL_TEST_PROFILE"])


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
