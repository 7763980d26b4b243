"""Motion-supervised co-part segmentation (Siarohin et al., ICPR 2020), as one ``nn.Module``.

Training data are **frame pairs** of one object moving part by part (:class:`partlab.data.SyntheticClips`).
The batch keys map to the paper's frames as follows:

- ``batch["image"]`` is the **target** ``X_T``: the frame that is segmented, reconstructed and
  transformed for the equivariance loss (frame 1 of a clip, the one whose ``"parts"``, ``"fg"`` and
  ``"landmarks"`` the items carry, and the key every partlab method trains on);
- ``batch["frame2"]`` is the **source** ``X_S``: the frame whose encoder features are warped to rebuild
  the target (frame 2 of the clip).

Both frames are segmented by the same network (:class:`partlab.motion.MotionSegmenter`): soft parts
``Y`` (channel 0 background), anchors ``p_k`` and affines ``A_k``. The part flow (Eq. 2-3) and the
background visibility (Eq. 4) are computed at the generator's feature resolution, the generator
(:class:`partlab.motion.MotionGenerator`) warps the source features with them (Eq. 5) and decodes the
target. Terms of ``losses()`` (:mod:`partlab.losses.motion`):

=================  ===========  =====================================================================
term (dict key)    paper        what it asks
=================  ===========  =====================================================================
``"perceptual"``   Eq. (6)      the reconstruction looks like the target to a frozen CNN, at 4 scales
``"eqv_shift"``    L_eq         anchors of a randomly warped target map back onto the target's
``"eqv_affine"``   L_eq         so do their affines, through the warp's Jacobian (by autograd)
=================  ===========  =====================================================================

``losses(batch)["loss"] = sum of lambda_<key> * term``; defaults are the original's: ``lambda_perceptual``
1 (the 10 per layer are in the extractor's ``layers_for("perceptual")`` weights), ``lambda_eqv_shift`` and
``lambda_eqv_affine`` 10. Networks run under the model's autocast; every term is float32.

Ablations of the paper's Table 1(b), as constructor settings (:data:`ABLATIONS`):

================  ==============================================================================
``naive``         no motion model: the target segmentation is concatenated to the source features in
                  the generator's bottleneck (``motion="naive"``); no flow, no visibility, no
                  equivariance (there are no anchors or affines to train)
``shift_only``    ``A_S = A_T = I`` (``motion="shift"``) and ``V = 1``; the anchor equivariance stays,
                  the affine one goes (nothing to learn)
``affine_only``   the full affine motion, ``V = 1`` (``visibility="none"``)
``v_backprop``    the full model with the gradient flowing through the target background in ``V``
                  (``visibility="backprop"``)
``full``          affine motion, ``V`` with the gradient stopped through the target background
================  ==============================================================================

>>> from partlab.features import get_extractor
>>> model = MotionCoPart(4, features=get_extractor("rgb"), scale=1.0, base_channels=4, generator_channels=4,
...                      num_residual=1)
>>> batch = {"image": torch.rand(2, 3, 32, 32), "frame2": torch.rand(2, 3, 32, 32)}
>>> sorted(model.losses(batch))
['eqv_affine', 'eqv_shift', 'loss', 'perceptual']
>>> sorted(model.predict(batch["image"]))
['affines', 'anchors', 'centers', 'labels', 'probs']
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from partlab.geometry import part_centers, random_warp, warp_images, warp_preset
from partlab.losses.motion import (
    PERCEPTUAL_SCALES,
    equivariance_affine_loss,
    equivariance_shift_loss,
    perceptual_loss,
)
from partlab.methods.base import FrozenFeatures, PartSegmenter, check_images
from partlab.motion import INVERSE_EPS, MotionGenerator, MotionSegmenter, background_visibility, part_flow

__all__ = ["ABLATIONS", "MOTIONS", "MotionCoPart", "RECIPES", "VISIBILITIES", "setup"]

MOTIONS = ("affine", "shift", "naive")                  # Eq. 2 / A fixed to I / no motion model
VISIBILITIES = ("stop_gradient", "backprop", "none")    # Eq. 4 as in Full / V-back-prop / V = 1
DEFAULT_EQUIVARIANCE_WEIGHT = 10.0                      # the original's weight of each equivariance term

# Table 1(b), keyed by term name (a weight; 0 removes the term) or setting name.
ABLATIONS: dict[str, dict[str, Any]] = {
    "naive": {"motion": "naive", "visibility": "none", "eqv_shift": 0.0, "eqv_affine": 0.0},
    "shift_only": {"motion": "shift", "visibility": "none", "eqv_affine": 0.0},
    "affine_only": {"visibility": "none"},
    "v_backprop": {"visibility": "backprop"},
    "full": {},
}


def _split(outputs: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """The segmenter's outputs on ``cat(frames)`` back into one dict per frame of ``n`` images."""
    chunks = {key: value.split(n) for key, value in outputs.items()}
    return [{key: value[i] for key, value in chunks.items()} for i in range(len(next(iter(chunks.values()))))]


class MotionCoPart(FrozenFeatures, PartSegmenter):
    """Motion-supervised co-part segmentation: ``K + 1`` soft segments per frame, channel 0 background.

    Args:
        num_parts: ``K`` foreground parts.
        features: the frozen :class:`partlab.features.FeatureExtractor` of the perceptual loss (its
            ``layers_for("perceptual")`` layers and weights: VGG19 relu1_1 .. relu5_1 x 10, or the
            stand-in's); held outside the module tree, never trained, moved by ``.to()``.
        motion: ``"affine"`` (Eq. 2), ``"shift"`` (``A_k = I``, the *Shift-only* ablation) or
            ``"naive"`` (no motion model: the target segmentation concatenated in the bottleneck).
        visibility: ``"stop_gradient"`` (Eq. 4 as in *Full*), ``"backprop"`` (*V-back-prop*) or
            ``"none"`` (``V = 1``); default ``"stop_gradient"``, ``"none"`` for ``motion="naive"``.
        lambda_perceptual, lambda_eqv_shift, lambda_eqv_affine: term weights (module docstring); 0
            removes a term. ``None`` (the equivariance weights) derives them from ``motion``: 10 where the
            motion model has the quantity (anchors unless ``"naive"``, affines only for ``"affine"``), else 0.
        scale: the segmenter's input resize (0.25 for the paper's 256 px frames, a 64x64 network).
        base_channels, depth, temperature: the segmenter's U-Net and keypoint softmax temperature.
        identity_start: the segmenter's keypoint head starts at 0, so the part flow starts as the identity
            (:class:`partlab.motion.MotionSegmenter`; not the original's initialisation).
        anchors: ``"keypoints"`` (the paper's keypoint heatmaps) or ``"segments"`` (partlab's option: each part's
            anchor is its segment's centre of mass and its affine the segment-weighted mean;
            :class:`partlab.motion.MotionSegmenter`).
        network, pretrained, standin: the segmenter's hourglass, ``"unet"`` (from scratch, the paper's own
            from-scratch setting) or ``"standin_unet"`` (quick mode's pretrained start: the stand-in's encoder,
            loaded unless ``pretrained=False``; :class:`partlab.motion.MotionSegmenter`). With it the encoder
            trains at ``config.lr`` and everything new (decoder, heads, generator) at 10x (:meth:`param_groups`).
        generator_channels, num_residual: the generator's ``C`` (64 in the paper) and residual blocks (6).
        generator_down: the generator's down blocks (2 in the paper: the flow warps features at 1/4 size).
        image_skip: the generator predicts a residual on the source frame warped at full resolution,
            ``W(X_S, F)`` (:class:`partlab.motion.MotionGenerator`; partlab's quick recipe, not the paper's
            network); for ``motion="naive"`` the base is the source frame unwarped.
        scales: the perceptual loss's image pyramid (1, 1/2, 1/4, 1/8).
        warp: :func:`partlab.geometry.random_warp` keyword arguments or a preset name (default
            ``"motion"``: affine ``I + N(0, 0.05)``, 5x5 TPS kernel weights ``N(0, 0.005)``); the target
            is warped with border padding, as in the original.
        eps: damping of the 2x2 inverses (:func:`partlab.motion.regularized_inverse`).

    Attributes:
        network: the segmentation module (:class:`partlab.motion.MotionSegmenter`).
        generator: the reconstruction module (:class:`partlab.motion.MotionGenerator`).
        weights: ``{term: lambda}`` as used.
    """

    feature_role = "perceptual"
    TERMS = ("perceptual", "eqv_shift", "eqv_affine")          # the keys of losses(), weighted by lambda_<term>
    TERM_NOTES = {                                             # the explorer's captions: the term in the paper
        "perceptual": "L_rec: multi-scale VGG19 L1 reconstruction (motion paper Eq. 6)",
        "eqv_shift": "L_eq, shift: anchor keypoints follow a random warp (motion paper Sec. 3.3)",
        "eqv_affine": "L_eq, affine: part affines follow the warp's Jacobian (motion paper Sec. 3.3)",
    }

    def __init__(self, num_parts: int, *, features: Optional[nn.Module] = None, motion: str = "affine",
                 visibility: Optional[str] = None, lambda_perceptual: float = 1.0,
                 lambda_eqv_shift: Optional[float] = None, lambda_eqv_affine: Optional[float] = None,
                 scale: float = 0.25, base_channels: int = 16, depth: int = 3, temperature: float = 0.1,
                 identity_start: bool = False, anchors: str = "keypoints", network: str = "unet",
                 pretrained: bool = True, standin: Optional[str] = None,
                 generator_channels: int = 64, num_residual: int = 6, generator_down: int = 2,
                 image_skip: bool = False, scales: Sequence[float] = PERCEPTUAL_SCALES,
                 warp: Union[str, dict] = "motion",
                 eps: float = INVERSE_EPS) -> None:
        super().__init__(num_parts)
        if motion not in MOTIONS:
            raise ValueError(f"motion={motion!r}; choose one of {MOTIONS}")
        if visibility is None:
            visibility = "none" if motion == "naive" else "stop_gradient"
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility={visibility!r}; choose one of {VISIBILITIES}")
        if motion == "naive" and visibility != "none":
            raise ValueError(f"motion='naive' has no flow to mask: visibility must be 'none', got {visibility!r}")
        has = {"eqv_shift": motion != "naive", "eqv_affine": motion == "affine"}
        derived = {"eqv_shift": lambda_eqv_shift, "eqv_affine": lambda_eqv_affine}
        for term, value in derived.items():
            if value is None:
                derived[term] = DEFAULT_EQUIVARIANCE_WEIGHT if has[term] else 0.0
            elif value > 0 and not has[term]:
                raise ValueError(f"lambda_{term}={value} but motion={motion!r} has no "
                                 f"{'anchors' if term == 'eqv_shift' else 'affines'} to make equivariant; "
                                 f"set lambda_{term}=0 (or leave it None)")
        self.weights = self.check_weights({"perceptual": lambda_perceptual, **derived})
        if not callable(getattr(features, "layers_for", None)):
            raise ValueError(f"MotionCoPart needs a frozen feature extractor for its perceptual loss, e.g. "
                             f"features=partlab.features.get_extractor('auto'); got {type(features).__name__}")
        if not scales or any(not 0 < float(s) <= 1 for s in scales):
            raise ValueError(f"scales must be factors in (0, 1], got {scales!r}")
        self.motion, self.visibility = motion, visibility
        self.scales = tuple(float(s) for s in scales)
        self.warp_kwargs = warp_preset(warp) if isinstance(warp, str) else dict(warp)
        self.eps = float(eps)
        self._extractor = (features,)
        self.feature_layers = features.layers_for(self.feature_role)

        self.network = MotionSegmenter(num_parts, scale=scale, base_channels=base_channels, depth=depth,
                                       temperature=temperature, identity_start=identity_start,
                                       anchors=anchors, network=network, pretrained=pretrained, standin=standin)
        self.generator = MotionGenerator(generator_channels, num_residual,
                                         condition_channels=num_parts + 1 if motion == "naive" else 0,
                                         num_down=generator_down, image_skip=image_skip)

    # ------------------------------------------------------------------------------ the modules

    def segment(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The segmentation module on ``(B, 3, H, W)`` frames under the model's autocast: ``"seg"``
        ``(B, K+1, H, W)`` probabilities, ``"shift"`` ``(B, K, 2)`` anchors, ``"affine"`` ``(B, K, 2, 2)``
        (the identity with ``motion="shift"``), ``"heatmap"``; float32."""
        with self.autocast(images.device):
            out = self.network(images)
        if self.motion == "shift":
            eye = torch.eye(2, device=images.device, dtype=out["affine"].dtype)
            out = dict(out, affine=eye.expand_as(out["affine"]))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, K+1, H, W)`` of the segments (softmax of them = ``predict()["probs"]``)."""
        return self.segment(check_images(images))["seg"].clamp_min(1e-12).log()

    def feature_flow(self, seg_target: torch.Tensor, source_motion: dict, target_motion: dict) -> torch.Tensor:
        """The part flow (Eq. 2-3, :func:`partlab.motion.part_flow`) at the size of ``seg_target`` (the target's
        segmentation already resized to the generator's features), from each frame's anchors and affines
        (:meth:`segment`): ``(B, h, w, 2)``. Shared by :meth:`reconstruct` and :func:`partlab.motion.part_swap`."""
        return part_flow(seg_target, source_motion["shift"], target_motion["shift"], source_motion["affine"],
                         target_motion["affine"], eps=self.eps)

    def reconstruct(self, source: torch.Tensor, source_motion: dict, target_motion: dict) -> dict[str, Any]:
        """Rebuild the target from the ``source`` frame ``(B, 3, H, W)`` and both frames' :meth:`segment`.

        The segmentations are area-resized to the generator's feature size ``h x w`` (``H/4 x W/4``); there
        the flow (Eq. 2-3, :func:`partlab.motion.part_flow`) and the visibility (Eq. 4) are computed and the
        source features deformed (Eq. 5). ``motion="naive"``: the target segmentation is concatenated to
        the source features instead. With ``image_skip`` the same flow is also computed at the frame's size
        and warps the source frame itself into the decoder's base image (:meth:`_image_base`).

        Returns:
            ``{"prediction": (B, 3, H, W) float32 in [0, 1], "flow": (B, h, w, 2) or None,
            "visibility": (B, 1, h, w) or None, "base": (B, 3, H, W) or None}`` (``base``: with ``image_skip``).
        """
        with self.autocast(source.device):
            features = self.generator.encode(source)                                  # (B, 4C, h, w)
        size = tuple(features.shape[-2:])
        seg_target = F.interpolate(target_motion["seg"], size=size, mode="area")       # (B, K+1, h, w)
        flow = visibility = None
        if self.motion == "naive":
            with self.autocast(source.device):
                features = self.generator.condition(features, seg_target)
        else:
            seg_source = F.interpolate(source_motion["seg"], size=size, mode="area")
            flow = self.feature_flow(seg_target, source_motion, target_motion)             # (B, h, w, 2)
            if self.visibility != "none":
                visibility = background_visibility(seg_source, seg_target,
                                                   stop_gradient=self.visibility == "stop_gradient")
            features = self.generator.deform(features, flow, visibility)
        base = self._image_base(source, source_motion, target_motion) if self.generator.image_skip else None
        with self.autocast(source.device):
            prediction = self.generator.decode(features, size=tuple(source.shape[-2:]), base=base)
        return {"prediction": prediction.float(), "flow": flow, "visibility": visibility, "base": base}

    def _image_base(self, source: torch.Tensor, source_motion: dict, target_motion: dict) -> torch.Tensor:
        """The ``image_skip`` base at the frame's size: ``W(X_S, F)``, the source frame warped by the part flow
        (the source itself for ``"naive"``). V is left to the features (Eq. 5): on the frame it would dim
        every pixel where a soft target background meets a soft source part, which pushes the segmentation
        to all-background from the first step."""
        if self.motion == "naive":
            return source
        size = tuple(source.shape[-2:])
        seg_target = target_motion["seg"]
        if tuple(seg_target.shape[-2:]) != size:
            seg_target = F.interpolate(seg_target, size=size, mode="bilinear", align_corners=False)
        return self.generator.image_base(source, self.feature_flow(seg_target, source_motion, target_motion))

    # ------------------------------------------------------------------------------ the losses

    def _source(self, batch: dict, target: torch.Tensor) -> torch.Tensor:
        if "frame2" not in batch:
            raise KeyError(f"MotionCoPart trains on frame pairs: it needs batch['frame2'] (B, 3, H, W), the source "
                           f"frame, next to batch['image'], the target; the batch has only {sorted(batch)}. Use "
                           f"partlab.data.SyntheticClips (or the method's setup)")
        source = check_images(batch["frame2"])
        if source.shape != target.shape:
            raise ValueError(f"the frames of a pair must have the same shape: batch['image'] {tuple(target.shape)}, "
                             f"batch['frame2'] {tuple(source.shape)}")
        return source

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The terms for a batch of frame pairs and their weighted total.

        ``batch``: ``"image"`` ``(B, 3, H, W)``, the target frame ``X_T``; ``"frame2"`` ``(B, 3, H, W)``,
        the source frame ``X_S``. Target, source and (for the equivariance terms) the target warped by a
        random transform ``T`` are segmented in one pass; the generator rebuilds the target from the source.

        Returns ``{"loss": sum_t lambda_t * term_t, <term>: value}`` with the unweighted, detached terms
        ``"perceptual"`` (Eq. 6), ``"eqv_shift"`` and ``"eqv_affine"``: only those with a weight > 0.
        """
        target = check_images(batch["image"])
        source = self._source(batch, target)
        b, w = target.shape[0], self.weights
        frames, warp = [target, source], None
        if w["eqv_shift"] > 0 or w["eqv_affine"] > 0:
            warp = random_warp(b, **self.warp_kwargs, device=target.device)
            frames.append(warp_images(target, warp, padding_mode="border"))             # X_T' = X_T o T
        outputs = self.segment(torch.cat(frames))
        motions = _split(outputs, b)                                                      # target, source[, warped]
        terms: dict[str, torch.Tensor] = {}

        if w["perceptual"] > 0:                                                           # Eq. (6)
            prediction = self.reconstruct(source, motions[1], motions[0])["prediction"]
            with self.autocast(target.device):
                terms["perceptual"] = perceptual_loss(prediction, target, self.extractor, self.feature_layers,
                                                      self.scales)
        if w["eqv_shift"] > 0:
            terms["eqv_shift"] = equivariance_shift_loss(motions[0]["shift"], motions[2]["shift"], warp)
        if w["eqv_affine"] > 0:
            terms["eqv_affine"] = equivariance_affine_loss(motions[0]["affine"], motions[2]["shift"],
                                                           motions[2]["affine"], warp, eps=self.eps)
        return self.weighted_total(terms, outputs["seg"])

    def param_groups(self, config) -> list[dict]:
        """Segmentation module and generator, each a group at ``config.lr`` (the original trains both with
        Adam 2e-4, betas (0.5, 0.999)). With a pretrained encoder (``network="standin_unet"``) the encoder
        stays at ``config.lr`` and everything new, the segmenter's decoder and heads and the generator, trains
        at ``HEAD_LR_FACTOR * config.lr`` (10), as the other methods' heads do (:meth:`PartSegmenter.network_groups`
        with the generator as ``new``)."""
        return self.network_groups(config, new=list(self.generator.parameters()))

    # ------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segments of single frames (no second frame needed).

        Returns ``probs`` ``(B, K+1, H, W)`` (the segmentation, channel 0 background), ``labels``
        ``(B, H, W)`` (argmax), ``centers`` ``(B, K, 2)`` (centres of mass of the part segments, what the
        paper's landmark regression and :mod:`partlab.evaluation` read), ``anchors`` ``(B, K, 2)`` (the
        keypoints ``p_k``) and ``affines`` ``(B, K, 2, 2)`` (``A_k``).
        """
        out = self.eval_forward(self.segment, images)
        probs = out["seg"].float()
        return {"probs": probs, "labels": probs.argmax(dim=1), "centers": part_centers(probs[:, 1:], eps=0.0),
                "anchors": out["shift"], "affines": out["affine"]}


# ---------------------------------------------------------------------------------------------
# recipes and setup
# ---------------------------------------------------------------------------------------------

# The original's weights (REFERENCE_NOTES.md): perceptual 10 per layer (in the extractor's recipe), equivariance 10.
PAPER_WEIGHTS: dict[str, float] = {"perceptual": 1.0, "eqv_shift": 10.0, "eqv_affine": 10.0}


def quick_recipe():
    """The quick recipe (CPU, minutes): synthetic bird clips at 64 px, K = the category's parts, the segmenter's
    quick U-Net (16 channels, depth 3) on the frames anti-aliased and downscaled by half (``scale`` 0.5, 32 x 32:
    the paper downscales its 256 px frames by 4; on validation birds half the size scored as well as the full
    64 px and trains 1.7x faster), a generator of 16 channels with 2 residual blocks, features ``"auto"`` on the
    fly, the paper's weights, 150 steps of Adam 1e-3 with the paper's betas (0.5, 0.999), batch 8 (on validation
    birds 150 steps scored better than 300: the object is found early, then one part takes it). Chosen on
    validation birds (README, motion section), partlab's options that make it train at this scale:

    - the perceptual loss at the pyramid's two coarse scales only (``scales=(0.25, 0.125)``): at full
      resolution a soft segmentation's background drift costs more than the parts' motion gains, and the
      segmentation collapses (:func:`partlab.motion.soft_flow_costs`);
    - each part's anchor at its segment's centre of mass (``anchors="segments"``), the segments starting
      near-uniform (``identity_start``), and the generator decoding a residual on the warped source frame
      (``image_skip``);
    - training clips without pixel noise and with 4x the object's drift between the frames
      (``data.noise=0``, ``data.clip_motion=4``; the evaluation splits keep the world's own)."""
    from partlab.models import QUICK_UNET
    from partlab.recipes import DataSpec, Recipe
    from partlab.train import TrainConfig

    model = {"scale": 0.5, **QUICK_UNET, "generator_channels": 16, "num_residual": 2, "scales": [0.25, 0.125],
             "anchors": "segments", "identity_start": True, "image_skip": True}
    fit = TrainConfig.from_kwargs(max_steps=150, batch_size=8, lr=1e-3, optimizer="adam", betas=(0.5, 0.999),
                                  log_every=20, seed=0)
    return Recipe("motion", "quick", dict(PAPER_WEIGHTS), model,
                  DataSpec(size=64, n_train=256, features="auto", cache=False, noise=0.0, clip_motion=4.0), fit)


def paper_recipe():
    """The original's recipe (REFERENCE_NOTES.md, Appendix A): K = 10, 256 px frames, the segmentation U-Net
    (32 channels, 5 levels) at 64 x 64 (``scale`` 0.25), the generator with 64 channels and 6 residual blocks,
    VGG19 relu1_1 .. relu5_1 x 10 at 4 scales, equivariance x 10, Adam lr 2e-4 betas (0.5, 0.999), batch 20,
    about 10k steps. The original starts from a pretrained keypoint detector (first-order motion model),
    which partlab does not have: it starts from scratch, as the paper's own from-scratch experiment."""
    from partlab.recipes import PAPER_NUM_WORKERS, DataSpec, Recipe
    from partlab.train import TrainConfig

    model = {"num_parts": 10, "scale": 0.25, "base_channels": 32, "depth": 5, "generator_channels": 64,
             "num_residual": 6}
    fit = TrainConfig.from_kwargs(max_steps=10_000, batch_size=20, lr=2e-4, optimizer="adam", betas=(0.5, 0.999),
                                  log_every=100, checkpoint_every=1000, seed=0, num_workers=PAPER_NUM_WORKERS)
    return Recipe("motion", "paper", dict(PAPER_WEIGHTS), model,
                  DataSpec(size=256, n_train=10_000, features="vgg19", cache=False), fit, imagenet=True)


RECIPES = {"quick": quick_recipe, "paper": paper_recipe}


def setup(recipe, device: str = "auto", run_dir=None):
    """``(model, train_dataset, info)`` for a motion recipe (:mod:`partlab.recipes`): the synthetic ``"train"``
    split as frame pairs (:class:`partlab.data.SyntheticClips`: ``"image"`` the target, ``"frame2"`` the
    source, rendered on the fly), the frozen extractor ``data.features`` (always on the fly: the perceptual
    loss differentiates through it; ``data.cache`` changes nothing here) and a :class:`MotionCoPart` (K: the
    category's unless ``model.num_parts``). ``run_dir`` is not used."""
    from partlab import utils
    from partlab.data.synthetic import SyntheticClips
    from partlab.features import get_extractor
    from partlab.methods.registry import method_of

    dev = utils.device(device)
    data, settings = recipe.data, dict(recipe.model)
    seed = recipe.fit.seed
    dataset = SyntheticClips(data.category, size=data.size, length=data.n_train, seed=seed, split="train",
                             config=data.world_config())
    num_parts = settings.pop("num_parts", None)
    num_parts = dataset.num_parts if num_parts is None else int(num_parts)
    extractor = get_extractor(data.features, device=dev)
    kwargs = {"features": extractor, **method_of(MotionCoPart).weight_kwargs(recipe.weights), **settings}
    torch.manual_seed(seed)
    model = MotionCoPart(num_parts, **kwargs)
    info = {"method": method_of(MotionCoPart).name, "features": f"{extractor.name}: {extractor.description}",
            "feature_layers": model.feature_layers, "feature_shape": "computed on the fly",
            "device": utils.describe_device(dev), "num_parts": num_parts, "category": data.category,
            "size": data.size, "n_train": data.n_train, "data": "frame pairs: image = target, frame2 = source",
            "weights": dict(model.weights), "model_kwargs": kwargs,
            "fit": dict(recipe.fit.to_dict(), device=str(dev))}
    return model, dataset, info
