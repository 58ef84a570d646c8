"""PegInsertion: pick a square peg and insert it into a square hole (OmniReset's canonical task).

Robot: a gantry arm — x, y, z slides, yaw and pitch hinges (relative position targets) — with a
parallel two-finger gripper (two slide joints, one absolute action: -1 open, +1 closed).
Peg: a 2.4 x 2.4 x 8 cm box with a free joint.  Fixture: four boxes around a 2.9 cm square hole,
4 cm high, at (0.15, 0).  Fully inserted = peg bottom on the table, peg centre at the ``goal``.
The fingers do not collide with the fixture (contacts are explicit pairs; see the MJCF).

Observation (dict): ``state`` [35] = robot joint positions (7) and velocities (7), peg position
(3), first two columns of the peg's rotation matrix (6), peg - grip point (3), goal - peg (3),
previous action (6); ``privileged_state`` [50] = state + peg linear/angular velocity (6) +
actuator targets (7) + position and tilt errors (2).  Action [6]: x, y, z, yaw, pitch, gripper.
Success: peg centre within 8 mm of the goal and peg axis within 0.1 rad of vertical (the hole is
square and the peg symmetric, so upside-down counts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from envs.manipulation.base import (
    ActionGroup,
    ManipulationTask,
    RewardConfig,
    SimState,
    quat_to_mat,
)

PEG_HALF = np.array([0.012, 0.012, 0.04], np.float32)
GOAL = np.array([0.15, 0.0, 0.04], np.float32)
FIXTURE_TOP = 0.04
FINGER_INNER = 0.001  # inner finger face offset from the grip axis at finger q = 0
FINGER_MAX = 0.03  # finger joint range [0, FINGER_MAX]
GRIP_BELOW_PALM = 0.045  # grip site below the palm centre (wrist frame -z)
HOME = np.array([0.0, -0.15, 0.2, 0.0, 0.0, FINGER_MAX, FINGER_MAX], np.float32)

# qpos layout: arm x, y, z, yaw, pitch, finger_left, finger_right (0..6), peg pos (7..9), quat (10..13)
ARM = slice(0, 7)
PEG_POS = slice(7, 10)
PEG_QUAT = slice(10, 14)


class PegInsertion(ManipulationTask):
    xml_file = "peg_insertion.xml"
    n_substeps = 4  # timestep 0.005 -> control at 50 Hz
    action_groups = (
        ActionGroup(("arm_x",), "relative", scale=0.05),
        ActionGroup(("arm_y",), "relative", scale=0.05),
        ActionGroup(("arm_z",), "relative", scale=0.05),
        ActionGroup(("arm_yaw",), "relative", scale=0.2),
        ActionGroup(("arm_pitch",), "relative", scale=0.2),
        ActionGroup(("finger_left", "finger_right"), "absolute", open=FINGER_MAX, closed=0.0),
    )
    reward_config = RewardConfig(
        w_align=0.5,
        align_pos_scale=0.1,
        align_tilt_scale=0.5,
        success_pos=0.008,
        success_tilt=0.1,
    )
    robot_joints = (
        "arm_x",
        "arm_y",
        "arm_z",
        "arm_yaw",
        "arm_pitch",
        "finger_left",
        "finger_right",
    )
    hold_actuators = (
        "arm_x",
        "arm_y",
        "arm_z",
        "arm_yaw",
        "arm_pitch",
    )  # while validating, the gripper keeps its command (a grasp keeps squeezing)

    def __init__(self, **kw):
        super().__init__(**kw)
        m = self.mj_model
        self._peg_body = m.body("peg").id
        self._grip_site = m.site("grip").id
        self.goal = jnp.asarray(GOAL)

    @property
    def observation_size(self) -> dict[str, int]:
        return {"state": 35, "privileged_state": 50}

    def nominal_state(self, key: jax.Array) -> SimState:
        """Arm at home with the gripper open; peg upright at a random spot and yaw on the left."""
        k1, k2 = jax.random.split(key)
        xy = jax.random.uniform(
            k1, (2,), minval=jnp.array([-0.2, 0.05]), maxval=jnp.array([-0.05, 0.2])
        )
        yaw = jax.random.uniform(k2, (), minval=-np.pi, maxval=np.pi)
        quat = jnp.array([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)])
        qpos = jnp.concatenate([jnp.asarray(HOME), xy, jnp.array([PEG_HALF[2] + 1e-4]), quat])
        ctrl = jnp.asarray(HOME)
        return SimState(qpos, jnp.zeros(self.nv), ctrl)

    def grip_pos(self, data: mjx.Data) -> jax.Array:
        return data.site_xpos[self._grip_site]

    def obj_pos(self, data: mjx.Data) -> jax.Array:
        return data.xpos[self._peg_body]

    def peg_rot(self, data: mjx.Data) -> jax.Array:
        return data.xmat[self._peg_body]

    def task_errors(self, data: mjx.Data):
        pos_err = jnp.linalg.norm(self.obj_pos(data) - self.goal)
        cos_tilt = jnp.clip(jnp.abs(self.peg_rot(data)[2, 2]), 0.0, 1.0)
        return pos_err, jnp.arccos(cos_tilt)

    def _observation(self, data: mjx.Data, prev_action: jax.Array) -> dict[str, jax.Array]:
        q, v = data.qpos, data.qvel
        peg = self.obj_pos(data)
        rot = self.peg_rot(data)
        state = jnp.concatenate(
            [
                q[ARM],
                v[0:7],
                peg,
                rot[:, 0],
                rot[:, 1],
                peg - self.grip_pos(data),
                self.goal - peg,
                prev_action,
            ]
        )
        pos_err, tilt_err = self.task_errors(data)
        priv = jnp.concatenate([state, v[7:13], data.ctrl, jnp.stack([pos_err, tilt_err])])
        return {"state": state, "privileged_state": priv}

    # ----------------------------------------------------- for samplers/tests
    def goal_state(self) -> SimState:
        """Peg fully inserted, gripper open above it (a hand-made success state)."""
        arm = jnp.array([GOAL[0], GOAL[1], 0.2, 0.0, 0.0, FINGER_MAX, FINGER_MAX])
        peg = jnp.array([GOAL[0], GOAL[1], GOAL[2] + 1e-4, 1.0, 0.0, 0.0, 0.0])
        qpos = jnp.concatenate([arm, peg])
        return SimState(qpos, jnp.zeros(self.nv), arm)

    @staticmethod
    def peg_quat_to_mat(quat: jax.Array) -> jax.Array:
        return quat_to_mat(quat)
