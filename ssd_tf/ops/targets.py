"""SSD training targets: match anchors to gt boxes, then encode.

Unmatched anchors get class 0 (background) and box target 0, which is exactly ``encode(anchor, anchor)``;
the loss only reads box targets of positives, so either convention gives the same loss. A perfect prediction
(regression == box target on positives) has box loss 0.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.ops import box_coder
from ssd_tf.ops.matcher import match_anchors


def ssd_targets_batched(gt_boxes, gt_classes, num_gt, anchors, iou_threshold=0.5, strict_threshold=False,
                        weights=box_coder.SSD_WEIGHTS):
    """Batched SSD targets (static shapes; usable inside an XLA train step).

    Args:
      gt_boxes: float [B, M, 4] normalised yxyx, padded; gt_classes: int [B, M] contiguous 1..C-1;
      num_gt: int [B]; anchors: [A, 4] yxyx.
    Returns:
      box_targets float32 [B, A, 4] (ty, tx, th, tw), class_targets int32 [B, A] (0 = background),
      num_positives int32 [B].
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if gt_classes.shape.rank != 2 or (gt_boxes.shape[:2].is_fully_defined() and gt_classes.shape.is_fully_defined()
                                      and gt_boxes.shape[:2] != gt_classes.shape):
        raise ValueError(f"ssd_targets_batched: gt_classes must be [B, M] like gt_boxes {gt_boxes.shape}, "
                         f"got {gt_classes.shape}")
    num_gt = tf.minimum(tf.reshape(tf.cast(num_gt, tf.int32), [-1]), tf.shape(gt_boxes)[1])  # [B]
    # One extra padding row so that M = 0 (an image without boxes, unpadded) still has a row to reduce over.
    gt_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])  # [B, M+1, 4]
    gt_classes = tf.pad(gt_classes, [[0, 0], [0, 1]])  # [B, M+1]
    matched = match_anchors(gt_boxes, num_gt, anchors, iou_threshold, strict_threshold)  # [B, A]
    positive = matched >= 0
    safe = tf.maximum(matched, 0)
    matched_boxes = tf.gather(gt_boxes, safe, batch_dims=1)  # [B, A, 4]
    matched_boxes = tf.where(positive[..., None], matched_boxes, anchors[None])
    box_targets = box_coder.encode(matched_boxes, anchors, weights)
    box_targets = tf.where(positive[..., None], box_targets, 0.0)
    class_targets = tf.where(positive, tf.gather(gt_classes, safe, batch_dims=1), 0)
    num_positives = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    return box_targets, class_targets, num_positives


def ssd_targets(gt_boxes, gt_classes, num_gt, anchors, iou_threshold=0.5, strict_threshold=False,
                weights=box_coder.SSD_WEIGHTS):
    """Single-image SSD targets: gt_boxes [M, 4], gt_classes [M], num_gt scalar, anchors [A, 4] ->
    (box_targets float32 [A, 4], class_targets int32 [A], num_positives int32 scalar)."""
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    if gt_boxes.shape.rank != 2:
        raise ValueError(f"ssd_targets: gt_boxes must be [M, 4], got shape {gt_boxes.shape}")
    box_t, cls_t, num_pos = ssd_targets_batched(
        gt_boxes[None], tf.convert_to_tensor(gt_classes)[None], tf.reshape(num_gt, [1]), anchors,
        iou_threshold, strict_threshold, weights)
    return box_t[0], cls_t[0], num_pos[0]
