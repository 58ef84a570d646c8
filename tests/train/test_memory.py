"""XLA's memory of each compiled program, checked against the device's free memory before the
program's first call (`jaxrl.train.memory`, `HostLoop.check_memory`)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.train import memory

GIB = 2**30


def _sorted_gram(x):
    """Needs its [n, n] product whole before the sort: a temporary of n * n * 4 bytes."""
    return jnp.sort(x @ x.T, axis=1)[:, 0]


def test_program_memory_counts_arguments_results_donation_and_intermediates():
    n, d = 512, 64
    x = jnp.ones((n, d))
    sizes = memory.program_memory("gram", jax.jit(_sorted_gram).lower(x).compile())
    assert (sizes.arguments, sizes.outputs, sizes.aliased) == (n * d * 4, n * 4, 0)
    assert sizes.temporaries >= n * n * 4 and sizes.new == sizes.temporaries + n * 4
    # a donated argument written back in place: its result needs no new memory
    step = jax.jit(lambda c, x: (c + x.sum(), x.sum()), donate_argnums=0)
    sizes = memory.program_memory("step", step.lower(jnp.zeros((n, d)), x).compile())
    assert (sizes.arguments, sizes.aliased) == (2 * n * d * 4, n * d * 4)
    # the results: the array, the scalar and (XLA:CPU) the tuple's table of two 8-byte pointers
    assert n * d * 4 + 4 <= sizes.outputs <= n * d * 4 + 4 + 16
    assert sizes.new == sizes.temporaries + sizes.outputs - n * d * 4 <= sizes.temporaries + 20


def test_check_refuses_a_program_larger_than_free_memory_naming_the_knobs():
    sizes = memory.ProgramMemory("chunk", arguments=2 * GIB, outputs=2 * GIB + 8, aliased=2 * GIB,
                                 temporaries=3 * GIB)
    memory.check(sizes, "batch_size", free=4 * GIB)  # 3 GiB + 8 B <= 95% of 4 GiB
    memory.check(sizes, "batch_size", free=None)  # free memory unknown: nothing to refuse on
    with pytest.raises(memory.ProgramMemoryError,
                       match=r"compiled chunk program needs 3\.00 GiB beyond its 2\.00 GiB of arguments "
                             r"\(3\.00 GiB of XLA temporaries.*3\.00 GiB free \(95% usable\); it was not "
                             r"called\.  Lower batch_size"):
        memory.check(sizes, "batch_size", free=3 * GIB)
    # two CPU devices are one host's RAM: both calls draw on the same free bytes
    assert memory.fits(sizes, 4 * GIB) and not memory.fits(sizes, 4 * GIB, sharing=2)
    with pytest.raises(memory.ProgramMemoryError, match=r"3\.00 GiB on each of 2 devices sharing"):
        memory.check(sizes, "batch_size", free=4 * GIB, sharing=2)
    assert memory.free_bytes(jax.devices("cpu"))[1] == len(jax.devices("cpu"))


def test_a_loop_refuses_a_program_before_its_first_call(monkeypatch, cartpole4):
    """The off-policy loop's `_call` compiles, checks, and only then calls: with 1 MiB free, a
    program holding a 1 MiB temporary never runs, and the error names the off-policy knobs."""
    from jaxrl.algos import flashsac
    from jaxrl.data import replay
    from jaxrl.train import registry

    cfg = flashsac.FlashSACConfig.cpu().replace(num_envs=cartpole4.num_envs)
    loop = registry.get("flashsac").make_loop(cfg, cartpole4, None, 1000, 0, 1, devices=1)
    ran = []

    def program(x):
        jax.debug.callback(lambda: ran.append(True))
        return _sorted_gram(x)

    x = jnp.ones((512, 64))
    monkeypatch.setattr(replay, "device_memory_bytes", lambda *a, **k: 2**20)
    with pytest.raises(memory.ProgramMemoryError, match=r"Lower batch_size or updates_per_step"):
        loop._call("chunk", jax.jit(program), x, donate=False)
    with pytest.raises(memory.ProgramMemoryError, match=r"evaluate program.*Lower num_eval_envs"):
        loop._call("evaluate", jax.jit(program), x, donate=False)
    assert "chunk" not in loop._compiled and not ran and loop.compile_s > 0
    # several hosts: each process's free memory reaches the others through a gather of int32s
    # (an int64 would be cut to 32 bits without jax_enable_x64: "0.00 GiB free")
    from jax.experimental import multihost_utils

    gathered = []

    def gather(x):  # the two processes' answers, as a device round trip would carry them
        gathered.append(np.asarray(jax.device_get(jax.device_put(x))))
        return np.stack([gathered[-1], gathered[-1]])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", gather)
    monkeypatch.setattr(replay, "device_memory_bytes", lambda *a, **k: 40 * 2**30)
    monkeypatch.setattr(memory, "fits", lambda *a, **k: False)  # (no 40 GiB program here)
    with pytest.raises(memory.ProgramMemoryError, match=r"process 0's device has 40\.00 GiB free"):
        loop._call("evaluate2", jax.jit(program), x, donate=False)
    monkeypatch.undo()
    monkeypatch.setattr(replay, "device_memory_bytes", lambda *a, **k: 2**30)
    jax.block_until_ready(loop._call("chunk", jax.jit(program), x, donate=False))
    assert ran and loop.program_bytes["chunk"]["temporaries"] >= 512 * 512 * 4


def test_host_memory_counts_the_page_cache_the_kernel_can_drop():
    """On CPU the device is the host: available memory lies between its free pages (what
    sysconf reports) and all of its RAM."""
    import os

    from jaxrl.data import replay

    page = os.sysconf("SC_PAGE_SIZE")
    free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    have = replay.device_memory_bytes(jax.devices("cpu")[0])
    # (MemAvailable also leaves out the kernel's reserve, so with little page cache it can sit a
    # little below the free pages)
    assert 0.5 * free <= have <= total
    assert memory.free_bytes(jax.devices("cpu"))[0] == pytest.approx(have, rel=0.1)

    class Accelerator:  # an allocator that reports nothing (XLA_PYTHON_CLIENT_ALLOCATOR=platform)
        platform = "gpu"

        def memory_stats(self):
            return None

    assert replay.device_memory_bytes(Accelerator()) is None  # unknown, not the host's RAM


@pytest.mark.xdist_group("solved_cartpole")
def test_a_run_records_each_programs_memory_and_updates_its_buffer_in_place(solved_cartpole_run):
    """The shared FlashSAC run's summary (cpu preset: 200k transitions of CartpoleBalance, whose
    5 observations, 1 action, reward and two flags take >= 50 bytes a row): the chunk's arguments
    hold the replay buffer, and its results alias them (donation: the carry is updated in place,
    not copied)."""
    import envs
    from jaxrl.algos import flashsac
    from jaxrl.data import replay

    run_dir, _ = solved_cartpole_run
    cfg = flashsac.FlashSACConfig.cpu()
    rows = replay.time_rows(cfg.buffer_size, cfg.num_envs) * cfg.num_envs
    env = envs.make("CartpoleBalance", num_envs=1)
    buffer = rows * (4 * (2 * env.obs_spec["state"].size + env.action_size + 1) + 2)
    programs = json.loads((run_dir / "summary.json").read_text())["program_bytes"]
    assert set(programs) == {"chunk", "evaluate"}
    chunk = programs["chunk"]
    assert chunk["arguments"] >= buffer
    # every byte of the carry is donated and written back: only the chunk's two scalar arguments
    # (its length and warm-up flag) are not aliased, and only its metrics are new results
    assert chunk["arguments"] - chunk["aliased"] <= 8 and chunk["outputs"] - chunk["aliased"] < 2**16
    assert chunk["new"] == chunk["temporaries"] + chunk["outputs"] - chunk["aliased"]
    assert programs["evaluate"]["aliased"] == 0  # nothing donated to an evaluation
