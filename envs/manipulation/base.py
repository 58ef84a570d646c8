"""Shared machinery of our MJCF manipulation tasks: action mapping, restoring a simulator state,
the OmniReset reward, and the single-env ``reset`` / ``step`` API of MuJoCo Playground.

Actions are in ``[-1, 1]``.  Each action component drives one or more position actuators in
one of two modes (declared per task in ``ActionMap``):

* ``relative`` (arm joints): target = current joint position + ``scale * a``, clipped to the
  actuator's ctrl range (IsaacLab's relative joint-position action).  No wind-up, and a restored
  state needs no memory of past targets: holding still is ``a = 0``.
* ``absolute`` (gripper): target = ``open + (a + 1) / 2 * (closed - open)``, i.e. ``a = -1`` open,
  ``a = +1`` closed.

A simulator state to restore is a `SimState` (qpos, qvel, ctrl); OmniReset's datasets store them.
Restoring one for an episode (`ManipulationTask.restore`) writes qpos/qvel and sets EVERY
position actuator's target, gripper included, to its joint's restored position (OmniReset's
rule); the stored ctrl only serves the validation that produced the state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx
from mujoco_playground._src.mjx_env import State

ASSETS = Path(__file__).resolve().parent.parent / "assets"

NOMINAL_RESET = -1  # state.info['reset_type'] of the task's own (nominal) reset


class SimState(NamedTuple):
    """A restorable simulator state: joint positions, velocities and position-actuator targets."""

    qpos: jax.Array  # [nq]
    qvel: jax.Array  # [nv]
    ctrl: jax.Array  # [nu]


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights of the OmniReset reward (ALGORITHMS.md §3), one instance per task.

    r = - w_action |a|^2 - w_action_rate |a - a_prev|^2 - w_joint_vel |qdot_robot|^2
        + 0.1 (1 - tanh(|p_grip - p_obj|))
        + w_align (1 - tanh(e_pos / align_pos_scale)) (1 - tanh(e_tilt / align_tilt_scale))
        + 1[e_pos < success_pos and e_tilt < success_tilt]
    """

    w_action: float = 1e-3  # small action penalty
    w_action_rate: float = 1e-3  # smoothness penalty
    w_joint_vel: float = 1e-4  # robot joint-velocity penalty
    w_reach: float = 0.1  # paper: 0.1 (1 - tanh(distance))
    w_align: float = 0.2  # alignment of object and goal, position x tilt kernel
    align_pos_scale: float = 0.05  # metres; small => alignment is only felt close to the goal
    align_tilt_scale: float = 0.5  # radians
    success_pos: float = 0.01  # metres: position error under this (and tilt) => +1
    success_tilt: float = 0.1  # radians


def omnireset_reward(
    cfg: RewardConfig,
    action: jax.Array,
    prev_action: jax.Array,
    robot_qvel: jax.Array,
    grip_pos: jax.Array,
    obj_pos: jax.Array,
    pos_err: jax.Array,
    tilt_err: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reward shared by all OmniReset tasks; returns (reward, named terms)."""
    success = ((pos_err < cfg.success_pos) & (tilt_err < cfg.success_tilt)).astype(jnp.float32)
    terms = {
        "action_penalty": -cfg.w_action * jnp.sum(action**2),
        "action_rate_penalty": -cfg.w_action_rate * jnp.sum((action - prev_action) ** 2),
        "joint_vel_penalty": -cfg.w_joint_vel * jnp.sum(robot_qvel**2),
        "reach": cfg.w_reach * (1.0 - jnp.tanh(jnp.linalg.norm(grip_pos - obj_pos))),
        "align": cfg.w_align
        * (1.0 - jnp.tanh(pos_err / cfg.align_pos_scale))
        * (1.0 - jnp.tanh(tilt_err / cfg.align_tilt_scale)),
        "success_bonus": success,
    }
    reward = sum(terms.values())
    return reward.astype(jnp.float32), {**terms, "success": success}


@dataclasses.dataclass(frozen=True)
class ActionGroup:
    """One action component -> actuators (by name) in one mode; see the module docstring."""

    actuators: tuple[str, ...]
    mode: str  # "relative" | "absolute"
    scale: float = 0.0  # relative: max target offset per step (joint units)
    open: float = 0.0  # absolute: target at a = -1
    closed: float = 0.0  # absolute: target at a = +1


class ManipulationTask:
    """Base class: subclasses give the MJCF file, action groups, nominal state and task errors.

    Subclass hooks: ``nominal_state(key)``, ``grip_pos(data)``, ``obj_pos(data)``,
    ``task_errors(data) -> (pos_err, tilt_err)``, ``_observation(data, prev_action)``,
    ``drift_points(data) -> [k, 3]``.
    """

    # Subclasses build privileged_state as [state, extras]: replay stores it once (slicing state).
    STATE_IN_PRIVILEGED = True

    xml_file: str = ""
    n_substeps: int = 1
    action_groups: tuple[ActionGroup, ...] = ()
    reward_config: RewardConfig = RewardConfig()
    robot_joints: tuple[str, ...] = ()  # joints whose velocity is penalised
    hold_actuators: tuple[str, ...] = ()  # actuators made compliant while settling / pushing apart

    def __init__(self, reward_config: RewardConfig | None = None, **reward_overrides: Any):
        if reward_config is not None:
            self.reward_config = reward_config
        if reward_overrides:
            self.reward_config = dataclasses.replace(self.reward_config, **reward_overrides)
        self.xml_path = str(ASSETS / self.xml_file)
        self._mj_model = mujoco.MjModel.from_xml_path(self.xml_path)
        self._mjx_model = mjx.put_model(self._mj_model, impl="jax")
        m = self._mj_model
        self._data_template = mjx.make_data(self._mjx_model)
        self._build_action_map()
        self._robot_dofs = np.array(
            [m.jnt_dofadr[m.joint(j).id] for j in self.robot_joints], np.int32
        )
        self._hold_act = np.array([m.actuator(a).id for a in self.hold_actuators], np.int32)
        self._hold_qpos = np.array(
            [m.jnt_qposadr[m.actuator_trnid[m.actuator(a).id, 0]] for a in self.hold_actuators],
            np.int32,
        )

    # --------------------------------------------------------------- model
    @property
    def mj_model(self) -> mujoco.MjModel:
        return self._mj_model

    @property
    def mjx_model(self) -> mjx.Model:
        return self._mjx_model

    @property
    def dt(self) -> float:
        return float(self._mj_model.opt.timestep) * self.n_substeps

    @property
    def action_size(self) -> int:
        return len(self.action_groups)

    @property
    def nq(self) -> int:
        return int(self._mj_model.nq)

    @property
    def nv(self) -> int:
        return int(self._mj_model.nv)

    @property
    def nu(self) -> int:
        return int(self._mj_model.nu)

    @property
    def body_names(self) -> tuple[str, ...]:
        m = self._mj_model
        return tuple(m.body(i).name for i in range(m.nbody))

    @property
    def name(self) -> str:
        return type(self).__name__

    def _build_action_map(self) -> None:
        m = self._mj_model
        nu = m.nu
        mix = np.zeros((len(self.action_groups), nu), np.float32)  # [A, nu]
        relative = np.zeros(nu, bool)
        scale = np.zeros(nu, np.float32)
        lo = np.zeros(nu, np.float32)
        hi = np.zeros(nu, np.float32)
        for i, g in enumerate(self.action_groups):
            for name in g.actuators:
                a = m.actuator(name).id
                mix[i, a] = 1.0
                relative[a] = g.mode == "relative"
                scale[a] = g.scale
                lo[a], hi[a] = g.open, g.closed
        if not np.all(mix.sum(0) == 1):
            raise ValueError(f"{self.name}: every actuator must be driven by exactly one action")
        self._mix, self._relative, self._scale, self._abs_lo, self._abs_hi = (
            mix,
            relative,
            scale,
            lo,
            hi,
        )
        self._act_qpos = np.array(
            [m.jnt_qposadr[m.actuator_trnid[a, 0]] for a in range(nu)], np.int32
        )
        self._ctrl_lo = m.actuator_ctrlrange[:, 0].astype(np.float32)
        self._ctrl_hi = m.actuator_ctrlrange[:, 1].astype(np.float32)

    def action_to_ctrl(self, qpos: jax.Array, action: jax.Array) -> jax.Array:
        """[A] action in [-1, 1] -> [nu] position targets (see the module docstring)."""
        a = action @ self._mix  # [nu]
        rel = qpos[self._act_qpos] + self._scale * a
        ab = self._abs_lo + 0.5 * (a + 1.0) * (self._abs_hi - self._abs_lo)
        ctrl = jnp.where(self._relative, rel, ab)
        return jnp.clip(ctrl, self._ctrl_lo, self._ctrl_hi)

    def restore_ctrl(self, qpos: jax.Array) -> jax.Array:
        """[nu] targets of EVERY position actuator, gripper included, at its joint's position in
        ``qpos`` (clipped to the ctrl range): the restore rule of OmniReset."""
        return jnp.clip(qpos[self._act_qpos], self._ctrl_lo, self._ctrl_hi)

    def restore(self, sim: SimState) -> SimState:
        """``sim`` as an episode starts from it: qpos/qvel as stored, targets from `restore_ctrl`."""
        return sim._replace(ctrl=self.restore_ctrl(jnp.asarray(sim.qpos, jnp.float32)))

    def hold_ctrl(self, qpos: jax.Array, ctrl: jax.Array) -> jax.Array:
        """Targets of the ``hold_actuators`` set to their joints' positions, the others kept (the
        compliance used while validating / generating states; a grasp keeps its squeeze)."""
        if len(self._hold_act) == 0:
            return ctrl
        held = jnp.clip(
            qpos[self._hold_qpos], self._ctrl_lo[self._hold_act], self._ctrl_hi[self._hold_act]
        )
        return ctrl.at[self._hold_act].set(held)

    # -------------------------------------------------------------- physics
    def make_data(self, sim: SimState) -> mjx.Data:
        """A forward-computed mjx.Data at ``sim`` (qpos, qvel, ctrl written as given)."""
        d = self._data_template.replace(
            qpos=jnp.asarray(sim.qpos, jnp.float32),
            qvel=jnp.asarray(sim.qvel, jnp.float32),
            ctrl=jnp.asarray(sim.ctrl, jnp.float32),
        )
        return mjx.forward(self._mjx_model, d)

    def physics_step(self, data: mjx.Data) -> mjx.Data:
        """One control period: ``n_substeps`` MJX steps with the targets in ``data.ctrl``."""

        def body(_, d):
            return mjx.step(self._mjx_model, d)

        return jax.lax.fori_loop(0, self.n_substeps, body, data)

    def penetration(self, data: mjx.Data) -> jax.Array:
        """Deepest contact penetration in metres (>= 0) over the model's contact pairs."""
        impl = getattr(data, "_impl", data)
        dist = impl.contact.dist
        if dist.shape[0] == 0:
            return jnp.zeros((), jnp.float32)
        return jnp.maximum(-jnp.min(dist), 0.0)

    def sim_state(self, data: mjx.Data) -> SimState:
        return SimState(data.qpos, data.qvel, data.ctrl)

    # ------------------------------------------------------------ subclass
    def nominal_state(self, key: jax.Array) -> SimState:
        raise NotImplementedError

    def grip_pos(self, data: mjx.Data) -> jax.Array:
        raise NotImplementedError

    def obj_pos(self, data: mjx.Data) -> jax.Array:
        raise NotImplementedError

    def task_errors(self, data: mjx.Data) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def drift_points(self, data: mjx.Data) -> jax.Array:
        """[k, 3] points whose displacement during validation counts as drift."""
        return jnp.stack(
            [self.obj_pos(data), self.grip_pos(data), self.obj_pos(data) - self.grip_pos(data)]
        )

    def _observation(self, data: mjx.Data, prev_action: jax.Array) -> dict[str, jax.Array]:
        raise NotImplementedError

    # ------------------------------------------------------------- env API
    def reset(self, key: jax.Array) -> State:
        """The nominal start (evaluation start): ``info['reset_type'] == -1``."""
        key, sub = jax.random.split(key)
        return self.reset_to(self.nominal_state(sub), NOMINAL_RESET, key)

    def reset_to(
        self, sim: SimState, reset_type: jax.Array | int, key: jax.Array | None = None
    ) -> State:
        """Start an episode at ``sim``; the dataset reset types go through here."""
        data = self.make_data(sim)
        prev = jnp.zeros((self.action_size,), jnp.float32)
        _, terms = self._reward(data, prev, prev)
        metrics = {k: jnp.zeros((), jnp.float32) for k in terms}
        metrics["success"] = terms["success"]
        metrics["pos_err"], metrics["tilt_err"] = (
            e.astype(jnp.float32) for e in self.task_errors(data)
        )
        info = {
            "prev_action": prev,
            "reset_type": jnp.asarray(reset_type, jnp.int32),
            "rng": key if key is not None else jax.random.PRNGKey(0),
        }
        return State(
            data=data,
            obs=self._observation(data, prev),
            reward=jnp.zeros((), jnp.float32),
            done=jnp.zeros((), jnp.float32),
            metrics=metrics,
            info=info,
        )

    def _reward(self, data: mjx.Data, action: jax.Array, prev_action: jax.Array):
        pos_err, tilt_err = self.task_errors(data)
        return omnireset_reward(
            self.reward_config,
            action,
            prev_action,
            data.qvel[self._robot_dofs],
            self.grip_pos(data),
            self.obj_pos(data),
            pos_err,
            tilt_err,
        )

    def step(self, state: State, action: jax.Array) -> State:
        action = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        data = state.data.replace(ctrl=self.action_to_ctrl(state.data.qpos, action))
        data = self.physics_step(data)
        prev = state.info["prev_action"]
        reward, terms = self._reward(data, action, prev)
        metrics = dict(state.metrics)
        metrics.update({k: v.astype(jnp.float32) for k, v in terms.items()})
        metrics["pos_err"], metrics["tilt_err"] = (
            e.astype(jnp.float32) for e in self.task_errors(data)
        )
        info = dict(state.info)
        info["prev_action"] = action
        return state.replace(
            data=data,
            obs=self._observation(data, action),
            reward=reward,
            done=jnp.zeros((), jnp.float32),  # no success termination: fixed-length episodes
            metrics=metrics,
            info=info,
        )


def quat_to_mat(q: jax.Array) -> jax.Array:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix."""
    w, x, y, z = q[0], q[1], q[2], q[3]
    return jnp.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def mat_to_quat(r: jax.Array) -> jax.Array:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) (Shepperd's method, jit-friendly)."""
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    cands = jnp.stack(
        [
            jnp.array([1 + tr, r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]),
            jnp.array(
                [
                    r[2, 1] - r[1, 2],
                    1 + r[0, 0] - r[1, 1] - r[2, 2],
                    r[0, 1] + r[1, 0],
                    r[0, 2] + r[2, 0],
                ]
            ),
            jnp.array(
                [
                    r[0, 2] - r[2, 0],
                    r[0, 1] + r[1, 0],
                    1 - r[0, 0] + r[1, 1] - r[2, 2],
                    r[1, 2] + r[2, 1],
                ]
            ),
            jnp.array(
                [
                    r[1, 0] - r[0, 1],
                    r[0, 2] + r[2, 0],
                    r[1, 2] + r[2, 1],
                    1 - r[0, 0] - r[1, 1] + r[2, 2],
                ]
            ),
        ]
    )
    i = jnp.argmax(jnp.array([tr, r[0, 0], r[1, 1], r[2, 2]]))
    q = cands[i]
    q = q / jnp.linalg.norm(q)
    return q * jnp.where(q[0] < 0, -1.0, 1.0)
