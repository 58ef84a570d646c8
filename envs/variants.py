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
* ``CheetahRunHeavyTorso`` — the torso carries a 50% payload (mass and inertia ×1.5);
* ``CartpoleBalanceInMuJoCoC`` / ``CartpoleSwingupInMuJoCoC`` / ``CheetahRunInMuJoCoC`` — the
  nominal task simulated by MuJoCo C (float64, its own solver and collision code) instead of MJX:
  the "another simulator" gap LIFT finetunes across, and the closest thing to a real robot that
  runs here (`CTask`).  Every env step is a host call: use few envs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from envs.registry import _load_playground, register

# name -> (nominal task, {body name: mass factor})
VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "CartpoleBalanceHeavyPole": ("CartpoleBalance", {"pole_1": 3.0}),
    "CartpoleSwingupHeavyPole": ("CartpoleSwingup", {"pole_1": 3.0}),
    "CheetahRunHeavyTorso": ("CheetahRun", {"torso": 1.5}),
}


def scale_masses(env: Any, factors: dict[str, float]) -> Any:
    """``env`` with the named bodies' mass and inertia multiplied (MuJoCo and MJX models both)."""
    import mujoco
    from mujoco import mjx

    mj = env.mj_model
    for body, factor in factors.items():
        i = mujoco.mj_name2id(mj, mujoco.mjtObj.mjOBJ_BODY, body)
        if i < 0:
            raise ValueError(f"{type(env).__name__} has no body {body!r} to make heavier")
        mj.body_mass[i] *= factor
        mj.body_inertia[i] *= factor
    env._mjx_model = mjx.put_model(mj, impl=env.mjx_model.impl)
    return env


def _variant(name: str, base: str, factors: dict[str, float]) -> Callable[..., Any]:
    def make(impl: str | None = None, **overrides):
        env, _ = _load_playground(base, impl, None, overrides)
        env = scale_masses(env, factors)
        # What the agent is told about the world: the nominal task (a world model's physics prior
        # must not know the changed masses; it learns the difference from real data).
        env.nominal = _load_playground(base, impl, None, overrides)[0]
        return env

    make.__doc__ = f"{base} with body masses scaled {factors}."
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
    def make(impl: str | None = None, **overrides):
        return CTask(_load_playground(base, impl or "jax", None, overrides)[0])

    make.__doc__ = f"{base} simulated by MuJoCo C."
    return make


for _name, (_base, _factors) in VARIANTS.items():
    register(_name, episode_length=1000)(_variant(_name, _base, _factors))
for _name, _base in C_TARGETS.items():
    register(_name, episode_length=1000)(_c_target(_base))
