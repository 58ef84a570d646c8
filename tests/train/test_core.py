"""The training core: one host loop for every algorithm, the registry and its presets, evaluation
that never perturbs training, starting from another run, donated carries, physics-only 'highest'
matmul precision, memory refusal before compiling, and an acyclic import graph."""

import ast
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from jaxrl.data import replay
from jaxrl.io.checkpoint import CheckpointMismatchError
from jaxrl.train import memory, registry, run
from jaxrl.train.evaluate import eval_keys, evaluation
from jaxrl.train.loop import eval_key
from jaxrl.train.offpolicy import OffPolicyLoop, OffPolicySettings

# Module fixtures train runs: keep the whole file on one xdist worker (built once).
pytestmark = pytest.mark.xdist_group("core")

ENV = {"episode_length": 50}
TINY = {
    "flashsac": registry.get("flashsac").config.cpu().replace(
        num_envs=4, batch_size=16, buffer_size=512, min_buffer=16, updates_per_step=1,
        actor_width=8, critic_width=8, num_blocks=1),
    "ppo": registry.get("ppo").config.cpu(num_envs=4, unroll_length=8, num_minibatches=2,
                                          num_epochs=1, hidden=(8,)),
}
# Budgets of 8 training iterations (flashsac: after 4 warm-up ones): even in 2 chunks, not in 3.
STEPS = {"flashsac": 4 * (4 + 8), "ppo": 32 * 8}


def _train(algo, num_evals, out_dir=None, **kw):
    return run.train(algo, "CartpoleBalance", kw.pop("config", TINY[algo]), steps=STEPS[algo],
                     num_evals=num_evals, progress=False, env_kwargs=ENV, out_dir=out_dir, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    out = {}
    for algo in TINY:
        for n in (2, 3):
            out[algo, n] = (root / f"{algo}{n}",) + _train(algo, n, out_dir=root / f"{algo}{n}")
    out["ppo", 2, "again"] = _train("ppo", 2)  # built as an earlier run: `run.shared_loop` (last four kept)
    return out


def test_a_run_built_as_an_earlier_one_reuses_its_loop_and_compiles_nothing(runs):
    """`run.shared_loop`: training again with the same arguments in one process (a notebook cell
    run twice, a resume, eval after training) reuses the earlier run's loop with its compiled
    programs, and gives the same result; another budget builds a loop of its own."""
    _, want, _ = runs["ppo", 2]
    carry, rows = runs["ppo", 2, "again"]
    assert rows[-1]["compile_s"] == 0.0  # nothing compiled: the programs were there
    for a, b in zip(jax.tree.leaves(carry.agent), jax.tree.leaves(want.agent)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    spec, cfg = registry.get("ppo"), TINY["ppo"]
    env, eval_env, _ = run.make_envs("CartpoleBalance", cfg.num_envs, 0, ENV)
    same = run.shared_loop(spec, cfg, env, eval_env, STEPS["ppo"], 0, 2, None, 1)
    assert run.shared_loop(spec, cfg, env, eval_env, STEPS["ppo"], 0, 2, None, 1) is same
    assert run.shared_loop(spec, cfg, env, eval_env, 2 * STEPS["ppo"], 0, 2, None, 1) is not same
    # a VecEnv built by hand is not kept (it would hold its task, and a dataset, for nothing)
    own = envs.make("CartpoleBalance", cfg.num_envs, **ENV)
    assert run.shared_loop(spec, cfg, own, None, STEPS["ppo"], 0, 2, None, 1) is not \
        run.shared_loop(spec, cfg, own, None, STEPS["ppo"], 0, 2, None, 1)


@pytest.mark.parametrize("algo", list(TINY))
def test_number_of_evaluations_does_not_change_training(runs, algo):
    """Evaluation keys come from their own stream, and the budget is split into chunks exactly
    (`loop.chunk_ends`: 8 iterations in 3 chunks are 2, 3, 3; rounding up to equal chunks ran 9,
    and FlashSAC's schedule length followed): 2 or 3 evaluations, the same parameters."""
    _, carry2, rows2 = runs[algo, 2]
    _, carry3, rows3 = runs[algo, 3]
    assert len(rows2) == 2 + (algo == "flashsac") and len(rows3) == 3 + (algo == "flashsac")
    assert rows2[-1]["env_steps"] == rows3[-1]["env_steps"] == STEPS[algo]
    per_iter = STEPS[algo] // (12 if algo == "flashsac" else 8)
    trained = [r["env_steps"] // per_iter - (4 if algo == "flashsac" else 0) for r in rows3]
    assert trained[-3:] == [2, 5, 8]
    if algo == "flashsac":  # the warm-up's row: its env counters, no losses (no update ran)
        assert "solver_limit_hits" in rows3[0] and "train_episodes" in rows3[0]
        assert "critic_loss" not in rows3[0] and "critic_loss" in rows3[1]
    for a, b in zip(jax.tree.leaves(carry2.agent), jax.tree.leaves(carry3.agent)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("algo", ["ppo", "flashsac"])
def test_k_vmapped_seeds_equal_k_separate_runs(runs, tmp_path, algo):
    """--seeds 2: seeds 0 and 1 as ONE vmapped program give each seed's separate run (seed 0 is
    the fixture's run, seed 1 another) to float tolerance, for the on-policy loop and the
    off-policy one (warm-up, replay, per-env held noise).  For PPO also: rows hold the mean, a 95%
    interval and each seed, in metrics.jsonl, TensorBoard and the learning curve; export picks a
    seed (the seed axis is the shared HostLoop's, the same for every algorithm)."""
    from jaxrl.io import lifecycle
    from jaxrl.io.metrics import read_jsonl

    _, carry0, rows0 = runs[algo, 2]
    carry1, rows1 = _train(algo, 2, seed=1)
    out = tmp_path / "seeds"
    carry, rows = _train(algo, 2, out_dir=out if algo == "ppo" else None, seeds=2)
    for i, single in enumerate((carry0, carry1)):
        mine = jax.tree.map(lambda x, i=i: x[i], carry.agent)
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(mine)[0], jax.tree.leaves(single.agent)):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4,
                                       atol=1e-5, err_msg=jax.tree_util.keystr(path))
    if algo != "ppo":
        buffers = [np.asarray(c.buffer.data.reward) for c in (carry0, carry1)]
        np.testing.assert_allclose(np.asarray(carry.buffer.data.reward), np.stack(buffers), rtol=1e-5, atol=1e-6)
        assert not np.array_equal(*buffers)  # two seeds, two different streams of experience
        return
    last = rows[-1]
    per_seed = [rows0[-1]["eval_return"], rows1[-1]["eval_return"]]
    np.testing.assert_allclose([last["seed0/eval_return"], last["seed1/eval_return"]], per_seed, rtol=1e-4)
    assert last["eval_return"] == pytest.approx(np.mean(per_seed), rel=1e-4)
    assert last["eval_return_ci_low"] <= last["eval_return"] <= last["eval_return_ci_high"]
    assert read_jsonl(out / "metrics.jsonl")[-1]["seed1/eval_return"] == last["seed1/eval_return"]
    assert list((out / "tensorboard").iterdir()) and (out / "learning_curve.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="trained 2 seeds at once: choose one"):
        lifecycle.export_run(out, "npz")
    with pytest.raises(ValueError, match=r"seed_index=2 \(CLI: --seed-index\): .* trained 2 seed\(s\), so 0\.\.1"):
        lifecycle.export_run(out, "npz", seed_index=2)
    _, _, _, agent1, _ = lifecycle.load_run(out, seed_index=1)
    for a, b in zip(jax.tree.leaves(agent1), jax.tree.leaves(jax.tree.map(lambda x: x[1], carry.agent))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert lifecycle.export_run(out, "npz", seed_index=1).exists()
    # the command line: `export --seed i`, or `--seed-index i` as `eval` and `sim2sim` spell it
    from jaxrl import cli

    for flag in ("--seed", "--seed-index"):
        cli.main(["export", str(out), "--out", str(tmp_path / f"{flag}.npz"), flag, "1"])
    policies = [np.load(tmp_path / f"{flag}.npz") for flag in ("--seed", "--seed-index")]
    assert sorted(policies[0].files) == sorted(policies[1].files)
    for name in policies[0].files:
        np.testing.assert_array_equal(policies[0][name], policies[1][name])
    seed0 = np.load(lifecycle.export_run(out, "npz", seed_index=0, out=tmp_path / "seed0.npz"))
    assert any(not np.array_equal(seed0[n], policies[0][n]) for n in seed0.files)  # another seed
    # sim2sim asks for a seed too, even with seed 0's export in the folder (it ran that one silently)
    from jaxrl.io import sim2sim

    assert lifecycle.export_run(out, "onnx", seed_index=0) == out / "policy.onnx"
    with pytest.raises(ValueError, match="trained 2 seeds at once: choose one"):
        sim2sim.sim2sim(out, episodes=1, max_steps=2)


def test_a_run_without_matplotlib_ends_normally_without_its_png(runs, tmp_path, monkeypatch, capsys):
    """An offline GPU box set up with --no-deps may lack matplotlib: the run still finishes and
    returns (summary written, checkpoints kept), with a notice instead of learning_curve.png."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` raises ImportError
    out = tmp_path / "run"
    _, rows = _train("ppo", 2, out_dir=out)
    assert rows[-1]["env_steps"] == STEPS["ppo"] and (out / "summary.json").exists()
    assert not (out / "learning_curve.png").exists()
    assert "no learning_curve.png: matplotlib is not installed" in capsys.readouterr().err


def test_rows_report_solver_limit_hits_and_both_loops_share_the_row_keys(runs):
    keys = None
    for algo in TINY:
        row = runs[algo, 2][2][-1]
        shared = {"env_steps", "chunk_s", "sps", "eval_return", "eval_length", "solver_limit_hits",
                  "train_episodes", "wall_s", "compile_s"}
        assert shared <= set(row), shared - set(row)
        assert row["solver_limit_hits"] >= 0
        keys = shared if keys is None else keys


# --------------------------------------------------------------------------- registry, presets
@pytest.mark.parametrize("algo,preset,task", [
    ("flashsac", "cpu", "CartpoleBalance"),
    ("flashsac", "paper", "T1JoystickFlatTerrain"),
    ("ppo", "cpu", "CartpoleBalance"),
    ("ppo", "paper", "PushToSlot"),
    ("sac", "lift", "T1JoystickFlatTerrain"),
    ("sac", "cpu", "CartpoleBalance"),
    ("finetune", "paper", "CartpoleSwingupInMuJoCoC"),
])
def test_every_preset_traces_its_training_chunk_on_abstract_shapes(algo, preset, task):
    """GPU-sized presets are checked on CPU: the chunk is lowered on `jax.eval_shape` shapes,
    nothing of the 10M-transition buffer or 16k envs is allocated.  (finetune's cpu preset is
    not traced here: tests/train/test_finetune.py runs its chunk, with small overrides, for real.)"""
    spec = registry.get(algo)
    assert set(spec.presets) >= {"cpu", "paper"}
    cfg = spec.preset(preset, task)
    assert cfg.replace() == cfg  # the uniform config API
    env = envs.make(task, num_envs=cfg.num_envs)
    steps = getattr(cfg, "min_buffer", 0) + 4 * cfg.num_envs * getattr(cfg, "unroll_length", 1)
    if algo == "finetune":  # a budget of real steps: the prefill and one epoch
        steps = cfg.prefill + cfg.real_steps_per_epoch
    loop = spec.make_loop(cfg, env, None, steps, 0, 1)
    carry = jax.eval_shape(loop.init_carry)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(carry))
    text = loop.lower_chunk(carry).as_text()
    assert "dot_general" in text and f"tensor<{cfg.num_envs}x" in text
    if algo == "finetune":  # LIFT's finetuning SAC is float32: no TF32 anywhere, physics or learner
        assert set(_dot_precisions(text)) == {"HIGHEST"}


@pytest.mark.parametrize("algo", list(TINY))
def test_paper_preset_runs_a_real_chunk_with_small_overrides(algo):
    spec = registry.get(algo)
    small = {k: v for k, v in TINY[algo].__dict__.items()
             if k in ("num_envs", "batch_size", "buffer_size", "min_buffer", "updates_per_step",
                      "actor_width", "critic_width", "num_blocks", "unroll_length",
                      "num_minibatches", "num_epochs", "hidden")}
    cfg = spec.preset("paper", "CartpoleBalance").replace(**small)
    _, rows = _train(algo, 2, config=cfg)
    assert np.isfinite(rows[-1]["eval_return"])


def test_unknown_preset_and_algorithm_are_refused():
    with pytest.raises(ValueError, match="presets: cpu, paper"):
        registry.get("ppo").preset("lift", "CartpoleBalance")
    with pytest.raises(ValueError, match="available: flashsac, ppo"):
        registry.get("dqn")


# --------------------------------------------------------------------------- init_from
def test_init_from_loads_only_the_chosen_parts_and_records_them(runs, tmp_path):
    src, src_carry, _ = runs["flashsac", 3]
    out = tmp_path / "child"
    # The child's first chunk already trains; compare what was loaded before any update.
    loop = registry.get("flashsac").make_loop(TINY["flashsac"], envs.make("CartpoleBalance", 4, **ENV),
                                              None, STEPS["flashsac"], 7, 2)
    fresh = loop.init_carry()
    loaded, info = run.load_parts(fresh, src, ["actor"])
    for a, b in zip(jax.tree.leaves(loaded.agent.actor_params), jax.tree.leaves(src_carry.agent.actor_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(loaded.agent.critic_params), jax.tree.leaves(fresh.agent.critic_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # not asked for: fresh
    assert info["step"] == STEPS["flashsac"] and info["parts"] == ["actor"]

    _train("flashsac", 2, out_dir=out, init_from=src, init_parts=["actor", "critic"], seed=7)
    record = run.read_record(out)
    assert record["init_from"]["run"] == str(Path(src).absolute())
    assert record["init_from"]["step"] == STEPS["flashsac"]
    assert record["init_from"]["parts"] == ["actor", "critic"]


def test_a_run_restarted_before_its_first_checkpoint_loads_the_source_step_it_started_from(
        runs, tmp_path, monkeypatch, stop_after):
    """A requeued `init_from` run with no checkpoint of its own starts again from the source's
    step recorded in its config.json, not the source's newest (the source may have trained on
    meanwhile: here the record names an older kept step, as if it had); a recorded step the
    source no longer has is refused, naming it."""
    import json
    import shutil

    from jaxrl.io.checkpoint import CheckpointError, CheckpointManager

    src = tmp_path / "source"
    _train("flashsac", 3, out_dir=src, checkpoint_every_s=0.0, keep_last=5)
    kept = CheckpointManager(src).steps()
    assert len(kept) >= 3
    child = tmp_path / "child"
    with pytest.raises(stop_after.Stop):
        _train("flashsac", 2, out_dir=child, init_from=src, init_parts=["actor"], progress_fn=stop_after(1))
    shutil.rmtree(child / "checkpoints")  # killed before its first checkpoint
    record = json.loads((child / "config.json").read_text())
    assert record["init_from"]["step"] == kept[-1]
    record["init_from"]["step"] = kept[1]
    (child / "config.json").write_text(json.dumps(record))
    loaded, read = [], run.load_parts
    monkeypatch.setattr(run, "load_parts", lambda *a, **k: loaded.append(read(*a, **k)) or loaded[-1])
    with pytest.raises(stop_after.Stop):
        run.resume(child, progress=False, progress_fn=stop_after(1))
    assert [info["step"] for _, info in loaded] == [kept[1]]
    # the step it started from is gone (here: never existed): refused, not the newest taken
    shutil.rmtree(child / "checkpoints")
    record["init_from"]["step"] = kept[-1] - 1
    (child / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=f"started from step {kept[-1] - 1} of .* cannot be read now"):
        run.resume(child, progress=False)


def test_a_resume_keeps_the_runs_own_checkpoint_settings(runs, tmp_path, stop_after):
    """A run started with keep_last=5 and a checkpoint at every row is resumed (as `jaxrl resume`
    does, without those options) and still keeps 5: before stop 49 the resume fell back to the
    defaults (3) and deleted the others at its first save."""
    from jaxrl.io.checkpoint import CheckpointManager

    out = tmp_path / "kept"
    with pytest.raises(stop_after.Stop):
        _train("flashsac", 3, out_dir=out, keep_last=5, checkpoint_every_s=0.0, progress_fn=stop_after(2))
    assert run.read_record(out)["session"] == {"checkpoint_every_s": 0.0, "keep_last": 5,
                                               "save_buffer": True, "tensorboard": True}
    run.resume(out, progress=False)
    assert len(CheckpointManager(out).steps()) == 4  # one per row: warm-up and 3 evaluations (default keeps 3)


def test_a_run_refused_by_another_writers_lock_writes_nothing(runs, tmp_path, monkeypatch):
    """Two `train` calls into one fresh folder, both past the folder check: the one that takes
    the writer's lock second (here another writer takes it while this one compiles) is refused
    before it writes config.json, metrics or TensorBoard files, which would have replaced the
    other run's record; a failed resume lets go of the lock."""
    from jaxrl.io.checkpoint import CheckpointError, CheckpointManager

    out = tmp_path / "busy"
    holders, preflight = [], run._preflight
    monkeypatch.setattr(run, "_preflight", lambda loop: (holders.append(CheckpointManager(out)),
                                                         holders[-1].claim(), preflight(loop)))
    with pytest.raises(CheckpointError, match="is writing checkpoints into"):
        _train("flashsac", 2, out_dir=out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    holders[0].release()
    # a resume that fails (its record no longer matches its checkpoints) releases the lock
    import json
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(runs["flashsac", 2][0], moved)
    record = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**record, "seed": 99}))
    with pytest.raises(CheckpointMismatchError, match="seed"):
        run.resume(moved, progress=False)
    CheckpointManager(moved).claim()


def test_the_rows_reach_the_disk_before_each_checkpoint(runs, tmp_path, monkeypatch):
    """metrics.jsonl is fsynced before every checkpoint is written: a power cut must not leave a
    committed checkpoint whose rows were still in the OS's cache (a resume keeps the rows up to
    its checkpoint, so lost rows would stay lost)."""
    import os

    from jaxrl.io.checkpoint import CheckpointManager

    events, save, fsync = [], CheckpointManager.save, os.fsync
    monkeypatch.setattr(CheckpointManager, "save", lambda self, step, *a, **k: (
        events.append(("checkpoint", step)) if save(self, step, *a, **k) else False))

    def synced(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "metrics.jsonl":
            events.append(("rows", len((tmp_path / "rows" / "metrics.jsonl").read_text().splitlines())))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    _train("flashsac", 2, out_dir=tmp_path / "rows", checkpoint_every_s=0.0)
    assert events[0] == ("rows", 1)
    checkpoints = [i for i, e in enumerate(events) if e[0] == "checkpoint"]
    assert len(checkpoints) == 3 and all(events[i - 1] == ("rows", n) for n, i in enumerate(checkpoints, 1))


def test_a_restored_carry_lowers_to_the_program_of_a_fresh_one(runs):
    """Resume and `init_from` find the fresh run's programs in the compilation cache: the chunk's
    arguments, as the loop passes them (`HostLoop.place`), lower to the same module for a fresh
    carry and for one restored from a checkpoint (orbax's arrays are committed to a device)."""
    src = runs["flashsac", 3][0]
    loop = registry.get("flashsac").make_loop(TINY["flashsac"], envs.make("CartpoleBalance", 4, **ENV),
                                              None, STEPS["flashsac"], 0, 2)
    fresh = loop.init_carry()
    restored, _ = run.load_parts(loop.init_carry(), src, None)
    assert any(x.committed for x in jax.tree.leaves(restored.agent))  # what made them differ
    n, warm = jnp.int32(loop.chunk_length(fresh)), jnp.bool_(False)
    texts = [loop._chunk.lower(*loop.place((c, n, warm), donate=False)).as_text(debug_info=False)
             for c in (fresh, restored)]
    assert texts[0] == texts[1]


def test_init_from_a_run_with_another_layout_names_the_field_and_both_shapes(runs):
    src = runs["flashsac", 2][0]
    wide = TINY["flashsac"].replace(actor_width=16)
    # `train` checks the layout on the carry's shapes before it allocates or compiles anything
    with pytest.raises(CheckpointMismatchError, match=r"agent\.actor_params.*checkpoint has float32 \(.*8.*\), "
                                                       r"this run expects float32 \(.*16"):
        _train("flashsac", 2, config=wide, init_from=src, init_parts=["actor"])
    loop = registry.get("flashsac").make_loop(wide, envs.make("CartpoleBalance", 4, **ENV), None, 64, 0, 1)
    with pytest.raises(ValueError, match="not a part of this agent; parts: .*actor_params"):
        run.load_parts(jax.eval_shape(loop.init_carry), src, ["policy"], check_only=True)
    with pytest.raises(FileNotFoundError, match="not a jaxrl run folder"):
        _train("flashsac", 2, init_from=Path(src) / "nope")
    # a seed count that differs is named as such, not as a layout (every leaf has a seed axis)
    with pytest.raises(CheckpointMismatchError, match="this run trains 2 seeds at once and the checkpoint's run one"):
        _train("flashsac", 2, init_from=src, init_parts=["actor"], seeds=2)


# --------------------------------------------------------------------------- donation, precision
FIRST_CHUNK = {}  # tiny_loop's first chunk, the one that compiled: its row and wall seconds


@pytest.fixture(scope="module")
def tiny_loop():
    loop = registry.get("flashsac").make_loop(TINY["flashsac"], envs.make("CartpoleBalance", 4, **ENV),
                                              None, STEPS["flashsac"], 0, 2)
    carry = loop.init_carry()
    jax.block_until_ready(carry)
    compiled0, t0 = loop.compile_s, time.perf_counter()
    _, row = loop.run_chunk(carry)
    FIRST_CHUNK.update(row=row, wall_s=time.perf_counter() - t0, compile_s=loop.compile_s - compiled0)
    return loop


def test_a_chunks_throughput_leaves_its_compile_out(tiny_loop):
    """The first chunk compiles inside `run_chunk`; its row's ``chunk_s`` (and so ``sps`` and the
    progress bar's rate) is the training time alone, the compile going to ``compile_s``.  Before,
    the first row of every run and resume counted the compile as training."""
    row, wall, compiled = FIRST_CHUNK["row"], FIRST_CHUNK["wall_s"], FIRST_CHUNK["compile_s"]
    assert compiled > 0.05  # it did compile there
    assert 0 < row["chunk_s"] <= wall - compiled + 1e-3
    assert row["sps"] == pytest.approx(row["env_steps"] / row["chunk_s"])


def test_evaluation_resets_through_the_first_reset_program_and_scores_as_one_program(monkeypatch):
    """When the eval envs reset like the training envs (16 and 16), an evaluation's start states
    come from the training envs' first-reset program (its one compiled executable reused, equal
    to the eval envs' own reset) and the evaluation program holds no reset physics.  Its score
    equals `evaluation`'s, which resets inside one program (where the same check does find the
    reset).  Eval envs of another size keep the reset inside the evaluation program.  Either
    way the evaluation compiles with `short_program_options` (`HostLoop.make_evaluate`), and a
    run compiles it, and checks its memory, before its first chunk: a refusal costs no training."""
    from envs import _runtime

    compiled_with = []  # the options of every ahead-of-time compile (`HostLoop._call`)
    real_compile = jax.stages.Lowered.compile

    def compile_spy(self, compiler_options=None, **kw):
        compiled_with.append(compiler_options)
        return real_compile(self, compiler_options, **kw)

    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_spy)
    cfg = TINY["flashsac"].replace(num_envs=run.NUM_EVAL_ENVS)
    train_env, eval_env, _ = run.make_envs("CartpoleBalance", cfg.num_envs, 0, ENV)
    loop = registry.get("flashsac").make_loop(cfg, train_env, eval_env, STEPS["flashsac"], 0, 1)
    assert loop.eval_resets_apart and loop.eval_env.resets_like(loop.env)
    carry = loop.init_carry()
    key = eval_key(0, 0)
    first_reset = loop.reset_program(loop.env)
    traced = []  # functions traced during the evaluation: its own, but no reset
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: traced.append(kw.get("fun_name")) if event.endswith("jaxpr_trace_duration") else None)
    compiled_with.clear()
    ev = loop._evaluation(carry.agent, key)
    assert "evaluate" in traced and "_reset" not in traced, traced
    assert compiled_with == [_runtime.short_program_options()], compiled_with  # the evaluation alone
    k_reset, k_act = eval_keys(key)
    # traced, as in a program (called eagerly: quick options), with the run's (a short run's: quick)
    own = jax.jit(loop.eval_env.reset, compiler_options=loop.compiler_options)(k_reset)
    for a, b in zip(jax.tree.leaves(first_reset(k_reset)), jax.tree.leaves(own)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    one_program = jax.jit(evaluation(loop.eval_env, loop.agent.act))
    resets = re.compile(r"name=_reset\b")
    assert not resets.search(str(jax.make_jaxpr(loop.evaluate)(carry.agent, first_reset(k_reset), k_act)))
    assert resets.search(str(jax.make_jaxpr(one_program)(carry.agent, key)))
    want = one_program(carry.agent, key)
    np.testing.assert_allclose(float(ev["eval_return"]), float(want["eval_return"]), rtol=1e-5)
    assert float(ev["eval_length"]) == float(want["eval_length"]) == ENV["episode_length"]
    other = registry.get("flashsac").make_loop(TINY["flashsac"], run.make_envs("CartpoleBalance", 4, 0, ENV)[0],
                                               eval_env, STEPS["flashsac"], 0, 1)
    assert not other.eval_resets_apart and not other.eval_env.resets_like(other.env)
    carry = other.init_carry()
    assert resets.search(str(jax.make_jaxpr(other.evaluate)(carry.agent, key)))
    compiled_with.clear()

    def refuse(name, compiled):  # as `memory.check` does when the program does not fit
        if name == "evaluate":
            raise memory.ProgramMemoryError("the evaluate program does not fit")

    monkeypatch.setattr(other, "check_memory", refuse)
    with pytest.raises(memory.ProgramMemoryError, match="evaluate program does not fit"):
        other.run_chunk(carry)  # the evaluation compiles and is checked before the first chunk
    assert compiled_with == [_runtime.short_program_options()], compiled_with  # the evaluation alone
    assert "chunk" not in other._compiled and other.env_steps(carry) == 0  # no training was lost


def test_short_runs_compile_the_quick_way_whatever_their_evaluations_and_seeds():
    """A run short enough that compiling is nearly all its cost (one seed: <= FEW_STEPS env steps
    and <= FEW_ROWS rows through gradient steps) compiles its chunk, init and first reset with
    `few_steps_options`; a longer one (more env steps, or more rows) with XLA's defaults, as
    before.  The number of evaluations and of seeds do not enter: they never change training.
    (That the chunk really compiles with them: the donation test below compares it bit for bit
    with a program compiled with ``loop.compiler_options``; with the defaults 19 of 32 values
    differed in their last bits.)  Traced only."""
    from envs import _runtime

    quick = _runtime.few_steps_options(0)
    assert quick and quick["xla_backend_optimization_level"] == 0
    env = envs.make("CartpoleBalance", 4, **ENV)
    cases = [  # (algo, config, steps, quick?)
        ("flashsac", TINY["flashsac"], STEPS["flashsac"], True),
        ("flashsac", TINY["flashsac"], _runtime.FEW_STEPS + 4, False),  # env steps
        # 496 env steps, but 120 iterations x 8 updates x 32 rows = 30,720 > FEW_ROWS
        ("flashsac", TINY["flashsac"].replace(updates_per_step=8, batch_size=32), 496, False),
        ("ppo", TINY["ppo"], STEPS["ppo"], True),
        ("ppo", TINY["ppo"].replace(num_epochs=16, num_minibatches=1), 32 * 40, False),  # 20,480 rows
    ]
    for algo, cfg, steps, short in cases:
        for num_evals, seeds in ((1, 1), (7, 2)):
            loop = registry.get(algo).make_loop(cfg, env, None, steps, 0, num_evals, seeds=seeds, devices=1)
            assert loop.compiler_options == (quick if short else None), (algo, steps, num_evals, seeds)
    reset = registry.get("ppo").make_loop(TINY["ppo"], env, None, STEPS["ppo"], 0, 2).reset_program(env)
    assert reset is not registry.get("ppo").make_loop(TINY["ppo"], env, None, 10**6, 0, 2).reset_program(env)


def test_chunk_donates_its_carry_and_equals_the_copying_path(tiny_loop):
    loop = tiny_loop
    carry, _ = loop.run_chunk(loop.init_carry())  # warm-up; flat task: state IS privileged_state
    copying = jax.jit(loop._chunk_fn, compiler_options=loop.compiler_options)  # no donation
    reference, _ = copying(jax.tree.map(jnp.copy, carry), loop.chunk_length(carry), False)
    buffer_in = jax.tree.leaves(carry.buffer)
    out, _ = loop.run_chunk(carry)
    assert all(x.is_deleted() for x in buffer_in)  # updated in place, not copied
    for a, b in zip(jax.tree.leaves(out.buffer), jax.tree.leaves(reference.buffer)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_compiled_chunk_serves_every_chunk_length(tiny_loop):
    """The iteration count is an argument of the compiled chunk, not a constant in it: a run with
    other `num_evals`, budget or a resume reuses the program, and one chunk of 2 iterations
    equals two chunks of 1 bit for bit."""
    loop = tiny_loop
    carry, _ = loop.run_chunk(loop.init_carry())  # warm-up
    chunk = loop._compiled["chunk"] if "chunk" in loop._compiled else loop.lower_chunk(carry).compile()
    no = jnp.bool_(False)  # not the warm-up
    twice, _ = chunk(chunk(jax.tree.map(jnp.copy, carry), jnp.int32(1), no)[0], jnp.int32(1), no)
    once, metrics = chunk(carry, jnp.int32(2), no)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(once.iteration) == loop.warmup_iters + 2 and np.isfinite(float(metrics["critic_loss"]))


def test_warm_up_branch_is_skipped_not_selected_with_several_seeds():
    """The warm-up flag is an argument shared by all seeds, not each seed's counter: under the
    seed vmap its `lax.cond`s stay conditionals (the updates are skipped during the warm-up)
    instead of turning into selects that compute both branches.  Traced only."""
    cfg = registry.get("sac").config.cpu().replace(  # SAC: no per-seed branches of its own
        num_envs=4, batch_size=16, buffer_size=512, min_buffer=16, updates_per_step=1,
        actor_hidden=(8,), critic_hidden=(8,))

    env = envs.make("CartpoleBalance", 4, **ENV)  # one task: both chunks vmap its one traced step

    def conds(seeds: int, devices: int = 1) -> int:
        loop = registry.get("sac").make_loop(cfg, env, None, STEPS["flashsac"], 0, 2, seeds=seeds,
                                             devices=devices)
        carry = jax.eval_shape(loop._lift(loop._init), loop._keys())
        lifted = loop._lift(loop._chunk_fn, shared=True)
        return str(jax.make_jaxpr(lifted)(carry, jnp.int32(1), jnp.bool_(True))).count("cond[")

    # Two warm-up branches (action, updates) and the env's auto-reset (decided across seeds,
    # `VecEnv.across`): every branch of the one-seed program is still a branch with two seeds
    # (with a per-seed counter the warm-up ones became selects; without `across` the reset did,
    # and CheetahRun's 200-step reset ran every step).
    # Each count is a full trace of the chunk (~6 s): on 2 devices when there are 2 (the envs
    # stepped inside `shard_map`, the case with the most machinery), else on one.
    devices = 2 if len(jax.devices()) >= 2 else 1
    one, two = conds(1, devices=devices), conds(2, devices=devices)
    assert two == one >= 3, (one, two)


def _dot_precisions(text: str) -> list[str]:
    return re.findall(r"stablehlo\.dot_general.*?precision = \[(\w+), \w+\]", text)


def test_highest_precision_is_scoped_to_the_physics_step(tiny_loop):
    loop = tiny_loop
    env = loop.env
    state = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    physics = _dot_precisions(jax.jit(env.step).lower(state, jnp.zeros((4, env.action_size))).as_text())
    assert physics and set(physics) == {"HIGHEST"}
    carry = jax.eval_shape(loop.init_carry)
    chunk = _dot_precisions(loop.lower_chunk(carry).as_text())
    assert "HIGHEST" in chunk and "DEFAULT" in chunk  # learner dots keep JAX's default
    batch = jax.eval_shape(lambda d: loop._unpack(jax.tree.map(lambda x: x[0, :1].repeat(16, 0), d)),
                           carry.buffer.data)
    learner = _dot_precisions(jax.jit(loop.agent.update).lower(carry.agent, batch,
                                                                jax.random.PRNGKey(0)).as_text())
    assert learner and "HIGHEST" not in learner

    s = loop.s
    asked = OffPolicyLoop(env, loop.agent, OffPolicySettings(
        s.total_steps, s.batch_size, s.updates_per_step, s.buffer_size, s.min_buffer, s.num_evals,
        learner_precision="highest"), None, 0)
    assert set(_dot_precisions(asked.lower_chunk(carry).as_text())) == {"HIGHEST"}


def test_a_budget_too_small_for_the_warm_up_says_so(capsys):
    """LIFT's code refuses a budget below min_buffer + num_envs; the loop runs it, shortening the
    warm-up, and now says so (the first updates then sample a buffer smaller than min_buffer)."""
    env = envs.make("CartpoleBalance", 4, **ENV)
    registry.get("flashsac").make_loop(TINY["flashsac"], env, None, STEPS["flashsac"], 0, 2)
    assert "warm-up" not in capsys.readouterr().err
    registry.get("flashsac").make_loop(TINY["flashsac"].replace(min_buffer=400), env, None, 64, 0, 2)
    err = capsys.readouterr().err
    assert "leaves room for a warm-up of only 60 of min_buffer=400 transitions" in err, err


def test_buffer_that_cannot_fit_is_refused_before_compiling():
    cfg = TINY["flashsac"].replace(buffer_size=10**11)
    with pytest.raises(replay.ReplayCapacityError, match="lower buffer_size to at most"):
        run.train("flashsac", "CartpoleBalance", cfg, steps=64, progress=False, env_kwargs=ENV)
    assert replay.peak_bytes(100, "cpu") == 200 and replay.peak_bytes(100, "gpu") == 100


# --------------------------------------------------------------------------- console, warp, imports
def test_missing_warp_falls_back_to_jax_with_a_notice(monkeypatch, capsys):
    from envs import registry as env_registry

    monkeypatch.setattr(env_registry, "warp_available", lambda: False)
    assert env_registry._choose_impl("T1JoystickFlatTerrain", None, "warp") == "jax"  # warp default on CPU
    assert "warp-lang is not installed" in capsys.readouterr().err
    with pytest.raises(ImportError, match="pip install warp-lang"):
        env_registry._choose_impl("CheetahRun", "warp", "warp")


def test_warp_overflow_prints_are_off_unless_verbose():
    env = envs.make("CheetahRun", num_envs=1, impl="warp")
    assert env.env.unwrapped.mjx_model.opt._impl.warn_overflow == 0
    envs.set_verbose(True)
    try:
        loud = envs.make("CheetahRun", num_envs=1, impl="warp")
        assert loud.env.unwrapped.mjx_model.opt._impl.warn_overflow != 0
    finally:
        envs.set_verbose(False)


def _imports(path: Path, package_root: Path) -> set[str]:
    """Every jaxrl/envs module a file imports, at top level or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("jaxrl", "envs")}


def test_train_and_io_modules_import_each_other_without_cycles():
    root = Path(__file__).resolve().parents[2]
    files = {".".join(p.relative_to(root).with_suffix("").parts): p
             for pkg in ("jaxrl/train", "jaxrl/io") for p in (root / pkg).glob("*.py")
             if p.name != "__init__.py"}
    graph = {m: {d for d in _imports(p, root) if d in files and d != m} for m, p in files.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_xdist_group_marks_take_effect(request):
    """Files whose module fixtures train runs are kept on one xdist worker by their
    ``xdist_group`` mark; if pytest or pytest-xdist stop honouring it, every worker trains those
    runs again and the suite's time grows by minutes (pytest 9 + xdist 3.8 did this silently)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run under `pytest -n N --dist loadgroup`")
    assert request.node.nodeid.endswith("@core"), request.node.nodeid


def test_a_budget_splits_into_chunks_exactly_whatever_the_number_of_evaluations():
    from jaxrl.train.loop import chunk_ends, iterations_to_next

    for total in (1, 2, 7, 8, 96, 1001):
        for chunks in (1, 2, 3, 7, 10, 50):
            ends = chunk_ends(total, chunks)
            sizes = np.diff((0, *ends))
            assert ends[-1] == total and len(ends) == min(chunks, total)
            assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1, (total, chunks, sizes)
            assert [iterations_to_next(ends, done) for done in (0, *ends[:-1])] == list(sizes)
    assert chunk_ends(96, 100) == tuple(range(1, 97))  # more evaluations than iterations: one each
    with pytest.raises(ValueError, match="num_evals must be >= 1, got 0"):
        chunk_ends(8, 0)
    for done in (8, 10, -1):  # a finished run has no next chunk (it would overrun or never end)
        with pytest.raises(ValueError, match=f"no chunk starts after {done} of 8 iterations"):
            iterations_to_next(chunk_ends(8, 3), done)


def test_overwrite_deletes_the_old_run_while_holding_the_writers_lock(runs, tmp_path, monkeypatch):
    """``overwrite=True`` takes the folder's writer lock, then deletes the old run (keeping the
    lock file it holds): a run still writing there is refused with its files intact, and no other
    writer can start between the check and the deletion (before stop 51: check, delete, then lock)."""
    import json
    import shutil

    from jaxrl.io import runfolder
    from jaxrl.io.checkpoint import CheckpointError, CheckpointManager, writer_absent

    out = tmp_path / "old"
    shutil.copytree(runs["flashsac", 3][0], out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    other = CheckpointManager(out)
    other.claim()  # a run still writing there
    with pytest.raises(CheckpointError, match="is writing checkpoints into"):
        _train("flashsac", 3, out_dir=out, overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before and (out / "config.json").exists()
    other.release()
    real, held = runfolder.claim, []

    def claim(path, overwrite, keep=()):
        if overwrite:  # the deletion runs with this run's lock already taken
            with pytest.raises(CheckpointError, match="is writing checkpoints into"):
                writer_absent(path)
            held.append(keep)
        return real(path, overwrite, keep)

    monkeypatch.setattr(runfolder, "claim", claim)
    (out / "metrics.jsonl").write_text('{"env_steps": -1}\n')  # the old run's rows, to be replaced
    _, rows = _train("flashsac", 3, out_dir=out, overwrite=True)
    assert held and held[0][0].name == ".writer.lock"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in logged] == [r["env_steps"] for r in rows] and logged[0]["env_steps"] > 0
