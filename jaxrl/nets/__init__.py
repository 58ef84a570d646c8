"""jaxrl.nets: norm-bounded blocks (unit dense, bounded BN / RMSNorm, projection) and FlashSAC's heads;
plain MLPs (`mlp`: SAC's MLP and twin Q) and PPO's actor and value nets (`sde`)."""

from jaxrl.nets.bounded import (
    BoundedBatchNorm,
    BoundedRMSNorm,
    BoundedTrunk,
    InvertedResidualBlock,
    UnitDense,
    project,
)
from jaxrl.nets.heads import (
    CategoricalCritic,
    TanhGaussianActor,
    critic_ensemble,
    sample_tanh_gaussian,
)

__all__ = [
    "BoundedBatchNorm",
    "BoundedRMSNorm",
    "BoundedTrunk",
    "CategoricalCritic",
    "InvertedResidualBlock",
    "TanhGaussianActor",
    "UnitDense",
    "critic_ensemble",
    "project",
    "sample_tanh_gaussian",
]
