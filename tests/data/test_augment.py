"""Augmentations keep boxes on the pixels they describe; crop rules, flip, colour ops, determinism."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ssd_tf import presets

from ssd_tf.data import augment as A

H, W = 160, 240  # non-square source image
RED_BOX = (40, 60, 90, 120)  # pixels (y0, x0, y1, x1), exclusive ends
BLUE_BOX = (100, 150, 140, 220)
WHITE_BOX = (50, 80, 100, 140)  # <= 0.31 of each side so a 0.3 crop always shows background too


def _norm(b):
    return [b[0] / H, b[1] / W, b[2] / H, b[3] / W]


def _colour_image():
    img = np.zeros((H, W, 3), np.uint8)
    img[RED_BOX[0]:RED_BOX[2], RED_BOX[1]:RED_BOX[3]] = (255, 0, 0)
    img[BLUE_BOX[0]:BLUE_BOX[2], BLUE_BOX[1]:BLUE_BOX[3]] = (0, 0, 255)
    return img


def _extent(mask):
    """Pixel extent (y0, x0, y1, x1) of a boolean [h,w] mask, exclusive ends; None if empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def _assert_box_on_mask(box, mask, what, tol=2.0):
    ext = _extent(mask)
    assert ext is not None, f"{what}: box {box} kept but its rectangle is not visible"
    np.testing.assert_allclose(ext, np.asarray(box) * 300.0, atol=tol, err_msg=what)


GEOMETRIC = {
    "mlperf_crop": A.AugmentRecipe(crop="mlperf"),
    "ssd_crop": A.AugmentRecipe(crop="ssd"),
    "expand": A.AugmentRecipe(expand=True, expand_prob=1.0),
    "flip": A.AugmentRecipe(flip=True, flip_prob=1.0),
    "ssd_geometry": A.AugmentRecipe(crop="ssd", expand=True, flip=True),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_boxes_follow_their_rectangles(name):
    recipe = GEOMETRIC[name]
    img = _colour_image()
    boxes = np.array([_norm(RED_BOX), _norm(BLUE_BOX)], np.float32)
    extras = {"classes": tf.constant([1, 2]), "is_crowd": tf.constant([False, True])}
    fn = tf.function(autograph=False, func=lambda seed: A.augment_example(img, boxes, seed, recipe, extras=extras))
    checked = 0
    for i in range(10):
        out, b, ex = fn(tf.constant([7, i], tf.int64))
        out, b = out.numpy(), b.numpy()
        assert out.shape == (300, 300, 3) and out.dtype == np.float32
        classes, crowd = ex["classes"].numpy(), ex["is_crowd"].numpy()
        np.testing.assert_array_equal(crowd, classes == 2)  # flags travel with their boxes
        red = out[..., 0] - np.maximum(out[..., 1], out[..., 2]) > 128
        blue = out[..., 2] - np.maximum(out[..., 0], out[..., 1]) > 128
        assert np.all((b >= 0) & (b <= 1)) and np.all(b[:, 2:] >= b[:, :2])
        for box, cls in zip(b, classes):
            _assert_box_on_mask(box, red if cls == 1 else blue, f"{name} seed {i} class {cls}")
            checked += 1
        if name in ("expand", "flip"):
            assert len(b) == 2, f"{name} must not drop boxes"
    assert checked >= 10, f"{name}: only {checked} boxes were kept over 10 seeds"


def test_expand_canvas_is_filled_with_the_mean():
    img = np.zeros((H, W, 3), np.uint8)
    recipe = A.AugmentRecipe(expand=True, expand_prob=1.0)
    out, b, _ = A.augment_example(img, np.zeros([0, 4], np.float32), tf.constant([1, 3]), recipe)
    out = out.numpy()
    canvas = np.all(out == np.float32(A.MEAN_RGB), axis=-1)
    black = np.all(out == 0, axis=-1)
    assert canvas.any() and black.any() and np.all(canvas | black)
    assert b.shape == (0, 4)


@pytest.mark.parametrize("preset", ["ssd_resnet34", "ssd_vgg16"])  # ssd_vgg16_voc: same recipe (tested below)
def test_full_recipe_keeps_boxes_on_the_rectangle(preset):
    """Full train recipe incl. colour ops: a white rectangle on black stays grey-on-grey whatever the colour
    ops do (grey is a fixed point of saturation / hue / channel swap), while the zoom-out fill is not grey."""
    recipe = presets.preset(preset).model.augmentation
    img = np.zeros((H, W, 3), np.uint8)
    img[WHITE_BOX[0]:WHITE_BOX[2], WHITE_BOX[1]:WHITE_BOX[3]] = 255
    boxes = np.array([_norm(WHITE_BOX)], np.float32)
    fn = tf.function(autograph=False, func=lambda seed: A.augment_example(img, boxes, seed, recipe))
    kept = 0
    for i in range(12):
        out, b, _ = fn(tf.constant([11, i], tf.int64))
        out, b = out.numpy(), b.numpy()
        assert out.min() >= 0.0 and out.max() <= 255.0
        grey = (np.ptp(out, axis=-1) < 2.0)
        vals = out[..., 0][grey]
        assert vals.size, f"{preset} seed {i}: no image pixels in the output"
        if len(b) == 0:
            continue
        kept += 1
        rect = grey & (out[..., 0] > 0.5 * (vals.min() + vals.max()))
        _assert_box_on_mask(b[0], rect, f"{preset} seed {i}")
    assert kept >= 6


def _iou_np(boxes, window):
    ih = np.clip(np.minimum(boxes[:, 2], window[2]) - np.maximum(boxes[:, 0], window[0]), 0, None)
    iw = np.clip(np.minimum(boxes[:, 3], window[3]) - np.maximum(boxes[:, 1], window[1]), 0, None)
    inter = ih * iw
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + \
        (window[2] - window[0]) * (window[3] - window[1]) - inter
    return inter / union


def _centres_in(boxes, w):
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cy > w[0]) & (cy < w[2]) & (cx > w[1]) & (cx < w[3])


@pytest.mark.parametrize("variant", ["mlperf", "ssd"])
def test_crop_constraints(variant):
    rng = np.random.default_rng(0)
    frame_hw = (300.0, 500.0)
    if variant == "mlperf":
        fn = tf.function(autograph=False, func=lambda s, b: A.sample_mlperf_crop(s, b))
        modes = {-math.inf, 0.1, 0.3, 0.5, 0.7, 0.9}
    else:
        fn = tf.function(autograph=False, func=lambda s, b: A.sample_ssd_crop(s, b, frame_hw))
        modes = {0.0, 0.1, 0.3, 0.5, 0.7, 0.9}
    seen, uncropped, n = set(), 0, 160
    for i in range(n):
        k = int(rng.choice([0, 1, 1, 1, 2, 3]))  # mostly one large box, so that high IoU modes are feasible
        hw = rng.uniform(0.3, 0.9, (k, 2)) if k == 1 else rng.uniform(0.05, 0.4, (k, 2))
        yx = rng.uniform(0, 1, (k, 2)) * (1 - hw)
        boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)
        window, keep, info = fn(tf.constant([3, i], tf.int64), boxes)
        window, keep = window.numpy(), keep.numpy()
        if not info["cropped"]:
            uncropped += 1
            np.testing.assert_array_equal(window, [0, 0, 1, 1])
            assert keep.all()
            continue
        thr = float(info["min_iou"])
        seen.add(round(thr, 1) if np.isfinite(thr) else thr)
        h, w = window[2] - window[0], window[3] - window[1]
        assert 0.3 - 1e-6 <= h <= 1 and 0.3 - 1e-6 <= w <= 1 and window.min() >= 0 and window.max() <= 1 + 1e-6
        inside = _centres_in(boxes, window)
        np.testing.assert_array_equal(keep, inside)
        assert inside.any(), "a crop must contain at least one box centre"
        ious = _iou_np(boxes, window)
        if variant == "mlperf":
            assert 0.5 <= w / h <= 2.0
            assert np.all(ious > thr), (ious, thr)
        else:
            assert 0.5 <= (w * frame_hw[1]) / (h * frame_hw[0]) <= 2.0
            assert ious[inside].max() >= thr - 1e-6
    assert seen <= modes and len(seen) >= 5, f"modes drawn: {seen}"
    # 'keep' is 1 of 7 modes, drawn until some mode succeeds; no-box images can only be kept whole
    assert 0.05 * n < uncropped < 0.8 * n


def test_flip_twice_is_identity_and_boxes_mirror():
    img = tf.constant(_colour_image())
    boxes = tf.constant([_norm(RED_BOX), _norm(BLUE_BOX)])
    i1, b1 = A.horizontal_flip(img, boxes)
    i2, b2 = A.horizontal_flip(i1, b1)
    np.testing.assert_array_equal(i2.numpy(), img.numpy())
    np.testing.assert_allclose(b2.numpy(), boxes.numpy(), atol=1e-6)
    np.testing.assert_allclose(b1.numpy()[:, [1, 3]], 1.0 - boxes.numpy()[:, [3, 1]], atol=1e-6)


def test_resample_window_equals_tf_image_resize_of_the_crop():
    img = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint8)
    y0, x0, y1, x1 = 13, 31, 121, 200
    window = tf.constant([y0 / H, x0 / W, y1 / H, x1 / W], tf.float32)
    out, mask = A.resample_window(img, window, (300, 300))
    want = tf.image.resize(tf.cast(img[y0:y1, x0:x1], tf.float32), (300, 300), method="bilinear")
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=0.05)
    assert mask.numpy().all()
    flipped, _ = A.resample_window(img, window, (300, 300), flip=True)
    np.testing.assert_allclose(flipped.numpy(), want.numpy()[:, ::-1], atol=0.05)


@pytest.mark.parametrize("kind", ["mlperf", "ssd"])
def test_photometric_range_and_grey_fixed_point(kind):
    rng = np.random.default_rng(2)
    pixels = tf.constant(rng.uniform(0, 255, (500, 3)).astype(np.float32))
    grey = tf.constant(np.repeat(rng.uniform(0, 255, (50, 1)), 3, 1).astype(np.float32))
    op = A.color_jitter if kind == "mlperf" else A.photometric_distort
    fn = tf.function(autograph=False, func=lambda p, s: op(p, s))
    changed = 0
    for i in range(20):
        out = fn(pixels, tf.constant([5, i])).numpy()
        assert out.min() >= 0 and out.max() <= 255
        changed += not np.allclose(out, pixels.numpy())
        g = fn(grey, tf.constant([5, i])).numpy()
        assert np.ptp(g, axis=-1).max() < 1e-2  # grey stays grey
    assert changed >= 10


def test_same_seed_same_result_other_seed_differs():
    img = _colour_image()
    boxes = np.array([_norm(RED_BOX), _norm(BLUE_BOX)], np.float32)
    recipe = presets.preset("ssd_vgg16").model.augmentation
    a = A.augment_example(img, boxes, tf.constant([1, 2]), recipe)
    b = A.augment_example(img, boxes, tf.constant([1, 2]), recipe)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    different = [not np.array_equal(a[0].numpy(), A.augment_example(img, boxes, tf.constant([1, s]), recipe)[0].numpy())
                 for s in (3, 4, 5)]
    assert any(different)


def test_recipe_validation():
    with pytest.raises(ValueError, match="crop"):
        A.AugmentRecipe(crop="random")
    with pytest.raises(TypeError, match="SSDAugmentation"):
        A.augment_example(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4), np.float32), tf.constant([1, 2]), "mlperf")
    recipe = {name: presets.preset(name).model.augmentation for name in ("ssd_resnet34", "ssd_vgg16", "ssd_vgg16_voc")}
    assert recipe["ssd_vgg16_voc"] == recipe["ssd_vgg16"]
    assert recipe["ssd_resnet34"] == A.AugmentRecipe(crop="mlperf", flip=True, photometric="mlperf")
    assert not recipe["ssd_resnet34"].expand and recipe["ssd_vgg16"].expand


_TV_SCRIPT = """
import sys, numpy as np, torch
import torchvision.transforms.functional as F
img = torch.from_numpy(np.load(sys.argv[1]))
out = [F.adjust_brightness(img, 1.1), F.adjust_contrast(img, 0.6), F.adjust_saturation(img, 1.4),
       F.adjust_hue(img, 0.04)]
np.save(sys.argv[2], np.stack([o.numpy() for o in out]))
"""


@pytest.mark.torch
def test_colour_ops_match_torchvision(tmp_path):
    """torchvision runs in a subprocess: importing torchvision after TensorFlow segfaults in one process."""
    import subprocess
    import sys

    import importlib.util

    if importlib.util.find_spec("torchvision") is None:  # not importorskip: that would import it here
        pytest.skip("torchvision is not installed")
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, (3, 16, 20)).astype(np.float32)  # CHW in [0, 1]
    np.save(tmp_path / "in.npy", img)
    subprocess.run([sys.executable, "-c", _TV_SCRIPT, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                   check=True, timeout=120)
    theirs = np.transpose(np.load(tmp_path / "out.npy"), (0, 2, 3, 1)).reshape(4, -1, 3) * 255.0
    pix = tf.constant(np.transpose(img, (1, 2, 0)).reshape(-1, 3) * 255.0)
    ours = [A.adjust_brightness(pix, 1.1), A.adjust_contrast(pix, 0.6), A.adjust_saturation(pix, 1.4),
            A.adjust_hue(pix, 0.04)]
    for name, o, t in zip(["brightness", "contrast", "saturation", "hue"], ours, theirs):
        np.testing.assert_allclose(o.numpy(), t, atol=0.05, err_msg=name)
