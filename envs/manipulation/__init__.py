"""Our own manipulation tasks, built from primitive geoms (no downloaded assets).

Registered names (``envs.make(name, num_envs)``):

* ``PegInsertion`` — gantry arm + parallel gripper inserts a square peg into a square hole.
* ``PushToSlot`` — planar pusher pushes a puck into a narrow pocket (cheap; hard exploration
  from the nominal start).

Both use the OmniReset reward (`base.omnireset_reward`), never terminate, and put the success
indicator in ``state.metrics['success']``.
"""

from envs.manipulation.base import ManipulationTask, RewardConfig, SimState, omnireset_reward
from envs.manipulation.peg_insertion import PegInsertion
from envs.manipulation.push_to_slot import PushToSlot
from envs.registry import register

TASKS = {"PegInsertion": PegInsertion, "PushToSlot": PushToSlot}


@register("PegInsertion", episode_length=250)
def make_peg_insertion(**overrides) -> PegInsertion:
    return PegInsertion(**overrides)


@register("PushToSlot", episode_length=200)
def make_push_to_slot(**overrides) -> PushToSlot:
    return PushToSlot(**overrides)


__all__ = [
    "TASKS",
    "ManipulationTask",
    "PegInsertion",
    "PushToSlot",
    "RewardConfig",
    "SimState",
    "omnireset_reward",
]
