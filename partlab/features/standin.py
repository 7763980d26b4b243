"""partlab's offline stand-in for ImageNet VGG19 features: a small VGG-style CNN trained label-free.

Why it exists: SCOPS' semantic consistency, the contrastive method's feature loss and the DFF /
K-means baselines all need "pretrained" CNN features, and no machine here can download ImageNet
weights. The stand-in is trained by partlab itself on synthetic images, **without part labels,
masks, landmarks or categories**: only images and the random warps partlab applies to them.

Training task (dense equivariant contrast, one image at a time). Two views of an image: ``x1`` =
colour-augmented image, ``x2`` = a differently augmented image warped by a random similarity + TPS
``T`` (partlab.geometry). A projection head ``g`` on ``[relu3_2, relu5_2]`` gives unit embeddings
``e1, e2``; ``warp(e1, T)`` puts view 1's embeddings at view 2's pixels. For ``P`` pixels ``p``
sampled inside the valid region of each image, InfoNCE with the *other pixels of the same image*
as negatives::

    L = - mean_p log( exp(<e2_p, e1'_p> / t) / sum_q exp(<e2_p, e1'_q> / t) ),   e1' = warp(e1, T)

To solve it a feature must say *where on the object* a pixel lies, from its context, whatever the
colours: the augmentation permutes colour channels and greys out images, so colour alone cannot
identify a pixel. That is the property part discovery needs (nearby pixels of one part look alike,
different parts differ, across instances), and the one the baselines measure.

Architecture: VGG-style 3x3 conv + ReLU blocks named like VGG19's (``relu1_1`` ... ``relu5_2``);
two max-pools (stride 4 from block 3 on), blocks 4 and 5 dilated (2, 4) to widen the receptive
field without losing resolution. ImageNet mean/std normalisation in front, as for VGG19.

Files: ``data/standin/standin_v1.pt`` (fp16 weights + config + training record) and
``data/standin/TRAINING.json`` (the record, readable). Rebuild both with::

    python -m partlab.features build-standin            # about 15 minutes on 2 CPU cores (800 steps)

``data/standin/standin_v2.pt`` (record ``TRAINING_standin_v2.json``) is v2, loaded by name
(``features="standin_v2"``): the same pretext plus descriptor vector exchange across images
(:data:`STANDIN_TRAINING_V2`); ``python -m partlab.features build-standin --version standin_v2`` rebuilds it.

``PARTLAB_STANDIN=/path/to/file.pt`` points partlab at another file.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from partlab import utils
from partlab.features.extractors import (IMAGENET_MEAN, IMAGENET_STD, VGG19_RECIPES, _STANDIN_NAMES, _file_tag,
                                        _NormalisedSequential)

STANDIN_FILE = "standin_v1.pt"

# (layer suffix, output channels, dilation, max-pool after)
STANDIN_LAYOUT = (
    ("1_1", 24, 1, False), ("1_2", 24, 1, True),
    ("2_1", 48, 1, False), ("2_2", 48, 1, True),
    ("3_1", 96, 1, False), ("3_2", 96, 1, False),
    ("4_1", 96, 2, False), ("4_2", 96, 2, False),
    ("5_1", 96, 4, False), ("5_2", 96, 4, False),
)

# Roles of the VGG19 recipes mapped onto the stand-in's layers (same weights as on VGG19).
# The "high" role (VGG19's relu5_4) is relu4_2: block 5 feeds the pretext head and specialises in
# the pretext task (as layers right under a contrastive projection head do). Chosen on the synthetic
# world's *validation* split, K-means / DFF FG-ARI per layer (200 images, 64 px, file of 2026-11-21):
#            relu3_2    relu4_1    relu4_2    relu5_1    relu5_2
#   bird     .03/.02    .04/.05    .15/.14    .09/.10    .12/.10
#   quadr.   .04/.02    .08/.03    .18/.21    .14/.15    .20/.13
#   figure   .08/.09    .11/.11    .27/.25    .26/.28    .29/.29
#   face     .02/.02    .09/.06    .21/.18    .14/.15    .14/.17
STANDIN_RECIPES: Dict[str, Dict[str, float]] = {
    "scops": {"relu4_2": 1.0, "relu5_2": 1.0},                  # VGG19: relu5_2 + relu5_4
    "contrastive": {"relu3_2": 0.33, "relu4_2": 1.0},           # VGG19: relu3_2 x .33 + relu5_4
    "kmeans": {"relu3_2": 0.33, "relu4_2": 1.0},
    "kmeans_appendix": {"relu4_2": 1.0, "relu5_2": 1.0},        # VGG19: relu5_2 + relu5_4 (as "scops")
    "dff": {"relu4_2": 1.0},                                    # VGG19: relu5_4
    "perceptual": {f"relu{b}_1": 10.0 for b in range(1, 6)},    # VGG19: relu1_1 .. relu5_1
}
assert set(STANDIN_RECIPES) == set(VGG19_RECIPES)

# Training recipe of the shipped file (python -m partlab.features build-standin).
STANDIN_TRAINING = {
    "images": 3000, "size": 64, "categories": "all", "seed": 0, "steps": 800, "batch_size": 24,
    "lr": 1e-3, "temperature": 0.2, "pixels_per_image": 48,
    "warp": {"rotation": 30.0, "scale": [0.8, 1.25], "translation": 0.1},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "channel_permutation": True, "grayscale_p": 0.3,
}


# v2 (issue "Co-parts, not segments", item 4): v1's pretext plus descriptor vector exchange across the
# images of a batch (:func:`exchange_descriptors`), full hue rotations, and images of both synthetic
# worlds. Its deep layer names parts better than v1's (K-means at relu4_2 beats the position on the
# object, v1 does not; README, "Features"), but no method gains from it yet, so it is not the default.
# Layer roles: the same as v1's, chosen again on the validation split (relu4_2 leads K-means and DFF).
STANDIN_TRAINING_V2 = dict(STANDIN_TRAINING, hue_rotation=True, worlds=["default", "varied"],
                           exchange={"weight": 1, "temperature": 0.05, "partner": "random"})

# Every stand-in partlab has shipped, loadable by name (``get_extractor("standin_v1")``); ``"standin"``
# is :data:`STANDIN_DEFAULT`. Each version keeps the layer roles chosen for it and its training recipe.
STANDIN_VERSIONS: Dict[str, dict] = {
    "standin_v1": {"recipes": STANDIN_RECIPES, "semantic_layers": {"mid": "relu3_2", "high": "relu4_2"},
                   "training": STANDIN_TRAINING},
    "standin_v2": {"recipes": STANDIN_RECIPES, "semantic_layers": {"mid": "relu3_2", "high": "relu4_2"},
                   "training": STANDIN_TRAINING_V2},
}
STANDIN_DEFAULT = "standin_v1"
assert set(STANDIN_VERSIONS) == set(_STANDIN_NAMES), "get_extractor's names must list every stand-in version"


def build_command(version: str = STANDIN_DEFAULT) -> str:
    """The shell command that rebuilds ``version``'s file."""
    return "python -m partlab.features build-standin" + ("" if version == "standin_v1" else f" --version {version}")


def training_record_path(path: os.PathLike, version: str = STANDIN_DEFAULT) -> Path:
    """Where ``version``'s readable training record lies beside its weights ``path``: ``TRAINING.json`` for
    v1 (as it always did), ``TRAINING_<version>.json`` for later versions."""
    name = "TRAINING.json" if version == "standin_v1" else f"TRAINING_{version}.json"
    return Path(path).parent / name


class StandinMissing(FileNotFoundError):
    """The stand-in weights file is not where partlab expects it."""


def standin_path(version: Optional[str] = None) -> Path:
    """The stand-in weights: ``version``'s file in ``<repo>/data/standin/`` when named; else
    ``$PARTLAB_STANDIN`` if set, else the current version's file (:data:`STANDIN_DEFAULT`)."""
    if version is None:
        env = os.environ.get("PARTLAB_STANDIN")
        if env:
            return Path(env)
        version = STANDIN_DEFAULT
    if version not in STANDIN_VERSIONS:
        raise ValueError(f"unknown stand-in version {version!r}; choose one of {list(STANDIN_VERSIONS)}")
    return Path(__file__).resolve().parents[2] / "data" / "standin" / f"{version}.pt"


def standin_network(layout: Sequence = STANDIN_LAYOUT) -> tuple[nn.Sequential, Dict[str, int]]:
    """The untrained stand-in: ``(features, {relu name: index in features})``."""
    modules: list = []
    index: Dict[str, int] = {}
    channels = 3
    for name, out, dilation, pool in layout:
        modules += [nn.Conv2d(channels, out, 3, padding=dilation, dilation=dilation), nn.ReLU()]
        index[f"relu{name}"] = len(modules) - 1
        if pool:
            modules.append(nn.MaxPool2d(2))
        channels = out
    return nn.Sequential(*modules), index


class StandinFeatures(_NormalisedSequential):
    """The offline stand-in extractor (see the module docstring), loaded from :func:`standin_path`.

    ``relu3_2`` .. ``relu5_2``: 96 channels at stride 4. Raises :class:`StandinMissing` with the
    rebuild command when the file is absent.
    """

    name = "standin"

    def __init__(self, path: Optional[os.PathLike] = None):
        if isinstance(path, str) and path in STANDIN_VERSIONS:
            path = standin_path(path)
        path = Path(path) if path is not None else standin_path()
        if not path.is_file():
            raise StandinMissing(
                f"the offline stand-in features {path} are missing. Rebuild them with "
                f"`python -m partlab.features build-standin` (about 15 minutes on 2 CPU cores), point "
                f"PARTLAB_STANDIN at a copy, or use ImageNet VGG19 weights (features='vgg19')")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            layout = tuple(tuple(row) for row in blob["layout"])
            features, index = standin_network(layout)
            features.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        except Exception as exc:
            raise StandinMissing(f"could not read the stand-in features {path} ({type(exc).__name__}: {exc}); "
                                 f"rebuild them with `python -m partlab.features build-standin`") from exc
        super().__init__(features, index)
        self.record = dict(blob.get("record", {}))
        self.version = self.record.get("version", "standin_v1")
        roles = STANDIN_VERSIONS.get(self.version, STANDIN_VERSIONS["standin_v1"])
        self.recipes = {k: dict(v) for k, v in roles["recipes"].items()}
        self.semantic_layers = dict(roles["semantic_layers"])
        self.weights_hash = _file_tag(path)
        self.description = (f"partlab stand-in CNN trained label-free on synthetic images "
                            f"({self.record.get('task', 'dense equivariant contrast').split(' (')[0]}; {path.name}), "
                            f"not ImageNet features")


# ------------------------------------------------------------------------------------- training

def hue_rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image's colours by ``angles`` (B,) radians about the grey axis (a full hue rotation,
    unlike colour jitter's small hue shift), clamped to [0, 1]."""
    c, s = torch.cos(angles), torch.sin(angles)
    k, r = (1 - c) / 3, s / 3 ** 0.5
    rows = [torch.stack(row, -1) for row in ((c + k, k - r, k + r), (k + r, c + k, k - r), (k - r, k + r, c + k))]
    matrix = torch.stack(rows, -2)                                                        # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, images).clamp(0, 1)


def _augment(images: torch.Tensor, jitter: dict, permute: bool, grayscale_p: float,
             generator: torch.Generator, hue_rotation: bool = False) -> torch.Tensor:
    """Colour jitter, random hue rotation, channel permutation, greyscale: colour cannot identify a pixel."""
    from partlab.geometry import color_jitter

    x = color_jitter(images, **jitter, generator=generator)
    b = x.shape[0]
    if hue_rotation:
        x = hue_rotate(x, 2 * torch.pi * torch.rand(b, generator=generator))
    if permute:
        perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)])       # (B, 3)
        x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    grey = (torch.rand(b, 1, 1, 1, generator=generator) < grayscale_p).float()
    return grey * x.mean(1, keepdim=True).expand_as(x) + (1 - grey) * x


def dense_contrastive_loss(e_anchor: torch.Tensor, e_target: torch.Tensor, valid: torch.Tensor,
                           pixels: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """InfoNCE between corresponding pixels of two embedding maps, negatives from the same image.

    Args:
        e_anchor: (B, D, h, w) unit embeddings of the warped view.
        e_target: (B, D, h, w) embeddings of the other view already warped onto the anchor's pixels.
        valid: (B, h, w) bool, pixels whose correspondence lies inside the image.
        pixels: pixels sampled per image (fewer when fewer are valid).

    Returns:
        mean over images of the mean cross-entropy of each sampled pixel against the sampled pixels.
    """
    target = F.normalize(e_target, dim=1)
    losses = []
    for a, t, v in zip(e_anchor, target, valid):
        where = v.flatten().nonzero()[:, 0]
        if where.numel() < 2:
            continue
        pick = where[torch.randperm(where.numel(), generator=generator)[:pixels]]
        anchor = a.flatten(1)[:, pick].T                                                  # (P, D)
        positive = t.flatten(1)[:, pick].T                                                # (P, D)
        logits = anchor @ positive.T / temperature                                        # (P, P)
        losses.append(F.cross_entropy(logits, torch.arange(pick.numel())))
    return torch.stack(losses).mean()


def exchange_descriptors(e: torch.Tensor, partner: torch.Tensor, temperature: float) -> torch.Tensor:
    """Descriptor vector exchange (Thewlis et al., ICCV 2019): each pixel of ``e`` re-expressed as the
    soft match of itself among the pixels of another image's embedding map ``partner``.

    ``e, partner (B, D, h, w)`` unit embeddings; returns ``(B, D, h, w)``: for pixel p of image b,
    ``sum_q softmax_q(<e_p, partner_q> / t) partner_q``. Used in place of ``e`` in the dense equivariant
    loss, a pixel can only find its own correspondence in the warped view if the other instance holds
    a pixel that plays the same role: the embedding must be shared across instances, not image-specific.
    """
    b, d, h, w = e.shape
    attention = torch.softmax(e.flatten(2).transpose(1, 2) @ partner.flatten(2) / temperature, dim=2)   # (B, hw, hw)
    return (attention @ partner.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, d, h, w)


def exchange_partners(e: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """For each image of the batch, the index of another image to exchange descriptors with:
    ``"random"`` (a random other image) or ``"nearest"`` (the most similar other image by mean
    embedding, found without labels)."""
    b = e.shape[0]
    if b < 2:
        return torch.zeros(b, dtype=torch.long)
    if mode == "nearest":
        g = F.normalize(e.detach().mean(dim=(2, 3)), dim=1)
        similarity = g @ g.T - 3.0 * torch.eye(b)
        return similarity.argmax(1)
    if mode != "random":
        raise ValueError(f"exchange partner must be 'random' or 'nearest', not {mode!r}")
    shift = torch.randint(1, b, (b,), generator=generator)
    return (torch.arange(b) + shift) % b


def sinkhorn(scores: torch.Tensor, iterations: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """Balanced soft assignments of ``P`` samples to ``M`` prototypes (SwAV's Sinkhorn-Knopp):
    ``scores (P, M)`` -> ``Q (P, M)``, rows summing to 1, each prototype receiving ``P / M`` in total."""
    q = torch.exp((scores - scores.max()) / epsilon).T                                    # (M, P)
    q = q / q.sum()
    m, p = q.shape
    for _ in range(iterations):
        q = q / q.sum(1, keepdim=True) / m
        q = q / q.sum(0, keepdim=True) / p
    return (q * p).T


def swapped_clustering_loss(z_a: torch.Tensor, z_b: torch.Tensor, prototypes: torch.Tensor,
                            temperature: float, iterations: int = 3) -> torch.Tensor:
    """SwAV's swapped prediction on corresponding pixels of two views, prototypes shared by the batch.

    ``z_a, z_b (P, D)``: unit embeddings of the same ``P`` pixels (of every image in the batch) in the
    two views; ``prototypes (M, D)`` unit vectors. Each view's balanced codes (:func:`sinkhorn`, no
    gradient) are the targets of the other view's softmax over the prototypes. Because the codes are
    balanced over the pixels of *all* images, a prototype can only be "head-like pixels" if it holds
    such pixels from many images: what one image's pixel is called must agree across instances.
    """
    s_a, s_b = z_a @ prototypes.T, z_b @ prototypes.T                                     # (P, M)
    with torch.no_grad():
        q_a, q_b = sinkhorn(s_a.detach(), iterations), sinkhorn(s_b.detach(), iterations)
    log_a, log_b = F.log_softmax(s_a / temperature, 1), F.log_softmax(s_b / temperature, 1)
    return -0.5 * ((q_b * log_a).sum(1).mean() + (q_a * log_b).sum(1).mean())


def random_crops(images: torch.Tensor, scale: Sequence[float], size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """One random square crop per image covering a ``scale = (lo, hi)`` fraction of its area (a
    uniform draw), resized to ``size`` x ``size`` (bilinear): the local views of multi-crop training."""
    b, _, h, w = images.shape
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    side = area.sqrt()                                                                    # fraction of the side
    cx = (1 - side) * (2 * torch.rand(b, generator=generator) - 1)                        # centre in [-1, 1]
    cy = (1 - side) * (2 * torch.rand(b, generator=generator) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, cx, cy
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def multicrop_clustering_loss(global_z: Sequence[torch.Tensor], local_z: Sequence[torch.Tensor],
                              prototypes: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """SwAV's multi-crop swapped prediction on image embeddings: the balanced codes of each global view
    (:func:`sinkhorn` over the batch) are the target of every other view's softmax over the prototypes.
    A crop of a bird's head must predict the code of the whole bird, so the trunk learns to recognise
    each part of an object as that object's part, the same way in every instance (how ImageNet-trained
    and self-distilled networks come to have part detectors)."""
    scores = [z @ prototypes.T for z in list(global_z) + list(local_z)]                  # (B, M) each
    total, terms = 0.0, 0
    for i in range(len(global_z)):
        with torch.no_grad():
            q = sinkhorn(scores[i].detach(), iterations)
        for j, s in enumerate(scores):
            if j != i:
                total = total - (q * F.log_softmax(s / temperature, 1)).sum(1).mean()
                terms += 1
    return total / terms


def build_standin(path: Optional[os.PathLike] = None, *, version: str = STANDIN_DEFAULT,
                  steps: Optional[int] = None, progress: Optional[bool] = None, **overrides) -> dict:
    """Train a stand-in from scratch and write it (fp16) to ``path``, its record beside it
    (:func:`training_record_path`: ``TRAINING.json`` for v1).

    Args:
        path: output file (default: ``version``'s file, :func:`standin_path`).
        version: which recipe of :data:`STANDIN_VERSIONS` to train (``"standin_v1"``: 15 minutes on 2 CPU
            cores; ``"standin_v2"``: about 17 minutes on one thread).
        steps: override the recipe's ``"steps"`` (short runs for tests).
        **overrides: any other key of the recipe (:data:`STANDIN_TRAINING`).

    Returns:
        the training record (also stored in the file and in its record file).
    """
    if version not in STANDIN_VERSIONS:
        raise ValueError(f"unknown stand-in version {version!r}; choose one of {list(STANDIN_VERSIONS)}")
    from partlab.data.collate import stack_dataset
    from partlab.data.synthetic import SyntheticParts
    from partlab.geometry import random_warp, valid_mask, warp_images

    cfg = dict(STANDIN_VERSIONS[version]["training"], **overrides)
    if steps is not None:
        cfg["steps"] = int(steps)
    path = Path(path) if path is not None else standin_path(version)
    utils.seed_everything(cfg["seed"])
    generator = torch.Generator().manual_seed(cfg["seed"])
    start = time.time()
    worlds = cfg.get("worlds", ["default"])
    per_world = -(-cfg["images"] // len(worlds))
    images = torch.cat([stack_dataset(SyntheticParts(cfg["categories"], size=cfg["size"], length=per_world,
                                                     seed=cfg["seed"], split="train", config=world),
                                      keys=["image"])["image"] for world in worlds])
    features, index = standin_network()
    extractor_layers = ("relu3_2", "relu5_2")
    width = dict((f"relu{n}", c) for n, c, _, _ in STANDIN_LAYOUT)
    head = nn.Sequential(nn.Conv2d(sum(width[n] for n in extractor_layers), 128, 1), nn.ReLU(), nn.Conv2d(128, 64, 1))
    clustering = cfg.get("clustering")
    if clustering:       # a second head on the deep layer, with prototypes shared by every image
        cluster_head = nn.Sequential(nn.Conv2d(width[clustering["layer"]], 128, 1), nn.ReLU(),
                                     nn.Conv2d(128, clustering["dim"], 1))
        prototypes = nn.Parameter(F.normalize(torch.randn(clustering["prototypes"], clustering["dim"],
                                                          generator=generator), dim=1))
        extra = list(cluster_head.parameters()) + [prototypes]
    else:
        extra = []
    exchange = cfg.get("exchange")       # {"weight", "temperature", "partner"}: descriptor vector exchange
    multicrop = cfg.get("multicrop")
    if multicrop:        # image embeddings from the pooled deep layer, prototypes shared by every image
        image_head = nn.Sequential(nn.Linear(width[multicrop["layer"]], 256), nn.ReLU(),
                                   nn.Linear(256, multicrop["dim"]))
        image_prototypes = nn.Parameter(F.normalize(torch.randn(multicrop["prototypes"], multicrop["dim"],
                                                                generator=generator), dim=1))
        extra += list(image_head.parameters()) + [image_prototypes]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    tap_names = set(extractor_layers) | ({clustering["layer"]} if clustering else set()) \
        | ({multicrop["layer"]} if multicrop else set())

    def trunk(x: torch.Tensor, names) -> Dict[str, torch.Tensor]:
        """The trunk's ``names`` layers of ``x``, running it only as deep as needed."""
        x = (x - mean) / std
        taps, stop = {}, max(index[n] for n in names)
        for i, module in enumerate(features[:stop + 1]):
            x = module(x)
            taps.update({name: x for name in names if index[name] == i})
        return taps

    def embed(x: torch.Tensor):
        """Dense pretext embeddings ``e``, dense cluster embeddings ``z`` and image embeddings ``g``."""
        taps = trunk(x, tap_names)
        e = F.normalize(head(torch.cat([taps[n] for n in extractor_layers], dim=1)), dim=1)   # (B, 64, h, w)
        z = F.normalize(cluster_head(taps[clustering["layer"]]), dim=1) if clustering else None
        g = image_embedding(taps[multicrop["layer"]]) if multicrop else None
        return e, z, g

    def image_embedding(deep: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_head(deep.mean(dim=(2, 3))), dim=1)                          # (B, dim)

    params = list(features.parameters()) + list(head.parameters()) + extra
    optimizer = torch.optim.Adam(params, lr=cfg["lr"])
    history = []
    for step in utils.progress(range(cfg["steps"]), desc="stand-in", enabled=progress):
        pick = torch.randint(0, images.shape[0], (cfg["batch_size"],), generator=generator)
        x = images[pick]
        warp = random_warp(x.shape[0], **cfg["warp"], generator=generator)
        colour = (cfg["jitter"], cfg["channel_permutation"], cfg["grayscale_p"], generator,
                  cfg.get("hue_rotation", False))
        view1 = _augment(x, *colour)
        view2 = warp_images(_augment(x, *colour), warp)
        (e1, z1, g1), (e2, z2, g2) = embed(view1), embed(view2)
        valid = valid_mask(warp, e1.shape[-2:])[:, 0] > 0.99                               # (B, h, w)
        loss = dense_contrastive_loss(e2, warp_images(e1, warp), valid, cfg["pixels_per_image"],
                                      cfg["temperature"], generator)
        if exchange:
            loss = exchange.get("direct", 1.0) * loss
        if exchange:
            partner = exchange_partners(e1, exchange.get("partner", "random"), generator)
            e1x = exchange_descriptors(e1, e1[partner], exchange["temperature"])
            loss = loss + exchange["weight"] * dense_contrastive_loss(
                e2, warp_images(e1x, warp), valid, cfg["pixels_per_image"], cfg["temperature"], generator)
        if clustering:
            with torch.no_grad():
                prototypes.data = F.normalize(prototypes.data, dim=1)
            z1w = F.normalize(warp_images(z1, warp), dim=1)
            # the same random valid pixels of every image in both views (invalid ones ranked last)
            rank = torch.rand(valid.shape[0], valid[0].numel(), generator=generator) + valid.flatten(1)
            count = min(clustering["pixels_per_image"], int(valid.flatten(1).sum(1).min()))
            pick = rank.topk(count, dim=1).indices                                         # (B, P)
            za = torch.gather(z2.flatten(2), 2, pick[:, None].expand(-1, z2.shape[1], -1))  # (B, D, P)
            zb = torch.gather(z1w.flatten(2), 2, pick[:, None].expand(-1, z1w.shape[1], -1))
            loss = loss + clustering["weight"] * swapped_clustering_loss(
                za.transpose(1, 2).flatten(0, 1), zb.transpose(1, 2).flatten(0, 1), prototypes,
                clustering["temperature"])
        if multicrop:
            with torch.no_grad():
                image_prototypes.data = F.normalize(image_prototypes.data, dim=1)
            crops = [random_crops(_augment(x, *colour), multicrop["crop_scale"], multicrop["crop_size"], generator)
                     for _ in range(multicrop["crops"])]
            local = [image_embedding(trunk(c, [multicrop["layer"]])[multicrop["layer"]]) for c in crops]
            loss = loss + multicrop["weight"] * multicrop_clustering_loss(
                [g1, g2], local, image_prototypes, multicrop["temperature"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    seconds = time.time() - start
    chunk = max(1, len(history) // 20)
    record = {
        "command": build_command(version),
        "version": version,
        "task": "dense equivariant contrast" + (" with descriptor vector exchange across images" if exchange else "")
                + " (label-free): no part labels, masks, landmarks or categories",
        "config": cfg,
        "layout": [list(row) for row in STANDIN_LAYOUT],
        "loss_curve": [round(sum(history[i:i + chunk]) / len(history[i:i + chunk]), 4)
                       for i in range(0, len(history), chunk)],
        "final_loss": round(sum(history[-chunk:]) / len(history[-chunk:]), 4),
        "seconds": round(seconds, 1),
        "torch": str(torch.__version__),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    state = {k: v.half() for k, v in features.state_dict().items()}
    utils.atomic_save({"state_dict": state, "layout": record["layout"], "record": record}, path)
    utils.atomic_write_text(training_record_path(path, version), json.dumps(record, indent=1) + "\n")
    return record
