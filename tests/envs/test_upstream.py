"""Known Playground 0.2 config defects are routed around."""

import inspect

from brax.training.agents.ppo import train as ppo
from brax.training.agents.sac import train as sac
from mujoco_playground.config import dm_control_suite_params

from envs import upstream


def test_upstream_sac_config_has_a_key_brax_rejects_and_ours_does_not():
    params = inspect.signature(sac.train).parameters
    raw = dict(dm_control_suite_params.brax_sac_config("CartpoleBalance"))
    assert "num_resets_per_eval" in raw and "num_resets_per_eval" not in params
    ours = upstream.brax_sac_kwargs("CartpoleBalance")
    assert set(ours) <= set(params)
    assert ours["batch_size"] == raw["batch_size"] and callable(ours["network_factory"])


def test_pendulum_swingup_special_settings_apply_under_its_registered_name():
    raw = dm_control_suite_params.brax_sac_config("PendulumSwingup")
    assert raw["action_repeat"] == 1  # the upstream defect: the special case never fires
    assert upstream.brax_sac_kwargs("PendulumSwingup")["action_repeat"] == 4
    p = upstream.brax_ppo_kwargs("PendulumSwingup")
    assert p["action_repeat"] == 4 and p["num_updates_per_batch"] == 4
    assert set(p) <= set(inspect.signature(ppo.train).parameters)
