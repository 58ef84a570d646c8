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
