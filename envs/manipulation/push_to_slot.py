"""PushToSlot: the cheap OmniReset task — push a puck into a narrow pocket far from the start.

Planar: a point pusher (x/y slide joints, position actuators, relative targets of up to
``0.08`` m per step) and a puck (x/y slide joints, damped), no gravity.  The pocket's opening
faces -x at the far corner; from the nominal start (pusher in the opposite corner, puck in the
middle) the +1 success bonus needs a long, precise push, and the alignment kernel is narrow
(5 cm), so a random policy almost never sees it: the exploration problem OmniReset's resets solve.

Observation (dict): ``state`` [14] = pusher pos (2), pusher vel (2), puck pos (2), puck vel (2),
puck - pusher (2), goal - puck (2), previous action (2); ``privileged_state`` [17] = state +
position targets (2) + position error (1).  Action [2]: pusher x/y relative targets.
Success: puck centre within 2 cm of the pocket's goal point (tilt is 0 in the plane).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from envs.manipulation.base import ActionGroup, ManipulationTask, RewardConfig, SimState

GOAL = np.array([0.365, 0.25], np.float32)
POCKET_X = (0.30, 0.40)  # inner extent of the pocket along x
POCKET_HALF_WIDTH = 0.035  # inner half-width along y
WORKSPACE = 0.43  # |x|, |y| limit used by samplers (joint ranges are 0.45)


class PushToSlot(ManipulationTask):
    xml_file = "push_to_slot.xml"
    n_substeps = 2  # timestep 0.01 -> control at 50 Hz
    action_groups = (
        ActionGroup(("pusher_x",), "relative", scale=0.08),
        ActionGroup(("pusher_y",), "relative", scale=0.08),
    )
    reward_config = RewardConfig(
        w_action=1e-3,
        w_action_rate=1e-3,
        w_joint_vel=1e-3,
        w_align=0.2,
        align_pos_scale=0.05,
        success_pos=0.02,
        success_tilt=1.0,  # no tilt in the plane
    )
    robot_joints = ("pusher_x", "pusher_y")
    hold_actuators = ("pusher_x", "pusher_y")

    def __init__(self, **kw):
        super().__init__(**kw)
        m = self.mj_model
        self._pusher_body = m.body("pusher").id
        self._puck_body = m.body("puck").id
        self.goal = jnp.asarray(GOAL)

    @property
    def observation_size(self) -> dict[str, int]:
        return {"state": 14, "privileged_state": 17}

    # qpos layout: [pusher_x, pusher_y, puck_x, puck_y]
    def nominal_state(self, key: jax.Array) -> SimState:
        k1, k2 = jax.random.split(key)
        pusher = jnp.array([-0.35, -0.35]) + jax.random.uniform(k1, (2,), minval=-0.03, maxval=0.03)
        puck = jnp.array([-0.1, -0.1]) + jax.random.uniform(k2, (2,), minval=-0.03, maxval=0.03)
        qpos = jnp.concatenate([pusher, puck])
        return SimState(qpos, jnp.zeros(4), pusher)

    def grip_pos(self, data: mjx.Data) -> jax.Array:
        return data.xpos[self._pusher_body]

    def obj_pos(self, data: mjx.Data) -> jax.Array:
        return data.xpos[self._puck_body]

    def task_errors(self, data: mjx.Data):
        pos_err = jnp.linalg.norm(data.qpos[2:4] - self.goal)
        return pos_err, jnp.zeros(())

    def _observation(self, data: mjx.Data, prev_action: jax.Array) -> dict[str, jax.Array]:
        q, v = data.qpos, data.qvel
        state = jnp.concatenate(
            [q[0:2], v[0:2], q[2:4], v[2:4], q[2:4] - q[0:2], self.goal - q[2:4], prev_action]
        )
        pos_err, _ = self.task_errors(data)
        priv = jnp.concatenate([state, data.ctrl, pos_err[None]])
        return {"state": state, "privileged_state": priv}

    def goal_state(self) -> SimState:
        """The puck seated at the goal, the pusher just outside the pocket (for tests)."""
        qpos = jnp.array([0.25, 0.25, GOAL[0], GOAL[1]], jnp.float32)
        return SimState(qpos, jnp.zeros(4), qpos[:2])
