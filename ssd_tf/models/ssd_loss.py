"""SSD multibox loss: Smooth-L1 (beta 1) on positives + softmax CE with 3:1 hard negative mining.

Normalisation:
* ``"per_image"`` (MLPerf REF/TPU): each image's (box + class) / num_pos_i, images with no positives contribute 0,
  then the mean over the batch (the batch size counts every image);
* ``"per_batch"`` (torchvision, ssd.pytorch): sums over the batch / max(1, total positives).
Everything is computed in float32 whatever the dtype of the predictions.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.ops.sampling import hard_negative_mining

NORMALIZATIONS = ("per_image", "per_batch")


def smooth_l1(diff, beta=1.0):
    """Elementwise Smooth-L1 (Huber with delta = beta, divided by beta as in PyTorch)."""
    abs_diff = tf.abs(diff)
    return tf.where(abs_diff < beta, 0.5 * tf.square(diff) / beta, abs_diff - 0.5 * beta)


def ssd_loss(box_regression, class_logits, box_targets, class_targets, normalization="per_image", neg_pos_ratio=3):
    """SSD loss.

    Args:
      box_regression: [B, A, 4] predicted codes (ty, tx, th, tw); class_logits: [B, A, C];
      box_targets: [B, A, 4]; class_targets: int [B, A], 0 = background.
    Returns:
      dict(total_loss, box_loss, class_loss) of float32 scalars; total = box + class.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"ssd_loss: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    box_regression = tf.cast(box_regression, tf.float32)
    class_logits = tf.cast(class_logits, tf.float32)
    box_targets = tf.cast(box_targets, tf.float32)
    class_targets = tf.cast(class_targets, tf.int32)
    if box_regression.shape.rank != 3 or class_logits.shape.rank != 3 or class_targets.shape.rank != 2:
        raise ValueError(f"ssd_loss: expected box_regression [B,A,4], class_logits [B,A,C], class_targets [B,A]; "
                         f"got {box_regression.shape}, {class_logits.shape}, {class_targets.shape}")
    if box_regression.shape.is_fully_defined() and box_targets.shape.is_fully_defined() \
            and box_regression.shape != box_targets.shape:
        raise ValueError(f"ssd_loss: box_regression {box_regression.shape} != box_targets {box_targets.shape}")
    if (class_logits.shape[:2].is_fully_defined() and class_targets.shape.is_fully_defined()
            and class_logits.shape[:2] != class_targets.shape):
        raise ValueError(f"ssd_loss: class_logits {class_logits.shape} and class_targets {class_targets.shape} "
                         f"disagree on [B, A]")

    positive = class_targets > 0  # [B, A]
    pos_f = tf.cast(positive, tf.float32)
    num_pos = tf.reduce_sum(pos_f, axis=1)  # [B]

    per_anchor_box = tf.reduce_sum(smooth_l1(box_regression - box_targets), axis=-1)  # [B, A]
    # tf.where (not a multiply) so that a non-finite regression on a negative cannot leak a NaN.
    box_per_image = tf.reduce_sum(tf.where(positive, per_anchor_box, 0.0), axis=1)  # [B]

    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_targets, logits=class_logits)  # [B, A]
    negative = hard_negative_mining(ce, positive, neg_pos_ratio)  # ranked by CE of the background class
    cls_per_image = tf.reduce_sum(tf.where(positive | negative, ce, 0.0), axis=1)  # [B]

    if normalization == "per_image":
        has_pos = num_pos > 0
        denom = tf.maximum(num_pos, 1.0)
        box_loss = tf.reduce_mean(tf.where(has_pos, box_per_image / denom, 0.0))
        class_loss = tf.reduce_mean(tf.where(has_pos, cls_per_image / denom, 0.0))
    else:
        denom = tf.maximum(tf.reduce_sum(num_pos), 1.0)
        box_loss = tf.reduce_sum(box_per_image) / denom
        class_loss = tf.reduce_sum(cls_per_image) / denom
    return {"total_loss": box_loss + class_loss, "box_loss": box_loss, "class_loss": class_loss}
