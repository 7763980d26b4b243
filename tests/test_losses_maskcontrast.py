"""MaskContrast (partlab.losses.maskcontrast): hand values of the loss and of the balanced BCE, invariances,
gradients, degenerate inputs, the prototype queue, the momentum update and the cross-rank gather."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partlab.losses import balanced_bce_loss, mask_prototypes, maskcontrast_loss
from partlab.losses.maskcontrast import PrototypeQueue, gather_across_ranks, momentum_update


def _tiny():
    """B = 2, C = 2, H = W = 2: three salient query pixels, key prototypes (1, 0) and (0, 1)."""
    q = torch.full((2, 2, 2, 2), 5.0)                   # non-salient pixels hold (5, 5): they must not count
    q[0, :, 0, 0] = torch.tensor([1.0, 0.0])            # anchor a, image 0
    q[0, :, 0, 1] = torch.tensor([0.0, 3.0])            # anchor b, image 0 (unit: (0, 1))
    q[1, :, 1, 1] = torch.tensor([3.0, 4.0])            # anchor c, image 1 (unit: (0.6, 0.8))
    sal_q = torch.zeros(2, 2, 2)
    sal_q[0, 0, 0] = sal_q[0, 0, 1] = sal_q[1, 1, 1] = 1
    k = torch.zeros(2, 2, 2, 2)
    k[0, :, 0, 0] = torch.tensor([2.0, 0.0])            # image 0 key: (2, 0) + (1, 0) in the mask -> p_0 = (1, 0)
    k[0, :, 1, 0] = torch.tensor([1.0, 0.0])
    k[0, :, 1, 1] = torch.tensor([0.0, 5.0])            # outside the mask
    k[1, :, 0, 0] = torch.tensor([0.0, 1.0])            # image 1 key: (0, 1) + (0, 2) -> p_1 = (0, 1)
    k[1, :, 0, 1] = torch.tensor([0.0, 2.0])
    k[1, :, 1, 0] = torch.tensor([7.0, 0.0])            # outside the mask
    sal_k = torch.zeros(2, 2, 2)
    sal_k[0, 0, 0] = sal_k[0, 1, 0] = sal_k[1, 0, 0] = sal_k[1, 0, 1] = 1
    queue = torch.tensor([[-1.0, 0.0]])
    return q, k, sal_q, sal_k, queue


def _naive(q, k, sal_q, sal_k, queue, t):
    """Algorithm 1 by loops over the pixels (images without a key mask removed)."""
    kept = [b for b in range(q.shape[0]) if sal_k[b].sum() > 0]
    protos = [F.normalize((k[b] * sal_k[b]).sum((-2, -1)), dim=0) for b in kept]
    terms = []
    for column, b in enumerate(kept):
        for i, j in zip(*torch.nonzero(sal_q[b], as_tuple=True)):
            anchor = F.normalize(q[b, :, i, j], dim=0)
            logits = torch.stack([anchor @ p for p in protos] + [anchor @ n for n in queue]) / t
            terms.append(torch.logsumexp(logits, 0) - logits[column])
    return torch.stack(terms).mean()


# --- maskcontrast_loss: hand values ---------------------------------------------------------------------


def test_tiny_case_is_the_hand_computed_cross_entropy():
    q, k, sal_q, sal_k, queue = _tiny()
    # columns [p_0, p_1, queue (-1, 0)] / t with t = 0.5:
    #   a = (1, 0),     image 0: logits [2, 0, -2]        CE = log(e^2 + 1 + e^-2) - 2          = 0.142932
    #   b = (0, 1),     image 0: logits [0, 2, 0]         CE = log(1 + e^2 + 1) - 0             = 2.239545
    #   c = (0.6, 0.8), image 1: logits [1.2, 1.6, -1.2]  CE = log(e^1.2 + e^1.6 + e^-1.2) - 1.6 = 0.548774
    #   mean over the 3 anchors = 0.977084
    a = math.log(math.exp(2) + 1 + math.exp(-2)) - 2
    b = math.log(2 + math.exp(2))
    c = math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-1.2)) - 1.6
    expected = (a + b + c) / 3
    assert expected == pytest.approx(0.977084, abs=1e-6)
    assert maskcontrast_loss(q, k, sal_q, sal_k, queue, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # (B, 1, H, W) masks are the same; the default temperature is 0.5
    assert maskcontrast_loss(q, k, sal_q[:, None], sal_k[:, None], queue).item() == pytest.approx(expected, rel=1e-6)


def test_matches_a_loop_over_pixels_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    sal_q, sal_k = (torch.rand(2, 3, 5, 6, generator=g) > 0.6).float()
    queue = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    for t in (0.5, 0.1):
        expected = _naive(q.double(), k.double(), sal_q.double(), sal_k.double(), queue.double(), t)
        assert maskcontrast_loss(q, k, sal_q, sal_k, queue, t).item() == pytest.approx(expected.item(), rel=1e-5)


def _two_objects(own: bool):
    """Image 0 keys (1, 0), image 1 keys (0, 1); the query anchors equal their own prototype (own) or the
    other image's, which is orthogonal to their own."""
    k = torch.zeros(2, 2, 3, 3)
    k[0, 0], k[1, 1] = 1.0, 1.0
    q = k.clone() if own else k.flip(0).clone()
    return q, k, torch.ones(2, 3, 3), torch.ones(2, 3, 3)


def test_identical_objects_give_a_lower_loss_than_orthogonal_ones():
    # own: every anchor has logits [1, 0] / 0.5 = [2, 0] with target 0 (or [0, 2] with target 1): log(1 + e^-2)
    # orthogonal: logits [0, 2] with target 0: log(1 + e^2)
    same = maskcontrast_loss(*_two_objects(own=True), None).item()
    other = maskcontrast_loss(*_two_objects(own=False), None).item()
    assert same == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)     # 0.126928
    assert other == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)     # 2.126928
    assert same < other


def test_scale_of_the_embeddings_does_not_matter():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sal = (torch.rand(2, 4, 4, generator=g) > 0.4).float()
    queue = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    reference = maskcontrast_loss(q, k, sal, sal.flip(-1), queue)
    scaled = maskcontrast_loss(7.0 * q, 0.01 * k, sal, sal.flip(-1), queue)
    torch.testing.assert_close(scaled, reference)


def test_temperature_and_batch_of_one_with_a_queue():
    # one image, anchors = (1, 0) = its prototype, one queue row (0, 1) orthogonal:
    # logits [1, 0] / t, target 0 -> log(1 + e^(-1/t)): 0.126928 at t = 0.5, 4.54e-5 at t = 0.1, 0.313262 at t = 1
    k = torch.zeros(1, 2, 2, 2)
    k[:, 0] = 1.0
    q, sal, queue = k.clone(), torch.ones(1, 2, 2), torch.tensor([[0.0, 1.0]])
    for t in (0.5, 0.1, 1.0):
        assert maskcontrast_loss(q, k, sal, sal, queue, temperature=t).item() == pytest.approx(
            math.log(1 + math.exp(-1 / t)), rel=1e-5, abs=1e-6)    # float32: log-sum-exp(10, 0) - 10
    with pytest.raises(ValueError, match="temperature"):
        maskcontrast_loss(q, k, sal, sal, queue, temperature=0.0)


def test_batch_of_one_without_a_queue_is_a_single_logit_and_zero():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    value = maskcontrast_loss(q, torch.randn(1, 3, 4, 4, generator=g), torch.ones(1, 4, 4), torch.ones(1, 4, 4), None)
    assert value.item() == 0.0                                                # -log softmax of one logit
    value.backward()
    assert torch.isfinite(q.grad).all()


def test_queue_none_and_empty_queue_are_the_same():
    q, k, sal_q, sal_k, _ = _tiny()
    none = maskcontrast_loss(q, k, sal_q, sal_k, None)
    empty = maskcontrast_loss(q, k, sal_q, sal_k, torch.zeros(0, 2))
    torch.testing.assert_close(none, empty)
    # without the queue column: a -> log(e^2 + 1) - 2, b -> log(1 + e^2), c -> log(e^1.2 + e^1.6) - 1.6
    expected = (math.log(math.exp(2) + 1) - 2 + math.log(1 + math.exp(2))
                + math.log(math.exp(1.2) + math.exp(1.6)) - 1.6) / 3
    assert none.item() == pytest.approx(expected, rel=1e-6)


# --- gradients ------------------------------------------------------------------------------------------


def test_no_gradient_reaches_k_and_q_gets_it_only_at_salient_pixels():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    k = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    sal_q = (torch.rand(2, 4, 4, generator=g) > 0.5).float()
    sal_k = torch.ones(2, 4, 4)
    queue = torch.randn(3, 3, generator=g, requires_grad=True)
    value = maskcontrast_loss(q, k, sal_q, sal_k, queue)
    grad_q, grad_k, grad_queue = torch.autograd.grad(value, [q, k, queue], allow_unused=True)
    assert grad_k is None and grad_queue is None                              # keys and queue are constants
    salient = sal_q.bool()[:, None].expand_as(q)
    assert (grad_q[~salient] == 0).all()
    assert (grad_q.norm(dim=1)[sal_q.bool()] > 0).all()


# --- degenerate inputs ----------------------------------------------------------------------------------


def test_an_empty_key_mask_drops_that_image_s_anchors_and_column():
    q, k, sal_q, sal_k, queue = _tiny()
    sal_k[1] = 0                                            # image 1 has no prototype: anchor c and column p_1 go
    # a: logits [2, -2] -> log(e^2 + e^-2) - 2; b: logits [0, 0] -> log 2
    expected = (math.log(math.exp(2) + math.exp(-2)) - 2 + math.log(2)) / 2
    value = maskcontrast_loss(q, k, sal_q, sal_k, queue)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(value, maskcontrast_loss(q[:1], k[:1], sal_q[:1], sal_k[:1], queue))


@pytest.mark.parametrize("empty", ["sal_q", "sal_k"])
def test_no_salient_anchor_gives_a_finite_zero_attached_to_q(empty):
    q, k, sal_q, sal_k, queue = _tiny()
    q.requires_grad_(True)
    if empty == "sal_q":
        sal_q = torch.zeros_like(sal_q)
    else:
        sal_k = torch.zeros_like(sal_k)                     # every image loses its prototype, hence its anchors
    value = maskcontrast_loss(q, k, sal_q, sal_k, queue)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert (q.grad == 0).all()


def test_shape_errors_name_the_argument():
    q, k, sal_q, sal_k, queue = _tiny()
    with pytest.raises(ValueError, match=r"q must have shape \(B, C, H, W\), got \(2, 2, 2\)"):
        maskcontrast_loss(q[:, 0], k, sal_q, sal_k, queue)
    with pytest.raises(ValueError, match=r"q \(2, 2, 2, 2\) and k \(1, 2, 2, 2\)"):
        maskcontrast_loss(q, k[:1], sal_q, sal_k, queue)
    with pytest.raises(ValueError, match=r"sal_q must have shape \(B, H, W\) = \(2, 2, 2\)"):
        maskcontrast_loss(q, k, sal_q[:1], sal_k, queue)
    with pytest.raises(ValueError, match=r"sal_k must have shape"):
        maskcontrast_loss(q, k, sal_q, torch.ones(2, 3, 2, 2), queue)
    with pytest.raises(ValueError, match=r"queue must have shape \(Kq, C\) with C = 2 .* got \(1, 3\)"):
        maskcontrast_loss(q, k, sal_q, sal_k, torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"masks must have shape"):
        mask_prototypes(k, torch.ones(2, 3, 3))


def test_mask_prototypes_are_unit_rows_and_zero_for_an_empty_mask():
    _, k, _, sal_k, _ = _tiny()
    sal_k[1] = 0
    torch.testing.assert_close(mask_prototypes(k, sal_k), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


# --- balanced_bce_loss ----------------------------------------------------------------------------------


def test_balanced_bce_hand_value():
    # target [[1, 0], [0, 0]]: N+ = 1, N- = 3, N = 4 -> w+ = 3/4, w- = 1/4
    # logits [[ln 3, 0], [ln 3, -ln 3]]: sigmoid = [[3/4, 1/2], [3/4, 1/4]]
    #   positive pixel: -log(3/4) = log(4/3)
    #   negatives: -log(1 - 1/2) = log 2, -log(1 - 3/4) = log 4, -log(1 - 1/4) = log(4/3)
    # L = (3/4 log(4/3) + 1/4 (log 2 + log 4 + log(4/3))) / 4 = 0.201886
    logits = torch.tensor([[[math.log(3), 0.0], [math.log(3), -math.log(3)]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = (0.75 * math.log(4 / 3) + 0.25 * (math.log(2) + math.log(4) + math.log(4 / 3))) / 4
    assert expected == pytest.approx(0.201886, abs=1e-6)
    assert balanced_bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert balanced_bce_loss(logits[:, None], target[:, None]).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_balanced_bce_with_one_class_only_is_finite(fill):
    logits = (30 * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))).requires_grad_(True)
    value = balanced_bce_loss(logits, torch.full((2, 4, 4), fill))
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(logits.grad).all()
    assert value.item() == 0.0                                  # the one class present has weight 0


def test_balanced_bce_shape_errors():
    with pytest.raises(ValueError, match="logits must have shape"):
        balanced_bce_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="target must have shape"):
        balanced_bce_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


# --- PrototypeQueue -------------------------------------------------------------------------------------


def _rows(*values):
    """Distinct prototypes (N, 2), row ``v`` = (v, 1): each stays recognisable once normalised."""
    return torch.tensor([[float(v), 1.0] for v in values])


def test_queue_is_fifo_with_wrap_around():
    queue = PrototypeQueue(size=4, dim=2)
    assert len(queue) == 0 and queue.get().shape == (0, 2)
    queue.push(_rows(1, 2))                                   # slots [1, 2, -, -]
    assert len(queue) == 2
    torch.testing.assert_close(queue.get(), F.normalize(_rows(1, 2), dim=1))   # only the filled entries
    queue.push(_rows(3))                                      # [1, 2, 3, -]
    queue.push(_rows(4, 5, 6))                                # wraps: [5, 6, 3, 4], the oldest (1, 2) overwritten
    assert len(queue) == 4 and int(queue.ptr) == 2
    torch.testing.assert_close(queue.get(), F.normalize(_rows(5, 6, 3, 4), dim=1))
    queue.push(_rows(7, 8, 9, 10, 11, 12))                    # N > size keeps the last 4, from ptr = 2
    torch.testing.assert_close(queue.get(), F.normalize(_rows(11, 12, 9, 10), dim=1))
    assert len(queue) == 4 and int(queue.ptr) == 2
    queue.reset()
    assert len(queue) == 0 and int(queue.ptr) == 0 and queue.get().shape == (0, 2)


def test_queue_stores_detached_unit_rows_skips_zero_rows_and_checks_shapes():
    queue = PrototypeQueue(size=3, dim=2)
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    queue.push(rows)
    assert len(queue) == 1 and not queue.get().requires_grad
    torch.testing.assert_close(queue.get(), torch.tensor([[0.6, 0.8]]))
    held = queue.get()
    queue.push(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(held, torch.tensor([[0.6, 0.8]]))          # get() hands out a copy
    with pytest.raises(ValueError, match=r"prototypes must have shape \(N, 2\)"):
        queue.push(torch.ones(2, 3))


def test_queue_survives_a_state_dict_round_trip():
    queue = PrototypeQueue(size=4, dim=2)
    queue.push(_rows(1, 2, 3))
    state = queue.state_dict()
    assert set(state) == {"prototypes", "ptr", "count"}
    resumed = PrototypeQueue(size=4, dim=2)
    resumed.load_state_dict(state)
    assert len(resumed) == 3 and int(resumed.ptr) == 3
    torch.testing.assert_close(resumed.get(), queue.get())
    resumed.push(_rows(4, 5))                                 # continues where it stopped: [5, 2, 3, 4]
    torch.testing.assert_close(resumed.get(), F.normalize(_rows(5, 2, 3, 4), dim=1))


def test_queue_feeds_the_loss():
    q, k, sal_q, sal_k, _ = _tiny()
    queue = PrototypeQueue(size=8, dim=2)
    queue.push(torch.tensor([[-2.0, 0.0]]))                    # stored as (-1, 0): the tiny case's queue
    expected = maskcontrast_loss(q, k, sal_q, sal_k, torch.tensor([[-1.0, 0.0]]))
    torch.testing.assert_close(maskcontrast_loss(q, k, sal_q, sal_k, queue.get()), expected)


# --- momentum_update ------------------------------------------------------------------------------------


def _encoder(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_momentum_update_formula_and_buffers():
    key, query = _encoder(0), _encoder(1)
    query.train()(torch.randn(5, 3))                        # query's BatchNorm running stats move
    before = {name: p.detach().clone() for name, p in key.named_parameters()}
    momentum_update(key, query, momentum=0.9)
    for name, p in key.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(query.named_parameters())[name].detach()
        torch.testing.assert_close(p.detach(), expected)
    for name, buffer in key.named_buffers():                # running_mean, running_var, num_batches_tracked
        assert torch.equal(buffer, dict(query.named_buffers())[name])
    assert int(key[1].num_batches_tracked) == 1


def test_momentum_0_copies_and_1_keeps():
    key, query = _encoder(0), _encoder(1)
    kept = [p.detach().clone() for p in key.parameters()]
    momentum_update(key, query, momentum=1.0)
    assert all(torch.equal(p, old) for p, old in zip(key.parameters(), kept))
    momentum_update(key, query, momentum=0.0)
    assert all(torch.equal(p, source) for p, source in zip(key.parameters(), query.parameters()))


def test_momentum_update_refuses_mismatched_modules_and_bad_momentum():
    with pytest.raises(ValueError, match="same parameters"):
        momentum_update(_encoder(0), nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)))
    with pytest.raises(ValueError, match="same parameters"):
        momentum_update(_encoder(0), nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(_encoder(0), _encoder(1), momentum=1.5)


# --- gather_across_ranks --------------------------------------------------------------------------------


def test_gather_across_ranks_returns_the_input_when_not_distributed():
    x = torch.randn(3, 2)
    assert not torch.distributed.is_initialized()
    assert gather_across_ranks(x) is x


def test_gather_across_ranks_in_a_one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(3, 2, requires_grad=True)
        gathered = gather_across_ranks(x)
        assert torch.equal(gathered, x.detach()) and not gathered.requires_grad
    finally:
        dist.destroy_process_group()
