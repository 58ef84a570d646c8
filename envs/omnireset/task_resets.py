"""The reset types of our tasks (ALGORITHMS.md §3), as `ResetType`s with pure-JAX samplers.

PegInsertion (the paper's four):
  0 ``anywhere``     peg anywhere in any orientation (it falls and settles), arm joints sampled
                     uniformly in their ranges (gantry: the joint values *are* the FK pose, so
                     every sample is reachable), gripper open or closed.
  1 ``grasp_ready``  peg resting (upright or lying, random yaw), gripper open around an antipodal
                     grasp sampled on a pair of opposite peg faces, with a little noise.
  2 ``grasped``      peg in any orientation, possibly in the air, held in an antipodal grasp with
                     the fingers closed; validated with a shake test (arm targets wobble for the
                     first steps; the peg must stay in the hand).
  3 ``near_goal``    peg partially inserted and grasped: from the assembled, grasped state, random
                     upward wrenches (``xfrc_applied``) push peg and compliant arm out of the hole;
                     a frame logged while still assembled is the candidate.
PushToSlot (simpler analogues): ``anywhere``, ``near_object`` (pusher next to the puck),
``near_goal`` (puck pushed out of the pocket by random forces, pusher next to it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from envs.manipulation import peg_insertion as peg
from envs.manipulation import push_to_slot as push
from envs.manipulation.base import ManipulationTask, SimState, mat_to_quat, quat_to_mat
from envs.omnireset.dataset import SETTLE_SECONDS, ResetType, ValidationLimits


def settle_steps_of(task: ManipulationTask) -> int:
    """Control steps of ``task`` that make `SETTLE_SECONDS`."""
    return round(SETTLE_SECONDS / task.dt)


# ------------------------------------------------------------------- shared
def push_apart_frame(
    task: ManipulationTask,
    start: SimState,
    body: int,
    wrench: jax.Array,  # [6] force, torque on ``body``
    steps: int,
    assembled: Callable[[jax.Array], jax.Array],  # qpos -> bool
    key: jax.Array,
) -> SimState:
    """Push ``body`` out of its assembled pose with a constant wrench, the held actuators made
    compliant (targets follow the joints), logging every control step; return one frame drawn
    uniformly among those still assembled (the start itself if none), at rest (qvel = 0)."""
    data = task.make_data(start)
    xfrc = data.xfrc_applied.at[body].set(wrench)

    def body_fn(d, _):
        d = d.replace(xfrc_applied=xfrc, ctrl=task.hold_ctrl(d.qpos, d.ctrl))
        d = task.physics_step(d)
        return d, d.qpos

    _, frames = jax.lax.scan(body_fn, data, None, length=steps)  # [T, nq]
    frames = jnp.concatenate([start.qpos[None], frames], 0)
    ok = jax.vmap(assembled)(frames) & jnp.all(jnp.isfinite(frames), axis=-1)
    ok = ok.at[0].set(True)
    i = jax.random.categorical(key, jnp.where(ok, 0.0, -jnp.inf))
    qpos = frames[i]
    return SimState(qpos, jnp.zeros_like(start.qvel), task.hold_ctrl(qpos, start.ctrl))


def _uniform_quat(key: jax.Array) -> jax.Array:
    q = jax.random.normal(key, (4,))
    return q / jnp.linalg.norm(q)


def _rz(a: jax.Array) -> jax.Array:
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ry(a: jax.Array) -> jax.Array:
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rx(a: jax.Array) -> jax.Array:
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ------------------------------------------------------------- PegInsertion
PEG_REGION_LO = np.array([-0.25, -0.22], np.float32)
PEG_REGION_HI = np.array([0.05, 0.22], np.float32)  # left of the fixture


def _peg_xy(key):
    return jax.random.uniform(key, (2,), minval=PEG_REGION_LO, maxval=PEG_REGION_HI)


def gripper_joints_for_grasp(
    grip_point: jax.Array, closing_axis: jax.Array, finger_q: jax.Array
) -> jax.Array:
    """Inverse kinematics of the gantry: arm qpos [7] placing the grip point at ``grip_point``
    with the fingers closing along ``closing_axis`` (unit, world).  Fingers slide along the
    wrist's x axis, R_wrist = Rz(yaw) Ry(pitch); the sign of the axis is folded so |yaw| <= pi/2."""
    c = closing_axis * jnp.where(closing_axis[0] < 0, -1.0, 1.0)
    pitch = -jnp.arcsin(jnp.clip(c[2], -1.0, 1.0))
    yaw = jnp.arctan2(c[1], c[0])
    r = _rz(yaw) @ _ry(pitch)
    palm = grip_point + peg.GRIP_BELOW_PALM * r[:, 2]
    return jnp.concatenate([palm, jnp.stack([yaw, pitch, finger_q, finger_q])])


def sample_antipodal_grasp(
    key: jax.Array, rot: jax.Array, center: jax.Array, resting: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Antipodal grasp on the box peg: pick a pair of opposite faces (normals +-R e_k) whose
    distance fits the open gripper; for a resting peg the closing axis must be near-horizontal
    (top-down grasp) and the grip point lies in the upper half.  Returns (grip point, closing
    axis, half-width of the peg along it)."""
    k_axis, k_off = jax.random.split(key)
    half = jnp.asarray(peg.PEG_HALF)
    fits = half < (peg.FINGER_INNER + peg.FINGER_MAX - 0.003)
    horizontal = jnp.abs(rot[2, :]) < 0.3
    valid = fits & (horizontal | (not resting))
    k = jax.random.categorical(k_axis, jnp.where(valid, 0.0, -jnp.inf))
    axis = rot[:, k]
    u = jax.random.uniform(k_off, (3,), minval=-1.0, maxval=1.0)
    slack = jnp.maximum(half - 0.008, 0.0)  # keep the finger pads on the face
    vertical = jnp.abs(rot[2, :]) > 0.7
    upper = jnp.abs(u) * half * jnp.sign(rot[2, :])  # offset towards the top along vertical axes
    offset = jnp.where(resting & vertical, upper, u * slack)
    offset = offset.at[k].set(0.0)
    point = center + rot @ offset
    point = point.at[2].set(jnp.maximum(point[2], 0.02))  # finger tips clear of the table
    return point, axis, half[k]


def _peg_qpos(arm: jax.Array, center: jax.Array, rot: jax.Array) -> jax.Array:
    return jnp.concatenate([arm, center, mat_to_quat(rot)])


def peg_anywhere(task: peg.PegInsertion) -> ResetType:
    m = task.mj_model
    lo = np.array(
        [m.jnt_range[m.joint(j).id, 0] for j in ("arm_x", "arm_y", "arm_z", "arm_yaw", "arm_pitch")]
    )
    hi = np.array(
        [m.jnt_range[m.joint(j).id, 1] for j in ("arm_x", "arm_y", "arm_z", "arm_yaw", "arm_pitch")]
    )
    lo[2], lo[4], hi[4] = (
        0.08,
        -1.0,
        1.0,
    )  # keep the fingers above the table and mostly pointing down

    def sampler(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        rot = quat_to_mat(_uniform_quat(k1))
        half = jnp.asarray(peg.PEG_HALF)
        z = jnp.sum(jnp.abs(rot[2, :]) * half) + 1e-3  # lowest corner just above the table
        center = jnp.concatenate([_peg_xy(k2), z[None]])
        joints = jax.random.uniform(k3, (5,), minval=lo, maxval=hi)
        finger = jnp.where(jax.random.bernoulli(k4), peg.FINGER_MAX, 0.0)
        arm = jnp.concatenate([joints, jnp.stack([finger, finger])])
        qpos = _peg_qpos(arm, center, rot)
        return SimState(qpos, jnp.zeros(task.nv), arm)

    # The peg may tip over onto a face while settling: generous drift bound.
    limits = ValidationLimits(max_drift=0.2, settle_steps=settle_steps_of(task))
    return ResetType("anywhere", sampler, limits)


def _resting_peg(key):
    k1, k2, k3 = jax.random.split(key, 3)
    lie = jax.random.randint(k1, (), 0, 3)  # 0 upright, 1/2 lying on a side face
    base = jnp.stack([jnp.eye(3), _rx(jnp.pi / 2), _ry(jnp.pi / 2)])[lie]
    rot = _rz(jax.random.uniform(k2, (), minval=-jnp.pi, maxval=jnp.pi)) @ base
    height = jnp.sum(jnp.abs(rot[2, :]) * jnp.asarray(peg.PEG_HALF)) + 1e-4
    center = jnp.concatenate([_peg_xy(k3), height[None]])
    return center, rot


def peg_grasp_ready(task: peg.PegInsertion) -> ResetType:
    def sampler(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        center, rot = _resting_peg(k1)
        point, axis, _ = sample_antipodal_grasp(k2, rot, center, resting=True)
        noise = jax.random.normal(k3, (3,)) * jnp.array([0.004, 0.004, 0.0])
        lift = jax.random.uniform(k4, (), minval=0.0, maxval=0.02)
        point = point + noise + jnp.array([0.0, 0.0, 1.0]) * lift
        arm = gripper_joints_for_grasp(point, axis, jnp.asarray(peg.FINGER_MAX))
        return SimState(_peg_qpos(arm, center, rot), jnp.zeros(task.nv), arm)

    limits = ValidationLimits(max_drift=0.02, settle_steps=settle_steps_of(task))
    return ResetType("grasp_ready", sampler, limits)


def _closed_on(half_width):
    """Finger joint value touching a face at ``half_width`` with a slight squeeze."""
    return jnp.maximum(half_width - peg.FINGER_INNER - 3e-4, 0.0)


def peg_grasped(task: peg.PegInsertion) -> ResetType:
    def sampler(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        rot = quat_to_mat(_uniform_quat(k1))
        lowest = jnp.sum(jnp.abs(rot[2, :]) * jnp.asarray(peg.PEG_HALF))
        z = jax.random.uniform(k3, (), minval=lowest + 0.002, maxval=0.2)
        center = jnp.concatenate([_peg_xy(k2), z[None]])
        point, axis, half = sample_antipodal_grasp(k4, rot, center, resting=False)
        q = _closed_on(half)
        arm = gripper_joints_for_grasp(point, axis, q)
        ctrl = arm.at[5:7].set(0.0)  # fingers commanded closed
        return SimState(_peg_qpos(arm, center, rot), jnp.zeros(task.nv), ctrl)

    limits = ValidationLimits(max_drift=0.02, settle_steps=settle_steps_of(task), shake_amplitude=0.03,
                              shake_steps=25)
    return ResetType("grasped", sampler, limits)


def peg_near_goal(task: peg.PegInsertion, push_steps: int = 30) -> ResetType:
    peg_body = task.mj_model.body("peg").id

    def assembled(qpos):  # peg bottom still below the fixture top, peg near the hole axis
        c = qpos[peg.PEG_POS]
        return (c[2] - peg.PEG_HALF[2] < peg.FIXTURE_TOP - 0.005) & (
            jnp.linalg.norm(c[:2] - peg.GOAL[:2]) < 0.01
        )

    def sampler(key):
        k1, k2, k3, k4, k5, k6, k7, k8 = jax.random.split(key, 8)
        yaw = jax.random.randint(k1, (), 0, 4) * (jnp.pi / 2) + jax.random.uniform(
            k2, (), minval=-0.02, maxval=0.02
        )
        rot = _rz(yaw)
        center = jnp.asarray(peg.GOAL) + jnp.array([0.0, 0.0, 1e-4])
        k = jax.random.randint(k3, (), 0, 2)
        axis = rot[:, k]
        off = jax.random.uniform(
            k4, (2,), minval=jnp.array([0.018, -0.003]), maxval=jnp.array([0.032, 0.003])
        )
        point = center + off[0] * rot[:, 2] + off[1] * rot[:, 1 - k]
        arm = gripper_joints_for_grasp(point, axis, _closed_on(jnp.asarray(peg.PEG_HALF)[k]))
        start = SimState(_peg_qpos(arm, center, rot), jnp.zeros(task.nv), arm.at[5:7].set(0.0))
        force = jnp.concatenate(
            [
                jax.random.normal(k5, (2,)) * 0.3,
                jax.random.uniform(k6, (1,), minval=2.0, maxval=8.0),
            ]
        )
        torque = jax.random.normal(k7, (3,)) * 0.005
        return push_apart_frame(
            task, start, peg_body, jnp.concatenate([force, torque]), push_steps, assembled, k8
        )

    limits = ValidationLimits(max_drift=0.02, settle_steps=settle_steps_of(task))
    return ResetType("near_goal", sampler, limits)


# --------------------------------------------------------------- PushToSlot
def _push_limits(task: push.PushToSlot):
    return ValidationLimits(max_qvel=0.02, max_penetration=0.002, max_drift=0.02,
                            settle_steps=settle_steps_of(task))


def push_anywhere(task: push.PushToSlot) -> ResetType:
    def sampler(key):
        qpos = jax.random.uniform(key, (4,), minval=-push.WORKSPACE, maxval=push.WORKSPACE)
        return SimState(qpos, jnp.zeros(4), qpos[:2])

    return ResetType("anywhere", sampler, _push_limits(task))


def _pusher_next_to(key, puck):
    k1, k2 = jax.random.split(key)
    ang = jax.random.uniform(k1, (), minval=-jnp.pi, maxval=jnp.pi)
    dist = jax.random.uniform(k2, (), minval=0.05, maxval=0.1)
    pusher = puck + dist * jnp.stack([jnp.cos(ang), jnp.sin(ang)])
    return jnp.clip(pusher, -push.WORKSPACE, push.WORKSPACE)


def push_near_object(task: push.PushToSlot) -> ResetType:
    def sampler(key):
        k1, k2 = jax.random.split(key)
        puck = jax.random.uniform(
            k1, (2,), minval=-push.WORKSPACE + 0.03, maxval=push.WORKSPACE - 0.03
        )
        pusher = _pusher_next_to(k2, puck)
        qpos = jnp.concatenate([pusher, puck])
        return SimState(qpos, jnp.zeros(4), pusher)

    return ResetType("near_object", sampler, _push_limits(task))


def push_near_goal(task: push.PushToSlot, push_steps: int = 30) -> ResetType:
    puck_body = task.mj_model.body("puck").id
    goal = jnp.asarray(push.GOAL)

    def assembled(qpos):  # "disassembled" once the puck is 15 cm from the goal
        return jnp.linalg.norm(qpos[2:4] - goal) < 0.15

    def sampler(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        start_q = jnp.concatenate([jnp.array([0.1, -0.3]), goal])
        start = SimState(start_q, jnp.zeros(4), start_q[:2])
        f = jnp.array(
            [-jax.random.uniform(k1, (), minval=0.3, maxval=1.5), jax.random.normal(k4, ()) * 0.3]
        )
        wrench = jnp.concatenate([f, jnp.zeros(4)])
        out = push_apart_frame(task, start, puck_body, wrench, push_steps, assembled, k2)
        pusher = _pusher_next_to(k3, out.qpos[2:4])
        qpos = out.qpos.at[0:2].set(pusher)
        return SimState(qpos, jnp.zeros(4), pusher)

    return ResetType("near_goal", sampler, _push_limits(task))


# ------------------------------------------------------------------ registry
def default_reset_types(task: ManipulationTask, settle_steps: int | None = None) -> list[ResetType]:
    """The reset types of ``task`` (optionally with a different settling time, e.g. in tests)."""
    if isinstance(task, peg.PegInsertion):
        types = [peg_anywhere(task), peg_grasp_ready(task), peg_grasped(task), peg_near_goal(task)]
    elif isinstance(task, push.PushToSlot):
        types = [push_anywhere(task), push_near_object(task), push_near_goal(task)]
    else:
        raise ValueError(f"no OmniReset reset types defined for task {task.name!r}")  # noqa: TRY004
    if settle_steps is not None:
        import dataclasses

        if settle_steps < 1:
            raise ValueError(f"settle_steps must be >= 1 control step, got {settle_steps}")

        types = [
            dataclasses.replace(
                t,
                limits=dataclasses.replace(
                    t.limits,
                    settle_steps=settle_steps,
                    shake_steps=min(t.limits.shake_steps, settle_steps // 2),
                ),
            )
            for t in types
        ]
    return types
