"""Faster R-CNN uses of box_coder / boxes: torchvision's BoxCoder and box_iou, maskrcnn-benchmark's "+1" rules."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import box_coder
from ssd_tf.ops import boxes as box_ops

XY_TO_YX = [1, 0, 3, 2]


def _random_boxes(rng, n, scale=800.0):
    y0, x0 = rng.uniform(-50, scale, (2, n))
    h, w = rng.uniform(1.0, 400.0, (2, n))
    return np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)


def test_plus_one_encode_decode_hand_computed():
    anchor = np.array([[0, 0, 19, 9]], np.float32)  # yxyx: h = 20, w = 10, centre (10, 5) with +1
    box = np.array([[4, 2, 13, 21]], np.float32)  # h = 10, w = 20, centre (9, 12)
    codes = box_coder.encode(box, anchor, box_coder.ROI_WEIGHTS, plus_one=True).numpy()
    expected = [10 * (9 - 10) / 20, 10 * (12 - 5) / 10, 5 * math.log(0.5), 5 * math.log(2.0)]
    np.testing.assert_allclose(codes[0], expected, rtol=1e-6, atol=1e-6)
    back = box_coder.decode(codes, anchor, box_coder.ROI_WEIGHTS, box_coder.TORCHVISION_WH_CLIP, plus_one=True)
    np.testing.assert_allclose(back.numpy(), box, atol=1e-5)
    # Zero codes give the anchor back: ymax = centre + h/2 - 1.
    zero = box_coder.decode(np.zeros((1, 4), np.float32), anchor, box_coder.RPN_WEIGHTS, plus_one=True)
    np.testing.assert_array_equal(zero.numpy(), anchor)
    # Continuous convention on the same boxes gives different codes (sides 19/9 vs 20/10).
    cont = box_coder.encode(box, anchor, box_coder.ROI_WEIGHTS).numpy()
    assert cont[0, 2] == pytest.approx(5 * math.log(9 / 19), rel=1e-6)


def test_plus_one_iou_and_area_hand_computed():
    a = tf.constant([[0, 0, 9, 9]], tf.float32)
    b = tf.constant([[5, 5, 14, 14], [20, 20, 30, 30]], tf.float32)
    np.testing.assert_allclose(box_ops.iou(a, b, plus_one=True).numpy(), [[25 / 175, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), [[16 / 146, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(box_ops.area(tf.constant([[0, 0, 0, 0], [0, 0, 9, 4]], tf.float32),
                                               plus_one=True).numpy(), [1, 50])


def test_clip_to_image_and_side_at_least():
    boxes = tf.constant([[[-5, 3, 700, 20]], [[10, -2, 30, 900]]], tf.float32)  # [B=2, N=1, 4]
    shapes = [[480, 640], [100, 200]]
    np.testing.assert_array_equal(box_ops.clip_to_image(boxes, shapes).numpy(),
                                  [[[0, 3, 480, 20]], [[10, 0, 30, 200]]])
    np.testing.assert_array_equal(box_ops.clip_to_image(boxes, shapes, plus_one=True).numpy(),
                                  [[[0, 3, 479, 20]], [[10, 0, 30, 199]]])
    per_class = tf.tile(boxes[:, :, None], [1, 1, 3, 1])  # [B, N, C, 4]
    assert box_ops.clip_to_image(per_class, shapes).shape == (2, 1, 3, 4)
    small = tf.constant([[0, 0, 1e-3, 5], [0, 0, 0.9e-3, 5], [0, 0, 0, 0]], tf.float32)
    assert box_ops.side_at_least(small, 1e-3).numpy().tolist() == [True, False, False]
    assert box_ops.side_at_least(small, 0.0, plus_one=True).numpy().tolist() == [True, True, True]
    with pytest.raises(ValueError, match="image_shape"):
        box_ops.clip_to_image(boxes, [480, 640])


def test_batched_anchors_broadcast():
    rng = np.random.default_rng(0)
    proposals = _random_boxes(rng, 6).reshape(2, 3, 4)  # [B, R, 4]
    codes = rng.normal(0, 1, (2, 3, 5, 4)).astype(np.float32)  # [B, R, C, 4]
    out = box_coder.decode(codes, proposals[:, :, None], box_coder.ROI_WEIGHTS, box_coder.TORCHVISION_WH_CLIP)
    assert out.shape == (2, 3, 5, 4)
    one = box_coder.decode(codes[1, 2], proposals[1, 2][None].repeat(5, 0), box_coder.ROI_WEIGHTS,
                           box_coder.TORCHVISION_WH_CLIP)
    np.testing.assert_array_equal(out[1, 2].numpy(), one.numpy())
    enc = box_coder.encode(out[:, :, 0], proposals, box_coder.ROI_WEIGHTS)
    np.testing.assert_allclose(enc.numpy(), codes[:, :, 0], atol=2e-4)
    with pytest.raises(ValueError, match="do not broadcast"):
        box_coder.decode(codes, proposals[:, :2, None], box_coder.ROI_WEIGHTS)
    with pytest.raises(ValueError, match="anchors must be"):
        box_coder.decode(codes, proposals[0, 0], box_coder.ROI_WEIGHTS)


def test_xla():
    rng = np.random.default_rng(1)
    anchors = _random_boxes(rng, 50)
    codes = rng.normal(0, 2, (2, 50, 4)).astype(np.float32)
    f = tf.function(lambda c: box_coder.decode(c, anchors, box_coder.RPN_WEIGHTS, box_coder.TORCHVISION_WH_CLIP),
                    jit_compile=True)
    np.testing.assert_allclose(f(codes).numpy(), box_coder.decode(
        codes, anchors, box_coder.RPN_WEIGHTS, box_coder.TORCHVISION_WH_CLIP).numpy(), rtol=1e-6, atol=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("weights", [box_coder.RPN_WEIGHTS, box_coder.ROI_WEIGHTS])
def test_equal_to_torchvision_box_coder(weights):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(2)
    anchors = _random_boxes(rng, 400)
    gts = _random_boxes(rng, 400)
    codes = rng.normal(0, 1.5, (400, 4)).astype(np.float32)
    codes[:5, 2:] = 40.0  # past the log(1000/16) clamp for either weight set
    tv = BoxCoder(tuple(weights))  # (wx, wy, ww, wh) = ours (wy, wx, wh, ww) for both weight sets
    t_anchors = torch.from_numpy(anchors[:, XY_TO_YX])
    ref_codes = tv.encode_single(torch.from_numpy(gts[:, XY_TO_YX]), t_anchors).numpy()[:, XY_TO_YX]
    ours = box_coder.encode(gts, anchors, weights).numpy()
    np.testing.assert_allclose(ours, ref_codes, rtol=1e-5, atol=1e-5)

    ref_boxes = tv.decode_single(torch.from_numpy(codes[:, XY_TO_YX]), t_anchors).numpy()[:, XY_TO_YX]
    ours = box_coder.decode(codes, anchors, weights, box_coder.TORCHVISION_WH_CLIP).numpy()
    # Same formula; float32 rounding of coordinates up to ~6e4 pixels (the clamped boxes).
    np.testing.assert_allclose(ours, ref_boxes, rtol=1e-6, atol=1e-3)
    row_scale = np.maximum(np.abs(ref_boxes).max(axis=1, keepdims=True), 1.0)
    code_diff = np.abs(box_coder.encode(gts, anchors, weights).numpy() - ref_codes)
    print(f"\nBoxCoder{weights}: max|code diff| / max(1, |code|) = "
          f"{(code_diff / np.maximum(np.abs(ref_codes), 1)).max():.2g}, "
          f"max|box diff| / box scale = {(np.abs(ours - ref_boxes) / row_scale).max():.2g}")


@pytest.mark.torch
def test_iou_equal_to_torchvision_box_iou():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.ops import box_iou

    rng = np.random.default_rng(3)
    a, b = _random_boxes(rng, 60), _random_boxes(rng, 70)
    ref = box_iou(torch.from_numpy(a[:, XY_TO_YX]), torch.from_numpy(b[:, XY_TO_YX])).numpy()
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), ref, atol=1e-6)
