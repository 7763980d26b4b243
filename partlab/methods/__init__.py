"""Part-segmentation methods: ``nn.Module``s with ``losses(batch)`` and ``predict(images)``.

See :mod:`partlab.methods.base` for the interface and :func:`partlab.train.fit` for the loop that
trains every one of them; :func:`load_method` rebuilds a trained one from its run folder
(:mod:`partlab.methods.runs`).
"""

from partlab.methods.base import PartSegmenter, check_images
from partlab.methods.contrastive import ContrastiveParts, contrastive_quick_setup
from partlab.methods.oracle import SupervisedOracle, oracle_quick_setup
from partlab.methods.scops import SCOPS
from partlab.methods.runs import METHODS, load_method

__all__ = ["METHODS", "ContrastiveParts", "PartSegmenter", "SCOPS", "SupervisedOracle", "check_images",
           "contrastive_quick_setup", "load_method", "oracle_quick_setup"]
