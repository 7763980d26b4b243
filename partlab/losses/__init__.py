"""Loss functions of partlab, one module per paper; every public loss is exported here.

- :mod:`partlab.losses.scops`: SCOPS Eq. (2)-(5): concentration, equivariance, semantic
  consistency, orthonormality.

Each loss is a function returning a scalar tensor; its docstring gives the equation, the shapes
and the reduction.
"""

from partlab.losses.scops import (
    concentration_loss,
    equivariance_center_loss,
    equivariance_kl_loss,
    equivariance_loss,
    orthonormal_loss,
    semantic_consistency_loss,
)

__all__ = [
    "concentration_loss",
    "equivariance_center_loss",
    "equivariance_kl_loss",
    "equivariance_loss",
    "orthonormal_loss",
    "semantic_consistency_loss",
]
