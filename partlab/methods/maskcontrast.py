"""MaskContrast (Van Gansbeke et al., ICCV 2021): pixel embeddings pulled to their object's mask prototype.

Unsupervised **semantic** segmentation: the classes are object categories across a collection (the
synthetic world's scenes, :class:`partlab.data.SyntheticScenes`, or PASCAL VOC). Each training image
comes with a saliency mask ``batch["saliency"]`` (the world's object masks: the supervised-saliency
setting; or partlab's RBD saliency: the unsupervised one). Algorithm 1 of the supplementary, per step:

1. two views of every image and its mask (:func:`partlab.geometry.random_resized_crop`: crop of 20-100 %
   of the area, flip, colour jitter ``(0.4, 0.4, 0.4, 0.1)`` with p 0.8, grey with p 0.2); a view whose
   mask covers <= 1 % or >= 99 % of it is redrawn;
2. the query network embeds the query view: ``q`` ``(B, 32, H, W)`` and saliency logits;
   the key network (a momentum copy, no gradient) embeds the key view: ``k``;
3. each image's key prototype is the L2-normalised sum of ``k`` inside the key view's mask; every salient
   query pixel is classified among the batch's prototypes (its own is the positive) and the queue of
   prototypes of earlier batches, at temperature 0.5 (:func:`partlab.losses.maskcontrast_loss`);
4. the saliency head learns the query view's mask (balanced BCE), which keeps the embedding from collapsing;
5. after the optimiser step (``on_step``, called by :func:`partlab.train.fit`): the key network moves
   towards the query network (momentum 0.999) and this batch's prototypes enter the FIFO queue.

=================  ====================================================================
term (dict key)    what it asks
=================  ====================================================================
``"maskcontrast"``  salient pixels of a view lie closer to their object's prototype in the other view
                    than to other objects' prototypes (batch and queue)
``"saliency"``      the saliency head predicts the view's mask (auxiliary, prevents collapse)
=================  ====================================================================

Inference (:meth:`MaskContrast.predict`): embeddings and saliency of single images; with the clusters
fitted (:meth:`MaskContrast.fit_clusters`: K-means on the mean embedding of each image's salient object,
the paper's protocol) also ``labels`` (0 background, ``1 + cluster`` on the object) and ``probs``.

>>> model = MaskContrast(3, base_channels=8, queue_size=8)
>>> batch = {"image": torch.rand(4, 3, 32, 32), "saliency": torch.zeros(4, 1, 32, 32)}
>>> batch["saliency"][:, :, 8:24, 8:24] = 1
>>> sorted(model.losses(batch))
['loss', 'maskcontrast', 'saliency']
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from partlab.geometry import color_jitter, jitter_preset, random_resized_crop
from partlab.losses.maskcontrast import (
    PrototypeQueue,
    balanced_bce_loss,
    gather_across_ranks,
    mask_prototypes,
    maskcontrast_loss,
    momentum_update,
)
from partlab.methods.base import PartSegmenter, batch_map, check_images
from partlab.models import build_network

__all__ = ["ABLATIONS", "MaskContrast", "MaskContrastNet", "RECIPES", "setup"]

SALIENCY_SOURCES = ("world", "rbd")     # the scenes' object masks (supervised saliency) / partlab's RBD (unsupervised)

ABLATIONS: dict[str, dict[str, Any]] = {
    "no_saliency_head": {"saliency": 0.0},          # the supplementary's collapse: no auxiliary BCE
    "no_queue": {"queue_size": 0},                  # negatives from the batch only
    "no_momentum": {"momentum": 0.0},               # the key network is the query network
    "full": {},
}


class MaskContrastNet(nn.Module):
    """A segmentation network whose output is the embedding, plus a saliency head on its decoder features.

    ``network``: :func:`partlab.models.build_network` name with decoder features (``"unet"``,
    ``"standin_unet"``, ``"deeplab_v3"``); its last 1x1 conv is the ``embedding_dim`` embedding head and a
    separate 1x1 conv on the same decoder features gives the saliency logits (MaskContrast's two heads).
    ``forward(images, return_features=False)`` -> ``(embeddings (B, D, H, W), saliency logits (B, 1, H, W)
    [, decoder features (B, F, H, W)])``; embeddings are not normalised.
    """

    def __init__(self, network: str = "unet", embedding_dim: int = 32, **network_kwargs) -> None:
        super().__init__()
        if network == "deeplab":
            raise ValueError("MaskContrast needs decoder features: network='deeplab' (DeepLab-v2, ASPP-sum) has none; "
                             "use 'deeplab_v3' (the paper's), 'unet' or 'standin_unet'")
        self.body = build_network(network, embedding_dim, **network_kwargs)
        self.architecture = (network, dict(network_kwargs))      # build_network's name and kwargs (fine-tuning)
        head = getattr(self.body, "head", None)
        head = head if isinstance(head, nn.Conv2d) else getattr(self.body, "classifier", None)
        if not isinstance(head, nn.Conv2d):
            raise ValueError(f"network {network!r} has no 1x1 output conv to read decoder features from")
        self.feature_channels = head.in_channels
        self.saliency_head = nn.Conv2d(self.feature_channels, 1, 1)
        self.weights_used = getattr(self.body, "weights_used", "random initialisation")

    def forward(self, images: torch.Tensor, return_features: bool = False):
        embeddings, features = self.body(images, return_features=True)
        if features.shape[-2:] != embeddings.shape[-2:]:
            features = F.interpolate(features, size=embeddings.shape[-2:], mode="bilinear", align_corners=False)
        saliency = self.saliency_head(features)
        return (embeddings, saliency, features) if return_features else (embeddings, saliency)

    @property
    def separate_encoder(self) -> bool:
        """Whether the body has a pretrained part (DeepLab-v3, the stand-in U-Net) to train apart from the heads."""
        return hasattr(self.body, "head_parameters")

    def backbone_parameters(self) -> list[nn.Parameter]:
        body = self.body
        if hasattr(body, "backbone_parameters"):
            return list(body.backbone_parameters())
        heads = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in heads]

    def head_parameters(self) -> list[nn.Parameter]:
        body = self.body
        own = list(self.saliency_head.parameters())
        return (list(body.head_parameters()) if hasattr(body, "head_parameters") else []) + own


class MaskContrast(PartSegmenter):
    """MaskContrast with ``K = num_parts`` semantic clusters (``labels`` 0 = background, 1..K).

    Args:
        num_parts: K, the classes: the clusters of :meth:`fit_clusters` (the dataset's object categories;
            called ``num_parts`` as in every partlab method).
        network, embedding_dim, **network_kwargs: the query network (:class:`MaskContrastNet`).
        queue_size: prototypes kept from earlier batches (0: negatives from the batch only).
        momentum: of the key network's update after each step (0.999; 0 copies the query network).
        temperature: of the contrastive logits (0.5).
        lambda_maskcontrast, lambda_saliency: term weights (1, 1).
        crop_scale: area range of the views' crops; mask_area: the views' allowed mask cover (open interval);
        jitter: :func:`partlab.geometry.jitter_preset` name or :func:`color_jitter` kwargs.
        saliency_source: where the object masks come from: ``"world"`` (``batch["saliency"]``, the scenes'
            masks: the supervised-saliency setting) or ``"rbd"`` (``batch["rbd"]``, partlab's RBD maps attached
            by :func:`setup`: the unsupervised setting).
    """

    TERMS = ("maskcontrast", "saliency")
    TERM_NOTES = {                                             # the explorer's captions: the term in the paper
        "maskcontrast": "salient pixels nearest their object's prototype (MaskContrast Algorithm 1)",
        "saliency": "the saliency head's balanced BCE (MaskContrast Algorithm 1, aux loss)",
    }

    def __init__(self, num_parts: int, *, network: str = "unet", embedding_dim: int = 32, queue_size: int = 128,
                 momentum: float = 0.999, temperature: float = 0.5, lambda_maskcontrast: float = 1.0,
                 lambda_saliency: float = 1.0, crop_scale: Sequence[float] = (0.2, 1.0),
                 mask_area: Sequence[float] = (0.01, 0.99), jitter: Any = "maskcontrast",
                 saliency_source: str = "world", **network_kwargs) -> None:
        super().__init__(num_parts)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(queue_size) < 0 or int(embedding_dim) < 1:
            raise ValueError(f"queue_size must be >= 0 and embedding_dim >= 1, got {queue_size}, {embedding_dim}")
        self.weights = self.check_weights({"maskcontrast": lambda_maskcontrast, "saliency": lambda_saliency})
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.crop_scale, self.mask_area = tuple(float(v) for v in crop_scale), tuple(float(v) for v in mask_area)
        self.jitter = jitter_preset(jitter) if isinstance(jitter, str) else dict(jitter)
        if saliency_source not in SALIENCY_SOURCES:
            raise ValueError(f"saliency_source={saliency_source!r}; choose one of {SALIENCY_SOURCES}")
        self.saliency_source = saliency_source
        self.mask_key = "saliency" if saliency_source == "world" else "rbd"
        self.network = MaskContrastNet(network, int(embedding_dim), **network_kwargs)
        self.key_network = copy.deepcopy(self.network).requires_grad_(False)
        self.queue = PrototypeQueue(max(int(queue_size), 1), int(embedding_dim))
        self.queue_size = int(queue_size)
        self.register_buffer("centroids", torch.zeros(num_parts, int(embedding_dim)))     # fit_clusters' K-means
        self.register_buffer("clustered", torch.tensor(False))                             # ... has run
        self._pending: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------------------ training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(B, D, H, W)`` of the query network, float32."""
        with self.autocast(images.device):
            embeddings, _ = self.network(check_images(images))
        return F.normalize(embeddings.float(), dim=1)

    def views(self, images: torch.Tensor, masks: torch.Tensor) -> dict:
        """One augmented view of each image and its mask (crop + flip with the mask-area constraint, then
        colour jitter), on the images' device: :func:`partlab.geometry.random_resized_crop`'s dict."""
        view = random_resized_crop(images, masks, scale=self.crop_scale, mask_area=self.mask_area)
        view["images"] = color_jitter(view["images"], **self.jitter)
        return view

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The terms for a batch of images ``batch["image"]`` with saliency masks ``batch["saliency"]``
        (``(B, 1, H, W)``, binarised at 0.5) and their weighted total (module docstring)."""
        images = check_images(batch["image"])
        masks = (batch_map(batch, self.mask_key, images, tuple(images.shape[-2:]), "MaskContrast",
                           "use partlab.data.SyntheticScenes (saliency masks) or attach RBD maps with WithExtras")
                 > 0.5).float()
        query, key = self.views(images, masks), self.views(images, masks)
        with self.autocast(images.device):
            q, saliency_logits = self.network(query["images"])
            with torch.no_grad():
                k, _ = self.key_network(key["images"])
        q, k, saliency_logits = q.float(), k.float().detach(), saliency_logits.float()
        sal_q, sal_k = query["masks"][:, 0], key["masks"][:, 0]
        terms: dict[str, torch.Tensor] = {}
        if self.weights["maskcontrast"] > 0:
            bank = self.queue.get() if self.queue_size > 0 else None
            terms["maskcontrast"] = maskcontrast_loss(q, k, sal_q, sal_k, bank, temperature=self.temperature)
        if self.weights["saliency"] > 0:
            terms["saliency"] = balanced_bce_loss(saliency_logits, sal_q)
        if self.training and self.queue_size > 0:
            # every rank gathers (B, D) (same shape everywhere); the queue skips the zero rows of empty masks
            self._pending = gather_across_ranks(mask_prototypes(k, sal_k))
        return self.weighted_total(terms, q)

    def on_step(self, step: int) -> None:
        """After each optimiser step: momentum update of the key network, then the batch's prototypes into the queue."""
        momentum_update(self.key_network, self.network, self.momentum)
        if self._pending is not None and len(self._pending):
            self.queue.push(self._pending)
        self._pending = None

    def on_fit_end(self, dataset, max_images: int = 512) -> None:
        """After the last step (:func:`partlab.train.fit`): :meth:`fit_clusters` on the first ``max_images``
        training images and their object masks, so that a trained model predicts labels. Too few objects
        for K clusters: the clusters stay unfitted (a warning says so)."""
        import logging

        items = [dataset[i] for i in range(min(len(dataset), max_images))]
        if not items or self.mask_key not in items[0]:
            return
        images = torch.stack([item["image"] for item in items])
        masks = torch.stack([item[self.mask_key].reshape(1, *images.shape[-2:]) for item in items]).float()
        try:
            self.fit_clusters(images, (masks > 0.5).float())
        except ValueError as error:
            logging.getLogger(__name__).warning("MaskContrast: clusters not fitted after training: %s", error)

    def param_groups(self, config) -> list[dict]:
        """The query network by :meth:`PartSegmenter.network_groups`: with a pretrained body (DeepLab-v3, the
        stand-in U-Net of the quick recipe) its backbone at ``config.lr`` and everything new at ``HEAD_LR_FACTOR``
        (10) times that, as the other methods; the key network is never optimised."""
        return self.network_groups(config)

    # ------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embeddings": (B, D, H, W) L2-normalised, "saliency": (B, 1, H, W) probabilities,
        "features": (B, F, H, W) decoder features}`` of the query network, in eval mode, float32."""
        def run(x):
            with self.autocast(x.device):
                return self.network(x, return_features=True)
        embeddings, saliency, features = self.eval_forward(run, images)
        return {"embeddings": F.normalize(embeddings.float(), dim=1), "saliency": saliency.float().sigmoid(),
                "features": features.float()}

    @staticmethod
    def object_embeddings(embeddings: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The L2-normalised mean embedding of each image's object (``masks`` ``(B, 1, H, W)`` in [0, 1]):
        ``(B, D)``; zero rows for empty masks."""
        return mask_prototypes(embeddings, masks[:, 0] if masks.dim() == 4 else masks)

    @torch.no_grad()
    def fit_clusters(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None, *,
                     clusters: Optional[int] = None, batch_size: int = 64, seed: int = 0) -> torch.Tensor:
        """K-means (``clusters``, default K; sklearn, 10 inits) on the mean object embeddings of ``images``
        (objects: ``masks``, default the predicted saliency > 0.5). With K clusters the centroids are kept for
        :meth:`predict` (overclustering leaves them). Returns each image's cluster ``(N,)`` (-1: no object)."""
        from sklearn.cluster import KMeans

        clusters = self.num_parts if clusters is None else int(clusters)
        objects = []
        for start in range(0, len(images), batch_size):
            out = self.embed(images[start:start + batch_size])
            m = (out["saliency"] > 0.5).float() if masks is None \
                else masks[start:start + batch_size].to(out["saliency"])
            objects.append(self.object_embeddings(out["embeddings"], m).cpu())
        objects = torch.cat(objects)
        present = objects.norm(dim=1) > 0
        if int(present.sum()) < clusters:
            raise ValueError(f"fit_clusters needs at least {clusters} images with a salient object, "
                             f"got {int(present.sum())}")
        km = KMeans(clusters, n_init=10, random_state=seed).fit(objects[present].numpy())
        if clusters == self.num_parts:
            centroids = F.normalize(torch.as_tensor(km.cluster_centers_, dtype=torch.float32), dim=1)
            self.centroids.copy_(centroids)
            self.clustered.fill_(True)
        assignment = torch.full((len(images),), -1, dtype=torch.long)
        assignment[present] = torch.as_tensor(km.labels_, dtype=torch.long)
        return assignment

    @torch.no_grad()
    def predict(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """``embeddings``, ``saliency`` and, once :meth:`fit_clusters` has run, ``labels`` ``(B, H, W)``: 0 where
        the object mask (``masks``, default saliency > 0.5) is off, else ``1 +`` the centroid nearest the
        image's mean object embedding; ``probs`` ``(B, C+1, H, W)``: ``1 - mask`` for background and the mask
        times the softmax of the object's centroid similarities at the model's temperature."""
        out = self.embed(images)
        if not bool(self.clustered):
            return out
        m = (out["saliency"] > 0.5).float() if masks is None else masks.to(out["saliency"]).float()
        m = m[:, None] if m.dim() == 3 else m
        objects = self.object_embeddings(out["embeddings"], m)                        # (B, D)
        weights = (objects @ self.centroids.T / self.temperature).softmax(1)          # (B, C)
        probs = torch.cat([1 - m, m * weights[:, :, None, None]], dim=1)
        labels = torch.where(m[:, 0] > 0.5, 1 + weights.argmax(1)[:, None, None], torch.zeros_like(m[:, 0]).long())
        return dict(out, probs=probs, labels=labels)


# ---------------------------------------------------------------------------------------------
# recipes and setup
# ---------------------------------------------------------------------------------------------

def quick_recipe():
    """The quick recipe (CPU, minutes): synthetic scenes of the four categories at 64 px (1-3 objects each),
    the world's object masks as saliency; the paper starts from pretrained weights (MoCo / ImageNet), the quick
    recipe from partlab's own label-free ones: the U-Net whose encoder is the offline stand-in's trunk
    (``standin_unet``, encoder at ``lr``, decoder and heads at 10x), a 32-d embedding and a saliency head,
    queue 128, momentum 0.999, temperature 0.5, 400 steps of Adam 1e-3, batch 32. Chosen on validation scenes
    (README: the stand-in start against the from-scratch U-Net)."""
    from partlab.recipes import DataSpec, Recipe
    from partlab.train import TrainConfig

    model = {"network": "standin_unet", "pretrained": True, "embedding_dim": 32, "queue_size": 128,
             "momentum": 0.999, "temperature": 0.5, "saliency_source": "world"}
    fit = TrainConfig.from_kwargs(max_steps=400, batch_size=32, lr=1e-3, optimizer="adam", log_every=20, seed=0)
    return Recipe("maskcontrast", "quick", {"maskcontrast": 1.0, "saliency": 1.0}, model,
                  DataSpec(size=64, n_train=1024, features="rgb", cache=False), fit)


def paper_recipe():
    """The original's pre-training (REFERENCE_NOTES.md and its VOC config): dilated ResNet-50 (output stride 8)
    with the DeepLab-v3 head from ImageNet weights, 32-d embedding, queue 128, momentum 0.999, temperature
    0.5, contrastive and saliency weights 1, batch 64, 224 px views, Adam lr 1e-4 with weight decay 1e-4
    (the optimiser is partlab's reading of the original configuration; REFERENCE_NOTES does not state it),
    about 60 epochs of 10k images."""
    from partlab.recipes import PAPER_NUM_WORKERS, DataSpec, Recipe
    from partlab.train import TrainConfig

    model = {"network": "deeplab_v3", "pretrained": True, "embedding_dim": 32, "queue_size": 128,
             "momentum": 0.999, "temperature": 0.5, "saliency_source": "world"}
    fit = TrainConfig.from_kwargs(max_steps=10_000, batch_size=64, lr=1e-4, weight_decay=1e-4, optimizer="adam",
                                  log_every=100, checkpoint_every=1000, seed=0, num_workers=PAPER_NUM_WORKERS)
    return Recipe("maskcontrast", "paper", {"maskcontrast": 1.0, "saliency": 1.0}, model,
                  DataSpec(size=224, n_train=10_000, features="rgb", cache=False), fit, imagenet=True)


RECIPES = {"quick": quick_recipe, "paper": paper_recipe}


def setup(recipe, device: str = "auto", run_dir=None):
    """``(model, train_dataset, info)`` for a MaskContrast recipe: the synthetic ``"train"`` scenes
    (:class:`partlab.data.SyntheticScenes`, the four categories, 1-3 objects), saliency from
    ``model.saliency_source`` (``"world"``: the scenes' object masks; ``"rbd"``: partlab's RBD maps, computed
    once and attached as ``"rbd"``), and a :class:`MaskContrast` with K = the number of categories unless
    ``model.num_parts``. ``run_dir`` is not used."""
    from partlab import utils
    from partlab.data.extras import WithExtras
    from partlab.data.synthetic import SyntheticScenes
    from partlab.methods.registry import method_of

    dev = utils.device(device)
    data, settings = recipe.data, dict(recipe.model)
    seed = recipe.fit.seed
    source = settings.get("saliency_source", "world")
    if source not in SALIENCY_SOURCES:
        raise ValueError(f"model.saliency_source={source!r}; choose one of {SALIENCY_SOURCES}")
    dataset = SyntheticScenes(size=data.size, length=data.n_train, seed=seed, split="train", config=data.world_config(),
                              objects=data.scene_objects)
    if source == "rbd":
        from partlab.saliency import cached_saliency

        dataset = WithExtras(dataset, rbd=cached_saliency(dataset, "rbd"))
    num_classes = settings.pop("num_parts", None)
    num_classes = dataset.num_classes if num_classes is None else int(num_classes)
    kwargs = {**method_of(MaskContrast).weight_kwargs(recipe.weights), **settings}
    torch.manual_seed(seed)
    model = MaskContrast(num_classes, **kwargs)
    info = {"method": method_of(MaskContrast).name, "features": "none (MaskContrast learns its own embedding)",
            "network": model.network.weights_used, "saliency": source,
            "device": utils.describe_device(dev), "num_parts": num_classes, "size": data.size,
            "n_train": data.n_train, "data": "synthetic scenes: image + saliency, semantic labels for evaluation",
            "weights": dict(model.weights), "model_kwargs": kwargs,
            "fit": dict(recipe.fit.to_dict(), device=str(dev))}
    return model, dataset, info
