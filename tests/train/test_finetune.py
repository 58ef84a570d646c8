"""World-model finetuning (`jaxrl.train.finetune`): a tiny SAC run on CartpoleBalance finetuned on
CartpoleBalanceHeavyPole (pole 3× heavier).  The target env receives only tanh(μ); the agent
loads everything but α; bad requests are refused before compiling."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from jaxrl.algos import sac
from jaxrl.algos import world_model as wm
from jaxrl.io import lifecycle
from jaxrl.io.checkpoint import CheckpointManager, CheckpointMismatchError
from jaxrl.train import registry, run
from jaxrl.train.finetune import FinetuneConfig

pytestmark = pytest.mark.xdist_group("finetune")

# The LIFT networks at toy size (as tests/algos/test_sac.py), 4 envs, a 48-step run.
PRE = sac.SACConfig.cpu().replace(
    actor_hidden=(16, 16), critic_hidden=(32, 32), batch_size=8, alpha_lr=0.3, init_log_alpha=math.log(0.5),
    actor_lr=3e-4, critic_lr=3e-4, weight_decay=1e-4, activation="swish", critic_layer_norm=False,
    log_std_min=-5.0, log_std_max=2.0, num_envs=4, min_buffer=16, buffer_size=1024, updates_per_step=2,
    env_overrides=(("vision", False),))  # an env change (Playground's default value) the target must inherit
EPOCH = 16
FT = FinetuneConfig.cpu(PRE).replace(
    prefill=16, real_steps_per_epoch=EPOCH, real_buffer=64, starts=8, rounds_min=1, rounds_max=2,
    rounds_ramp_epochs=1, horizon_min=2, horizon_max=3, horizon_ramp_epochs=1, imagined_buffer=64,
    updates_per_round=2, imagined_batch=16, real_batch=4,
    world_model=wm.WorldModelConfig.cpu().replace(hidden=(16, 16), weight_decay=(1e-4,) * 3, horizon=2,
                                                  max_epochs=2, min_epoch_steps=2, batch_size=8))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "pre"
    run.train("sac", "CartpoleBalance", PRE, steps=48, num_evals=1, progress=False, out_dir=out,
              env_kwargs={"episode_length": 10}, tensorboard=False)
    return out


@pytest.fixture(scope="module")
def finetuned(pretrained):
    out = pretrained.parent / "ft"
    carry, rows = run.finetune(pretrained, "CartpoleBalanceHeavyPole", real_steps=FT.prefill + 2 * EPOCH,
                               config=FT, out_dir=out, num_evals=2, progress=False, checkpoint_every_s=0,
                               tensorboard=False)
    return out, carry, rows


def test_init_from_loads_actor_critic_target_and_obs_but_not_alpha(pretrained):
    """Finetuning's start: the parts "actor", "critic", "target", "obs" of a finished run load
    into a fresh agent; log α and its optimiser keep their fresh values (α re-initialised)."""
    _, _, _, src, env = lifecycle.load_run(pretrained)
    fresh_cfg = PRE.replace(init_log_alpha=-7.13)
    loop = registry.get("sac").make_loop(fresh_cfg, env, None, 48, 1, 1)
    carry, info = run.load_parts(loop.init_carry(), pretrained, ["actor", "critic", "target", "obs"])
    for field in ("actor_params", "critic_params", "target_params", "obs_stats", "actor_opt", "critic_opt"):
        for a, b in zip(jax.tree.leaves(getattr(carry.agent, field)), jax.tree.leaves(getattr(src, field))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(carry.agent.log_alpha) == pytest.approx(-7.13)
    assert float(src.obs_stats["state"].count) > 0 and info["parts"] == ["actor", "critic", "target", "obs"]


def test_the_target_env_only_ever_receives_the_deterministic_policy(pretrained, finetuned):
    """Every real action — prefill, epoch 1 and epoch 2 — equals tanh(μ(obs)) of the agent that
    collected it: the pretrained one for the prefill and epoch 1 (collection comes before the
    epoch's updates), the one checkpointed after epoch 1 for epoch 2."""
    out, carry, _ = finetuned
    _, _, _, agent0, _ = lifecycle.load_run(pretrained)
    ft_loop = run.rebuild(run.read_record(out), with_eval=False)[3]
    mgr = CheckpointManager(out)
    after1 = FT.prefill + EPOCH
    assert after1 in mgr.steps()
    agent1 = mgr.restore(ft_loop.init_carry(), step=after1)[0].agent
    real = carry.real
    n = FT.num_envs
    t_pre, t_ep = FT.prefill // n, EPOCH // n
    assert int(real.size) == t_pre + 2 * t_ep  # not wrapped: row i is the i-th real step
    obs, actions = real.data["tr"].obs, np.asarray(real.data["tr"].action)
    for rows, agent in ((slice(0, t_pre + t_ep), agent0), (slice(t_pre + t_ep, t_pre + 2 * t_ep), agent1)):
        o = {k: np.asarray(x)[rows].reshape((-1,) + x.shape[2:]) for k, x in obs.items()}
        want = np.asarray(sac.act(agent, o, None, FT.sac, deterministic=True)[0])
        np.testing.assert_allclose(actions[rows].reshape(want.shape), want, atol=1e-6)
    # the policy did change between the epochs (so the check above can tell them apart)
    assert not np.allclose(np.asarray(agent1.actor_params["out"]["kernel"]),
                           np.asarray(agent0.actor_params["out"]["kernel"]))


def test_finetuning_loads_everything_but_alpha_and_reports_the_model(pretrained, finetuned):
    out, carry, rows = finetuned
    loop = run.rebuild(run.read_record(out), with_eval=False)[3]
    # imagination's start states are rebuilt by MJX's forward at the physics precision ('highest'),
    # whatever the precision of the caller (here JAX's default)
    text = jax.jit(loop._starts).lower(jax.eval_shape(loop.init_carry), jax.random.PRNGKey(0)).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*?precision = \[(\w+), \w+\]", text)
    assert dots and set(dots) == {"HIGHEST"}, sorted(set(dots))
    nominal = envs.make("CartpoleBalance", num_envs=1).env
    assert loop.model.dyn.mass_diag == pytest.approx(wm.SmoothDynamics.of_task(nominal).mass_diag)  # the prior
    record = json.loads((out / "config.json").read_text())
    assert record["algo"] == "finetune" and record["init_from"]["parts"] == list(
        __import__("jaxrl.train.finetune", fromlist=["x"]).FINETUNE_PARTS)
    assert rows[-1]["env_steps"] == FT.prefill + 2 * EPOCH  # real steps only
    assert "solver_limit_hits" in rows[0] and "critic_loss" not in rows[0]  # the prefill's row: counters
    # the target env took the pretraining config's env changes (`FinetuneConfig.env_overrides`)
    assert record["env_kwargs"] == {"vision": False}
    last = rows[-1]
    for k in ("model_val_error", "critic_loss", "alpha", "eval_return"):
        assert np.isfinite(last[k]), (k, last)
    assert last["horizon"] == FT.horizon_max and last["rounds"] == FT.rounds_max
    # α restarted from exp(-7.13) and moved only by a few α steps of lr 3e-4
    assert abs(float(carry.agent.log_alpha) + 7.13) < 0.05
    img = carry.imagined
    valid = np.asarray(img.data["valid"])[: int(img.size)]
    assert valid.any()
    rewards = np.asarray(img.data["tr"].reward)[: int(img.size)][valid]
    assert np.all((rewards >= 0) & (rewards <= 1))  # Cartpole's own reward on predicted states
    # the run continues like any other: export its deterministic policy
    assert lifecycle.export_run(out, "npz").exists()


def test_a_finetuning_run_stopped_mid_way_resumes_to_the_uninterrupted_result(pretrained, finetuned, tmp_path,
                                                                           stop_after):
    """Stopped after its first row (its checkpoint written) and resumed, a finetuning run ends bit
    for bit where the uninterrupted one does: agent, world model, real and imagined buffers, env
    state, keys, rows.  Saved without the imagined buffer (save_buffer=False, kept by the resume),
    the resume says so and that the next rounds fill it again, and finishes its budget."""
    _, want, want_rows = finetuned
    kwargs = {"real_steps": FT.prefill + 2 * EPOCH, "config": FT, "num_evals": 2, "progress": False,
              "checkpoint_every_s": 0, "tensorboard": False}
    for save_buffer in (True, False):
        out = tmp_path / f"ft_{save_buffer}"
        with pytest.raises(stop_after.Stop):
            run.finetune(pretrained, "CartpoleBalanceHeavyPole", out_dir=out, progress_fn=stop_after(1),
                         save_buffer=save_buffer, **kwargs)
        if save_buffer:
            carry, rows = run.resume(out, progress=False)
            for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(carry)[0], jax.tree.leaves(want)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
            assert [(r["env_steps"], r.get("eval_return")) for r in rows] == \
                [(r["env_steps"], r.get("eval_return")) for r in want_rows]
        else:
            with pytest.warns(RuntimeWarning, match=r"without \.imagined .*the next imagination rounds fill it again"):
                _, rows = run.resume(out, progress=False)
            assert rows[-1]["env_steps"] == want_rows[-1]["env_steps"]


def test_the_models_noise_reaches_the_actors_observation_only(finetuned):
    """Cartpole's observation is one flat array, the actor's and the critic's at once.  In the
    imagined buffer the actor's next observation carries the model's noise and the critic's is
    the mean's (LIFT: noise only on what the actor observes; before, the critic got the noisy
    array too); each step starts from what the previous one produced, for both."""
    _, carry, _ = finetuned
    img, h = carry.imagined, FT.horizon_max  # the last round: the buffer's last h rows, in order
    rows = [(int(img.insert_pos) - h + i) % img.rows for i in range(h)]
    tr = jax.tree.map(lambda a: np.asarray(a)[rows], img.data["tr"])
    actor, critic = tr.next_obs["state"], tr.next_obs["privileged_state"]
    gap = np.abs(actor - critic)
    assert gap.max() > 1e-4 and gap.max() < 1.0  # noise of the model's (small) predicted spread
    np.testing.assert_array_equal(tr.obs["state"][0], tr.obs["privileged_state"][0])  # a real start
    for key in ("state", "privileged_state"):
        np.testing.assert_array_equal(tr.obs[key][1:], tr.next_obs[key][:-1])


def test_the_real_step_budget_is_spent_exactly_in_evenly_spread_chunks():
    """5 epochs and 2 evaluations: chunks of 2 and 3 epochs, and exactly the budget's real
    steps (rounding the epochs up to a multiple of the evaluations, as the other loops round
    iterations, ran 6 and 24% past budgets such as the cpu preset's 5,000 at 10 evaluations)."""
    env = envs.make("CartpoleBalanceHeavyPole", num_envs=FT.num_envs, episode_length=10, vision=False)
    steps = FT.prefill + 5 * EPOCH + EPOCH // 2  # half an epoch pays for nothing
    loop = registry.get("finetune").make_loop(FT, env, None, steps, 0, 2)
    assert loop.chunk_ends == [2, 5] and loop.total_iters * FT.num_envs == FT.prefill + 5 * EPOCH
    assert registry.get("finetune").make_loop(FT, env, None, steps, 0, 10).chunk_ends == [1, 2, 3, 4, 5]
    cpu = FinetuneConfig.cpu(PRE)
    plan = registry.get("finetune").make_loop(cpu, envs.make("CartpoleBalanceHeavyPole", num_envs=cpu.num_envs),
                                              None, 5_000, 0, 10)
    assert plan.total_iters * cpu.num_envs == cpu.prefill + cpu.epochs(5_000) * cpu.real_steps_per_epoch <= 5_000


def test_lift_targets_inherit_the_pretraining_env_changes():
    """LIFT finetunes in targets without pushes or observation noise, as it pretrained: a T1 target
    takes `SACConfig.lift`'s env changes, not Playground's defaults (pushes on, noise 1)."""
    lift = sac.SACConfig.lift("T1JoystickFlatTerrain")
    cfg = FinetuneConfig.paper("T1JoystickFlatTerrainFast", lift)
    assert dict(cfg.env_overrides) == {"push_config.enable": False, "noise_config.level": 0.0}
    assert FinetuneConfig.cpu(sac.SACConfig.cpu()).env_overrides == ()


def test_bad_finetuning_requests_are_refused_before_compiling(pretrained, tmp_path):
    with pytest.raises(ValueError, match="pay for no finetuning epoch"):
        run.finetune(pretrained, "CartpoleBalanceHeavyPole", real_steps=FT.prefill + EPOCH - 1, config=FT,
                     progress=False)
    fake = tmp_path / "ppo_run"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"algo": "ppo", "env": "CartpoleBalance", "steps": 10,
                                                  "seed": 0, "config": {}}))
    with pytest.raises(ValueError, match="loads a large-batch SAC agent"):
        run.finetune(fake, "CartpoleBalance", real_steps=100, progress=False)
    with pytest.raises(ValueError, match="num_evals must be >= 1, got 0"):  # was a StopIteration after
        run.finetune(pretrained, "CartpoleBalanceHeavyPole", real_steps=FT.prefill + EPOCH, config=FT,  # compiling
                     num_evals=0, progress=False)
    with pytest.raises(ValueError, match="prefill"):
        FT.replace(prefill=2)
    with pytest.raises(ValueError, match="num_eval_envs=0 is invalid"):
        FT.replace(num_eval_envs=0)
    # finetuning evaluates on its own count, not the pretraining config's (LIFT's 1024)
    paper = FinetuneConfig.paper("CartpoleBalance")
    assert run.eval_env_count(paper) == paper.num_eval_envs == 16 != paper.sac.num_eval_envs
    # a checkpoint whose observation / action layout is not the target's
    with pytest.raises(ValueError, match=r"layout differs .* action: \(1,\) vs \(6,\);.* state: \(5,\) vs \(17,\)"):
        run.finetune(pretrained, "CheetahRunHeavyTorso", real_steps=FT.prefill + EPOCH, config=FT,
                     progress=False)
    # ... and, caught later, another network than the pretraining run's: the field and both shapes
    with pytest.raises(CheckpointMismatchError, match="actor_params"):
        run.finetune(pretrained, "CartpoleBalanceHeavyPole", real_steps=FT.prefill + EPOCH, progress=False,
                     config=FT.replace(sac=FT.sac.replace(actor_hidden=(8, 8))))


def test_eval_scores_a_run_on_a_finetuning_target(pretrained):
    """`jaxrl eval RUN --env TARGET`: the pretrained policy in the changed world (the arm
    "pretrained, unchanged" of the evidence); a target of another layout is refused."""
    nominal = lifecycle.evaluate_run(pretrained, episodes=2, write=False)
    heavy = lifecycle.evaluate_run(pretrained, episodes=2, write=False, env="CartpoleBalanceHeavyPole")
    assert heavy["env"] == "CartpoleBalanceHeavyPole" and np.isfinite(heavy["mean_return"])
    assert heavy["returns"] != nominal["returns"]  # the same initial states, another pole
    with pytest.raises(ValueError, match=r"cannot evaluate the CartpoleBalance policy on CheetahRunHeavyTorso"):
        lifecycle.evaluate_run(pretrained, episodes=2, write=False, env="CheetahRunHeavyTorso")


class _Opaque:
    """A task stepping its physics some other way (neither Playground's `mjx_env.step` nor a
    `physics_step` method): the world model cannot stand in for it."""

    def __init__(self, task):
        self._task = task
        self.mj_model, self.mjx_model = task.mj_model, task.mjx_model
        self.observation_size, self.action_size = task.observation_size, task.action_size

    def reset(self, key):
        return self._task.reset(key)

    def step(self, state, action):
        return self._task.step(state, action)


def test_a_target_without_imaginable_physics_is_refused(pretrained):
    from envs import registry as env_registry

    envs.register("OpaqueCartpole")(lambda **kw: _Opaque(envs.make("CartpoleBalance").env))
    try:
        with pytest.raises(TypeError, match="implement `physics_step` for your task"):
            run.finetune(pretrained, "OpaqueCartpole", real_steps=100, config=FT, progress=False)
    finally:
        env_registry.unregister("OpaqueCartpole")


def test_variants_change_the_physics_not_the_task():
    nominal = envs.make("CartpoleBalance", num_envs=1).env
    heavy = envs.make("CartpoleBalanceHeavyPole", num_envs=1).env
    assert "CartpoleBalanceHeavyPole" in envs.list_envs("jaxrl")
    i = 2  # pole_1
    assert heavy.mj_model.body_mass[i] == pytest.approx(3 * nominal.mj_model.body_mass[i])
    assert float(heavy.mjx_model.body_mass[i]) == pytest.approx(3 * float(nominal.mjx_model.body_mass[i]))
    assert heavy.observation_size == nominal.observation_size and heavy.action_size == nominal.action_size
    # what finetuning may know: the nominal masses (the world model's prior), not the changed ones
    assert heavy.nominal.mj_model.body_mass[i] == pytest.approx(nominal.mj_model.body_mass[i])


def test_the_mujoco_c_target_is_the_nominal_task_stepped_by_mujoco_c():
    """``CartpoleBalanceInMuJoCoC``: reset, observation and reward are the nominal task's, every
    step is MuJoCo C's (host calls counted), and its states stay close to MJX's from the same
    state and action (float64 C vs float32 MJX)."""
    c_env = envs.make("CartpoleBalanceInMuJoCoC", num_envs=1)
    mjx_env = envs.make("CartpoleBalance", num_envs=1)
    task = c_env.env
    assert task.nominal.mj_model is not None and c_env.spec.obs == mjx_env.spec.obs
    s = c_env.reset(jax.random.PRNGKey(0))
    calls = task.physics.calls
    a = jnp.full((1, 1), 0.4)
    c_next, m_next = c_env.step(s, a), mjx_env.step(s, a)
    assert task.physics.calls > calls
    np.testing.assert_allclose(np.asarray(c_next.obs["state"]), np.asarray(m_next.obs["state"]), atol=1e-3)
    assert float(c_next.reward[0]) == pytest.approx(float(m_next.reward[0]), abs=1e-3)
