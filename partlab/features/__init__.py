"""Semantic CNN features for the methods and baselines: ImageNet VGG19 or partlab's offline stand-in.

DESIGN.md: with ImageNet weights in the torch cache partlab uses VGG19; offline it uses a small CNN
that partlab trained itself, label-free, on synthetic images (``data/standin/``, rebuilt by
``python -m partlab.features build-standin``). The choice is never silent: ``get_extractor("auto")``
prints it and every extractor carries a one-line ``description``.

>>> from partlab.features import get_extractor, extract_features
>>> extractor = get_extractor("auto")            # doctest: +SKIP
partlab.features: features='auto' -> standin (...)
>>> feats = extract_features(extractor, images, layers="contrastive")   # (N, C, h, w)   # doctest: +SKIP
>>> extractor.layers_for("scops")                 # {layer: weight} for SCOPS' semantic consistency  # doctest: +SKIP

Public names: :func:`get_extractor`, :class:`FeatureExtractor` (``.name``, ``.description``,
``.layers``, ``.channels``, ``.strides``, ``.semantic_layers``, ``.layers_for(method)``,
``__call__(images, layers=None) -> {layer: (B, C, h, w)}``), :func:`extract_features`,
:func:`upsample_concat`, :data:`VGG19_LAYERS`, :func:`standin_path`, :func:`build_standin`.
"""

from partlab.features.extract import clear_feature_cache, extract_features, resolve_layers, upsample_concat
from partlab.features.extractors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_LAYERS,
    VGG19_RECIPES,
    FeatureExtractor,
    RGBFeatures,
    VGG19Features,
    clear_cache,
    extractor_on,
    get_extractor,
)
from partlab.features.standin import (
    STANDIN_FILE,
    StandinFeatures,
    StandinMissing,
    build_standin,
    standin_path,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "VGG19_LAYERS", "VGG19_RECIPES", "FeatureExtractor", "RGBFeatures",
    "VGG19Features", "StandinFeatures", "StandinMissing", "STANDIN_FILE", "get_extractor", "extractor_on", "clear_cache",
    "extract_features", "clear_feature_cache", "resolve_layers", "upsample_concat", "standin_path",
    "build_standin",
]
