"""Changed worlds for finetuning (`jaxrl.train.finetune`): a nominal task with its physics edited.

A finetuning target is the same task — same observations, actions, reward and termination — in
a world that differs from the one the policy was pretrained in.  Each variant here loads the
nominal Playground task and edits its MuJoCo model before MJX sees it, so the task's own code
(and its MJX model) run unchanged on the new physics.  Every target carries the unchanged task as
``.nominal``: what a finetuning run may know about the world (the world model's physics prior
is the nominal model; the difference is what it learns from real transitions).

Registered names (``envs.make(name, num_envs)``, listed by ``jaxrl list-envs``):

* ``CartpoleBalanceHeavyPole`` / ``CartpoleSwingupHeavyPole`` — the pole 3× heavier (mass and
  inertia), so a pretrained policy over- or under-pushes the cart;
  ``CartpoleSwingupVeryHeavyPole`` — 10× (SAC's cpu preset, 100k steps: 805 nominal, 799 with
  the 3× pole, 247 with this one);
* ``CheetahRunHeavyTorso`` — the torso carries a 50% payload (mass and inertia ×1.5);
* humanoids (LIFT's finetuning settings), for T1 and G1 on flat terrain:
  ``…Fast`` — walk forward at 1.0–1.5 m/s (the commanded forward speed; no sideways or turning
  command; the task's 10% "stand still" commands stay);
  ``…Payload`` — 5 kg strapped to the trunk / torso (about 15% of the robot's mass);
  ``…Slippery`` — every contact's sliding friction halved (the floor is what the feet touch;
  scaling every geom and contact pair halves it whatever MuJoCo's friction-mixing rule picks);
* ``CartpoleBalanceInMuJoCoC`` / ``CartpoleSwingupInMuJoCoC`` / ``CheetahRunInMuJoCoC`` — the
  nominal task simulated by MuJoCo C (float64, its own solver and collision code) instead of MJX:
  the "another simulator" gap LIFT finetunes across, and the closest thing to a real robot that
  runs here (`CTask`).  Every env step is a host call: use few envs.

A change of command (``…Fast``) changes the task, not the world: its ``.nominal`` carries the
same command ranges (imagined rewards must score the target's commands), with the physics unedited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from envs.registry import _load_playground, _quiet_warp_model, register


@dataclasses.dataclass(frozen=True)
class Change:
    """How a target differs from its nominal task."""

    base: str  # the nominal registered task
    masses: dict[str, float] = dataclasses.field(default_factory=dict)  # body -> mass & inertia factor
    payload_kg: dict[str, float] = dataclasses.field(default_factory=dict)  # body -> added mass (inertia scaled alike)
    friction: float = 1.0  # factor on every contact's sliding friction
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # task config overrides (commands)


_FORWARD_FAST = {"lin_vel_x": [1.0, 1.5], "lin_vel_y": [0.0, 0.0], "ang_vel_yaw": [0.0, 0.0]}
VARIANTS: dict[str, Change] = {
    "CartpoleBalanceHeavyPole": Change("CartpoleBalance", masses={"pole_1": 3.0}),
    "CartpoleSwingupHeavyPole": Change("CartpoleSwingup", masses={"pole_1": 3.0}),
    "CartpoleSwingupVeryHeavyPole": Change("CartpoleSwingup", masses={"pole_1": 10.0}),
    "CheetahRunHeavyTorso": Change("CheetahRun", masses={"torso": 1.5}),
    "T1JoystickFlatTerrainFast": Change("T1JoystickFlatTerrain", config=_FORWARD_FAST),
    "T1JoystickFlatTerrainPayload": Change("T1JoystickFlatTerrain", payload_kg={"Trunk": 5.0}),
    "T1JoystickFlatTerrainSlippery": Change("T1JoystickFlatTerrain", friction=0.5),
    "G1JoystickFlatTerrainFast": Change("G1JoystickFlatTerrain", config=_FORWARD_FAST),
    "G1JoystickFlatTerrainPayload": Change("G1JoystickFlatTerrain", payload_kg={"torso_link": 5.0}),
    "G1JoystickFlatTerrainSlippery": Change("G1JoystickFlatTerrain", friction=0.5),
}


def _body(mj: Any, env: Any, body: str) -> int:
    import mujoco

    i = mujoco.mj_name2id(mj, mujoco.mjtObj.mjOBJ_BODY, body)
    if i < 0:
        raise ValueError(f"{type(env).__name__} has no body {body!r} to make heavier")
    return i


def edit_physics(env: Any, change: Change) -> Any:
    """``env`` with its MuJoCo model edited as ``change`` says, and its MJX model rebuilt from it."""
    from mujoco import mjx

    mj = env.mj_model
    for body, factor in change.masses.items():
        i = _body(mj, env, body)
        mj.body_mass[i] *= factor
        mj.body_inertia[i] *= factor
    for body, kg in change.payload_kg.items():
        i = _body(mj, env, body)
        factor = (mj.body_mass[i] + kg) / mj.body_mass[i]
        mj.body_mass[i] += kg
        mj.body_inertia[i] *= factor
    if change.friction != 1.0:
        mj.geom_friction[:, 0] *= change.friction
        mj.pair_friction[:, :2] *= change.friction
    env._mjx_model = mjx.put_model(mj, impl=env.mjx_model.impl)
    _quiet_warp_model(env)  # warp's put_model turns its per-step overflow prints back on
    # a VecEnv built on this task before traced the old model as a constant: forget those traces
    for memo in ("_jaxrl_one_env", "_jaxrl_observation_size"):
        env.__dict__.pop(memo, None)
    return env


def scale_masses(env: Any, factors: dict[str, float]) -> Any:
    """``env`` with the named bodies' mass and inertia multiplied (MuJoCo and MJX models both)."""
    return edit_physics(env, Change("", masses=factors))


def _variant(name: str, change: Change) -> Callable[..., Any]:
    def make(impl: str | None = None, menagerie_path: Any = None, **overrides):
        overrides = {**change.config, **overrides}
        env = edit_physics(_load_playground(change.base, impl, menagerie_path, overrides)[0], change)
        # What the agent is told about the world: the nominal physics (a world model's prior must
        # not know the changed masses or friction; it learns the difference from real data).
        env.nominal = _load_playground(change.base, impl, menagerie_path, overrides)[0]
        return env

    make.__doc__ = f"{change.base} changed: {change}."
    return make


class CTask:
    """``nominal`` with its physics stepped by MuJoCo C (`envs.mujoco_c`): same model, reset,
    observation, reward and termination code; only the simulator differs.  ``nominal`` stays
    reachable for what needs the MJX definition (the world model imagines with it)."""

    def __init__(self, nominal: Any):
        from envs.mujoco_c import CPhysics

        self.nominal = nominal
        self.physics = CPhysics(nominal.mj_model)

    def __getattr__(self, name: str) -> Any:  # everything else is the nominal task's
        if name == "nominal":
            raise AttributeError(name)
        return getattr(self.nominal, name)

    def reset(self, key: jax.Array) -> Any:
        return self.nominal.reset(key)

    def step(self, state: Any, action: jax.Array) -> Any:
        from envs.mujoco_c import mujoco_physics

        with mujoco_physics(self.nominal, self.physics):
            return self.nominal.step(state, action)


C_TARGETS = {"CartpoleBalanceInMuJoCoC": "CartpoleBalance", "CartpoleSwingupInMuJoCoC": "CartpoleSwingup",
             "CheetahRunInMuJoCoC": "CheetahRun"}


def _c_target(base: str) -> Callable[..., Any]:
    def make(impl: str | None = None, menagerie_path: Any = None, **overrides):
        if impl not in (None, "jax"):
            raise ValueError(f"{base}InMuJoCoC converts MuJoCo C's state into MJX's JAX layout: impl must be "
                             f"'jax' (or left out), got {impl!r}")
        return CTask(_load_playground(base, "jax", menagerie_path, overrides)[0])

    make.__doc__ = f"{base} simulated by MuJoCo C."
    return make


for _name, _change in VARIANTS.items():
    register(_name, episode_length=1000)(_variant(_name, _change))
for _name, _base in C_TARGETS.items():
    register(_name, episode_length=1000)(_c_target(_base))
