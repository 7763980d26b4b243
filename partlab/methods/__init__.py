"""Part-segmentation methods: ``nn.Module``s with ``losses(batch)`` and ``predict(images)``.

See :mod:`partlab.methods.base` for the interface and :func:`partlab.train.fit` for the loop that
trains every one of them.
"""

from partlab.methods.base import PartSegmenter, check_images
from partlab.methods.oracle import SupervisedOracle
from partlab.methods.scops import SCOPS

__all__ = ["PartSegmenter", "SCOPS", "SupervisedOracle", "check_images"]
