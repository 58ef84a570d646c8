"""Several hosts, played by two processes on this machine (`jax.distributed` over loopback, one
CPU device each): one run, one run folder, one checkpoint that a single process restores."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl.io import lifecycle
from jaxrl.io.checkpoint import CheckpointManager
from jaxrl.io.metrics import read_jsonl

pytestmark = pytest.mark.xdist_group("multihost")

# PPO at toy size: the multi-host path (mesh, gradients averaged over processes, one writer,
# restore elsewhere) is the shared loop's, and PPO compiles fastest of the trainers (two
# processes compile the same programs at once on this 2-core machine).
ARGS = ["train", "ppo", "--env", "CartpoleBalance", "--steps", "128", "--num-evals", "2",
        "--checkpoint-every-s", "0", "--no-progress", "--config.num-envs", "4", "--config.unroll-length", "8",
        "--config.num-minibatches", "2", "--config.num-epochs", "1", "--config.hidden", "8", "8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_run_into_one_folder(tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    procs = []
    for pid in (0, 1):
        env = {**base, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAXRL_NUM_PROCESSES": "2",
               "JAXRL_PROCESS_ID": str(pid), "JAXRL_CPU_DEVICES": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxrl.cli", *ARGS, "--out", str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    record = json.loads((out / "config.json").read_text())
    assert record["devices"] == 2  # the mesh spans both processes' devices
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["env_steps"] for r in rows] == sorted({r["env_steps"] for r in rows})  # written once
    assert rows[-1]["env_steps"] == 128 and np.isfinite(rows[-1]["eval_return"])
    steps = CheckpointManager(out).steps()
    assert steps and steps[-1] == 128 and not list((out / "checkpoints").glob(".tmp-*"))
    # one process, one device: the two-process checkpoint verifies and restores
    _, _, _, agent, _ = lifecycle.load_run(out)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(agent))
    # Both processes resume the finished run: they restore the step process 0 chose (broadcast),
    # learn that nothing is left to train, and leave the folder as it was.
    summary = (out / "summary.json").read_bytes()
    port = _free_port()
    procs = []
    for pid in (0, 1):
        env = {**base, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAXRL_NUM_PROCESSES": "2",
               "JAXRL_PROCESS_ID": str(pid), "JAXRL_CPU_DEVICES": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxrl.cli", "resume", str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    assert all("already finished its budget (128 env steps)" in log for log in logs), logs[0][-2000:]
    assert (out / "summary.json").read_bytes() == summary and CheckpointManager(out).steps() == steps


# Two processes sum one number each through a cross-process psum, as a multi-host run's programs
# do; the program is cached whatever its compile time.
_PSUM = """
import numpy as np
import jax
from jaxrl.train import parallel
assert parallel.initialize_distributed()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
mesh = parallel.make_mesh(jax.device_count())
spec = jax.sharding.PartitionSpec(parallel.AXIS)
x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, spec),
                                           np.full((1,), jax.process_index() + 1.0, np.float32))
f = jax.jit(parallel.local_map(lambda v: jax.lax.psum(v, parallel.AXIS), mesh, spec, spec))
print("SUM", float(f(x).addressable_data(0)[0]), flush=True)
"""


def _run_pair(code: str, cache, timeout: float = 120) -> list[str]:
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={
        **base, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAXRL_NUM_PROCESSES": "2",
        "JAXRL_PROCESS_ID": str(pid), "JAXRL_CPU_DEVICES": "1", "JAXRL_COMPILATION_CACHE": str(cache)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:  # a hang: jax's preemption handler ignores SIGTERM
            for q in procs:
                q.kill()
            pytest.fail(f"two processes hung on a cross-process psum for {timeout} s "
                        f"(cache {cache}: {sorted(x.name for x in cache.iterdir())})")
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    return logs


def test_a_second_multi_process_run_does_not_hang_on_cached_collectives(tmp_path):
    """jaxlib 0.12.1 deadlocks a cross-process CPU collective whose program came from the
    persistent compilation cache (the first run compiles and finishes, the second hangs:
    `envs._runtime.cached_collectives_hang`).  Two runs against one cache must both finish with
    the right sum.  (With jaxlib 0.9-0.12.0, which have no such hang, this passes either way.)"""
    from envs._runtime import cached_collectives_hang

    cache = tmp_path / "xla"
    logs = [log for _ in range(2) for log in _run_pair(_PSUM, cache)]
    assert all("SUM 3.0" in log for log in logs), logs
    # the affected jaxlib compiles every time and says so; the others use the cache quietly
    assert all(("compiling every program" in log) == cached_collectives_hang() for log in logs)


def test_which_jaxlib_versions_skip_the_cache_on_several_cpu_processes():
    from envs._runtime import cached_collectives_hang

    assert not any(map(cached_collectives_hang, ["0.9.2", "0.10.0", "0.11.2", "0.12.0", "0.12.0.1"]))
    assert all(map(cached_collectives_hang, ["0.12.1", "0.12.1+cuda", "0.13.0", "1.0", "custom"]))
