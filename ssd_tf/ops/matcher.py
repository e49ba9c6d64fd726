"""SSD anchor <-> ground-truth matching (static shapes, XLA-safe).

Rule (MLPerf, ssd.pytorch, torchvision):
1. each anchor takes its highest-IoU valid gt; it is positive if that IoU >= threshold (``strict=True``: >, as
   MLPerf REF);
2. then each valid gt is forced onto its own highest-IoU anchor (first anchor on ties), overriding step 1; when
   several gts pick the same anchor the later gt (higher row) wins, as in REF and ssd.pytorch.

Choice made here: a gt that overlaps no anchor at all (best IoU 0, e.g. a zero-area box) is not forced, so it
cannot drag anchor 0 onto a degenerate target. Padding rows (index >= num_gt) never match.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.ops import boxes as box_ops


def match_anchors(gt_boxes, num_gt, anchors, iou_threshold=0.5, strict_threshold=False):
    """Matches anchors to gts, batched.

    Args:
      gt_boxes: [B, M, 4] yxyx (padded); num_gt: [B] int, valid rows per image; anchors: [A, 4] yxyx.
    Returns:
      matched_gt: int32 [B, A], index of the matched gt row or -1 (background).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if gt_boxes.shape.rank != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"match_anchors: gt_boxes must be [B, M, 4], got shape {gt_boxes.shape}")
    if anchors.shape.rank != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"match_anchors: anchors must be [A, 4], got shape {anchors.shape}")
    num_rows = tf.shape(gt_boxes)[1]
    num_anchors = tf.shape(anchors)[0]
    num_gt = tf.reshape(tf.cast(num_gt, tf.int32), [-1])  # [B]

    rows = tf.range(num_rows, dtype=tf.int32)  # [M]
    valid = rows[None, :] < num_gt[:, None]  # [B, M]
    overlaps = box_ops.iou(gt_boxes, anchors[None])  # [B, M, A]
    overlaps = tf.where(valid[:, :, None], overlaps, -1.0)  # padding never wins

    # Step 1: best gt per anchor. argmax as "first index equal to the max": two plain reductions, which XLA on
    # CPU runs several times faster than its variadic argmax reduce.
    best_iou = tf.reduce_max(overlaps, axis=1)  # [B, A]
    best_gt = tf.reduce_min(tf.where(overlaps == best_iou[:, None, :], rows[:, None], num_rows), axis=1)  # [B, A]
    positive = best_iou > iou_threshold if strict_threshold else best_iou >= iou_threshold
    matched = tf.where(positive, best_gt, -1)

    # Step 2: force each valid gt onto its best anchor (first on ties); the highest gt row wins a shared anchor.
    anchor_ids = tf.range(num_anchors, dtype=tf.int32)  # [A]
    gt_best_iou = tf.reduce_max(overlaps, axis=2, keepdims=True)  # [B, M, 1]
    best_anchor = tf.reduce_min(tf.where(overlaps == gt_best_iou, anchor_ids, num_anchors), axis=2)  # [B, M]
    forceable = valid & (gt_best_iou[:, :, 0] > 0.0)  # [B, M]
    hit = (best_anchor[:, :, None] == anchor_ids) & forceable[:, :, None]  # [B, M, A]
    forced_gt = tf.reduce_max(tf.where(hit, rows[:, None], -1), axis=1)  # [B, A]
    return tf.where(forced_gt >= 0, forced_gt, matched)
