import math
import sys

import numpy as np
import pytest

from ssd_tf import presets
from ssd_tf.ops.anchors import order_permutation, ssd_default_boxes

PRESETS = ("ssd_resnet34", "ssd_vgg16", "ssd_vgg16_voc")
SSD_ANCHOR_SPECS = {name: presets.preset(name).model.anchors for name in PRESETS}

# REFERENCE_SPECS §1.3 (MLPerf / COCO scales): per level, unclipped (w, h) pairs in per-cell order.
COCO_WH = {
    0: [(0.07, 0.07), (0.10247, 0.10247), (0.09899, 0.04950), (0.04950, 0.09899)],
    1: [(0.15, 0.15), (0.22249, 0.22249), (0.21213, 0.10607), (0.10607, 0.21213), (0.25981, 0.08660),
        (0.08660, 0.25981)],
    2: [(0.33, 0.33), (0.41024, 0.41024), (0.46669, 0.23335), (0.23335, 0.46669), (0.57158, 0.19053),
        (0.19053, 0.57158)],
    3: [(0.51, 0.51), (0.59321, 0.59321), (0.72125, 0.36062), (0.36062, 0.72125), (0.88335, 0.29445),
        (0.29445, 0.88335)],
    4: [(0.69, 0.69), (0.77479, 0.77479), (0.97581, 0.48790), (0.48790, 0.97581)],
    5: [(0.87, 0.87), (0.95577, 0.95577), (1.0, 0.61518), (0.61518, 1.0)],  # 1.23037 clipped to 1
}
LEVEL_STARTS = np.cumsum([0, 38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4])


def _cxcywh(boxes):
    ymin, xmin, ymax, xmax = boxes.T.astype(np.float64)
    return np.stack([(xmin + xmax) / 2, (ymin + ymax) / 2, xmax - xmin, ymax - ymin], -1)


@pytest.mark.parametrize("preset", PRESETS)
def test_count_dtype_and_spec(preset):
    boxes = ssd_default_boxes(SSD_ANCHOR_SPECS[preset])
    assert boxes.shape == (8732, 4) and boxes.dtype == np.float32
    spec = SSD_ANCHOR_SPECS[preset]
    assert spec.num_anchors == 8732 and spec.anchors_per_cell == (4, 6, 6, 6, 4, 4)


@pytest.mark.parametrize("preset", ["ssd_resnet34", "ssd_vgg16"])
def test_coco_scale_wh_table(preset):
    cxcywh = _cxcywh(ssd_default_boxes(SSD_ANCHOR_SPECS[preset]))
    for level, pairs in COCO_WH.items():
        first_cell = cxcywh[LEVEL_STARTS[level]:LEVEL_STARTS[level] + len(pairs), 2:]
        np.testing.assert_allclose(first_cell, pairs, atol=1e-5, err_msg=f"{preset} level {level}")


def test_voc_level_values():
    cxcywh = _cxcywh(ssd_default_boxes(SSD_ANCHOR_SPECS["ssd_vgg16_voc"]))
    np.testing.assert_allclose(cxcywh[:4, 2:], [(0.1, 0.1), (0.14142, 0.14142), (0.14142, 0.07071),
                                                (0.07071, 0.14142)], atol=1e-5)
    # Levels 4 and 5: alpha=2 boxes 1.00409 and 1.24451 wide, clipped to 1.
    np.testing.assert_allclose(SSD_ANCHOR_SPECS["ssd_vgg16_voc"].level_wh(4)[2, 0], 1.00409, atol=1e-5)
    np.testing.assert_allclose(SSD_ANCHOR_SPECS["ssd_vgg16_voc"].level_wh(5)[2, 0], 1.24451, atol=1e-5)
    assert cxcywh[LEVEL_STARTS[4] + 2, 2] == pytest.approx(1.0) and cxcywh[-2, 2] == pytest.approx(1.0)


def test_order_is_y_x_anchor_and_centres():
    cxcywh = _cxcywh(ssd_default_boxes(SSD_ANCHOR_SPECS["ssd_resnet34"]))
    level0 = cxcywh[:38 * 38 * 4].reshape(38, 38, 4, 4)  # (y, x, anchor, coord)
    fk = 300 / 8
    np.testing.assert_allclose(level0[2, 5, :, 0], (5 + 0.5) / fk, atol=1e-6)  # cx from column
    np.testing.assert_allclose(level0[2, 5, :, 1], (2 + 0.5) / fk, atol=1e-6)  # cy from row
    np.testing.assert_allclose(level0[2, 5, :, 2], [w for w, _ in COCO_WH[0]], atol=1e-5)


@pytest.mark.parametrize("preset,expected", [("ssd_resnet34", 1.0), ("ssd_vgg16_voc", 1.0), ("ssd_vgg16", 1.01333)])
def test_centre_clip_on_10x10_level(preset, expected):
    cxcywh = _cxcywh(ssd_default_boxes(SSD_ANCHOR_SPECS[preset]))
    level2 = cxcywh[LEVEL_STARTS[2]:LEVEL_STARTS[3]].reshape(10, 10, 6, 4)
    assert level2[9, 9, 0, 0] == pytest.approx(expected, abs=1e-5)
    assert level2[9, 9, 0, 1] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_1x1_alpha2_width_clipped(preset):
    cxcywh = _cxcywh(ssd_default_boxes(SSD_ANCHOR_SPECS[preset]))
    last = cxcywh[-4:]
    if preset != "ssd_vgg16_voc":
        assert SSD_ANCHOR_SPECS[preset].level_wh(5)[2, 0] == pytest.approx(1.2304, abs=1e-4)
    assert last[2, 2] == pytest.approx(1.0) and last[3, 3] == pytest.approx(1.0)


def test_order_permutation_matches_mlperf_loop_order():
    spec = SSD_ANCHOR_SPECS["ssd_resnet34"]
    ours = ssd_default_boxes(SSD_ANCHOR_SPECS["ssd_resnet34"])
    # MLPerf order (anchor, y, x) built independently: for each level, for each (w, h), for each row, col.
    mlperf = []
    for k, (f, step) in enumerate(zip(spec.feature_sizes, spec.steps)):
        fk = 300 / step
        for w, h in spec.level_wh(k):
            for i in range(f):
                for j in range(f):
                    cx, cy, ww, hh = np.clip([(j + 0.5) / fk, (i + 0.5) / fk, w, h], 0, 1)
                    mlperf.append([cy - hh / 2, cx - ww / 2, cy + hh / 2, cx + ww / 2])
    mlperf = np.asarray(mlperf, np.float32)
    to_ours = order_permutation(SSD_ANCHOR_SPECS["ssd_resnet34"], "ayx", "yxa")
    np.testing.assert_allclose(mlperf[to_ours], ours, atol=1e-6)
    to_mlperf = order_permutation(SSD_ANCHOR_SPECS["ssd_resnet34"], "yxa", "ayx")
    np.testing.assert_allclose(ours[to_mlperf], mlperf, atol=1e-6)
    np.testing.assert_array_equal(to_ours[to_mlperf], np.arange(8732))
    with pytest.raises(ValueError, match="order_permutation"):
        order_permutation(SSD_ANCHOR_SPECS["ssd_resnet34"], "xya", "yxa")


def test_takes_a_spec_value_and_presets_resolve_by_name():
    import ssd_tf

    with pytest.raises(ValueError, match="AnchorSpec"):
        ssd_default_boxes("ssd_vgg16")
    with pytest.raises(ValueError, match="unknown preset 'ssd_mobilenet'"):
        ssd_tf.default_boxes("ssd_mobilenet")
    np.testing.assert_array_equal(ssd_tf.default_boxes("ssd_vgg16"), ssd_default_boxes(SSD_ANCHOR_SPECS["ssd_vgg16"]))


@pytest.mark.torch
def test_equals_torchvision_default_box_generator():
    # triton's bundled LLVM segfaults when it loads after TensorFlow; torch works on CPU without it.
    sys.modules.setdefault("triton", None)
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                              scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    features = [torch.zeros(1, 1, f, f) for f in (38, 19, 10, 5, 3, 1)]
    tv_xyxy = gen(images, features)[0].numpy() / 300.0  # absolute x1y1x2y2 pixels of a 300x300 image
    ours = ssd_default_boxes(SSD_ANCHOR_SPECS["ssd_vgg16"])
    assert tv_xyxy.shape == ours.shape
    assert math.isfinite(np.abs(tv_xyxy[:, [1, 0, 3, 2]] - ours).max())
    np.testing.assert_allclose(tv_xyxy[:, [1, 0, 3, 2]], ours, rtol=0, atol=1e-6)
