"""SCOPS: self-supervised co-part segmentation (Hung et al., CVPR 2019), as one ``nn.Module``.

A network ``F`` maps an image to ``K + 1`` part response maps ``R = softmax(F(I))`` (channel 0 the
background). Nothing tells it what a part is; four losses (``partlab.losses.scops``) shape the maps:

=================  ===========  =====================================================================
term (dict key)    equation     what it asks of the parts ``R_k = probs[:, k]``, ``k = 1..K``
=================  ===========  =====================================================================
``"con"``          Eq. (2)      geometric concentration: small spatial variance around the centre
``"eqv"``          Eq. (3), 1st the maps of a warped, colour-jittered image = the warped maps (KL)
``"lmeqv"``        Eq. (3), 2nd the same for the part centres (MSE)
``"sc"``           Eq. (4)      semantic consistency: ``D * relu(V) ~ sum_k R_k relu(w_k)``, pretrained
                                features ``V`` rebuilt from a part basis ``w`` shared by all images,
                                ``D`` the saliency map (Sec. 3.4, "saliency constraint")
``"orthonormal"``  Eq. (5)      the normalised basis vectors are orthonormal
=================  ===========  =====================================================================

``losses(batch)["loss"] = sum of lambda_<key> * term``. Weights (defaults = the authors' config
``SCOPS_K8_retrain``, REFERENCE_NOTES.md), with partlab's reductions (``partlab.losses.scops``):

======================  ===============  ================================================================
weight                  default          origin / units
======================  ===============  ================================================================
``lambda_con``          10 / 6           the original's 10 at its batch of 6, made effective: the original
                                         divides L_con by B twice, partlab averages over the batch once,
                                         so its 10 weighs 10 / B of partlab's L_con (ORIGINAL_BATCH = 6)
``lambda_eqv``          1e3 / (K + 1)    original 1e3 on ``nn.KLDivLoss()`` (mean over B*(K+1)*H*W);
                                         partlab's KL sums the K+1 channels (mean over B*H*W), hence
                                         the division: the same gradient as the original
``lambda_lmeqv``        1e2              original (MSE over B*K*2 centre coordinates, as here)
``lambda_sc``           1e4              original (mean over B*C*H*W, as here)
``lambda_orthonormal``  0.1              original (Frobenius norm squared, as here)
======================  ===============  ================================================================

A weight of 0 removes its term: it is not computed and not in the dict (the ablations of SCOPS
Table 1, :data:`ABLATIONS`). Optimiser (``param_groups``): network at ``config.lr`` (DeepLab head 10x),
part basis with its own SGD (lr 0.01, momentum 0.9, weight decay 5e-4); gradient-norm clipping at
5 for each group.

Quick mode (CPU, minutes): :func:`scops_quick_setup` builds a small U-Net, a synthetic training set
with cached features and saliency maps (:class:`partlab.data.extras.WithExtras`), and the training
settings that go with them; its one change to the paper's weights is a larger ``lambda_con``
(:data:`QUICK_WEIGHTS`), because it trains for minutes, not 100k steps.

>>> model, train, info = scops_quick_setup("bird", n_train=256)          # doctest: +SKIP
>>> fit(model, train, **info["fit"])                                     # doctest: +SKIP
>>> model.predict(images)["labels"]   # (B, H, W), the paper's post-processing   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from partlab.geometry import color_jitter, jitter_preset, part_centers, random_warp, warp_images, warp_preset
from partlab.losses import (
    concentration_loss,
    equivariance_center_loss,
    equivariance_kl_loss,
    equivariance_loss,
    orthonormal_loss,
    semantic_consistency_loss,
)
from partlab.methods.base import FrozenFeatures, PartSegmenter, batch_map, check_images
from partlab.models import build_network

__all__ = ["ABLATIONS", "QUICK_FIT", "QUICK_WEIGHTS", "RECIPES", "SCOPS", "SEMANTIC_FEATURES", "postprocess_labels",
           "scops_quick_setup", "semantic_features", "setup"]

SALIENCY_CHOICES = ("batch", "oracle", "none", "rbd")
SEMANTIC_FEATURES = ("features", "features+position")
POSITION_CHANNELS = 4       # (x+, x-, y+, y-): the pixel's position on its object, split into non-negative halves
NEEDS_MASK = ("semantic_features='features+position' needs a saliency mask (where the object is); "
              "use saliency='batch', 'oracle' or 'rbd'")
BACKGROUND_SCORE = 0.1
ORIGINAL_BATCH = 6          # the original's batch size, which its L_con weight assumes (see lambda_con)

# Ablations of SCOPS Table 1 (right), keyed by term name (a weight; 0 removes the term) or setting name
# (partlab.methods.registry turns them into constructor overrides). "only L_sc" keeps the orthonormal
# constraint and the saliency (they belong to the semantic consistency term); "w/o L_sc" drops the
# basis altogether.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "only_sc": {"con": 0.0, "eqv": 0.0, "lmeqv": 0.0},
    "no_sc": {"sc": 0.0, "orthonormal": 0.0},
    "no_con": {"con": 0.0},
    "no_eqv": {"eqv": 0.0, "lmeqv": 0.0},
    "no_saliency": {"saliency": "none"},
}


def postprocess_labels(probs: torch.Tensor, background: float = BACKGROUND_SCORE) -> torch.Tensor:
    """The paper's post-processing (Sec. 3.1): part maps normalised by their maximum, background 0.1.

    ::

        R^_k(u, v) = R_k(u, v) / max_{u', v'} R_k(u', v')    (k = 1..K, per image)
        R^_0       = background (constant 0.1)
        labels     = argmax_k R^_k

    "The purpose of this normalization is to enhance weak part responses": a part whose softmax
    never exceeds 0.2 still wins its strongest pixels. The network's background channel is not used.

    Args:
        probs: ``(B, K+1, H, W)`` softmax of the logits, channel 0 background.
        background: the constant score of the background.

    Returns:
        ``(B, H, W)`` int64 labels, 0 = background, 1..K = parts.
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or probs.shape[1] < 2:
        shape = tuple(probs.shape) if hasattr(probs, "shape") else type(probs).__name__
        raise ValueError(f"probs must have shape (B, K+1, H, W) with K >= 1, got {shape}")
    parts = probs[:, 1:]                                                       # (B, K, H, W)
    peak = parts.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)             # (B, K, 1, 1)
    scores = torch.cat((torch.full_like(probs[:, :1], background), parts / peak), dim=1)  # (B, K+1, H, W)
    return scores.argmax(dim=1)


def semantic_features(features: torch.Tensor, mask: Optional[torch.Tensor], mode: str = "features") -> torch.Tensor:
    """The features ``V`` that L_sc rebuilds from the part basis (``SCOPS(semantic_features=)``).

    Args:
        features: ``(B, C, h, w)``, the frozen CNN features (any size up to the mask's).
        mask: ``(B, 1, H, W)`` saliency ``D`` in [0, 1] (the object: ``>= 0.5`` once resized to ``(h, w)`` by
            area averaging); needed unless ``mode="features"``.
        mode: one of :data:`SEMANTIC_FEATURES`.

    Returns:
        ``features`` for ``"features"`` (the paper's). For ``"features+position"``, ``(B, C + 4, h, w)``:
        ``relu(features)`` followed by the pixel's position on its object
        (:func:`partlab.baselines.position_features`, ``(x, y)`` from the object's centroid over its spread)
        split into the non-negative channels ``(relu(x), relu(-x), relu(y), relu(-y))`` (L_sc takes
        ``relu`` of ``V`` and of the basis), zero off the object, and scaled by ``sqrt(C / 2)`` times the
        root-mean-square of ``relu(features)`` over the batch's object pixels (not differentiated): the
        position carries half as much of the target's energy as the C feature channels. A part basis vector
        then also says where on the object its part lies, the same on every instance, so L_sc pulls the
        same part to the same place across images even where the features do not name it (README,
        "Co-parts"). partlab's addition; statistics are per batch (per process under DDP).
    """
    if mode == "features":
        return features
    if mode not in SEMANTIC_FEATURES:
        raise ValueError(f"semantic_features={mode!r}; choose one of {SEMANTIC_FEATURES}")
    if mask is None:
        raise ValueError(NEEDS_MASK)
    from partlab.baselines import position_features

    values = features.relu()
    size = tuple(values.shape[-2:])
    mask = mask if mask.dim() == 4 else mask[:, None]
    if tuple(mask.shape[-2:]) != size:
        mask = torch.nn.functional.interpolate(mask.to(values.dtype), size=size, mode="area")
    inside = (mask >= 0.5).to(values.dtype)                                         # (B, 1, h, w)
    position = position_features(inside, "object").to(values.dtype)                 # (B, 2, h, w)
    halves = torch.cat([position.relu(), (-position).relu()], dim=1)[:, [0, 2, 1, 3]] * inside
    with torch.no_grad():
        count = (inside.sum() * values.shape[1]).clamp_min(1.0)
        rms = ((values ** 2 * inside).sum() / count).sqrt().clamp_min(1e-6)
        scale = rms * (values.shape[1] / 2) ** 0.5
    return torch.cat([values, scale * halves], dim=1)


class SCOPS(FrozenFeatures, PartSegmenter):
    """SCOPS part segmenter: ``K + 1`` output maps, channel 0 background.

    Args:
        num_parts: K foreground parts.
        network: ``"unet"`` (CPU quick mode) or ``"deeplab"`` (DeepLab-v2 ResNet-50, the paper's).
        feature_channels: C, the channels of the semantic features ``V`` (the part basis is ``(K, C)``).
            Inferred from ``features`` when it is an extractor; required with ``features="batch"``
            unless the semantic consistency and orthonormal terms are both off.
        features: where ``V`` comes from. ``"batch"``: ``batch["features"]`` ``(B, C, h, w)``,
            precomputed (bilinearly upsampled to the logits' size inside the loss, as the original
            upsamples to the input size). A frozen :class:`partlab.features.FeatureExtractor`:
            computed on the fly from ``batch["image"]`` with its ``layers_for("scops")`` layers
            (on the extractor's device). The extractor is held outside the module: it is not a
            submodule, not in ``state_dict()``, never trained.
        saliency: the map ``D`` of the saliency constraint. ``"batch"``: ``batch["saliency"]``
            ``(B, 1, H, W)`` or ``(B, H, W)`` (e.g. :func:`partlab.saliency.cached_saliency` attached
            with :class:`partlab.data.extras.WithExtras`); ``"oracle"``: ``batch["fg"]``;
            ``"none"``: no mask (the "w/o saliency" ablation); ``"rbd"``: computed on the fly by
            :func:`partlab.saliency.saliency_maps` (slow: CPU, one image at a time).
        lambda_con, lambda_eqv, lambda_lmeqv, lambda_sc, lambda_orthonormal: term weights (module
            docstring); the defaults are the original's *effective* weights on partlab's reductions:
            ``lambda_con = 10 / 6`` (the original's 10 on L_con divided by B twice, at batch 6),
            ``lambda_eqv=None`` means ``1e3 / (K + 1)``. 0 switches a term off.
        warp: keyword arguments of :func:`partlab.geometry.random_warp`, or a preset name
            (default ``"scops"``: rotation +-60 deg, zoom 0.7-2.0, shift +-0.1, 5x5 TPS).
        jitter: keyword arguments of :func:`partlab.geometry.color_jitter`, or a preset name
            (default ``"scops"``: brightness .3, contrast .3, saturation .2, hue .2).
        eps: added per pixel before normalising part maps in the losses (1e-3 as in the original).
        clip: gradient-norm clip of the network's parameter group(s) (5, as in the original).
        basis_lr, basis_momentum, basis_weight_decay, basis_clip: the part basis's own SGD
            (0.01, 0.9, 5e-4, 5 as in the original).
        semantic_features: what L_sc rebuilds: ``"features"`` (``V`` as it is, the paper's) or
            ``"features+position"`` (plus the pixel's position on the saliency's object, 4 non-negative
            channels, :func:`semantic_features`; the basis is then ``(K, C + 4)``). partlab's addition for
            features that do not name parts (README, "Co-parts"); needs a saliency mask.
        **network_kwargs: passed to the network (``base_channels=8``, ``pretrained="auto"``, ...).

    Attributes:
        network: the segmentation network.
        basis: ``nn.Parameter`` ``(K, C)`` (``(K, C + 4)`` with ``semantic_features="features+position"``),
            the raw part basis ``w``, initialised ``|N(0, 1)|``
            (``None`` when neither ``"sc"`` nor ``"orthonormal"`` is on).
        weights: ``{term: lambda}`` as used (``lambda_eqv`` resolved).

    >>> model = SCOPS(4, feature_channels=16, base_channels=8)
    >>> batch = {"image": torch.rand(2, 3, 32, 32), "features": torch.rand(2, 16, 4, 4),
    ...          "saliency": torch.ones(2, 1, 32, 32)}
    >>> sorted(model.losses(batch))
    ['con', 'eqv', 'lmeqv', 'loss', 'orthonormal', 'sc']
    """

    feature_role = "scops"
    TERMS = ("con", "eqv", "lmeqv", "sc", "orthonormal")      # the keys of losses(), weighted by lambda_<term>
    TERM_NOTES = {                                             # the explorer's captions: the term in the paper
        "con": "L_con: each part gathered around its centre (SCOPS Eq. 2)",
        "eqv": "L_eqv: part maps follow a random warp, KL (SCOPS Eq. 3, first term)",
        "lmeqv": "L_lmeqv: part centres follow the same warp (SCOPS Eq. 3, second term)",
        "sc": "L_sc: semantic consistency, features rebuilt from a part basis (SCOPS Eq. 4)",
        "orthonormal": "L_on: the part basis kept orthonormal (SCOPS Eq. 5)",
    }

    def __init__(self, num_parts: int, *, network: str = "unet", feature_channels: Optional[int] = None,
                 features: Union[str, nn.Module] = "batch", saliency: str = "batch",
                 lambda_con: float = 10.0 / ORIGINAL_BATCH, lambda_eqv: Optional[float] = None, lambda_lmeqv: float = 1e2,
                 lambda_sc: float = 1e4, lambda_orthonormal: float = 0.1,
                 warp: Union[str, dict] = "scops", jitter: Union[str, dict] = "scops", eps: float = 1e-3,
                 clip: Optional[float] = 5.0, basis_lr: float = 0.01, basis_momentum: float = 0.9,
                 basis_weight_decay: float = 5e-4, basis_clip: Optional[float] = 5.0,
                 semantic_features: str = "features", **network_kwargs: Any) -> None:
        super().__init__(num_parts)
        if lambda_eqv is None:
            lambda_eqv = 1e3 / (num_parts + 1)
        self.weights = self.check_weights({"con": lambda_con, "eqv": lambda_eqv, "lmeqv": lambda_lmeqv,
                                           "sc": lambda_sc, "orthonormal": lambda_orthonormal})
        if saliency not in SALIENCY_CHOICES:
            raise ValueError(f"saliency={saliency!r}; choose one of {SALIENCY_CHOICES}")
        self.saliency = saliency
        if semantic_features not in SEMANTIC_FEATURES:
            raise ValueError(f"semantic_features={semantic_features!r}; choose one of {SEMANTIC_FEATURES}")
        if semantic_features != "features" and saliency == "none":
            raise ValueError(NEEDS_MASK)
        self.semantic_features = semantic_features
        self.eps = float(eps)
        self.warp_kwargs = warp_preset(warp) if isinstance(warp, str) else dict(warp)
        self.jitter_kwargs = jitter_preset(jitter) if isinstance(jitter, str) else dict(jitter)
        self.clip = clip
        self.basis_lr, self.basis_momentum = float(basis_lr), float(basis_momentum)
        self.basis_weight_decay, self.basis_clip = float(basis_weight_decay), basis_clip

        feature_channels = self._init_features(features, feature_channels)

        self.network = build_network(network, num_parts + 1, **network_kwargs)
        needs_basis = self.weights["sc"] > 0 or self.weights["orthonormal"] > 0
        if needs_basis:
            if feature_channels is None:
                raise ValueError("SCOPS needs feature_channels (C of the semantic features V, the part basis "
                                 "is (K, C)) with features='batch'; e.g. feature_channels=features.shape[1]")
            channels = int(feature_channels) + (POSITION_CHANNELS if semantic_features != "features" else 0)
            basis = torch.randn(num_parts, channels).abs()                               # |N(0, 1)|, (K, C)
            self.basis: Optional[nn.Parameter] = nn.Parameter(basis)
        else:
            self.register_parameter("basis", None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K+1, H, W)`` at the input size."""
        return self.run_network(check_images(images))

    # ------------------------------------------------------------------------------ loss inputs

    def _saliency(self, batch: dict, images: torch.Tensor, size: tuple[int, int]) -> Optional[torch.Tensor]:
        """``D`` ``(B, 1, H, W)`` at the logits' size, or ``None`` (no mask)."""
        if self.saliency == "none":
            return None
        if self.saliency == "rbd":
            from partlab.saliency import saliency_maps

            saliency = saliency_maps(images.detach(), method="rbd")
            batch = {"saliency": saliency}
        key = "fg" if self.saliency == "oracle" else "saliency"
        how = "" if key == "fg" else ("attach maps with WithExtras(dataset, saliency=partlab.saliency.cached_saliency("
                                      "dataset, 'rbd')), or build SCOPS(..., saliency='rbd' | 'none')")
        return batch_map(batch, key, images, size, f"SCOPS(saliency={self.saliency!r})", how)

    # ------------------------------------------------------------------------------ the losses

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The SCOPS terms for ``batch`` and their weighted total.

        ``batch``: ``"image"`` ``(B, 3, H, W)``; ``"features"`` with ``features="batch"``;
        ``"saliency"`` with ``saliency="batch"``, ``"fg"`` with ``"oracle"``.

        Returns ``{"loss": sum_t lambda_t * term_t, <term>: value}`` with the unweighted, detached
        terms ``"con"`` (Eq. 2), ``"eqv"`` and ``"lmeqv"`` (Eq. 3), ``"sc"`` (Eq. 4),
        ``"orthonormal"`` (Eq. 5): only those with a weight > 0, the others are not computed.
        Every term is computed in float32 on the logits at the input size; only the network (and a
        frozen feature extractor) runs under the model's autocast when :func:`partlab.train.fit`
        trains with ``amp``.
        """
        images = check_images(batch["image"])
        w = self.weights
        logits = self(images).float()                                                  # (B, K+1, H, W)
        size = tuple(logits.shape[-2:])
        parts = logits.softmax(dim=1)[:, 1:]                                           # (B, K, H, W)
        terms: dict[str, torch.Tensor] = {}

        if w["con"] > 0:                                                               # Eq. (2)
            terms["con"] = concentration_loss(parts, eps=self.eps)

        if w["eqv"] > 0 or w["lmeqv"] > 0:                                             # Eq. (3)
            warp = random_warp(images.shape[0], **self.warp_kwargs, device=images.device)
            transformed = warp_images(color_jitter(images, **self.jitter_kwargs), warp)  # T_s(T_a(I))
            logits_t = self(transformed).float()                                         # (B, K+1, H, W)
            if w["eqv"] > 0 and w["lmeqv"] > 0:
                both = equivariance_loss(logits_t, logits, warp, eps=self.eps)
                terms["eqv"], terms["lmeqv"] = both["kl"], both["center"]
            elif w["eqv"] > 0:
                terms["eqv"] = equivariance_kl_loss(logits_t, logits, warp)
            else:
                terms["lmeqv"] = equivariance_center_loss(logits_t, logits, warp, eps=self.eps)

        if w["sc"] > 0:                                                                # Eq. (4)
            features = self._features(batch, images, size, "the semantic consistency loss",
                                      upsample=False)                                   # (B, C, h <= H, w <= W)
            saliency = self._saliency(batch, images, size)                               # (B, 1, H, W)
            features = semantic_features(features, saliency, self.semantic_features)
            terms["sc"] = semantic_consistency_loss(parts, features, self.basis.float(), saliency)

        if w["orthonormal"] > 0:                                                       # Eq. (5)
            terms["orthonormal"] = orthonormal_loss(self.basis.float())

        return self.weighted_total(terms, logits)

    # ------------------------------------------------------------------------------ optimiser

    def param_groups(self, config) -> list[dict]:
        """Parameter groups for :func:`partlab.train.fit` (REFERENCE_NOTES, SCOPS optimiser).

        - network: ``config.lr`` with ``config.optimizer`` (SGD 1e-5 in the paper; Adam ~1e-3 for the
          quick-mode U-Net); with DeepLab, backbone at ``config.lr`` and head at ``10 * config.lr``;
          gradient norm clipped at ``clip`` (each group on its own: the original clips backbone and
          head together);
        - part basis: its own SGD, ``basis_lr`` (0.01), momentum 0.9, weight decay 5e-4, clip 5.
        """
        groups = self.network_groups(config, self.clip)
        if self.basis is not None:
            groups.append({"params": [self.basis], "optimizer": "sgd", "lr": self.basis_lr,
                           "momentum": self.basis_momentum, "weight_decay": self.basis_weight_decay,
                           "clip": self.basis_clip})
        return groups

    # ------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Part maps with the paper's post-processing.

        Returns ``probs`` ``(B, K+1, H, W)``: the plain softmax of the logits (channel 0 background);
        ``labels`` ``(B, H, W)``: :func:`postprocess_labels` of ``probs`` (each part map divided by
        its spatial maximum, background a constant 0.1, argmax), not ``probs.argmax(1)``.
        """
        out = super().predict(images)
        out["labels"] = postprocess_labels(out["probs"])
        return out

    @torch.no_grad()
    def centers(self, images: torch.Tensor) -> torch.Tensor:
        """Part centres ``(B, K, 2)`` (normalised ``(x, y)``) of ``softmax(logits)[:, 1:]``, no eps:
        the landmarks of SCOPS' evaluation (feed them to
        :func:`partlab.metrics.landmark_regression_error`)."""
        probs = PartSegmenter.predict(self, images)["probs"]
        return part_centers(probs[:, 1:], eps=0.0)


# ---------------------------------------------------------------------------------------------
# quick mode
# ---------------------------------------------------------------------------------------------

# Quick-mode settings (U-Net, 64 px, CPU); see scops_quick_setup.
# The paper's weights are for 100k steps of a pretrained DeepLab. With a few hundred steps of a U-Net
# from scratch, lambda_con = 10 (already 6x the original's effective 10 / 6) leaves the parts spread over
# the whole image (L_con ~3 after 400 steps, one part absorbing the background): it is raised so the parts
# gather within the quick budget. Measured on synthetic birds (64 px, 400 steps, rbd saliency; FG-ARI /
# landmark error): lambda_con 10: .209/.260; 100: .244/.255; 300: .235/.243; 1e3: .162/.240;
# 1e4: .112/.208 (parts concentrate but stop following the features). Every other weight is the paper's.
# Chosen on validation (150 birds, seed 100, training seeds 0-4; README): 100 gives FG-ARI .202 +- .063,
# landmark error .206 +- .003, fg IoU .171; 300 gives .175 +- .070, .197 +- .004, .249.
QUICK_WEIGHTS: dict[str, float] = {"lambda_con": 300.0}
QUICK_FIT: dict[str, Any] = {"max_steps": 800, "batch_size": 8, "lr": 1e-3, "optimizer": "adam",
                             "log_every": 20}


def scops_quick_setup(category: str = "bird", size: int = 64, n_train: int = 512, seed: int = 0,
                      features: Union[str, nn.Module] = "auto", saliency: str = "rbd", device: str = "auto",
                      num_parts: Optional[int] = None, network: str = "unet", feature_size=None,
                      saliency_path=None, **scops_kwargs: Any):
    """Everything a quick SCOPS run needs: model, training set with cached extras, settings.

    Steps: the synthetic ``"train"`` split (:class:`partlab.data.synthetic.SyntheticParts`,
    ``n_train`` images of ``size`` px); frozen features of every image
    (:func:`partlab.features.extract_features` with the extractor's ``layers_for("scops")``, at
    the layers' own resolution unless ``feature_size``), computed once; saliency maps
    (:func:`partlab.saliency.cached_saliency`, ``saliency`` = ``"rbd"``, ``"oracle"`` or ``"none"``,
    optionally cached in the file ``saliency_path``); both attached with
    :class:`partlab.data.extras.WithExtras`; a :class:`SCOPS` with a U-Net reading them, with the
    paper's loss weights except ``lambda_con`` (:data:`QUICK_WEIGHTS`: 300 instead of the original's
    effective 10 / 6, so parts gather within a few hundred steps; ``network="deeplab"`` keeps 10 / 6).

    Args:
        category: synthetic category; K defaults to its number of part classes.
        features: an extractor name for :func:`partlab.features.get_extractor` (``"auto"``,
            ``"vgg19"``, ``"standin"``, ``"rgb"``) or an extractor.
        device: where features are extracted and where ``info["fit"]`` trains.
        **scops_kwargs: override the quick-mode model settings (weights, ``base_channels``, ...).

    Returns:
        ``(model, train_dataset, info)``; ``info`` says what was used (``"features"``,
        ``"saliency"``, ``"device"``, ``"num_parts"``, ...) and holds ``info["fit"]``, the
        keyword arguments of :func:`partlab.train.fit` for this recipe.
    """
    from partlab.methods.base import quick_setup
    from partlab.saliency import cached_saliency

    if saliency not in ("rbd", "oracle", "none"):
        raise ValueError(f"saliency={saliency!r}; quick mode caches 'rbd', 'oracle' or 'none'")
    return quick_setup(SCOPS, category, size=size, n_train=n_train, seed=seed, features=features, device=device,
                       num_parts=num_parts, network=network, feature_size=feature_size, quick_weights=QUICK_WEIGHTS,
                       quick_fit=QUICK_FIT, settings={"saliency": "batch"}, model_kwargs=scops_kwargs,
                       extras={"saliency": lambda data: cached_saliency(data, saliency, path=saliency_path)},
                       describe={"saliency": saliency})


def quick_recipe():
    """The quick recipe (CPU, minutes): notebooks 05 and 06's settings, :func:`scops_quick_setup`'s model on
    256 birds at 64 px, 400 steps of Adam 1e-3."""
    from partlab.recipes import DataSpec, Recipe
    from partlab.models import QUICK_UNET
    from partlab.train import TrainConfig

    weights = {"con": QUICK_WEIGHTS["lambda_con"], "lmeqv": 1e2, "sc": 1e4, "orthonormal": 0.1}
    return Recipe("scops", "quick", weights, {"network": "unet", **QUICK_UNET, "saliency": "rbd"},
                  DataSpec(size=64, n_train=256, features="auto", cache=True),
                  TrainConfig.from_kwargs(**dict(QUICK_FIT, max_steps=400), seed=0))


def paper_recipe():
    """The original's recipe (REFERENCE_NOTES.md, config SCOPS_K8_retrain): K = 8, DeepLab-v2 ResNet-50 from
    ImageNet, 256 px, batch 6, SGD lr 1e-5 (head x10) with momentum 0.9, weight decay 5e-4 and poly 0.9
    decay for 100k steps, gradient norms clipped at 5, the basis's own SGD (lr 0.01), VGG19 relu5_2 +
    relu5_4 features computed on the fly, RBD saliency, and the original's effective weights on
    partlab's reductions (``con`` 10 / 6, ``eqv`` 1e3 / (K + 1), ``lmeqv`` 1e2, ``sc`` 1e4,
    ``orthonormal`` 0.1)."""
    from partlab.recipes import PAPER_NUM_WORKERS, DataSpec, Recipe
    from partlab.train import TrainConfig

    weights = {"con": 10.0 / ORIGINAL_BATCH, "lmeqv": 1e2, "sc": 1e4, "orthonormal": 0.1}
    model = {"network": "deeplab", "pretrained": True, "num_parts": 8, "saliency": "rbd", "clip": 5.0,
             "basis_lr": 0.01, "basis_momentum": 0.9, "basis_weight_decay": 5e-4, "basis_clip": 5.0}
    fit = TrainConfig.from_kwargs(max_steps=100_000, batch_size=6, lr=1e-5, optimizer="sgd", momentum=0.9,
                                  weight_decay=5e-4, lr_schedule="poly", poly_power=0.9, log_every=100,
                                  checkpoint_every=2000, seed=0, num_workers=PAPER_NUM_WORKERS)
    return Recipe("scops", "paper", weights, model, DataSpec(size=256, n_train=10_000, features="vgg19", cache=False),
                  fit, imagenet=True)


RECIPES = {"quick": quick_recipe, "paper": paper_recipe}


def setup(recipe, device: str = "auto", run_dir=None):
    """``(model, train_dataset, info)`` for a SCOPS recipe (:mod:`partlab.recipes`). With ``data.cache``
    the features and saliency maps of every training image are computed once (quick mode; RBD maps
    cached on disk in ``run_dir`` when given); otherwise features come from the extractor on the fly
    and RBD saliency is computed per item by the data loader (:class:`partlab.data.extras.WithSaliency`), in
    ``fit.num_workers`` processes."""
    from partlab.methods.base import quick_setup
    from partlab.saliency import cached_saliency

    data, settings = recipe.data, dict(recipe.model)
    network, num_parts = settings.pop("network", "unet"), settings.pop("num_parts", None)
    saliency = settings.pop("saliency", "rbd")
    from partlab.methods.registry import method_of

    weights = method_of(SCOPS).weight_kwargs(recipe.weights)                       # {"lambda_<term>": value}
    if data.cache:
        if saliency not in ("rbd", "oracle", "none"):
            raise ValueError(f"model.saliency={saliency!r}; with data.cache choose 'rbd', 'oracle' or 'none'")
        path = None if run_dir is None or saliency != "rbd" else Path(run_dir) / "saliency_rbd.pt"
        extras = {"saliency": lambda dataset: cached_saliency(dataset, saliency, path=path)}
        model_settings = {"saliency": "batch"}
    else:                                      # RBD per item in the DataLoader's workers, not in the loss
        extras, model_settings = {}, {"saliency": "batch" if saliency == "rbd" else saliency}
    model, train, info = quick_setup(SCOPS, data.category, world=data.world_config(), size=data.size,
                                     n_train=data.n_train, seed=recipe.fit.seed, features=data.features,
                                     device=device, num_parts=num_parts, network=network, feature_size=None,
                                     quick_weights={}, quick_fit={}, extras=extras, settings=model_settings,
                                     model_kwargs={**weights, **settings}, describe={"saliency": saliency},
                                     cache=data.cache)
    if not data.cache and saliency == "rbd":
        from partlab.data.extras import WithSaliency

        train = WithSaliency(train, "rbd")
        info["saliency"] = "rbd, computed per item in the data loader (fit.num_workers processes)"
    return model, train, info
