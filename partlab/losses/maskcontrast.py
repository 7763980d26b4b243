"""Losses of MaskContrast (Van Gansbeke et al., ICCV 2021, "Unsupervised semantic segmentation by
contrasting object mask proposals"), Algorithm 1 of the supplementary material.

A query network ``f_q`` embeds every pixel of one augmented view (``q``, L2-normalised along C); a
momentum copy ``f_k`` embeds another view (``k``). Each image's saliency mask in the key view gives a
**prototype**, the normalised sum of the key embeddings inside the object; every salient pixel of the
query view is an **anchor** that must be closer to its own image's prototype than to the prototypes of
the other images of the batch and of a queue of past batches:

====================================  ==========  ============================================================
function / class                      Alg. 1      what it does
====================================  ==========  ============================================================
:func:`mask_prototypes`               ``p_k``     ``p_b = normalize(sum_p m_b(p) e_b(p))``, one per image
:func:`maskcontrast_loss`             L_mc        cross-entropy of each anchor against ``[p_1..p_B, queue]``,
                                                  target = its own image's prototype
:func:`balanced_bce_loss`             aux         the saliency head's BCE, the two classes balanced by their
                                                  frequency in the batch (prevents collapse)
:class:`PrototypeQueue`               queue       the last ``size`` key prototypes, FIFO (enqueue/dequeue)
:func:`momentum_update`               ``f_k``     ``theta_k = m theta_k + (1 - m) theta_q``
:func:`gather_across_ranks`           -           the prototypes of every rank (DDP), before they enter the queue
====================================  ==========  ============================================================

With the anchors ``q_i`` (salient query pixels of all images, P of them), image ``b(i)`` of anchor ``i``,
key prototypes ``p_b`` and queue entries ``n_j``::

    logits_i = [q_i . p_1, ..., q_i . p_B, q_i . n_1, ..., q_i . n_Kq] / t            (B + Kq)
    L_mc     = mean_i  -log softmax(logits_i)[b(i)]

Settings of the original (REFERENCE_NOTES.md): 32-d embeddings, temperature 0.5, queue of 128 (or 256)
prototypes, momentum 0.999; total loss ``L_mc + aux``. Non-finite inputs are not checked.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from partlab.precision import float32

__all__ = ["PrototypeQueue", "balanced_bce_loss", "gather_across_ranks", "mask_prototypes", "maskcontrast_loss",
           "momentum_update"]


def _shape(x) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_embeddings(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {_shape(x)}")


def _check_mask(mask: torch.Tensor, like: torch.Tensor, name: str, like_name: str) -> torch.Tensor:
    """Validate a mask ``(B, H, W)`` / ``(B, 1, H, W)`` against ``like`` ``(B, C, H, W)``; return it as (B, H, W)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4) or (mask.dim() == 4 and mask.shape[1] != 1):
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {_shape(mask)}")
    if mask.dim() == 4:
        mask = mask[:, 0]
    b, _, h, w = like.shape
    if mask.shape != (b, h, w):
        raise ValueError(f"{name} must have shape (B, H, W) = {(b, h, w)} like {like_name} {tuple(like.shape)}, "
                         f"got {tuple(mask.shape)}")
    return mask


# ---------------------------------------------------------------------------------------------
# Prototypes and the contrastive loss
# ---------------------------------------------------------------------------------------------


@float32
def mask_prototypes(embeddings: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One prototype per image: the L2-normalised mask-weighted sum of its embeddings::

        p_b = s_b / ||s_b||,    s_b = sum_p m_b(p) e_b(p)

    (the sum and the mean give the same direction). Algorithm 1's ``p_k = normalize(bmm(k, s_k))``.

    Args:
        embeddings: ``(B, C, H, W)``; they are not normalised first (Algorithm 1 sums the raw key embeddings).
        masks: ``(B, H, W)`` or ``(B, 1, H, W)``, binary (the sum over the mask) or soft (weights).

    Returns:
        ``(B, C)`` unit rows; the **zero row** for an image whose mask is empty (or whose weighted sum is 0).
        Gradients flow to ``embeddings``; :func:`maskcontrast_loss` detaches the keys before calling it.
    """
    _check_embeddings(embeddings, "embeddings")
    masks = _check_mask(masks, embeddings, "masks", "embeddings")
    sums = torch.einsum("bchw,bhw->bc", embeddings, masks.to(embeddings.dtype))   # (B, C)
    return F.normalize(sums, dim=1)                                                # zero rows stay zero


@float32
def maskcontrast_loss(q: torch.Tensor, k: torch.Tensor, sal_q: torch.Tensor, sal_k: torch.Tensor,
                      queue: Optional[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """MaskContrast loss (Algorithm 1): salient query pixels against the key views' object prototypes.

    ``q`` is L2-normalised along C here; the prototypes ``p_b`` are :func:`mask_prototypes` of the
    **detached** keys on ``sal_k`` (no gradient reaches ``k``: the key network follows by momentum).
    Every pixel with ``sal_q > 0.5`` is an anchor ``q_i`` (P of them over the batch), from image ``b(i)``::

        logits = cat([q_i . p_b  for b = 1..B,  q_i . n_j  for the Kq queue rows n_j]) / temperature   (P, B + Kq)
        L      = mean_i  CrossEntropy(logits_i, target = b(i))

    i.e. the positive of an anchor is its own image's prototype, the negatives are the other images'
    prototypes and the queue. The queue is used as given (detached): :class:`PrototypeQueue` stores unit rows.

    Degenerate inputs stay finite: an image whose key mask is empty has no prototype, so its anchors are
    dropped and its column is removed from the logits; with no anchor left the loss is 0 (still attached
    to ``q``'s graph). With a single logit (one image, no queue) the loss is 0 as well.

    Args:
        q, k: ``(B, C, H, W)`` query and key embeddings of the two views (any scale).
        sal_q, sal_k: ``(B, H, W)`` or ``(B, 1, H, W)`` binary {0, 1} saliency masks of the query and the
            key view (binarised at 0.5 here).
        queue: ``(Kq, C)`` negative prototypes, or ``None`` / an empty ``(0, C)`` tensor for none.
        temperature: ``t`` > 0, 0.5 in the original.

    Returns:
        Scalar: **plain mean of the cross-entropy over the anchors** (``nn.CrossEntropyLoss`` of the original).
    """
    _check_embeddings(q, "q")
    _check_embeddings(k, "k")
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape (B, C, H, W)")
    anchor_mask = _check_mask(sal_q, q, "sal_q", "q") > 0.5                      # (B, H, W)
    key_mask = _check_mask(sal_k, k, "sal_k", "k") > 0.5                         # (B, H, W)
    c = q.shape[1]
    if queue is None:
        queue = q.new_zeros(0, c)
    if not isinstance(queue, torch.Tensor) or queue.dim() != 2 or queue.shape[1] != c:
        raise ValueError(f"queue must have shape (Kq, C) with C = {c} like q {tuple(q.shape)} (or be None), "
                         f"got {_shape(queue)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    prototypes = mask_prototypes(k.detach(), key_mask)                          # (B, C), no gradient to k
    has_prototype = key_mask.flatten(1).any(dim=1)                              # (B,)
    anchor_mask = anchor_mask & has_prototype[:, None, None]                    # drop images without a prototype
    image, row, col = anchor_mask.nonzero(as_tuple=True)                        # (P,) each
    if image.numel() == 0:
        return q.sum() * 0                                                      # no anchor: 0, attached to q
    anchors = F.normalize(q.permute(0, 2, 3, 1)[image, row, col], dim=1)        # (P, C)
    column = has_prototype.cumsum(0) - 1                                        # image -> its column among kept
    positives = anchors @ prototypes[has_prototype].T                           # (P, B'), B' images with a prototype
    negatives = anchors @ queue.detach().to(anchors).T                          # (P, Kq)
    logits = torch.cat([positives, negatives], dim=1) / temperature             # (P, B' + Kq)
    return F.cross_entropy(logits, column[image])


@float32
def balanced_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the saliency head (the auxiliary loss of Algorithm 1).

    With ``N+ = sum target`` and ``N- = sum (1 - target)`` over **every pixel of the batch** and
    ``N = N+ + N-`` (the number of pixels), each class is weighted by the other's frequency::

        w+ = N- / N,    w- = N+ / N
        L  = (1 / N) sum_p [ w+ t(p) (-log sigmoid x(p)) + w- (1 - t(p)) (-log (1 - sigmoid x(p))) ]

    (log-sigmoid computed stably from the logits). The rare class weighs more; a batch whose target is
    all 0 or all 1 gives ``w = 0`` to the one class present, so the loss is 0 (finite, zero gradient).

    Args:
        logits: ``(B, H, W)`` or ``(B, 1, H, W)`` saliency logits (before the sigmoid).
        target: same shape family, ``{0, 1}`` (soft values in [0, 1] count fractionally in ``N+``, ``N-``).

    Returns:
        Scalar: the weighted sum **divided by the number of pixels N** (a mean over pixels).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (3, 4) or (
            logits.dim() == 4 and logits.shape[1] != 1):
        raise ValueError(f"logits must have shape (B, H, W) or (B, 1, H, W), got {_shape(logits)}")
    if logits.dim() == 4:
        logits = logits[:, 0]
    target = _check_mask(target, logits[:, None], "target", "logits").to(logits.dtype)   # (B, H, W)
    total = target.numel()
    positive = target.sum()
    negative = total - positive
    pos_term = target * F.softplus(-logits)                                     # t (-log sigmoid x)
    neg_term = (1 - target) * F.softplus(logits)                                # (1 - t) (-log (1 - sigmoid x))
    return ((negative / total) * pos_term.sum() + (positive / total) * neg_term.sum()) / total


# ---------------------------------------------------------------------------------------------
# The queue, the momentum encoder and DDP
# ---------------------------------------------------------------------------------------------


class PrototypeQueue(nn.Module):
    """FIFO queue of the last ``size`` key prototypes (the negatives of :func:`maskcontrast_loss`).

    A ring buffer: :meth:`push` writes at ``ptr`` and moves it on, overwriting the oldest entries first.
    The buffers ``prototypes`` ``(size, dim)``, ``ptr`` and ``count`` (entries filled, at most ``size``) are
    saved in ``state_dict()``, so a checkpoint resumes with the same queue.

    >>> queue = PrototypeQueue(size=4, dim=2)
    >>> queue.push(torch.tensor([[3.0, 4.0]]))
    >>> len(queue), queue.get()
    (1, tensor([[0.6000, 0.8000]]))
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if int(size) < 1 or int(dim) < 1:
            raise ValueError(f"PrototypeQueue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("prototypes", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, prototypes: torch.Tensor) -> None:
        """Enqueue ``(N, dim)`` prototypes (stored detached, L2-normalised), dequeueing the oldest.

        ``N`` larger than the free space wraps around; ``N > size`` keeps the last ``size`` rows. All-zero
        rows (images with an empty mask, see :func:`mask_prototypes`) have no direction and are skipped.
        """
        if not isinstance(prototypes, torch.Tensor) or prototypes.dim() != 2 or prototypes.shape[1] != self.dim:
            raise ValueError(f"prototypes must have shape (N, {self.dim}), got {_shape(prototypes)}")
        rows = prototypes.detach().to(self.prototypes)
        rows = F.normalize(rows[rows.norm(dim=1) > 0], dim=1)[-self.size:]       # (n, dim), n <= size
        n = rows.shape[0]
        if n == 0:
            return
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size  # (n,) distinct slots
        self.prototypes[slots] = rows
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_((self.count + n).clamp(max=self.size))

    def get(self) -> torch.Tensor:
        """The filled entries ``(count, dim)`` in slot order (all ``size`` once full), as a copy: a later
        :meth:`push` does not change a tensor already handed to a loss (its backward still needs it)."""
        return self.prototypes[: int(self.count)].clone()

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue."""
        self.prototypes.zero_()
        self.ptr.zero_()
        self.count.zero_()

    def __len__(self) -> int:
        return int(self.count)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


@torch.no_grad()
def momentum_update(key_module: nn.Module, query_module: nn.Module, momentum: float = 0.999) -> None:
    """Momentum encoder update of Algorithm 1, in place on ``key_module``::

        theta_k = m theta_k + (1 - m) theta_q        for every parameter
        buffers_k = buffers_q                         (BatchNorm running statistics, counters)

    ``m = 1`` keeps the key network, ``m = 0`` copies the query network (the initialisation
    ``f_k.params = f_q.params``). The two modules must have the same parameter and buffer names and shapes.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    for kind in ("parameters", "buffers"):
        key = dict(getattr(key_module, f"named_{kind}")())
        query = dict(getattr(query_module, f"named_{kind}")())
        key_shapes = {name: tuple(t.shape) for name, t in key.items()}
        query_shapes = {name: tuple(t.shape) for name, t in query.items()}
        if key_shapes != query_shapes:
            differ = sorted(name for name in key_shapes.keys() | query_shapes.keys()
                            if key_shapes.get(name) != query_shapes.get(name))
            raise ValueError(f"key_module and query_module must have the same {kind} (names and shapes); they "
                             f"differ at {differ[:5]}: key {[key_shapes.get(n) for n in differ[:5]]}, "
                             f"query {[query_shapes.get(n) for n in differ[:5]]}")
        for name, target in key.items():
            source = query[name].detach()
            if kind == "parameters":
                target.mul_(momentum).add_(source.to(target), alpha=1.0 - momentum)
            else:
                target.copy_(source)


@torch.no_grad()
def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The ``tensor`` of every rank concatenated along dim 0 (rank order) when ``torch.distributed`` is
    initialised (``all_gather``: every rank must pass the same shape; no gradient), else ``tensor`` itself.
    Under DDP the queue receives the prototypes of the whole global batch, as in the original."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.detach().contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered, dim=0)
