import math

import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.models.ssd_loss import ssd_loss
import ssd_tf
from ssd_tf.ops.targets import ssd_targets_batched


def _tiny_batch():
    """3 images, 6 anchors, 3 classes; values chosen so the loss can be written down by hand."""
    reg = np.zeros((3, 6, 4), np.float32)
    logits = np.zeros((3, 6, 3), np.float32)
    box_t = np.zeros((3, 6, 4), np.float32)
    cls_t = np.zeros((3, 6), np.int32)
    # Image 0: anchor 0 positive (class 2); negatives 1..5 with logits [0, a, 0], a = 0..4.
    cls_t[0, 0] = 2
    reg[0, 0] = [0.5, -2.0, 0.0, 0.1]  # smooth-L1: 0.125 + 1.5 + 0 + 0.005
    reg[0, 1:] = 50.0  # regression on negatives never counts
    logits[0, 1:, 1] = [0, 1, 2, 3, 4]
    # Image 1: anchors 0, 1 positive (class 1), 4 negatives (k = min(6, 4) = 4), all logits 0.
    cls_t[1, :2] = 1
    reg[1, 0] = [1.0, 0, 0, 0]  # 0.5
    reg[1, 1] = [0, 0, 3.0, 0]  # 2.5
    # Image 2: no positives; anything here must not count.
    logits[2] = np.random.default_rng(0).normal(0, 3, (6, 3))
    reg[2] = 7.0
    return reg, logits, box_t, cls_t


def _hand_values():
    box0, box1 = 0.125 + 1.5 + 0.005, 3.0
    cls0 = math.log(3) + sum(math.log(2 + math.exp(a)) for a in (4, 3, 2))  # top 3 of 5 negatives
    cls1 = 6 * math.log(3)
    return box0, box1, cls0, cls1


def test_hand_computed_per_image():
    box0, box1, cls0, cls1 = _hand_values()
    out = ssd_loss(*_tiny_batch(), normalization="per_image")
    assert float(out["box_loss"]) == pytest.approx((box0 / 1 + box1 / 2 + 0) / 3, rel=1e-5)
    assert float(out["class_loss"]) == pytest.approx((cls0 / 1 + cls1 / 2 + 0) / 3, rel=1e-5)
    assert float(out["total_loss"]) == pytest.approx(float(out["box_loss"]) + float(out["class_loss"]), rel=1e-6)


def test_hand_computed_per_batch():
    box0, box1, cls0, cls1 = _hand_values()
    out = ssd_loss(*_tiny_batch(), normalization="per_batch")
    assert float(out["box_loss"]) == pytest.approx((box0 + box1) / 3, rel=1e-5)
    assert float(out["class_loss"]) == pytest.approx((cls0 + cls1) / 3, rel=1e-5)


@pytest.mark.parametrize("normalization", ["per_image", "per_batch"])
def test_no_boxes_gives_zero_box_loss_and_finite_gradients(normalization):
    reg = tf.Variable(tf.random.normal([2, 6, 4]) * 5)
    logits = tf.Variable(tf.random.normal([2, 6, 3]))
    with tf.GradientTape() as tape:
        out = ssd_loss(reg, logits, tf.zeros([2, 6, 4]), tf.zeros([2, 6], tf.int32), normalization=normalization)
    assert float(out["box_loss"]) == 0.0
    assert np.isfinite(float(out["total_loss"]))
    for g in tape.gradient(out["total_loss"], [reg, logits]):
        assert g is None or np.isfinite(g.numpy()).all()


def test_gradients_finite_and_xla_matches_eager_with_bf16_inputs():
    reg, logits, box_t, cls_t = _tiny_batch()
    reg_v, logits_v = tf.Variable(reg), tf.Variable(logits)

    def step(r, l):
        with tf.GradientTape() as tape:
            out = ssd_loss(tf.cast(r, tf.bfloat16), tf.cast(l, tf.bfloat16), box_t, cls_t)
        return out, tape.gradient(out["total_loss"], [r, l])

    eager_out, grads = step(reg_v, logits_v)
    assert all(v.dtype == tf.float32 and v.shape == () for v in eager_out.values())
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    xla_out, _ = tf.function(step, jit_compile=True)(reg_v, logits_v)
    for key in eager_out:
        assert float(xla_out[key]) == pytest.approx(float(eager_out[key]), rel=1e-5)


def test_perfect_box_prediction_has_zero_box_loss():
    anchors = ssd_tf.default_boxes("ssd_vgg16")
    gt = tf.constant([[[0.1, 0.2, 0.6, 0.5], [0.3, 0.3, 0.9, 0.95]]], tf.float32)
    box_t, cls_t, num_pos = ssd_targets_batched(gt, [[1, 2]], [2], anchors)
    assert int(num_pos[0]) > 2
    out = ssd_loss(box_t, tf.random.normal([1, 8732, 3]), box_t, cls_t)
    assert float(out["box_loss"]) == 0.0
    assert float(out["class_loss"]) > 0.0


def test_rejects_bad_normalization_and_shapes():
    reg, logits, box_t, cls_t = _tiny_batch()
    with pytest.raises(ValueError, match="normalization"):
        ssd_loss(reg, logits, box_t, cls_t, normalization="mean")
    with pytest.raises(ValueError, match="box_targets"):
        ssd_loss(reg, logits, box_t[:, :5], cls_t)
