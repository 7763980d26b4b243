"""Part-segmentation methods: ``nn.Module``s with ``losses(batch)`` and ``predict(images)``.

See :mod:`partlab.methods.base` for the interface and :func:`partlab.train.fit` for the loop that
trains every one of them; :func:`load_method` rebuilds a trained one from its run folder
(:mod:`partlab.methods.runs`); the method registry (:mod:`partlab.methods.registry`) lists them with their
recipes, ablations and loss terms.
"""

from partlab.methods.base import PartSegmenter, check_images
from partlab.methods.contrastive import ContrastiveParts, contrastive_quick_setup
from partlab.methods.maskcontrast import MaskContrast
from partlab.methods.motion import MotionCoPart
from partlab.methods.oracle import SupervisedOracle, oracle_quick_setup
from partlab.methods.scops import SCOPS
from partlab.methods.registry import REGISTRY, get_method, get_recipe, train_variants
from partlab.methods.runs import METHODS, load_method

__all__ = ["METHODS", "REGISTRY", "ContrastiveParts", "MaskContrast", "MotionCoPart", "PartSegmenter", "SCOPS",
           "SupervisedOracle", "check_images", "contrastive_quick_setup", "get_method", "get_recipe", "load_method",
           "oracle_quick_setup", "train_variants"]
