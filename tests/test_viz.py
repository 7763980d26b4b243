import numpy as np
import pytest
import torch

from partlab import viz


def test_palette_fixed_background_and_distinct():
    assert viz.PALETTE.shape == (21, 3)
    assert len({tuple(c) for c in viz.PALETTE.round(3)}) == 21
    labels = np.array([[0, 1], [2, 0]])
    colours = viz.colorize(labels)
    np.testing.assert_array_equal(colours[0, 0], viz.PALETTE[0])
    np.testing.assert_array_equal(colours[1, 0], viz.PALETTE[2])


def test_label_images_colour_each_map():
    labels = torch.tensor([[[0, 1], [2, 0]], [[3, 3], [0, 1]]])
    out = viz.label_images(labels)
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out[1, :, 0, 0].numpy(), viz.PALETTE[3], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        viz.label_images(labels[0])


def test_overlay_keeps_background_and_mixes_parts():
    image = torch.full((3, 4, 4), 0.5)
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[0, 0] = 1
    out = viz.overlay(image, labels, alpha=0.5)
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[1, 1], 0.5)
    np.testing.assert_allclose(out[0, 0], 0.25 + 0.5 * viz.PALETTE[1])


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        viz.colorize(np.zeros((2, 2, 2), int))
    with pytest.raises(ValueError, match="same height and width"):
        viz.overlay(np.zeros((3, 4, 4)), np.zeros((5, 5), int))
    with pytest.raises(ValueError, match="0..20"):
        viz.colorize(np.full((2, 2), 30))


def test_figures_draw(tmp_path):
    images = torch.rand(3, 3, 16, 16)
    labels = torch.randint(0, 4, (3, 16, 16))
    landmarks = torch.rand(3, 5, 2) * 2 - 1
    visible = torch.rand(3, 5) > 0.5
    fig = viz.show_parts(images, labels, landmarks=landmarks, visible=visible, titles=["a", "b", "c"],
                         side_by_side=True)
    assert len(fig.axes) >= 6
    path = viz.save_figure(fig, tmp_path / "grid.png")
    assert path.stat().st_size > 1000
    fig = viz.show_part_maps(torch.softmax(torch.randn(4, 16, 16), 0), image=images[0])
    assert len(fig.axes) == 5
    fig = viz.bar_chart({"full": {"ari": 0.5, "err": 0.1}, "w/o": {"ari": 0.3, "err": 0.2}}, ["ari", "err"],
                        higher_is_better={"ari": True, "err": False})
    assert fig.axes[0].get_xticklabels()[0].get_text() == "ari ↑"


def test_soft_colorize_mixes_palette_colours():
    onehot = torch.nn.functional.one_hot(torch.tensor([[0, 2], [1, 0]]), 3).permute(2, 0, 1).float()
    np.testing.assert_allclose(viz.soft_colorize(onehot), viz.colorize(np.array([[0, 2], [1, 0]])), atol=1e-6)
    half = torch.tensor([0.0, 0.5, 0.5]).view(3, 1, 1)
    np.testing.assert_allclose(viz.soft_colorize(half)[0, 0], 0.5 * (viz.PALETTE[1] + viz.PALETTE[2]), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(K\+1, H, W\)"):
        viz.soft_colorize(np.zeros((4, 4)))


def test_show_soft_parts_draws_maps_images_and_centres():
    probs = torch.softmax(torch.randn(3, 4, 10, 12), dim=1)
    centers = torch.zeros(3, 3, 2)
    centers[:, 0] = torch.tensor([-1.0, -1.0])                     # the top-left image corner
    fig = viz.show_soft_parts(probs, images=torch.rand(3, 3, 10, 12), centers=centers, titles=["a", "b", "c"])
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "a"
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[0], [-0.5, -0.5])            # pixel coordinates of the corner
    assert len(viz.show_soft_parts(probs[:1]).axes) == 1
    with pytest.raises(ValueError, match="centers must have shape"):
        viz.show_soft_parts(probs, centers=torch.zeros(3, 2, 2))


def test_confusion_rows_are_where_each_true_part_went():
    import matplotlib.pyplot as plt

    true = np.array([[0, 1, 1], [2, 2, 2]])
    pred = np.array([[3, 2, 2], [1, 1, 2]])
    ax = viz.confusion(pred, true, true_names=["bg", "a", "b"])
    table = ax.images[0].get_array()
    assert table.shape == (2, 4)
    assert np.allclose(table[0], [0, 0, 1, 0]) and np.allclose(table[1], [0, 2 / 3, 1 / 3, 0])
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="same shape"):
        viz.confusion(pred[:1], true)


def test_feature_pca_colours_the_main_direction_inside_the_mask():
    features = torch.zeros(2, 5, 4, 4)
    features[:, 2, :, :2] = 3.0                     # left half differs from the right along channel 2
    mask = torch.ones(2, 1, 4, 4)
    mask[1, :, 0, 0] = 0
    colours = viz.feature_pca(features, mask)
    assert colours.shape == (2, 3, 4, 4) and colours.min() >= 0 and colours.max() <= 1
    first = colours[:, 0]                           # the strongest component separates the halves
    assert torch.allclose(first[0, :, :2].std(), torch.tensor(0.0), atol=1e-6)
    assert (first[0, :, :2] - first[0, :, 2:]).abs().min() > 0.99
    assert colours[1, :, 0, 0].abs().sum() == 0     # masked out: black
    assert viz.feature_pca(torch.rand(1, 2, 3, 3)).shape == (1, 3, 3, 3)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        viz.feature_pca(torch.rand(5, 3, 3))


def test_compare_segmentations_one_row_per_method():
    import matplotlib.pyplot as plt

    images = torch.rand(4, 3, 8, 8)
    labels = torch.randint(0, 3, (4, 8, 8))
    fig = viz.compare_segmentations(images, {"truth": labels, "full": labels.flip(-1)}, n=6)
    assert len(fig.axes) == 2 * 4                                    # n clipped to the 4 images
    assert fig.axes[0].get_title(loc="left") == "truth" and fig.axes[4].get_title(loc="left") == "full"
    first = fig.axes[0].get_images()[0].get_array()
    assert np.allclose(first, viz.overlay(images[0], labels[0], 0.75))
    plt.close(fig)
    with pytest.raises(ValueError, match="rows is empty"):
        viz.compare_segmentations(images, {})


def test_image_rows_draws_images_and_grey_maps():
    import matplotlib.pyplot as plt

    images, maps = torch.rand(5, 3, 8, 8), torch.rand(5, 1, 8, 8)
    fig = viz.image_rows({"image": images, "mask": maps, "flat": maps[:, 0]}, n=3)
    assert len(fig.axes) == 3 * 3
    assert [fig.axes[3 * r].get_title(loc="left") for r in range(3)] == ["image", "mask", "flat"]
    assert np.allclose(fig.axes[0].get_images()[0].get_array(), viz.to_hwc(images[0]))
    grey = fig.axes[3 + 1].get_images()[0]
    assert np.allclose(grey.get_array(), maps[1, 0].numpy()) and grey.get_clim() == (0, 1)
    plt.close(fig)
    with pytest.raises(ValueError, match="rows is empty"):
        viz.image_rows({})


def test_show_similarity_shares_one_colour_scale():
    import matplotlib.pyplot as plt

    a, b = torch.eye(3), torch.full((3, 3), 0.5)
    fig = viz.show_similarity({"a": a, "b": b})
    heatmaps = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in heatmaps[:2]] == ["a", "b"]
    assert all(ax.get_images()[0].get_clim() == (0.0, 1.0) for ax in heatmaps[:2])
    assert [t.get_text() for t in heatmaps[0].get_xticklabels()] == ["1", "2", "3"]
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        viz.show_similarity({})


def _still(n, h, w):
    from partlab.geometry import pixel_grid

    return pixel_grid(h, w).expand(n, h, w, 2).clone()                      # the identity flow, (n, h, w, 2)


def test_flow_to_rgb_colours_direction_and_length():
    flows = _still(5, 8, 8)
    flows[1, ..., 0] += 0.5                                                 # reads 2 px to the right
    flows[2, ..., 0] -= 0.5                                                 # left
    flows[3, ..., 1] += 0.5                                                 # down (y grows downwards)
    flows[4, ..., 0] += 0.25                                                # right, half as far
    np.testing.assert_allclose(viz.flow_displacement(flows[1])[..., 0], 0.5, atol=1e-6)
    colours = viz.flow_to_rgb(flows)                                        # one scale: the longest, 0.5
    assert colours.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(colours[0], 1.0, atol=1e-6)                  # still: white
    np.testing.assert_allclose(colours[1, 3, 3], [1, 0, 0], atol=1e-6)      # right: red
    np.testing.assert_allclose(colours[2, 3, 3], [0, 1, 1], atol=1e-6)      # left: cyan
    np.testing.assert_allclose(colours[3, 3, 3], [0.5, 1, 0], atol=1e-6)    # down: yellow-green
    np.testing.assert_allclose(colours[4, 3, 3], [1, 0.5, 0.5], atol=1e-6)  # half the length: half saturated
    np.testing.assert_allclose(viz.flow_to_rgb(flows[1], max_displacement=1.0)[0, 0], [1, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(viz.flow_to_rgb(flows[0]), 1.0)              # nothing moves: no division by 0
    np.testing.assert_allclose(viz.flow_to_rgb(flows[:2] + 1e-7)[0], 1.0)   # rounding-sized motion stays white
    with pytest.raises(ValueError, match=r"\(h, w, 2\)"):
        viz.flow_to_rgb(torch.zeros(2, 8, 8, 3))


def test_show_flow_draws_arrows_to_where_pixels_read():
    import matplotlib.pyplot as plt

    flows = _still(2, 4, 4)
    flows[:, ..., 0] += 0.5                                                 # 1 flow pixel = 2 image pixels right
    masks = torch.zeros(2, 4, 4)
    masks[:, 1, 2] = 1                                                      # one arrow: row 1, column 2
    fig = viz.show_flow(flows, images=torch.rand(2, 3, 8, 8), masks=masks, step=1, titles=["a", "b"])
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "a"            # two flows and the colour key
    arrows = fig.axes[0].collections[0]
    np.testing.assert_allclose(arrows.get_offsets(), [[4.5, 2.5]])          # the flow pixel's centre in the image
    np.testing.assert_allclose([arrows.U[0], arrows.V[0]], [2.0, 0.0])      # to scale, in image pixels
    assert "rim = 2 px" in fig.axes[2].get_title()                          # 0.5 normalised = 2 pixels of the image
    plt.close(fig)
    fig = viz.show_flow(flows[:1], key=False, scale=3)                      # over the flow's own colours
    assert len(fig.axes) == 1 and fig.axes[0].collections[0].U.max() == pytest.approx(3.0)
    plt.close(fig)
    with pytest.raises(ValueError, match="masks must start with"):
        viz.show_flow(flows, masks=masks[:1])


def test_show_images_titles_images_and_maps():
    import matplotlib.pyplot as plt

    panels = {"image": torch.rand(3, 6, 6), "map": torch.full((1, 6, 6), 0.2), "flat": torch.rand(6, 6)}
    fig = viz.show_images(panels, ncols=2)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "map", "flat"]
    assert fig.axes[1].get_images()[0].get_clim() == (0, 1)
    plt.close(fig)
    fig = viz.show_images({"map": torch.full((6, 6), 0.2)}, vmax=None)
    assert fig.axes[0].get_images()[0].get_clim() == (0, pytest.approx(0.2)) and "0.2" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="panels is empty"):
        viz.show_images({})


def test_show_parts_side_by_side_over_several_rows():
    import matplotlib.pyplot as plt

    fig = viz.show_parts(torch.rand(5, 3, 8, 8), torch.randint(0, 3, (5, 8, 8)), ncols=2, side_by_side=True)
    assert len(fig.axes) == 3 * 2 * 2                                       # 3 rows of images, each drawn twice
    assert sum(bool(ax.get_images()) for ax in fig.axes) == 10
    plt.close(fig)
