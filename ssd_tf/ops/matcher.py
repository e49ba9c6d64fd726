"""Anchor <-> ground-truth matching (static shapes, XLA-safe).

``match_anchors``: SSD's rule (below). ``threshold_match`` / ``match_boxes``: the general high/low-threshold
matcher of Faster R-CNN (torchvision / maskrcnn-benchmark ``Matcher``), of which SSD's rule is one setting.

SSD rule (MLPerf, ssd.pytorch, torchvision):
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


# --------------------------------------------------------------------------------------------------------------
# General threshold matcher (Faster R-CNN RPN and box head; torchvision / maskrcnn-benchmark ``Matcher``).
# --------------------------------------------------------------------------------------------------------------

BELOW_LOW_THRESHOLD = -1  # background
BETWEEN_THRESHOLDS = -2  # ignored


def threshold_match(quality, num_gt, high_threshold, low_threshold=None, allow_low_quality_matches=False,
                    force_best_anchor=False, strict=False):
    """Matches anchors (or proposals) to gts from a quality matrix, batched; static shapes, XLA-safe.

    Rule (torchvision ``_utils.Matcher``, maskrcnn-benchmark the same):
    1. each anchor takes its highest-quality valid gt (first gt row on ties);
    2. quality >= ``high_threshold`` keeps the gt index, ``low_threshold`` <= quality < ``high_threshold`` gives
       ``BETWEEN_THRESHOLDS`` (-2, ignored), quality < ``low_threshold`` gives ``BELOW_LOW_THRESHOLD`` (-1,
       background); ``strict=True`` turns every >= into > (positive: quality > high, ignored: low < quality <=
       high, background: quality <= low), MLPerf REF's SSD rule;
    3. ``allow_low_quality_matches``: for every valid gt, each anchor whose quality equals that gt's maximum
       over anchors (all ties) gets back its step-1 gt (which may be another gt that overlaps it more). As in the
       references, a valid gt that overlaps nothing (maximum 0) makes every anchor it does not overlap a match
       of that anchor's best gt, so zero-area gts must be dropped before matching (torchvision rejects them);
    4. ``force_best_anchor`` (SSD; exclusive with 3): each valid gt whose best quality is > 0 is forced onto its
       own best anchor (first anchor on ties), the highest gt row winning an anchor picked by several gts.

    SSD's rule (``match_anchors(iou_threshold=t, strict_threshold=s)``) is
    ``threshold_match(iou, num_gt, t, t, force_best_anchor=True, strict=s)``; the test suite checks that the
    two are bit-identical. RPN (torchvision and maskrcnn-benchmark): high 0.7, low 0.3, low-quality matches on;
    box head: high = low = 0.5, no low-quality matches.

    Args:
      quality: float [B, M, A], e.g. IoU of M (padded) gts against A anchors.
      num_gt: int [B], valid gt rows per image; rows >= num_gt are padding and never match. An image with no
        valid gt gets -1 everywhere (what torchvision assigns to images without boxes).
      high_threshold, low_threshold: floats, low <= high; ``low_threshold=None`` means low = high.
    Returns:
      int32 [B, A]: matched gt row in [0, M), or -1 (background), or -2 (between thresholds: ignore).
    """
    quality = tf.convert_to_tensor(quality)
    if not quality.dtype.is_floating:
        quality = tf.cast(quality, tf.float32)
    if quality.shape.rank != 3:
        raise ValueError(f"threshold_match: quality must be [B, M, A], got shape {quality.shape}")
    low_threshold = high_threshold if low_threshold is None else low_threshold
    if float(low_threshold) > float(high_threshold):
        raise ValueError(f"threshold_match: low_threshold {low_threshold} must be <= high_threshold "
                         f"{high_threshold}")
    if allow_low_quality_matches and force_best_anchor:
        raise ValueError("threshold_match: allow_low_quality_matches and force_best_anchor are exclusive")
    num_gt = tf.reshape(tf.cast(num_gt, tf.int32), [-1])  # [B]
    if num_gt.shape[0] is not None and quality.shape[0] is not None and num_gt.shape[0] != quality.shape[0]:
        raise ValueError(f"threshold_match: num_gt has shape {num_gt.shape}, quality {quality.shape} "
                         f"(need one count per image)")
    num_rows = tf.shape(quality)[1]
    num_anchors = tf.shape(quality)[2]
    rows = tf.range(num_rows, dtype=tf.int32)  # [M]
    valid = rows[None, :] < num_gt[:, None]  # [B, M]
    # Padding rows at -inf never win a max over gts, and are excluded from the per-gt steps below.
    neg_inf = tf.constant(-float("inf"), quality.dtype)
    quality = tf.where(valid[:, :, None], quality, neg_inf)  # [B, M, A]

    # 1. best gt per anchor; argmax as "first row equal to the max" (two plain reductions, fast under XLA).
    best = tf.reduce_max(quality, axis=1)  # [B, A] (-inf when no valid gt)
    best_gt = tf.reduce_min(tf.where(quality == best[:, None, :], rows[:, None], num_rows), axis=1)  # [B, A]
    # 2. thresholds.
    high = tf.constant(high_threshold, quality.dtype)
    low = tf.constant(low_threshold, quality.dtype)
    positive = best > high if strict else best >= high
    between = best > low if strict else best >= low
    matched = tf.where(positive, best_gt, tf.where(between, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD))  # [B, A]
    matched = tf.where(best > neg_inf, matched, BELOW_LOW_THRESHOLD)  # no valid gt at all: background

    if allow_low_quality_matches:
        # 3. every (gt, anchor) pair at the gt's maximum, ties included, restores the anchor's best gt.
        gt_best = tf.reduce_max(quality, axis=2, keepdims=True)  # [B, M, 1]
        at_max = (quality == gt_best) & valid[:, :, None]  # [B, M, A]
        matched = tf.where(tf.reduce_any(at_max, axis=1), best_gt, matched)
    elif force_best_anchor:
        # 4. each valid gt with some overlap takes its first best anchor; the highest gt row wins a shared anchor.
        anchor_ids = tf.range(num_anchors, dtype=tf.int32)  # [A]
        gt_best = tf.reduce_max(quality, axis=2, keepdims=True)  # [B, M, 1]
        best_anchor = tf.reduce_min(tf.where(quality == gt_best, anchor_ids, num_anchors), axis=2)  # [B, M]
        forceable = valid & (gt_best[:, :, 0] > 0.0)  # [B, M]
        hit = (best_anchor[:, :, None] == anchor_ids) & forceable[:, :, None]  # [B, M, A]
        forced_gt = tf.reduce_max(tf.where(hit, rows[:, None], -1), axis=1)  # [B, A]
        matched = tf.where(forced_gt >= 0, forced_gt, matched)
    return matched


def match_boxes(gt_boxes, num_gt, anchors, high_threshold, low_threshold=None, allow_low_quality_matches=False,
                force_best_anchor=False, strict=False, plus_one=False):
    """``threshold_match`` on the IoU of gt boxes and anchors (or per-image proposals).

    Args:
      gt_boxes: float [B, M, 4] yxyx, padded; num_gt: int [B].
      anchors: [A, 4] shared, or [1 or B, A, 4] per image (e.g. proposals with the gts appended).
      plus_one: maskrcnn-benchmark's "+1" IoU.
      The other arguments are ``threshold_match``'s.
    Returns:
      int32 [B, A] (gt row, -1 background, -2 ignored).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if gt_boxes.shape.rank != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"match_boxes: gt_boxes must be [B, M, 4], got shape {gt_boxes.shape}")
    if anchors.shape.rank == 2:
        anchors = anchors[None]
    if anchors.shape.rank != 3 or anchors.shape[-1] != 4:
        raise ValueError(f"match_boxes: anchors must be [A, 4] or [B, A, 4], got shape {anchors.shape}")
    if anchors.shape[0] not in (None, 1) and gt_boxes.shape[0] is not None and anchors.shape[0] != gt_boxes.shape[0]:
        raise ValueError(f"match_boxes: anchors {anchors.shape} and gt_boxes {gt_boxes.shape} disagree on B")
    quality = box_ops.iou(gt_boxes, anchors, plus_one=plus_one)  # [B, M, A]
    return threshold_match(quality, num_gt, high_threshold, low_threshold, allow_low_quality_matches,
                           force_best_anchor, strict)
