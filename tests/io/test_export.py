"""Policy export: jax, numpy and onnxruntime agree on every op; the card is complete JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxrl.io import numpy_policy
from jaxrl.io.export import (
    check_layers,
    config_hash,
    export_policy,
    make_card,
    save_npz,
    to_jax,
    to_onnx,
)

OBS_DIM, HIDDEN, ACT_DIM = 11, 32, 4


def random_layers(seed: int = 0) -> list[dict]:
    """Normaliser, residual RMSNorm blocks, every activation, slice and clip."""
    rng = np.random.default_rng(seed)

    def dense(n_in, n_out, bias=True):
        kernel = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        return {
            "op": "dense",
            "kernel": kernel,
            "bias": rng.normal(0, 0.1, n_out) if bias else None,
        }

    return [
        {"op": "round_bf16"},  # (a policy that learned from bfloat16 replay)
        {"op": "affine", "scale": rng.uniform(0.5, 2, OBS_DIM), "shift": rng.normal(0, 1, OBS_DIM)},
        {"op": "clip", "low": -5.0, "high": 5.0},
        dense(OBS_DIM, HIDDEN),
        {"op": "rmsnorm", "scale": rng.uniform(0.5, 1.5, HIDDEN), "eps": 1e-6},
        {"op": "push"},
        dense(HIDDEN, HIDDEN, bias=False),
        {"op": "relu"},
        {"op": "push"},
        dense(HIDDEN, HIDDEN),
        {"op": "elu"},
        {"op": "add_pop"},
        dense(HIDDEN, HIDDEN),
        {"op": "swish"},
        {"op": "add_pop"},
        {"op": "rmsnorm", "scale": np.ones(HIDDEN), "eps": 1e-5},
        dense(HIDDEN, 2 * ACT_DIM),
        {"op": "slice", "start": 0, "stop": ACT_DIM},  # the mean half of (mean, log_std)
        {"op": "tanh"},
        {"op": "affine", "scale": np.full(ACT_DIM, 0.5), "shift": np.zeros(ACT_DIM)},
    ]


@pytest.fixture(scope="module")
def observations():
    return np.random.default_rng(1).normal(0, 3, (2000, OBS_DIM)).astype(np.float32)


def card_for(n_actions=ACT_DIM) -> dict:
    return make_card(
        obs_layout={"joint_pos": 5, "joint_vel": 5, "phase": 1},
        action_names=[f"joint_{i}" for i in range(n_actions)],
        control_dt=0.02,
        config={"algo": "flashsac", "lr": 3e-4},
        action_scale=0.3,
        action_offset=[0.1, 0.0, -0.1, 0.2][:n_actions],
        default_joint_pos=[0.0, 0.5, -0.5, 0.0][:n_actions],
        kp=40.0,
        kd=[1.0, 1.0, 2.0, 2.0][:n_actions],
        env="T1JoystickFlatTerrain",
        algo="flashsac",
    )


def test_onnxruntime_numpy_and_jax_agree_on_every_op(tmp_path, observations):
    import onnxruntime as ort

    layers = random_layers()
    assert check_layers(layers, OBS_DIM) == ACT_DIM
    expected = np.asarray(to_jax(layers)(observations))
    assert expected.shape == (2000, ACT_DIM) and np.isfinite(expected).all()

    to_onnx(layers, OBS_DIM, tmp_path / "p.onnx")
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["action"], {"obs": observations})
    np.testing.assert_allclose(onnx_out, expected, atol=1e-5, rtol=0)

    np.testing.assert_allclose(numpy_policy.forward(layers, observations), expected, atol=1e-5)
    single = numpy_policy.forward(layers, observations[0])
    assert single.shape == (ACT_DIM,)


def test_onnx_opset_18_reduce_mean_with_axes_input(tmp_path, observations):
    import onnxruntime as ort

    layers = random_layers(2)
    to_onnx(layers, OBS_DIM, tmp_path / "p18.onnx", opset=18)
    session = ort.InferenceSession(str(tmp_path / "p18.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"obs": observations[:64]})
    np.testing.assert_allclose(out, numpy_policy.forward(layers, observations[:64]), atol=1e-5)


def test_npz_round_trip_gives_the_same_actions(tmp_path, observations):
    layers = random_layers(3)
    save_npz(layers, tmp_path / "policy.npz")
    loaded = numpy_policy.load_npz(tmp_path / "policy.npz")
    assert [layer["op"] for layer in loaded] == [layer["op"] for layer in layers]
    assert loaded[6].get("bias") is None and isinstance(loaded[4]["eps"], float)
    np.testing.assert_array_equal(
        numpy_policy.forward(loaded, observations), numpy_policy.forward(layers, observations)
    )


def test_numpy_policy_module_does_not_import_jax():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(numpy_policy))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "numpy"}


def test_unknown_op_raises_naming_it():
    layers = random_layers()
    layers[6] = {"op": "gelu"}
    with pytest.raises(ValueError, match="layer 6: unknown op 'gelu'"):
        check_layers(layers, OBS_DIM)
    with pytest.raises(ValueError, match="unknown op 'gelu'"):
        numpy_policy.forward(layers, np.zeros((1, OBS_DIM), np.float32))


def test_shape_mismatch_between_layers_raises_naming_the_layer_index(tmp_path):
    layers = random_layers()
    layers[9] = {"op": "dense", "kernel": np.zeros((HIDDEN + 1, HIDDEN)), "bias": None}
    with pytest.raises(ValueError, match=r"layer 9 \(dense\): kernel has shape \(33, 32\)"):
        to_onnx(layers, OBS_DIM, tmp_path / "bad.onnx")
    layers = random_layers()
    layers[4] = {"op": "rmsnorm", "scale": np.ones(HIDDEN - 1), "eps": 1e-6}
    with pytest.raises(ValueError, match=r"layer 4 \(rmsnorm\): scale has shape \(31,\)"):
        check_layers(layers, OBS_DIM)
    with pytest.raises(ValueError, match=r"layer 1 \(affine\)"):
        check_layers(random_layers(), OBS_DIM + 1)
    with pytest.raises(ValueError, match=r"layer 1 \(add_pop\): no matching push"):
        check_layers([{"op": "relu"}, {"op": "add_pop"}], 3)


def test_export_writes_policy_and_a_complete_json_card(tmp_path, observations):
    import onnxruntime as ort

    layers = random_layers()
    policy_path, card_path = export_policy(layers, tmp_path / "policy.onnx", card=card_for())
    assert card_path.name == "policy.onnx.card.json"
    card = json.loads(card_path.read_text())
    for field in (
        "format_version",
        "observation",
        "action",
        "default_joint_positions",
        "control_dt",
        "pd_gains",
        "config_sha256",
        "policy",
    ):
        assert field in card, field
    assert card["observation"]["size"] == OBS_DIM
    assert card["observation"]["layout"][2] == {"name": "phase", "start": 10, "size": 1}
    assert card["action"]["names"] == ["joint_0", "joint_1", "joint_2", "joint_3"]
    assert card["action"]["scale"] == [0.3] * 4 and card["pd_gains"]["kp"] == [40.0] * 4
    assert card["control_hz"] == pytest.approx(50.0)
    assert card["config_sha256"] == config_hash({"lr": 3e-4, "algo": "flashsac"})
    assert card["policy"]["file"] == "policy.onnx" and card["policy"]["format"] == "onnx"

    session = ort.InferenceSession(str(policy_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    (out,) = session.run(["action"], {"obs": observations[:8]})
    np.testing.assert_allclose(out, numpy_policy.forward(layers, observations[:8]), atol=1e-5)

    npz_path, npz_card = export_policy(layers, tmp_path / "policy.npz", card=card_for())
    assert json.loads(npz_card.read_text())["policy"]["format"] == "npz"
    assert len(numpy_policy.load_npz(npz_path)) == len(layers)

    with pytest.raises(ValueError, match="outputs 4 actions, the card names 3"):
        export_policy(layers, tmp_path / "x.onnx", card=card_for(3))


def test_flashsac_policy_lowering_runs_the_same_in_onnxruntime_numpy_and_jax(tmp_path):
    """The lowered FlashSAC actor (folded BatchNorms, unit kernels, RMSNorm, the mean head's
    unit kernel plus its free bias, tanh) equals the agent's own deterministic action."""
    import jax
    import onnxruntime as ort

    from envs.specs import ArraySpec, EnvSpec
    from jaxrl.algos import flashsac as fs

    d, a = 5, 3
    cfg = fs.FlashSACConfig(num_envs=2, batch_size=4, buffer_size=100, min_buffer=4,
                            actor_width=8, critic_width=8, num_blocks=2, expansion=2, num_atoms=5)
    spec = EnvSpec(name="tiny", obs={"state": ArraySpec((d,)), "privileged_state": ArraySpec((d,))},
                   action=ArraySpec((a,), low=-1.0, high=1.0), num_envs=2, episode_length=10,
                   dt=0.01, has_privileged_state=True)
    state = fs.init(jax.random.PRNGKey(0), spec, cfg)
    rng = np.random.default_rng(0)

    def randomise(x, positive):  # non-trivial running statistics
        draw = rng.uniform(0.5, 2.0, x.shape) if positive else rng.normal(0, 0.5, x.shape)
        return np.asarray(draw, np.float32)

    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: randomise(x, positive=path[-1].key == "var"), state.actor_stats)
    params = dict(state.actor_params)
    params["mean"] = {**params["mean"], "bias": np.asarray(rng.normal(0, 0.5, a), np.float32)}
    state = state.replace(actor_params=params, actor_stats=stats)

    obs = rng.normal(0, 2, (64, d)).astype(np.float32)
    want = np.asarray(fs.act(state, {"state": obs}, None, cfg, deterministic=True)[0])
    layers = fs.policy_layers(state, cfg)
    assert check_layers(layers, d) == a
    to_onnx(layers, d, tmp_path / "flashsac.onnx")
    session = ort.InferenceSession(str(tmp_path / "flashsac.onnx"),
                                   providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["action"], {"obs": obs})
    np.testing.assert_allclose(onnx_out, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(numpy_policy.forward(layers, obs), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(to_jax(layers)(obs)), want, atol=1e-5, rtol=0)
    # the free bias is in the graph: dropping it changes the actions
    no_bias = [dict(layer) for layer in layers]
    no_bias[-2]["bias"] = None
    assert np.abs(numpy_policy.forward(no_bias, obs) - want).max() > 1e-3


# ----------------------------------------------------------------------- the run's card
_SERVOS = """
<mujoco>
  <worldbody><body>
    <joint name="a" type="hinge" damping="0.5" actuatorfrcrange="-7 7" actuatorfrclimited="true"/>
    <geom size="0.1" mass="1"/>
    <body pos="0 0 0.3"><joint name="b" type="hinge" damping="0.3"/><geom size="0.1" mass="1"/></body>
  </body></worldbody>
  <actuator>
    <position joint="a" kp="35" kv="0.2"/>
    <position joint="b" kp="20" forcerange="-12 12" forcelimited="true"/>
  </actuator>
</mujoco>"""


def test_card_gains_are_the_torque_mujoco_applies_per_unit_of_position_and_velocity_error():
    """kd is the actuator's kv plus the joint's damping (T1 and Go1 keep their D gain in the joint
    damping): checked against MuJoCo's own actuator and passive forces."""
    import mujoco

    from jaxrl.io.lifecycle import pd_gains

    model = mujoco.MjModel.from_xml_string(_SERVOS)
    gains = pd_gains(model)
    data = mujoco.MjData(model)
    data.qvel[:] = [0.1, -0.2]  # at the target (q = ctrl = 0): all torque comes from velocity
    mujoco.mj_forward(model, data)
    torque = data.qfrc_actuator + data.qfrc_passive
    np.testing.assert_allclose(gains["kd"], -torque / data.qvel, rtol=1e-6)
    data.qvel[:] = 0
    data.qpos[:] = [0.01, -0.02]  # small position errors: unclipped
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(gains["kp"], -data.qfrc_actuator / data.qpos, rtol=1e-6)
    assert gains["effort_limit"] == [7.0, 12.0]
    model.actuator_gear[0, 0] = 2.0  # gains in another unit: left out rather than misstated
    assert pd_gains(model) == {}


def test_card_action_mapping_is_read_from_the_tasks_own_step():
    from mujoco_playground._src.locomotion.go1 import getup, handstand
    from mujoco_playground._src.locomotion.spot import joystick as spot
    from mujoco_playground._src.locomotion.t1 import joystick as t1

    from jaxrl.io.lifecycle import action_mapping

    assert action_mapping(t1.Joystick)[::2] == ("absolute", False)
    assert action_mapping(spot.Joystick)[::2] == ("absolute", True)  # clipped to _lowers/_uppers
    assert action_mapping(handstand.Handstand)[0] == "relative_to_previous_target"
    assert action_mapping(getup.Getup)[0] == "relative_to_joint_positions"
    assert action_mapping(int) == (None, None, False)


def test_export_eval_and_sim2sim_read_the_observation_the_actor_was_trained_on(tmp_path):
    """A run whose actor reads ``privileged_state`` (``--config.actor-obs-key``): the card names that
    block, and sim2sim feeds it (before: the card said ``state`` and eval crashed in JAX)."""
    from jaxrl.algos import flashsac, sac
    from jaxrl.io import lifecycle, sim2sim
    from jaxrl.train.finetune import FinetuneConfig

    priv = sac.SACConfig.cpu().replace(actor_obs_key="privileged_state")
    assert lifecycle.actor_obs_key(priv) == "privileged_state"
    assert lifecycle.actor_obs_key(FinetuneConfig.cpu(priv)) == "privileged_state"
    assert lifecycle.actor_obs_key(flashsac.FlashSACConfig.cpu()) == "state"
    layers = [{"op": "dense", "kernel": np.ones((OBS_DIM, ACT_DIM), np.float32), "bias": np.zeros(ACT_DIM, np.float32)}]
    card = card_for()
    card["observation"]["layout"] = [{"name": "privileged_state", "start": 0, "size": OBS_DIM}]
    path, _ = export_policy(layers, tmp_path / "p.onnx", card=card)
    assert sim2sim.policy_obs_key(path) == "privileged_state"
    (tmp_path / "bare.onnx").write_bytes(path.read_bytes())  # no card: the default block
    assert sim2sim.policy_obs_key(tmp_path / "bare.onnx") == "state"


def test_numpy_bfloat16_rounding_is_jaxs_bit_for_bit():
    """The robot-side `round_bf16` (integer arithmetic, numpy only) against JAX's astype: random
    values over many magnitudes, exact ties (to even), the largest finite floats, inf and NaN."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, 20_000) * 10.0 ** rng.integers(-30, 30, 20_000)).astype(np.float32)
    ties = (np.arange(1, 2001, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exactly half-way
    edge = np.array([0.0, -0.0, 0.3, 9.81, 1.00390625, 3.4e38, -3.4e38, np.inf, -np.inf], np.float32)
    x = np.concatenate([x, ties, -ties, edge])
    want = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(numpy_policy.round_bf16(x), want)
    assert np.isnan(numpy_policy.round_bf16(np.array([np.nan], np.float32))).all()
