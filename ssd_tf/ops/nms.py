"""Batched per-class NMS with padded outputs (torchvision's ``batched_nms`` semantics), for Faster R-CNN's
proposal selection (one "class" per FPN level) and detection post-processing (one per object class).

Semantics: within each (image, class), boxes are taken in decreasing score order and a box is dropped when its IoU
with an already kept box of the same class is > ``iou_threshold`` (torchvision ``nms``); entries with score
<= ``score_threshold`` never take part. The survivors of all classes are merged by decreasing score and cut to
``max_total``. ``plus_one``: maskrcnn-benchmark's "+1" IoU.

Implementation: ``tf.image.combined_non_max_suppression`` (``clip_boxes=False``), which runs the classes of all
images in parallel. It has no XLA kernel (use it under ``tf.function`` without ``jit_compile``); it takes float32
only, and returns boxes but not their indices, so the "+1" IoU is obtained by adding 1 to ymax/xmax before NMS and
subtracting it after (exact for coordinates >= 1 that keep their binade; otherwise a change within 1 ulp of the
coordinate + 1). Ties in score are ordered arbitrarily, as in TF's kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class NmsResult(NamedTuple):
    boxes: tf.Tensor  # float32 [B, M, 4] yxyx, padding rows 0
    scores: tf.Tensor  # float32 [B, M], sorted decreasing; padding 0
    classes: tf.Tensor  # int32 [B, M], the score column (0-based); padding 0
    valid: tf.Tensor  # bool [B, M]
    num_valid: tf.Tensor  # int32 [B]


def batched_class_nms(boxes, scores, max_per_class, max_total, iou_threshold, score_threshold=float("-inf"),
                      plus_one=False):
    """Per-class greedy NMS for every image of a batch.

    Args:
      boxes: float32 [B, N, q, 4] yxyx, q = 1 (one box shared by all classes) or q = K (one box per class).
      scores: float32 [B, N, K]; an entry <= ``score_threshold`` (e.g. -inf for "not a candidate") is ignored.
      max_per_class: int, survivors kept per (image, class) (a cap; use ``max_total`` for "no cap").
      max_total: int M, survivors kept per image after merging the classes.
      iou_threshold: float in [0, 1].
      score_threshold: float; candidates need score > it (default: every finite score).
      plus_one: maskrcnn-benchmark's "+1" IoU.
    Returns:
      ``NmsResult`` with M = ``max_total`` rows per image.
    """
    boxes = tf.convert_to_tensor(boxes)
    scores = tf.convert_to_tensor(scores)
    if boxes.dtype != tf.float32 or scores.dtype != tf.float32:
        raise ValueError(f"batched_class_nms: boxes and scores must be float32, got {boxes.dtype.name} and "
                         f"{scores.dtype.name}")
    if boxes.shape.rank != 4 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_class_nms: boxes must be [B, N, q, 4], got shape {boxes.shape}")
    if scores.shape.rank != 3:
        raise ValueError(f"batched_class_nms: scores must be [B, N, K], got shape {scores.shape}")
    q, k = boxes.shape[2], scores.shape[2]
    if q is not None and k is not None and q not in (1, k):
        raise ValueError(f"batched_class_nms: boxes have q = {q} per box, need 1 or K = {k} (scores {scores.shape})")
    for name, value in (("max_per_class", max_per_class), ("max_total", max_total)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"batched_class_nms: {name} must be an int >= 1, got {value!r}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"batched_class_nms: iou_threshold must be in [0, 1], got {iou_threshold!r}")
    one = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32)
    if plus_one:
        boxes = boxes + one
    # combined NMS wants a finite threshold; -inf scores then fail "score > lowest float".
    threshold = max(float(score_threshold), float(tf.float32.min))
    nms = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_per_class, max_total_size=max_total,
        iou_threshold=float(iou_threshold), score_threshold=threshold, pad_per_class=False, clip_boxes=False)
    num = tf.cast(nms.valid_detections, tf.int32)  # [B]
    valid = tf.range(max_total)[None, :] < num[:, None]  # [B, M]
    out_boxes = nms.nmsed_boxes - one if plus_one else nms.nmsed_boxes
    return NmsResult(
        boxes=tf.where(valid[..., None], out_boxes, 0.0),
        scores=tf.where(valid, nms.nmsed_scores, 0.0),
        classes=tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32), 0),
        valid=valid,
        num_valid=num)
