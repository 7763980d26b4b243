"""partlab: self-supervised co-part segmentation, taught and compared.

Conventions used everywhere (see DESIGN.md):

- images: float tensors ``(B, 3, H, W)``, RGB in [0, 1];
- part maps: ``probs (B, K+1, H, W)``, softmax over channels, channel 0 is background;
  foreground parts are ``parts = probs[:, 1:]`` of shape ``(B, K, H, W)``;
- coordinates: normalised ``(x, y)`` in [-1, 1], pixel centres as in
  ``grid_sample(align_corners=False)``: column j of a width-W map sits at ``x = (2j + 1) / W - 1``;
- labels: integer maps ``(B, H, W)``, 0 = background, 1..K = parts.
"""

__version__ = "0.1.0"
