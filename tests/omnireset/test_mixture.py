"""The reset-mixture wrapper: probabilities, empty types, frequencies, exact restore (every
actuator target, gripper included, at the restored joint positions), success per reset type."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import envs.omnireset as omr

# The session's PushToSlot dataset (conftest.push_dataset) is built once per worker: these tests
# and the omnireset notebook (which builds the same one) share a worker.
pytestmark = pytest.mark.xdist_group("push_dataset")


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


def test_a_reset_pool_on_a_mixture_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="reset_pool does not apply to an OmniReset mixture"):
        omr.make_mixture_env("PushToSlot", tmp_path / "absent.npz", num_envs=2, reset_pool=1)


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
    # stored targets off by 0.1: the restore must replace them by the restored joint positions
    shifted = dataclasses.replace(push_dataset, ctrl=[c + 0.1 for c in push_dataset.ctrl])
    mix = omr.ResetMixture(push_task, shifted, probs)
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
    # every position target equals its restored joint position (pusher x, y), not the stored ctrl
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


# --------------------------------------------------------------------- restore rule on the gripper
def _peg_state_with_other_targets(task):
    """A peg state whose stored targets differ from its joint positions on EVERY actuator:
    fingers half closed on qpos but commanded shut (a squeezing grasp), arm commanded elsewhere."""
    sim = task.goal_state()
    qpos = sim.qpos.at[5:7].set(0.011)
    ctrl = (qpos[:7] + 0.05).at[5:7].set(0.0)
    return omr.SimState(qpos, sim.qvel, ctrl)


def test_restore_sets_every_target_gripper_included_to_the_restored_joint_positions():
    task = omr.make_task("PegInsertion")
    sim = _peg_state_with_other_targets(task)
    m = task.mj_model
    joint_of = [m.jnt_qposadr[m.actuator_trnid[a, 0]] for a in range(m.nu)]
    names = [m.actuator(a).name for a in range(m.nu)]
    assert {"finger_left", "finger_right"} <= set(names)  # the gripper is among the actuators
    restored = task.restore(sim)
    np.testing.assert_array_equal(np.asarray(restored.qpos), np.asarray(sim.qpos))
    np.testing.assert_allclose(np.asarray(restored.ctrl), np.asarray(sim.qpos)[joint_of], atol=1e-7)
    # (that ResetMixture.reset applies this rule to the simulator is checked on PushToSlot above,
    # with stored targets that differ from the joint positions: the peg model's MJX compile is slow)


# ------------------------------------------------------------------------ success per reset type
def _three_type_dataset(task):
    """'at_goal': the puck seated in the pocket (success at once); 'far' and 'unused': the
    nominal start."""
    goal = task.goal_state()
    far = task.nominal_state(jax.random.PRNGKey(0))
    rows = lambda x: np.repeat(np.asarray(x, np.float32)[None], 4, 0)
    return omr.ResetDataset(
        task_name=task.name, type_names=("at_goal", "far", "unused"),
        qpos=[rows(goal.qpos), rows(far.qpos), rows(far.qpos)],
        qvel=[rows(goal.qvel), rows(far.qvel), rows(far.qvel)],
        ctrl=[rows(goal.ctrl), rows(far.ctrl), rows(far.ctrl)], nq=task.nq, nv=task.nv,
        nu=task.nu, body_names=task.body_names,
    )


def _still(params, obs, key):
    return jnp.zeros(obs["state"].shape[:1] + (2,))


def test_success_by_type_reports_each_drawn_type_and_the_nominal_start(push_task):
    """A type seated at the goal scores 1, one at the nominal start 0, a type of probability 0 is
    left out; a plain env of the task reports its nominal-start rate; every rate is in [0, 1]."""
    ds = _three_type_dataset(push_task)
    mixed = omr.make_mixture_env("PushToSlot", ds, [0.5, 0.5, 0.0], num_envs=16, episode_length=4)
    rates = omr.success_by_type(mixed, _still, jax.random.PRNGKey(1), params=())
    nominal = envs.make("PushToSlot", num_envs=4, episode_length=4)
    rates.update(omr.success_by_type(nominal, _still, jax.random.PRNGKey(1), params=()))
    assert rates == {"at_goal": 1.0, "far": 0.0, "nominal": 0.0}
    assert all(np.isfinite(r) and 0.0 <= r <= 1.0 for r in rates.values())
    # an evaluation's episodes score the same success: 1 exactly where the episode began seated
    from jaxrl.train.evaluate import episode_rollout, evaluation_from

    start = mixed.without_auto_reset().reset(jax.random.PRNGKey(2))
    ep = jax.jit(lambda s, k: episode_rollout(mixed, lambda obs, k: _still((), obs, k), s, k))(
        start, jax.random.PRNGKey(3))
    seated = np.asarray(start.inner.info["reset_type"]) == 0
    assert 0 < seated.sum() < seated.size
    np.testing.assert_array_equal(np.asarray(ep.success), seated.astype(np.float32))
    ev = jax.jit(evaluation_from(mixed, _still))((), start, jax.random.PRNGKey(3))
    assert float(ev["eval_success"]) == seated.mean()  # the training loops' metrics rows
    with pytest.raises(ValueError, match=r"steps \(5\) must be in \[1, episode_length\] = \[1, 4\]"):
        omr.success_by_type(nominal, _still, jax.random.PRNGKey(1), steps=5, params=())
    # the whole episode is scored, as an evaluation scores it: the policy acts episode_length times
    calls = []

    def counted(obs, key):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.zeros(obs["state"].shape[:1] + (2,))

    omr.success_by_type(nominal, counted, jax.random.PRNGKey(1))
    assert len(calls) == nominal.episode_length == 4


# --------------------------------------------------------------------- what a run evaluates on
def test_an_omnireset_run_evaluates_from_the_anywhere_type_only(push_dataset, tmp_path):
    """ALGORITHMS.md §3: "Evaluation uses only reset type (1): the whole task from scratch."  The
    run's eval envs draw every episode from the dataset's "anywhere" states, its training envs
    from the whole mixture; without "anywhere" states the run falls back to the nominal start."""
    from jaxrl.train import run

    path = tmp_path / "push.npz"
    push_dataset.save(path)
    train_env, eval_env, name = run.make_envs("PushToSlot", 8, 0, {}, {"path": str(path), "probs": None}, 16)
    assert name == "PushToSlot" and eval_env.num_envs == 16 and not eval_env.resets_like(train_env)
    np.testing.assert_allclose(train_env.env.probs, [1 / 3] * 3)
    anywhere = push_dataset.type_names.index(omr.SCRATCH_TYPE)
    s = eval_env.reset(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(s.inner.info["reset_type"]), anywhere)
    stored = push_dataset.qpos[anywhere][np.asarray(s.inner.info["reset_index"])]
    np.testing.assert_array_equal(np.asarray(s.inner.data.qpos), stored)
    assert len(np.unique(np.asarray(s.inner.info["reset_index"]))) > 1  # fresh draws, not one state
    # the same for a mixture VecEnv handed to the run, sharing its task object
    _, eval_env2, _ = run.make_envs(train_env, 8, 0, {})
    assert eval_env2.env.task is train_env.env.task and eval_env2.num_envs == run.NUM_EVAL_ENVS
    np.testing.assert_array_equal(eval_env2.env.probs, np.eye(3)[anywhere])
    # a rebuilt run (resume, eval) scores as its record says: records from before stop 35 have
    # no ``eval_start`` and were scored from the nominal start
    from jaxrl import ppo
    from jaxrl.io import runfolder

    rec = {"algo": "ppo", "env": "PushToSlot", "steps": 256, "seed": 0, "num_evals": 1, "env_kwargs": {},
           "resets": {"path": str(path), "probs": None}, "seeds": 1,
           "config": runfolder.config_to_dict(ppo.PPOConfig.cpu(num_envs=8))}
    rebuilt = run.rebuild({**rec, "eval_start": run.SCRATCH_EVAL}, devices=1)[3].eval_env
    np.testing.assert_array_equal(rebuilt.env.probs, np.eye(3)[anywhere])
    assert not isinstance(run.rebuild(rec, devices=1)[3].eval_env.env, omr.ResetMixture)
    # `jaxrl eval RUN` plays where the run's own evaluations began, unless told otherwise
    from jaxrl.io import lifecycle

    marked = {**rec, "eval_start": run.SCRATCH_EVAL}
    assert lifecycle.default_start(marked, "PushToSlot") == "anywhere"
    assert lifecycle.default_start(rec, "PushToSlot") == lifecycle.default_start(marked, "Other") == "nominal"
    assert lifecycle.default_start({**marked, "resets": None}, "PushToSlot") == "nominal"  # a VecEnv run
    anywhere_envs = lifecycle.eval_envs(marked, "PushToSlot", 4, 0, "anywhere")
    assert anywhere_envs.num_envs == 4 and anywhere_envs.env.dataset.counts == push_dataset.counts
    # a run started with a dataset file records its sha256; a file rebuilt at that path since is
    # refused where the run is rebuilt (resume, eval, export), not silently used
    fingerprinted = {**rec, "resets": {**rec["resets"], "sha256": run.file_sha256(path)}}
    assert run.resets_of(fingerprinted, None) == fingerprinted["resets"]
    fewer = dataclasses.replace(push_dataset, qpos=[q[:2] for q in push_dataset.qpos],
                                qvel=[v[:2] for v in push_dataset.qvel], ctrl=[c[:2] for c in push_dataset.ctrl])
    fewer.save(path)  # `jaxrl resets build --out` again, at the same path
    with pytest.raises(ValueError, match="is not the file this run trained on .*rebuilt or replaced since"):
        run.rebuild(fingerprinted, devices=1)
    push_dataset.save(path)
    assert run.resets_of(fingerprinted, None) == fingerprinted["resets"]  # the same bytes again
    # `train(resets={'path': FILE})` (the CLI's --resets) records that fingerprint
    seen, make_envs = [], run.make_envs

    def spy(*a):
        seen.append(a[4])
        raise KeyboardInterrupt  # enough: the record's resets are what make_envs receives

    run.make_envs = spy
    try:
        with pytest.raises(KeyboardInterrupt):
            run.train("ppo", "PushToSlot", ppo.PPOConfig.cpu(num_envs=8), steps=64, progress=False,
                      resets={"path": str(path), "probs": None})
    finally:
        run.make_envs = make_envs
    assert seen == [{"path": str(path), "probs": None, "sha256": run.file_sha256(path)}]
    np.testing.assert_array_equal(anywhere_envs.env.probs, np.eye(3)[anywhere])
    assert not isinstance(lifecycle.eval_envs(marked, "PushToSlot", 4, 0, "nominal").env, omr.ResetMixture)
    with pytest.raises(ValueError, match="draws from the reset dataset a run trained on"):
        lifecycle.eval_envs({**rec, "resets": None}, "PushToSlot", 4, 0, "anywhere")
    # a dataset without "anywhere" states: the task's own (nominal) resets
    renamed = dataclasses.replace(push_dataset, type_names=("corner",) + push_dataset.type_names[1:])
    renamed.save(tmp_path / "renamed.npz")
    _, nominal, _ = run.make_envs("PushToSlot", 8, 0, {}, {"path": str(tmp_path / "renamed.npz"), "probs": None}, 16)
    assert not isinstance(nominal.env, omr.ResetMixture) and nominal.num_envs == 16
    with pytest.raises(ValueError, match="holds no 'anywhere' states"):
        lifecycle.eval_envs({**rec, "resets": {"path": str(tmp_path / "renamed.npz")}}, "PushToSlot", 4, 0,
                            "anywhere")



def test_a_run_on_a_hand_built_mixture_env_records_its_resets_for_resume_and_eval(push_dataset, tmp_path):
    """`run.train` on a mixture `VecEnv` built by hand (no dataset file named) saves the dataset in
    the run folder and records it with the weights and episode length (`run.keep_resets`), so a
    rebuilt run (resume, eval, export) draws the same resets instead of the nominal start."""
    from jaxrl import ppo
    from jaxrl.io import lifecycle, runfolder
    from jaxrl.train import run

    env = omr.make_mixture_env("PushToSlot", push_dataset, [0.2, 0.3, 0.5], num_envs=8, episode_length=5)
    out = tmp_path / "run"
    resets, kwargs = run.keep_resets(env, out, {})
    assert kwargs == {"episode_length": 5} and resets["probs"] == pytest.approx([0.2, 0.3, 0.5])
    assert resets["path"] == str((out / runfolder.RESETS_FILE).resolve())
    assert not list(out.glob("*.tmp"))  # written atomically
    saved = omr.ResetDataset.load(resets["path"])
    for a, b in zip(saved.qpos + saved.qvel + saved.ctrl, push_dataset.qpos + push_dataset.qvel + push_dataset.ctrl):
        np.testing.assert_array_equal(a, b)
    # a non-writing process (another host) records the same, writing nothing
    assert run.keep_resets(env, tmp_path / "other", {}, write=False)[0]["path"].endswith("other/resets.npz")
    assert not (tmp_path / "other").exists()
    assert run.keep_resets(env, None, {"episode_length": 7}) == (None, {"episode_length": 7})  # no folder
    rec = {"algo": "ppo", "env": "PushToSlot", "steps": 256, "seed": 0, "num_evals": 1, "env_kwargs": kwargs,
           "resets": resets, "seeds": 1, "eval_start": run.SCRATCH_EVAL,
           "config": runfolder.config_to_dict(ppo.PPOConfig.cpu(num_envs=8))}
    rebuilt = run.rebuild(rec, devices=1)[2]
    assert isinstance(rebuilt.env, omr.ResetMixture) and rebuilt.episode_length == 5
    np.testing.assert_allclose(rebuilt.env.probs, [0.2, 0.3, 0.5])
    assert rebuilt.env.dataset.counts == push_dataset.counts
    assert lifecycle.default_start(rec, "PushToSlot") == "anywhere"
    # the run folder's files include the dataset: overwriting a run removes it
    runfolder.write_record(out, rec)
    runfolder.claim(out, overwrite=True)
    assert not (out / runfolder.RESETS_FILE).exists()


def test_training_on_a_hand_built_mixture_env_writes_the_dataset_into_the_run(push_dataset, tmp_path):
    """End to end through `run.train` (the omnireset notebook's small PPO run, so the notebook finds
    its programs compiled): the record names ``RUN/resets.npz``, and the run rebuilds from it."""
    from jaxrl import ppo
    from jaxrl.io import runfolder
    from jaxrl.io.metrics import read_jsonl
    from jaxrl.train import run

    cfg = dataclasses.replace(ppo.PPOConfig.cpu(), num_envs=16, hidden=(32, 32))
    env = omr.make_mixture_env("PushToSlot", push_dataset, probs=None, num_envs=cfg.num_envs)
    _, rows = ppo.train(env, cfg, steps=4_096, num_evals=2, progress=False, out_dir=tmp_path / "run")
    # the task scores success: every evaluation row says how often (the paper's measure)
    logged = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_return" in r]
    assert logged and all(0.0 <= r["eval_success"] <= 1.0 for r in logged)
    assert [r["eval_success"] for r in logged] == [r["eval_success"] for r in rows if "eval_return" in r]
    record = run.read_record(tmp_path / "run")
    assert record["resets"]["path"] == str((tmp_path / "run" / runfolder.RESETS_FILE).resolve())
    assert record["env_kwargs"] == {"episode_length": env.episode_length}
    rebuilt = run.rebuild(record, devices=1)[2]
    assert isinstance(rebuilt.env, omr.ResetMixture) and rebuilt.env.dataset.counts == push_dataset.counts
    # the folder moved (to a robot's PC): the recorded path is gone, the copy inside it serves
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    assert run.resets_of(record, moved)["path"] == str((moved / runfolder.RESETS_FILE).resolve())
    assert run.rebuild(record, devices=1, run_dir=moved)[2].env.dataset.counts == push_dataset.counts
    (moved / runfolder.RESETS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="copy the dataset back to that path, or into the run folder"):
        run.rebuild(record, devices=1, run_dir=moved)
