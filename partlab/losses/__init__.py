"""Loss functions of partlab, one module per paper; every public loss is exported here.

- :mod:`partlab.losses.scops`: SCOPS Eq. (2)-(5): concentration, equivariance, semantic
  consistency, orthonormality.
- :mod:`partlab.losses.contrastive`: contrastive part discovery: part consistency (L_f, L_v),
  part prototypes and the contrastive loss (L_c), equivariance on the foreground (L_e).
- :mod:`partlab.losses.motion`: motion-supervised co-part segmentation: the multi-scale perceptual
  reconstruction loss (Eq. 6) and the equivariance of anchors and affines.
- :mod:`partlab.losses.maskcontrast`: MaskContrast (Algorithm 1): salient query pixels contrasted against
  the key views' object-mask prototypes and a queue, and the balanced BCE of the saliency head; the queue,
  the momentum update and the cross-rank gather live in that module.

Each loss is a function returning a scalar tensor; its docstring gives the equation, the shapes
and the reduction.
"""

from partlab.losses.contrastive import (
    cross_image_similarity,
    masked_equivariance_loss,
    part_consistency_loss,
    part_contrastive_loss,
    part_prototypes,
    rgb_to_lab,
)
from partlab.losses.maskcontrast import balanced_bce_loss, mask_prototypes, maskcontrast_loss
from partlab.losses.motion import (
    equivariance_affine_loss,
    equivariance_shift_loss,
    perceptual_loss,
    transform_jacobian,
)
from partlab.losses.scops import (
    concentration_loss,
    equivariance_center_loss,
    equivariance_kl_loss,
    equivariance_loss,
    orthonormal_loss,
    semantic_consistency_loss,
)

__all__ = [
    "balanced_bce_loss",
    "concentration_loss",
    "cross_image_similarity",
    "equivariance_affine_loss",
    "equivariance_center_loss",
    "equivariance_kl_loss",
    "equivariance_loss",
    "equivariance_shift_loss",
    "mask_prototypes",
    "maskcontrast_loss",
    "masked_equivariance_loss",
    "orthonormal_loss",
    "part_consistency_loss",
    "part_contrastive_loss",
    "part_prototypes",
    "perceptual_loss",
    "rgb_to_lab",
    "semantic_consistency_loss",
    "transform_jacobian",
]
