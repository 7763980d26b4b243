"""Datasets of partlab. ``partlab.data.synthetic`` is the embedded default: a procedural world of
articulated, textured objects with exact part labels, landmarks, clips and multi-category scenes
(see its docstring); ``partlab.data.video`` reads real videos (frame folders or video files) as
frame pairs; ``partlab.data.voc`` reads PASCAL VOC 2012 with saliency masks (MaskContrast's real data)."""

from .collate import stack_dataset
from .labels import one_hot_parts
from .synthetic import (CATEGORIES, LANDMARK_NAMES, LANDMARK_PARTS, PART_NAMES, SPLITS, SyntheticClips,
                        SyntheticConfig, SyntheticParts, SyntheticScenes, num_parts, render, render_clip,
                        render_scene)
from .video import VideoFramePairs
from .voc import VOC_CLASS_NAMES, VOCSaliency

__all__ = ["CATEGORIES", "PART_NAMES", "LANDMARK_NAMES", "LANDMARK_PARTS", "SPLITS", "SyntheticConfig",
           "num_parts", "render", "render_clip", "render_scene", "SyntheticParts", "SyntheticClips",
           "SyntheticScenes", "VideoFramePairs", "VOC_CLASS_NAMES", "VOCSaliency", "one_hot_parts", "stack_dataset"]
