"""MaskContrast as a partlab method: views, the two heads, the momentum key network and the queue through fit."""

import pytest
import torch

from partlab.geometry import random_resized_crop
from partlab.methods.maskcontrast import MaskContrast, MaskContrastNet
from partlab.models import build_network


def _batch(b=4, size=32, empty=()):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g)
    masks = torch.zeros(b, 1, size, size)
    masks[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    for i in empty:
        masks[i] = 0
    return {"image": images, "saliency": masks}


def test_random_resized_crop_identity_flip_and_mask_area():
    images = torch.rand(5, 3, 16, 16)
    same = random_resized_crop(images, scale=(1, 1), ratio=(1, 1), flip=0.0)
    assert torch.allclose(same["images"], images, atol=1e-6)
    flipped = random_resized_crop(images, scale=(1, 1), ratio=(1, 1), flip=1.0)
    assert torch.allclose(flipped["images"], images.flip(-1), atol=1e-6) and bool(flipped["flipped"].all())
    masks = torch.zeros(5, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    masks[4] = 0                                                      # no object: redrawn, then viewed whole
    g = torch.Generator().manual_seed(3)
    out = random_resized_crop(images, masks, scale=(0.05, 1.0), mask_area=(0.01, 0.99), generator=g)
    area = out["masks"].mean((1, 2, 3))
    assert bool(((area > 0.01) & (area < 0.99))[:4].all())
    assert bool(out["whole"][4]) and int(out["redrawn"][4]) == 10 and not bool(out["whole"][:4].any())
    assert set(out["masks"].unique().tolist()) <= {0.0, 1.0}          # nearest: masks stay binary
    boxes = out["boxes"]
    assert bool((boxes[:, 0].abs() <= 1 - boxes[:, 2] + 1e-6).all())   # crops stay inside the image
    with pytest.raises(ValueError, match="masks"):
        random_resized_crop(images, torch.zeros(5, 1, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(images, scale=(0.5, 2.0))


def test_deeplab_v3_decoder_features_and_maskcontrast_net():
    net = build_network("deeplab_v3", 32).eval()
    with torch.no_grad():
        out, features = net(torch.rand(1, 3, 64, 64), return_features=True)
    assert out.shape == (1, 32, 64, 64) and features.shape == (1, 256, 64, 64)
    mc = MaskContrastNet("unet", 32, base_channels=8, depth=2)
    emb, sal = mc(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 32, 32, 32) and sal.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="deeplab_v3"):
        MaskContrastNet("deeplab", 32)


def test_losses_finite_with_gradients_only_to_the_query_network():
    torch.manual_seed(0)
    model = MaskContrast(3, base_channels=8, depth=2, queue_size=8)
    out = model.losses(_batch())
    assert set(out) == {"loss", "maskcontrast", "saliency"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None for p in model.key_network.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.network.parameters())
    # degenerate input: an image without object, a batch of one, no object at all
    for batch in (_batch(empty=(1,)), _batch(b=1), _batch(b=2, empty=(0, 1))):
        out = model.losses(batch)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.network.parameters() if p.grad is not None)


def test_on_step_moves_the_key_network_and_fills_the_queue_fifo():
    torch.manual_seed(0)
    model = MaskContrast(3, base_channels=8, depth=2, queue_size=6, momentum=0.5)
    key = next(model.key_network.parameters())
    query = next(model.network.parameters())
    with torch.no_grad():
        query.add_(1.0)
    before = key.detach().clone()
    model.losses(_batch(b=4))
    model.on_step(1)
    assert torch.allclose(key, 0.5 * before + 0.5 * query.detach())
    assert len(model.queue) == 4
    model.losses(_batch(b=4, empty=(2,)))              # the empty mask's zero prototype is not queued
    model.on_step(2)
    assert len(model.queue) == 6
    model.eval()
    model.losses(_batch(b=4))                          # evaluation does not feed the queue
    model.on_step(3)
    assert len(model.queue) == 6


def test_fit_trains_and_clusters_then_predicts_labels(tmp_path):
    from torch.utils.data import Dataset

    from partlab.train import fit

    class Toy(Dataset):                                # two kinds of object: red squares, blue squares
        def __len__(self):
            return 16

        def __getitem__(self, i):
            image = torch.full((3, 32, 32), 0.5)
            mask = torch.zeros(1, 32, 32)
            r = 4 + (i * 3) % 12
            mask[:, r:r + 12, r:r + 12] = 1
            colour = torch.tensor([1.0, 0.1, 0.1]) if i % 2 else torch.tensor([0.1, 0.1, 1.0])
            image = torch.where(mask.bool(), colour[:, None, None].expand(3, 32, 32), image)
            return {"image": image, "saliency": mask, "index": torch.tensor(i)}

    torch.manual_seed(0)
    model = MaskContrast(2, base_channels=8, depth=2, queue_size=8)
    fit(model, Toy(), max_steps=3, batch_size=8, lr=1e-3, progress=False, checkpoint_dir=str(tmp_path))
    assert len(model.queue) > 0 and len(model.history) >= 1
    data = [Toy()[i] for i in range(16)]
    images = torch.stack([d["image"] for d in data])
    masks = torch.stack([d["saliency"] for d in data])
    assert bool(model.clustered)                       # fit's on_fit_end clustered the training objects
    assert "labels" not in MaskContrast(2, base_channels=8, depth=2).predict(images)    # a fresh model: none yet
    assert model.fit_clusters(images, masks, clusters=4).shape == (16,)                 # overclustering keeps K's
    assignment = model.fit_clusters(images, masks)
    assert assignment.shape == (16,) and set(assignment.tolist()) <= {0, 1}
    out = model.predict(images, masks)
    assert out["labels"].shape == (16, 32, 32) and out["probs"].shape == (16, 3, 32, 32)
    assert torch.allclose(out["probs"].sum(1), torch.ones(16, 32, 32), atol=1e-5)
    assert bool((out["labels"][masks[:, 0] == 0] == 0).all())
    # a resumed model has the same key network and queue (buffers and parameters in the state dict)
    clone = MaskContrast(2, base_channels=8, depth=2, queue_size=8)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.queue.get(), model.queue.get()) and torch.equal(clone.centroids, model.centroids)


def test_bad_settings():
    with pytest.raises(ValueError, match="momentum"):
        MaskContrast(3, momentum=1.5)
    with pytest.raises(ValueError, match="saliency_source"):
        MaskContrast(3, saliency_source="dino")
    with pytest.raises(KeyError, match="saliency"):
        MaskContrast(3, base_channels=8, depth=2).losses({"image": torch.rand(2, 3, 32, 32)})


def test_object_kmeans_miou_on_perfect_and_permuted_embeddings():
    from partlab.data import SyntheticScenes, stack_dataset
    from partlab.evaluation import object_kmeans_miou, object_vectors

    scenes = stack_dataset(SyntheticScenes(size=32, length=24, seed=5, split="val"))
    semantic, instances = scenes["semantic"], scenes["instances"]
    perfect = torch.nn.functional.one_hot(semantic, 5).permute(0, 3, 1, 2).float()[:, 1:]     # class = direction
    permuted = perfect[:, [2, 0, 3, 1]]                                                           # cluster names differ
    for maps in (perfect, permuted):
        out = object_kmeans_miou(maps, instances, semantic, 4)
        assert out["miou"] == pytest.approx(1.0) and out["num_objects"] == int(scenes["num_objects"].sum())
    over = object_kmeans_miou(perfect, instances, semantic, 4, clusters=6)    # overclustering: many-to-one, still 1
    assert over["miou"] == pytest.approx(1.0)
    noise = torch.randn(24, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    assert object_kmeans_miou(noise, instances, semantic, 4)["miou"] < 0.8
    vectors, image, ids = object_vectors(perfect, instances)
    assert vectors.shape == (len(image), 4) and torch.allclose(vectors.norm(dim=1), torch.ones(len(image)))
    with pytest.raises(ValueError, match="clusters"):
        object_kmeans_miou(perfect[:1], instances[:1], semantic[:1], 4, clusters=9)


def test_pixel_kmeans_splits_objects_where_the_object_protocol_cannot():
    from partlab.data import SyntheticScenes, stack_dataset
    from partlab.evaluation import object_kmeans_miou, pixel_kmeans_miou

    scenes = stack_dataset(SyntheticScenes(size=32, length=24, seed=5, split="val"))
    semantic, instances = scenes["semantic"], scenes["instances"]
    perfect = torch.nn.functional.one_hot(semantic, 5).permute(0, 3, 1, 2).float()[:, 1:]
    out = pixel_kmeans_miou(perfect[:, [1, 3, 0, 2]], instances, semantic, 4)
    assert out["miou"] == pytest.approx(1.0) and out["num_objects"] == int(scenes["num_objects"].sum())
    # the left 30 % of every object painted as the next category: its mean still points at the true one,
    # while per pixel that part of every object is clustered with the next category
    left = torch.zeros_like(instances, dtype=torch.bool)
    for i in range(len(instances)):
        for o in instances[i].unique().tolist():
            if o:
                cols = (instances[i] == o).nonzero()[:, 1]
                left[i] |= (instances[i] == o) & (torch.arange(32)[None, :] < cols.float().quantile(0.3))
    painted = torch.where(left[:, None], torch.roll(perfect, 1, dims=1), perfect)
    per_pixel = pixel_kmeans_miou(painted, instances, semantic, 4)["miou"]
    per_object = object_kmeans_miou(painted, instances, semantic, 4)["miou"]
    assert per_object == pytest.approx(1.0) and per_pixel < 0.9
    assert torch.equal(out["labels"] > 0, instances > 0)                     # background stays 0
    with pytest.raises(ValueError, match="size"):
        pixel_kmeans_miou(perfect[:, :, :16], instances, semantic, 4)


def test_semantic_benchmark_and_linear_probe_run_on_scenes():
    from partlab.data import SyntheticScenes, stack_dataset
    from partlab.evaluation import semantic_benchmark, semantic_linear_probe
    from partlab.features import get_extractor

    torch.manual_seed(0)
    model = MaskContrast(4, base_channels=8, depth=2)
    scenes = stack_dataset(SyntheticScenes(size=32, length=12, seed=1, split="val"))
    rgb = get_extractor("rgb")
    table = semantic_benchmark({"mc": model}, scenes, 4, clusters=(6,), baselines=("rgb",), extractor=rgb)
    assert set(table) == {"mc", "kmeans (rgb)"} and set(table["mc"]) == {"miou", "acc", "nmi", "ari", "miou@6"}
    assert all(0 <= row["miou"] <= 1 for row in table.values())
    both = semantic_benchmark({"mc": model}, scenes, 4, clusters=(6,), baselines=("rgb", "rgb pixels"), extractor=rgb)
    assert both["kmeans (rgb)"] == table["kmeans (rgb)"] and both["kmeans (rgb pixels)"] != both["kmeans (rgb)"]
    with pytest.raises(ValueError, match="baseline"):
        semantic_benchmark({"mc": model}, scenes, 4, baselines=("colours",))
    predicted = semantic_benchmark({"mc": model}, scenes, 4, objects="predicted", baselines=())
    assert 0 <= predicted["mc"]["miou"] <= 1
    probe = semantic_linear_probe({"mc": model}, scenes, scenes, 4, baselines=("rgb",), steps=5)
    assert set(probe) == {"mc", "probe (rgb)"} and all(0 <= r["miou"] <= 1 for r in probe.values())
    with pytest.raises(ValueError, match="objects"):
        semantic_benchmark({"mc": model}, scenes, 4, objects="boxes")


def test_recipe_setup_with_world_or_rbd_saliency():
    from partlab.methods.registry import get_recipe

    tiny = {"data.size": 32, "data.n_train": 4, "model.network": "unet", "model.base_channels": 8, "model.depth": 2,
            "fit.max_steps": 1}
    model, data, info = get_recipe("maskcontrast", "quick").override(tiny).build(device="cpu")
    assert model.mask_key == "saliency" and info["saliency"] == "world" and model.num_parts == 4
    assert data[0]["saliency"].shape == (1, 32, 32)
    assert info["network"] == "random initialisation"
    quick = get_recipe("maskcontrast", "quick").override({k: v for k, v in tiny.items() if k.startswith(("data", "fit"))})
    assert quick.build(device="cpu")[2]["network"].startswith("encoder: stand-in standin_v")   # the recipe's start, named
    rbd = get_recipe("maskcontrast", "quick").override({**tiny, "model.saliency_source": "rbd"})
    model, data, info = rbd.build(device="cpu")
    assert model.mask_key == "rbd" and info["saliency"] == "rbd" and data[0]["rbd"].shape == (1, 32, 32)
    assert torch.isfinite(model.losses({k: torch.stack([data[i][k] for i in range(4)]) for k in ("image", "rbd")})["loss"])
    single = get_recipe("maskcontrast", "quick").override({**tiny, "data.scene_objects": [1, 1]})
    _, data, _ = single.build(device="cpu")
    assert all(int(data[i]["num_objects"]) == 1 for i in range(4))
