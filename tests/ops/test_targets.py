import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import box_coder
import ssd_tf
from ssd_tf.ops.matcher import match_anchors
from ssd_tf.ops.targets import ssd_targets, ssd_targets_batched

ANCHORS = ssd_tf.default_boxes("ssd_resnet34")


def test_tiny_gt_is_forced_onto_exactly_one_anchor():
    gt = np.array([[0.500, 0.500, 0.503, 0.503]], np.float32)  # IoU with every anchor far below 0.5
    box_t, cls_t, num_pos = ssd_targets(gt, np.array([7]), 1, ANCHORS)
    assert int(num_pos) == 1
    pos = np.flatnonzero(cls_t.numpy())
    assert len(pos) == 1 and cls_t.numpy()[pos[0]] == 7
    # The box target decodes back to the gt.
    np.testing.assert_allclose(box_coder.decode(box_t, ANCHORS).numpy()[pos[0]], gt[0], atol=1e-5)


def test_iou_exactly_half_is_positive_unless_strict():
    anchors = np.array([[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 0.25, 1]], np.float32)
    gt = np.array([[0, 0, 1, 1]], np.float32)
    _, cls_t, num_pos = ssd_targets(gt, [1], 1, anchors)
    np.testing.assert_array_equal(cls_t.numpy(), [1, 1, 0])
    _, cls_t, num_pos = ssd_targets(gt, [1], 1, anchors, strict_threshold=True)
    np.testing.assert_array_equal(cls_t.numpy(), [1, 0, 0])
    assert int(num_pos) == 1


def test_later_gt_wins_shared_best_anchor():
    anchors = np.array([[0, 0, 1, 1], [0.9, 0.9, 1.0, 1.0]], np.float32)
    # Both gts have anchor 0 as their best anchor (IoU 0.25 and 0.36) and overlap anchor 1 not at all.
    gt = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.6, 0.6]], np.float32)
    _, cls_t, _ = ssd_targets(gt, [3, 4], 2, anchors)
    assert cls_t.numpy()[0] == 4
    _, cls_t, _ = ssd_targets(gt[::-1], [4, 3], 2, anchors)
    assert cls_t.numpy()[0] == 3


def test_forced_match_overrides_threshold_match():
    anchors = np.array([[0, 0, 1, 1], [0, 0, 0.5, 1]], np.float32)
    # By IoU alone anchor 1 would take gt0 (0.83 vs 0.4); gt1's best anchor is anchor 1, so it is forced there.
    # gt0 keeps anchor 0 through the threshold (IoU 0.6).
    gt = np.array([[0, 0, 0.6, 1], [0, 0, 0.2, 1]], np.float32)
    _, cls_t, num_pos = ssd_targets(gt, [1, 2], 2, anchors)
    np.testing.assert_array_equal(cls_t.numpy(), [1, 2])
    assert int(num_pos) == 2


def test_padding_rows_never_match_and_zero_gt_is_background():
    gt = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9], [0, 0, 0, 0]], np.float32)
    box_t, cls_t, num_pos = ssd_targets(gt, [1, 2, 0], 1, ANCHORS)
    assert set(np.unique(cls_t.numpy())) == {0, 1}
    box_t, cls_t, num_pos = ssd_targets(gt, [1, 2, 0], 0, ANCHORS)
    assert int(num_pos) == 0 and not cls_t.numpy().any() and not box_t.numpy().any()
    box_t, cls_t, num_pos = ssd_targets(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), 0, ANCHORS)
    assert box_t.shape == (8732, 4) and int(num_pos) == 0 and not cls_t.numpy().any()


def test_positive_box_targets_decode_to_their_gt():
    gt = np.array([[0.1, 0.2, 0.6, 0.5], [0.5, 0.5, 0.95, 0.9]], np.float32)
    box_t, cls_t, num_pos = ssd_targets(gt, [1, 2], 2, ANCHORS)
    decoded = box_coder.decode(box_t, ANCHORS).numpy()
    cls = cls_t.numpy()
    assert int(num_pos) == (cls > 0).sum() > 2
    for c in (1, 2):
        np.testing.assert_allclose(decoded[cls == c], np.broadcast_to(gt[c - 1], decoded[cls == c].shape), atol=1e-5)


def test_batched_equals_per_image_and_runs_under_xla():
    rng = np.random.default_rng(1)
    yx = rng.uniform(0, 0.6, (3, 5, 2))
    gt = np.concatenate([yx, yx + rng.uniform(0.02, 0.4, (3, 5, 2))], -1).astype(np.float32)
    classes = rng.integers(1, 10, (3, 5))
    num_gt = np.array([5, 2, 0])
    fn = tf.function(lambda b, c, n: ssd_targets_batched(b, c, n, ANCHORS), jit_compile=True)
    box_b, cls_b, pos_b = fn(gt, classes, num_gt)
    assert box_b.shape == (3, 8732, 4) and cls_b.dtype == tf.int32 and pos_b.dtype == tf.int32
    for i in range(3):
        box_t, cls_t, num_pos = ssd_targets(gt[i], classes[i], num_gt[i], ANCHORS)
        np.testing.assert_array_equal(cls_b[i].numpy(), cls_t.numpy())
        np.testing.assert_allclose(box_b[i].numpy(), box_t.numpy(), atol=1e-5)
        assert int(pos_b[i]) == int(num_pos)
    assert int(pos_b[2]) == 0


def test_match_anchors_validates_shapes():
    with pytest.raises(ValueError, match="gt_boxes must be"):
        match_anchors(tf.zeros([3, 4]), [1], ANCHORS)
