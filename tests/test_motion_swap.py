"""Part swap (Sec. 4.3 of the motion-supervised paper): partlab.motion.part_swap, `partlab swap` and the
part-swap picker of partlab.widgets. Tiny models (32 px, 4 channels), raw RGB perceptual features."""

import pytest
import torch
from PIL import Image

from partlab import cli
from partlab.data import SyntheticClips, SyntheticParts
from partlab.features import get_extractor
from partlab.methods import MotionCoPart, SupervisedOracle
from partlab.methods.runs import save_model_json
from partlab.motion import part_swap, swap_mask
from partlab.segment_io import read_image, resize_image
from partlab.train import fit
from partlab.widgets import part_swap_picker

S, K = 32, 3
TINY = dict(scale=1.0, base_channels=4, depth=2, generator_channels=4, num_residual=1)


def _model(**kwargs):
    torch.manual_seed(0)
    return MotionCoPart(K, features=get_extractor("rgb", device="cpu"), **(TINY | kwargs)).eval()


def _images(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, S, S, generator=g)


def _hand_segment(model, seg_of):
    """Replace ``model.segment`` by a hand-made one: segmentation ``seg_of(images)`` (B, K+1, H, W), every
    anchor at 0 and every affine I, so that the part flow is the identity."""
    def segment(images):
        b = images.shape[0]
        return {"seg": seg_of(images), "shift": torch.zeros(b, K, 2), "affine": torch.eye(2).expand(b, K, 2, 2)}

    model.segment = segment
    model.eps = 0.0                                          # the exact inverse of I: the flow is exactly z
    return model


def _constant_seg(values):
    """Every pixel with the channel values ``values`` (K+1 of them, channel 0 the background)."""
    return lambda images: torch.tensor(values).view(1, K + 1, 1, 1).expand(images.shape[0], K + 1, *images.shape[-2:])


@pytest.fixture(scope="module")
def model():
    return _model()


# --- partlab.motion.part_swap --------------------------------------------------------------------------


def test_no_parts_is_the_generators_plain_autoencoding_of_the_target(model):
    # B = 0: out = decode(enc(X_T)) = model.generator(target), whatever the source and the flow
    source, target = _images(2, seed=1), _images(2, seed=2)
    swapped, mask = part_swap(model, source, target, [], return_mask=True)
    assert swapped.shape == target.shape and swapped.dtype == torch.float32
    assert mask.shape == (2, 1, S // 4, S // 4) and (mask == 0).all()
    with torch.no_grad():
        assert torch.allclose(swapped, model.generator(target), atol=1e-6)


def test_all_parts_under_the_identity_motion_give_the_decoded_source():
    m = _hand_segment(_model(), _constant_seg([0.0, 1.0, 0.0, 0.0]))       # every pixel is part 1
    source, target = _images(seed=1), _images(seed=2)
    with torch.no_grad():
        assert torch.allclose(part_swap(m, source, target, [1]), m.generator(source), atol=1e-6)
        assert torch.allclose(part_swap(m, source, target, [2, 3]), m.generator(target), atol=1e-6)


def test_image_skip_swap_blends_the_frames_themselves():
    # a fresh image_skip generator decodes to its base: the target outside the chosen parts, the source
    # (identity flow) inside them
    m = _hand_segment(_model(image_skip=True), _constant_seg([0.0, 1.0, 0.0, 0.0]))       # every pixel is part 1
    source, target = _images(seed=1), _images(seed=2)
    with torch.no_grad():
        assert torch.allclose(part_swap(m, source, target, [1]), source, atol=1e-5)
        assert torch.allclose(part_swap(m, source, target, [2, 3]), target, atol=1e-6)
        assert torch.allclose(part_swap(m, source, target, []), target, atol=1e-6)


def test_a_half_mask_blends_source_features_on_the_left_and_target_features_on_the_right():
    def left_half_is_part_2(images):
        seg = torch.zeros(images.shape[0], K + 1, S, S)
        seg[:, 2, :, : S // 2], seg[:, 0, :, S // 2:] = 1.0, 1.0
        return seg

    m = _hand_segment(_model(), left_half_is_part_2)
    source, target = _images(seed=1), _images(seed=2)
    swapped, mask = part_swap(m, source, target, [2], return_mask=True)
    expected_mask = torch.zeros(1, 1, S // 4, S // 4)
    expected_mask[..., : S // 8] = 1.0
    assert torch.equal(mask, expected_mask)
    with torch.no_grad():
        g = m.generator
        blended = g.encode(target) * (1 - expected_mask) + g.encode(source) * expected_mask
        assert torch.allclose(swapped, g.decode(blended, size=(S, S)), atol=1e-6)


def test_soft_mask_is_the_probabilities_and_hard_mask_the_argmax():
    m = _hand_segment(_model(), _constant_seg([0.1, 0.5, 0.3, 0.1]))
    source, target = _images(seed=1), _images(seed=2)
    for parts, soft, value in (([1], True, 0.5), ([1, 2], True, 0.8), ([3], True, 0.1),
                               ([1], False, 1.0), ([2], False, 0.0), ([2, 3], False, 0.0), ([1, 3], False, 1.0)):
        _, mask = part_swap(m, source, target, parts, soft=soft, return_mask=True)
        assert torch.allclose(mask, torch.full_like(mask, value)), (parts, soft)
    with torch.no_grad():                                   # soft [1]: half source, half target features
        g = m.generator
        half = g.decode(0.5 * g.encode(target) + 0.5 * g.encode(source), size=(S, S))
    assert torch.allclose(part_swap(m, source, target, [1]), half, atol=1e-6)
    assert torch.allclose(part_swap(m, source, target, [1], soft=False), part_swap(m, source, target, [1, 2, 3],
                                                                                    soft=False), atol=1e-6)


def test_hard_masks_of_all_parts_cover_the_foreground_of_the_argmax():
    seg = torch.rand(2, K + 1, 5, 5).softmax(1)
    foreground = (seg.argmax(1, keepdim=True) > 0).float()
    assert torch.equal(swap_mask(seg, [1, 2, 3], soft=False), foreground)
    assert torch.allclose(swap_mask(seg, [1, 2, 3]), 1 - seg[:, :1])             # soft: 1 - background
    assert torch.equal(swap_mask(seg, [], soft=False), torch.zeros(2, 1, 5, 5))


def test_one_source_for_many_targets(model):
    source, targets = _images(1, seed=1), _images(3, seed=2)
    assert torch.allclose(part_swap(model, source, targets, [1, 3]),
                          part_swap(model, source.expand(3, -1, -1, -1), targets, [1, 3]), atol=1e-6)


@pytest.mark.parametrize("parts, message", [([0], "part 0 is out of range.*1..3.*background"),
                                            ([4], "part 4 is out of range: the model has K = 3"),
                                            ([1, 1], "part 1 is given twice"), (["a"], "integers in 1..3"),
                                            ([1.5], "integers in 1..3"), (2, "a list of part indices")])
def test_bad_parts_are_refused(model, parts, message):
    with pytest.raises(ValueError, match=message):
        part_swap(model, _images(), _images(), parts)


def test_bad_images_are_refused(model):
    with pytest.raises(ValueError, match=r"same size.*resize them"):
        part_swap(model, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 40, 32), [1])
    with pytest.raises(ValueError, match=r"target must be float images of shape \(B, 3, H, W\).*\(3, 32, 32\)"):
        part_swap(model, _images(), _images()[0], [1])
    with pytest.raises(ValueError, match="source must be float images"):
        part_swap(model, torch.zeros(1, 3, S, S, dtype=torch.uint8), _images(), [1])
    with pytest.raises(ValueError, match="source has 2 images and target 3"):
        part_swap(model, _images(2), _images(3), [1])


def test_models_without_a_flow_are_refused():
    with pytest.raises(ValueError, match="motion='naive'"):
        part_swap(_model(motion="naive"), _images(), _images(), [1])
    with pytest.raises(ValueError, match="needs a motion-supervised model.*SupervisedOracle"):
        part_swap(SupervisedOracle(2, base_channels=4, depth=1), _images(), _images(), [1])


# --- partlab swap -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"motion": a MotionCoPart run folder (1 training step), "oracle": a run of another method}."""
    root = tmp_path_factory.mktemp("swap_runs")
    motion, oracle = root / "motion", root / "oracle"
    m = _model()
    fit(m, SyntheticClips("bird", size=S, length=2), max_steps=1, batch_size=2, device="cpu", progress=False,
        checkpoint_dir=motion)
    save_model_json(motion, m, category="bird", size=S, features="rgb")
    o = SupervisedOracle(6, base_channels=4, depth=1)                  # the bird's 6 parts
    fit(o, SyntheticParts("bird", size=S, length=2), max_steps=1, batch_size=2, device="cpu", progress=False,
        checkpoint_dir=oracle)
    save_model_json(oracle, o, category="bird", size=S)
    return {"motion": motion, "oracle": oracle, "model": m.eval()}


def _picture(path, size, colour):
    picture = Image.new("RGB", size, (90, 120, 90))
    picture.paste(colour, (5, 5, size[0] - 8, size[1] - 6))
    picture.save(path)
    return path


def test_swap_writes_the_swapped_image_at_the_runs_size(runs, tmp_path, capsys):
    source = _picture(tmp_path / "source.png", (40, 30), (200, 30, 30))
    target = _picture(tmp_path / "target.jpg", (50, 50), (30, 30, 200))
    out = tmp_path / "sub" / "x.png"
    argv = ["swap", "--run", str(runs["motion"]), str(source), str(target), "--parts", "1", "3", "--out", str(out),
            "--device", "cpu"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "part(s) 1 3" in printed and "soft mask, 32 px" in printed
    assert not list(out.parent.glob("*.tmp"))
    written = torch.from_numpy(read_image(out)).permute(2, 0, 1)
    expected = part_swap(runs["model"], resize_image(read_image(source), S)[None],
                         resize_image(read_image(target), S)[None], [1, 3])[0]
    assert written.shape == (3, S, S) and (written - expected).abs().max() <= 1 / 255 + 1e-6
    assert cli.main([*argv[:-3], str(tmp_path / "hard.png"), "--hard", "--device", "cpu"]) == 0
    assert "hard mask" in capsys.readouterr().out


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("partlab swap: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_swap_errors_are_one_line_naming_the_problem(runs, tmp_path, capsys):
    source = _picture(tmp_path / "source.png", (40, 30), (200, 30, 30))
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    out = tmp_path / "x.png"

    def swap(*args, parts=("1",), run="motion"):
        return cli.main(["swap", "--run", str(runs[run]), *map(str, args), "--parts", *parts, "--out", str(out),
                         "--device", "cpu"])

    assert swap(source, tmp_path / "missing.png") == 2
    _one_line_error(capsys, "no image at", "missing.png")
    assert swap(broken, source) == 2
    _one_line_error(capsys, str(broken), "not an image partlab can read")
    assert swap(source, source, run="oracle") == 2
    _one_line_error(capsys, str(runs["oracle"]), "SupervisedOracle run", "partlab train motion")
    assert swap(source, source, parts=("4",)) == 2
    _one_line_error(capsys, "part 4 is out of range", "K = 3")
    assert cli.main(["swap", "--run", str(runs["motion"]), str(source), str(source), "--parts", "1",
                     "--out", str(tmp_path / "x.gif")]) == 2
    _one_line_error(capsys, "x.gif", ".png")
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:                     # part 0 / no part: refused by the parser
        cli.main(["swap", "--run", str(runs["motion"]), str(source), str(source), "--parts", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# --- the picker ---------------------------------------------------------------------------------------


def test_picker_runs_what_the_boxes_run(model):
    source, target = _images(seed=1)[0], _images(seed=2)[0]
    picker = part_swap_picker(model, source, target, parts=[1])
    assert picker.selection == ([1], True) and picker.last_result.shape == (3, S, S)
    assert torch.allclose(picker.last_result, part_swap(model, source[None], target[None], [1])[0], atol=1e-6)
    result = picker.swap([2, 3], soft=False)                         # from code: the widgets follow
    assert picker.selection == ([2, 3], False) and picker._toggle.value == "hard"
    assert [k for k, box in picker._boxes.items() if box.value] == [2, 3]
    assert torch.allclose(result, part_swap(model, source[None], target[None], [2, 3], soft=False)[0], atol=1e-6)
    assert set(picker.last_mask.unique().tolist()) <= {0.0, 1.0}
    picker._boxes[1].value = True                                    # a click swaps once more
    assert picker.selection == ([1, 2, 3], False)
    assert torch.allclose(picker.last_result, part_swap(model, source[None], target[None], [1, 2, 3],
                                                        soft=False)[0], atol=1e-6)
    with pytest.raises(ValueError, match="part 4 is out of range"):
        picker.swap([4])
    with pytest.raises(ValueError, match="target must be one float image"):
        part_swap_picker(model, source, torch.rand(2, 3, S, S))
