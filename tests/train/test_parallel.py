"""Data parallelism over devices (`jaxrl.train.parallel`), on this machine's CPU devices.

The suite runs with exactly two XLA:CPU devices whatever the core count (tests/conftest.py sets
``JAXRL_CPU_DEVICES=2``; outside the tests it is one per core).  A run takes one CPU device unless
asked, so the runs here and the PPO learning test (tests/train/test_onpolicy.py) ask for two.
Here: equal results on 1 and 2 devices for the same global batches, real sharding, no
buffer-sized traffic between devices, checkpoints that move between device counts, and the
errors for impossible requests.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import envs
from envs._runtime import run_once_options
from envs.specs import ArraySpec, EnvSpec
from jaxrl.algos import flashsac, ppo, sac
from jaxrl.data.transition import Transition
from jaxrl.io.checkpoint import CheckpointManager
from jaxrl.train import parallel, registry, run

ONCE = run_once_options()  # programs a test runs a few times: the quick compile (CPU)

pytestmark = [pytest.mark.xdist_group("parallel"),
              pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices (one per CPU core)")]

D, PD, A, B = 5, 7, 2, 16  # obs, privileged obs, actions, global batch


def _spec(n=4):
    obs = {"state": ArraySpec((D,)), "privileged_state": ArraySpec((PD,))}
    return EnvSpec("toy", obs, ArraySpec((A,)), n, 10, 0.01, True)


def _transitions(rng, n, b):
    def obs():
        return {"state": rng.normal(size=(n, b, D)).astype(np.float32),
                "privileged_state": rng.normal(size=(n, b, PD)).astype(np.float32)}
    return Transition(obs=obs(), action=rng.uniform(-1, 1, (n, b, A)).astype(np.float32),
                      reward=rng.normal(size=(n, b)).astype(np.float32), next_obs=obs(),
                      terminated=rng.random((n, b)) < 0.1, truncated=rng.random((n, b)) < 0.1)


def _split(tree, mesh, axis):
    """``tree`` placed with its axis ``axis`` split over ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, parallel.batch_spec(axis)))


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol,
                                   atol=atol, err_msg=jax.tree_util.keystr(path))


def test_one_cpu_device_per_core_unless_the_user_chose():
    from envs import _runtime

    assert jax.device_count() == _runtime.cpu_device_count()
    code = "import envs, jax; print(jax.device_count())"
    for env, want in (({}, str(_runtime.usable_cores())),  # one per core this process may use
                      ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, "3"),
                      ({"JAXRL_CPU_DEVICES": "1"}, "1")):
        full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXRL_CPU_DEVICES")}
        out = subprocess.run([sys.executable, "-c", code], check=False, env={**full, **env}, capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1] == want, out.stderr[-2000:]


@pytest.mark.timeout(300)
def test_batched_lapack_kernels_on_two_devices_do_not_deadlock():
    """jaxlib 0.10.x / 0.11.0 split batched QR (orthogonal initialisers) and Cholesky (MJX) over
    the intra-op pool and wait for it from a pool thread: two CPU devices running one at once
    hung forever (the suite's FlashSAC fixture hung this way).  Those versions are excluded
    (pyproject.toml) and, if installed anyway, get one CPU device (`envs._runtime`); here 200
    replicated batched QRs on 2 devices finish."""
    from envs import _runtime

    assert not _runtime.lapack_deadlock_prone()
    assert _runtime.lapack_deadlock_prone("0.10.2") and _runtime.lapack_deadlock_prone("0.11.0")
    assert not _runtime.lapack_deadlock_prone("0.9.2") and not _runtime.lapack_deadlock_prone("0.12.0.1")
    mesh = parallel.make_mesh(2)
    x = jax.device_put(jnp.ones((8, 32, 32)) + jnp.eye(32), parallel.replicated(mesh))
    qr = jax.jit(lambda k, x: jnp.linalg.qr(x + jax.random.normal(k, x.shape))[0].sum(),
                 out_shardings=parallel.replicated(mesh))
    for i in range(200):
        qr(jax.random.PRNGKey(i), x).block_until_ready()


@pytest.mark.parametrize("algo", ["flashsac", "sac"])
def test_off_policy_statistics_and_updates_on_two_devices_equal_one_device(algo):
    """Three env steps observed (FlashSAC's reward-scale statistics, SAC's observation
    normalisers) and three updates on the same global batches: one device vs the envs and the
    batch split over two (parameters replicated).  FlashSAC's BatchNorm running statistics, the
    cross-batch critic target, the C51 projection, SAC's normalised twin-Q targets and every Adam
    moment agree to float tolerance, so every statistic is global; the two-device program really
    is partitioned (it all-reduces)."""
    if algo == "flashsac":
        mod, cfg = flashsac, flashsac.FlashSACConfig.cpu().replace(
            num_envs=B, batch_size=B, actor_width=8, critic_width=8, num_blocks=1)
        learned = ("actor_stats", "critic_stats", "critic_params", "reward_stats")
    else:
        mod, cfg = sac, sac.SACConfig.cpu().replace(num_envs=B, batch_size=B, actor_hidden=(8,),
                                                    critic_hidden=(8,))
        learned = ("actor_params", "critic_params", "obs_stats")
    state = mod.init(jax.random.PRNGKey(0), _spec(B), cfg)
    batches = _transitions(np.random.default_rng(0), 3, B)
    batches = batches._replace(obs={k: v + 3.0 for k, v in batches.obs.items()})  # statistics move
    keys = jax.random.split(jax.random.PRNGKey(1), 3)

    def learn(state, batches, keys):
        def step(s, x):
            s = mod.observe(s, x[0], cfg)  # this env step's B envs
            return mod.update(s, x[0], x[1], cfg)
        return jax.lax.scan(step, state, (batches, keys))

    one = jax.jit(learn, compiler_options=ONCE)(state, batches, keys)
    mesh = parallel.make_mesh(2)
    two_fn = jax.jit(learn, compiler_options=ONCE)
    args = (jax.device_put(state, parallel.replicated(mesh)), _split(batches, mesh, 1),
            jax.device_put(keys, parallel.replicated(mesh)))
    two = two_fn(*args)
    _assert_trees_close(one, two)
    assert "all-reduce" in two_fn.lower(*args).compile().as_text()
    for field in learned:  # the steps did something
        moved = [np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()
                 for a, b in zip(jax.tree.leaves(getattr(one[0], field)), jax.tree.leaves(getattr(state, field)))]
        assert max(moved) > 1e-4, field


def test_ppo_normaliser_and_update_on_two_devices_equal_one_device():
    """PPO: the observation normaliser absorbs a rollout's steps and one update (2 epochs x 2
    minibatches, drawn within 2 shards) runs on it: one device vs envs split over two."""
    cfg = ppo.PPOConfig.cpu(num_envs=8, unroll_length=4, num_minibatches=2, num_epochs=2, hidden=(8,))
    state = ppo.init(jax.random.PRNGKey(0), _spec(8), cfg)
    rng = np.random.default_rng(1)
    T, N = cfg.unroll_length, cfg.num_envs
    obs = {"state": rng.normal(3.0, 2.0, (T, N, D)).astype(np.float32),
           "privileged_state": rng.normal(-1.0, 0.5, (T, N, PD)).astype(np.float32)}
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)
    rollout = ppo.Rollout(obs, f32(T, N, A), f32(T, N), f32(T, N, A), np.abs(f32(T, N, A)) + 0.5,
                          f32(T, N), f32(T, N), f32(T, N), rng.random((T, N)) < 0.1, rng.random((T, N)) < 0.1)

    def learn(state, rollout, key):
        state = jax.lax.fori_loop(0, T, lambda t, s: ppo.observe(
            s, jax.tree.map(lambda x: x[t], rollout.obs), cfg), state)
        return ppo.update(state, rollout, key, cfg, shards=2)

    key = jax.random.PRNGKey(2)
    one = jax.jit(learn, compiler_options=ONCE)(state, rollout, key)
    mesh = parallel.make_mesh(2)
    two = jax.jit(learn, compiler_options=ONCE)(jax.device_put(state, parallel.replicated(mesh)), _split(rollout, mesh, 1),
                         jax.device_put(key, parallel.replicated(mesh)))
    _assert_trees_close(one[0], two[0])
    np.testing.assert_allclose(np.asarray(two[0].obs_stats["state"].mean), obs["state"].mean((0, 1)), rtol=1e-5)


# tests/train/test_core.py's tiny FlashSAC run (config, budget, episode length): the programs
# these runs compile are the same, so whichever file runs second finds them in the cache.
TINY_FLASH = flashsac.FlashSACConfig.cpu().replace(
    num_envs=4, batch_size=16, buffer_size=512, min_buffer=16, updates_per_step=1, actor_width=8,
    critic_width=8, num_blocks=1)
FLASH_STEPS = 4 * (4 + 8)  # 4 warm-up iterations, then 2 chunks of 4


def _collectives(hlo: str) -> set[str]:
    return set(re.findall(r"\b(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)"
                          r"(?:-start)?\(", hlo))


def _all_reduce_sizes(hlo: str) -> list[int]:
    """Elements of every all-reduce result in compiled HLO text (tuples: each member)."""
    sizes = []
    for line in hlo.splitlines():
        m = re.search(r"= \(?([^=]*?)\)? all-reduce(?:-start)?\(", line)
        if m:
            for dims in re.findall(r"\w+\[([\d,]*)\]", m[1]):
                sizes.append(int(np.prod([int(d) for d in dims.split(",") if d])))
    return sizes


TINY_SAC = sac.SACConfig.cpu().replace(num_envs=4, batch_size=16, buffer_size=512, min_buffer=16,
                                       updates_per_step=2, actor_hidden=(8,), critic_hidden=(8,))


@pytest.mark.parametrize("algo", ["flashsac", "sac", "ppo"])
def test_training_state_is_split_over_devices_and_only_reductions_cross_them(algo):
    """The carry of a 2-device run: env state and replay buffer split on their env axis, the
    agent replicated; the compiled chunk moves nothing between devices but all-reduces
    (gradients and statistics) — no all-gather of observations, batches or buffer rows, and no
    all-reduce larger than the agent's largest array (buffer rows gathered as a sum of zero-padded
    shards would be).  SAC samples its 2 updates' rows at once and reshapes them."""
    cfg = {"flashsac": TINY_FLASH, "sac": TINY_SAC}.get(algo) or ppo.PPOConfig.cpu(
        num_envs=4, unroll_length=8, num_minibatches=2, num_epochs=1, hidden=(8,))
    env = envs.make("CartpoleBalance", num_envs=4, episode_length=50)
    loop = registry.get(algo).make_loop(cfg, env, None, 256 if algo == "ppo" else FLASH_STEPS, 0, 2,
                                        devices=2)
    assert loop.devices == 2 and loop.env.mesh is not None
    carry = loop.init_carry()
    assert carry.env_state.obs["state"].sharding.spec == P(parallel.AXIS)
    assert carry.env_state.stats.completed.sharding.spec == P()
    if algo != "ppo":
        assert carry.buffer.data.obs["privileged_state"].sharding.spec == P(None, parallel.AXIS)
    if algo == "flashsac":
        assert carry.agent.explore.noise.sharding.spec == P(parallel.AXIS)  # per-env held noise
    params = jax.tree.leaves(carry.agent.params if algo == "ppo" else carry.agent.actor_params)
    assert all(x.sharding.spec == P() for x in params)
    hlo = loop.lower_chunk(carry).compile().as_text()
    assert _collectives(hlo) == {"all-reduce"}, _collectives(hlo)
    if algo != "ppo":  # each all-reduce is at most one agent leaf (a gradient, a statistic)
        largest_leaf = max(x.size for x in jax.tree.leaves(carry.agent))
        assert largest_leaf < carry.buffer.data.obs["privileged_state"].size  # so the check can fail
        sizes = _all_reduce_sizes(hlo)
        assert sizes and max(sizes) <= largest_leaf, (max(sizes), largest_leaf)


def test_a_two_device_checkpoint_resumes_on_one_device_and_back(tmp_path, stop_after):
    """A 2-device run stopped after its first chunk restores bit-exactly onto 1 device (the
    [time, env] replay layout does not depend on the device count) and continues there; the
    checkpoint the 1-device run writes restores onto 2 devices (arrays split again, values equal)."""
    out = tmp_path / "run"
    with pytest.raises(stop_after.Stop):
        run.train("flashsac", "CartpoleBalance", TINY_FLASH, steps=FLASH_STEPS, num_evals=2,
                  progress=False, out_dir=out, env_kwargs={"episode_length": 50}, checkpoint_every_s=0,
                  devices=2, progress_fn=stop_after(2))
    assert json.loads((out / "config.json").read_text())["devices"] == 2
    mgr = CheckpointManager(out)
    step = mgr.latest_step()
    record = run.read_record(out)
    restored = {}
    for d in (1, 2):
        loop = run.rebuild(record, with_eval=False, devices=d)[3]
        restored[d], _, _ = mgr.restore(loop.init_carry())
    for a, b in zip(jax.tree.leaves(restored[1]), jax.tree.leaves(restored[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert restored[2].buffer.data.reward.sharding.spec == P(None, parallel.AXIS)
    assert isinstance(restored[1].buffer.data.reward.sharding, jax.sharding.SingleDeviceSharding)

    carry, rows = run.resume(out, devices=1, progress=False, checkpoint_every_s=0)
    assert rows[-1]["env_steps"] == FLASH_STEPS and np.isfinite(rows[-1]["eval_return"])
    mgr = CheckpointManager(out)
    assert mgr.latest_step() > step
    # (restore only: the 2-device programs ran above)
    loop = run.rebuild(record, with_eval=False, devices=2)[3]
    back, _, _ = mgr.restore(loop.init_carry())
    assert back.buffer.data.reward.sharding.spec == P(None, parallel.AXIS)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_two_device_ppo_checkpoint_resumes_on_one_device(tmp_path, stop_after, capsys):
    """PPO's carry (agent, normaliser, env state split on its env axis) restores from a 2-device
    checkpoint onto 1 device with equal values and finishes there; its minibatches are then drawn
    within one shard instead of two (`ppo.minibatches`), which changes no layout.  The envs restart
    from a pool of start states (``reset_pool``; 4-step episodes, so the checkpoint after 8 steps
    per env holds envs just restarted, on 2 devices, from their first states): the run records
    it, and the pool is split, saved and restored with the envs."""
    cfg = ppo.PPOConfig.cpu(num_envs=4, unroll_length=8, num_minibatches=2, num_epochs=1, hidden=(8,))
    out = tmp_path / "ppo"
    with pytest.raises(stop_after.Stop):
        run.train("ppo", "CartpoleBalance", cfg, steps=96, num_evals=3, progress=False, out_dir=out,
                  env_kwargs={"episode_length": 4, "reset_pool": 1}, checkpoint_every_s=0, devices=2,
                  progress_fn=stop_after(1))
    mgr = CheckpointManager(out)
    step, record = mgr.latest_step(), run.read_record(out)
    assert record["env_kwargs"]["reset_pool"] == 1
    restored = {}
    for d in (1, 2):
        loop = run.rebuild(record, with_eval=False, devices=d)[3]
        restored[d], _, _ = mgr.restore(loop.init_carry())
    assert restored[2].env_state.obs["state"].sharding.spec == P(parallel.AXIS)
    assert restored[2].env_state.start_pool.data.qpos.shape == (4, 1, 2)
    assert restored[2].env_state.start_pool.data.qpos.sharding.spec[0] == parallel.AXIS
    env_state = restored[1].env_state
    assert (np.asarray(env_state.episode_step) == 0).all() and int(env_state.stats.completed) == 8
    q, pool_q = np.asarray(env_state.inner.data.qpos), np.asarray(env_state.start_pool.data.qpos)
    np.testing.assert_array_equal(q, pool_q[:, 0])  # each env back at its own first state
    for a, b in zip(jax.tree.leaves(restored[1]), jax.tree.leaves(restored[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    capsys.readouterr()
    carry, rows = run.resume(out, devices=1, progress=False, checkpoint_every_s=0)
    assert rows[-1]["env_steps"] == 96 and np.isfinite(rows[-1]["eval_return"])
    assert "trained on 2 device(s) and resumes on 1" in capsys.readouterr().err  # not bit for bit: said
    assert CheckpointManager(out).latest_step() > step and int(carry.agent.updates) > int(restored[1].agent.updates)


def test_impossible_device_and_seed_requests_are_refused_before_compiling(monkeypatch):
    env4 = envs.make("CartpoleBalance", num_envs=4, episode_length=10)
    env3 = envs.make("CartpoleBalance", num_envs=3, episode_length=10)
    make = registry.get("flashsac").make_loop
    with pytest.raises(ValueError, match=r"devices=3 but only 2 cpu device\(s\) are visible"):
        make(TINY_FLASH, env4, None, 64, 0, 1, devices=3)
    with pytest.raises(ValueError, match="devices=2 must divide num_envs=3"):
        make(TINY_FLASH.replace(num_envs=3), env3, None, 64, 0, 1, devices=2)
    with pytest.raises(ValueError, match="devices=2 must divide batch_size=15"):
        make(TINY_FLASH.replace(batch_size=15), env4, None, 64, 0, 1, devices=2)
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        make(TINY_FLASH, env4, None, 64, 0, 1, seeds=0)
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        run.train("flashsac", "CartpoleBalance", TINY_FLASH, steps=64, seeds=0, progress=False)
    # automatic: the most devices that divide everything (3 envs: one device), at most
    # $JAXRL_DEVICES; on CPU one device unless that asks for more
    monkeypatch.setenv("JAXRL_DEVICES", "2")
    assert make(TINY_FLASH.replace(num_envs=3), env3, None, 64, 0, 1).devices == 1
    assert make(TINY_FLASH, env4, None, 64, 0, 1).devices == 2
    monkeypatch.delenv("JAXRL_DEVICES")
    assert make(TINY_FLASH, env4, None, 64, 0, 1).devices == 1
    monkeypatch.setenv("JAXRL_DEVICES", "two")
    with pytest.raises(ValueError, match="JAXRL_DEVICES must be a positive integer, got 'two'"):
        make(TINY_FLASH, env4, None, 64, 0, 1)
    cfg = ppo.PPOConfig.cpu(num_envs=4, unroll_length=3, num_minibatches=4, num_epochs=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"devices=2 must divide minibatch \(num_envs\*unroll_length/num_minibatches\)=3"):
        registry.get("ppo").make_loop(cfg, env4, None, 64, 0, 1, devices=2)
    # several processes: a mesh smaller than every device of every host would leave hosts out
    monkeypatch.delenv("JAXRL_DEVICES")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="devices=1 in a run over 2 processes.*omit --devices or pass 2"):
        make(TINY_FLASH, env4, None, 64, 0, 1, devices=1)
    assert make(TINY_FLASH, env4, None, 64, 0, 1).devices == make(TINY_FLASH, env4, None, 64, 0, 1, devices=2).devices == 2


def test_a_refused_overwrite_leaves_the_old_run_in_place(tmp_path):
    """``overwrite=True`` deletes the old run only once every request has been checked: a run
    refused for its device count leaves the folder as it was, and one whose inputs (``init_from``,
    a reset dataset) lie in the folder it would delete is refused."""
    old = tmp_path / "run"
    old.mkdir()
    (old / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="devices=3 but only 2"):
        run.train("flashsac", "CartpoleBalance", TINY_FLASH, steps=64, progress=False, out_dir=old,
                  overwrite=True, devices=3, env_kwargs={"episode_length": 50})
    assert (old / "config.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="already holds a run"):  # and without overwrite: refused
        run.train("flashsac", "CartpoleBalance", TINY_FLASH, steps=64, progress=False, out_dir=old)
    # the run to overwrite cannot also be an input: it would be read, then deleted
    with pytest.raises(ValueError, match="would delete .*holds this run's init_from"):
        run.train("flashsac", "CartpoleBalance", TINY_FLASH, steps=64, progress=False, out_dir=old,
                  overwrite=True, init_from=old)
    with pytest.raises(ValueError, match="would delete .*holds this run's resets"):
        run.train("ppo", "PushToSlot", ppo.PPOConfig.cpu(num_envs=8), steps=64, progress=False, out_dir=old,
                  overwrite=True, resets={"path": str(old / "resets.npz"), "probs": [1.0]})
    assert (old / "config.json").read_text() == "{}"


def test_memory_estimate_counts_eval_envs_that_do_not_split_whole_on_one_device(monkeypatch):
    """Eval envs divide over the devices, or all live on one: the replay preflight's per-device
    peak counts them as a share, or whole (the sum over devices is then twice their bytes)."""
    from jaxrl.algos import sac
    from jaxrl.data import replay
    from jaxrl.train import registry

    told = []
    check = replay.check_memory
    monkeypatch.setattr(replay, "check_memory", lambda *a, **k: told.append(k) or check(*a, **k))
    env = envs.make("CartpoleBalance", num_envs=16)
    loops = {n: registry.get("sac").make_loop(sac.SACConfig.cpu(), env, env.with_num_envs(n, 1), 10**4, 0, 2,
                                              devices=2) for n in (16, 15)}
    assert loops[16].eval_split and not loops[15].eval_split
    for loop in loops.values():
        loop.preflight()
    (split, whole), state = told, replay.nbytes(jax.eval_shape(loops[16].init_carry).env_state, 1)
    assert split["devices"] == whole["devices"] == 2
    assert whole["other_bytes"] - split["other_bytes"] == 2 * state * 15 // 16 - state
