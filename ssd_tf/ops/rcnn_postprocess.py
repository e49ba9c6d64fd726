"""Faster R-CNN detection post-processing (torchvision ``RoIHeads.postprocess_detections``), batched and padded.

Per image (REFERENCE_SPECS §3.6):
1. softmax over the C classes (column 0 = background);
2. decode the class-specific deltas (ty, tx, th, tw) of every class against the proposal, weights (10, 10, 5, 5),
   dh, dw clamped at log(1000/16);
3. clip to the true image size (``image_shape``); drop the background column;
4. keep (proposal, class) pairs with score > ``score_threshold`` (0.05) and both sides >= ``min_size`` (1e-2);
5. NMS at ``nms_threshold`` (0.5) within each class;
6. the ``max_detections`` (100) best over all classes, sorted by decreasing score.

maskrcnn-benchmark: ``plus_one=True`` (decode, clip to size - 1 and NMS with "+1") and ``min_size=0``; its
``kthvalue`` cut, which can keep more than 100 detections on exact score ties, is not reproduced.

Output names follow the TF Object Detection API / Model Garden: ``detection_boxes`` [B, K, 4] yxyx pixels,
``detection_scores`` [B, K], ``detection_classes`` [B, K] int32 (contiguous ids, 1 = first class, 0 in padding),
``num_detections`` [B]. NMS is ``tf.image.combined_non_max_suppression`` (no XLA kernel).
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.ops import box_coder
from ssd_tf.ops.boxes import clip_to_image, side_at_least
from ssd_tf.ops.nms import batched_class_nms

DEFAULTS = dict(score_threshold=0.05, nms_threshold=0.5, max_detections=100, min_size=1e-2)


def rcnn_detections(class_logits, box_deltas, proposals, image_shape, proposal_valid=None, *, score_threshold=0.05,
                    nms_threshold=0.5, max_detections=100, min_size=1e-2, weights=box_coder.ROI_WEIGHTS,
                    wh_clip=box_coder.TORCHVISION_WH_CLIP, plus_one=False):
    """Detections from the box head.

    Args:
      class_logits: float [B, R, C], C classes including background (column 0).
      box_deltas: float [B, R, C, 4] or [B, R, 4C] (class j at columns 4j..4j+3), (ty, tx, th, tw).
      proposals: float [B, R, 4] yxyx pixels (the RoIs the head pooled).
      image_shape: [B, 2] true (height, width) of each image inside the padded batch.
      proposal_valid: optional bool [B, R]; padded proposals (False) give no detection.
      score_threshold, nms_threshold, max_detections (K), min_size: see the module docstring.
      weights, wh_clip, plus_one: the decode's (``plus_one`` also clips to size - 1 and uses "+1" NMS).
    Returns:
      dict(detection_boxes float32 [B, K, 4], detection_scores float32 [B, K], detection_classes int32 [B, K],
      num_detections int32 [B]), sorted by decreasing score, padding rows 0.
    """
    class_logits = tf.convert_to_tensor(class_logits, tf.float32)
    box_deltas = tf.convert_to_tensor(box_deltas, tf.float32)
    proposals = tf.convert_to_tensor(proposals, tf.float32)
    image_shape = tf.convert_to_tensor(image_shape)
    if class_logits.shape.rank != 3 or class_logits.shape[-1] is None or class_logits.shape[-1] < 2:
        raise ValueError(f"rcnn_detections: class_logits must be [B, R, C] with a static C >= 2, got shape "
                         f"{class_logits.shape}")
    num_classes = class_logits.shape[-1]
    if box_deltas.shape.rank == 3:
        if box_deltas.shape[-1] != 4 * num_classes:
            raise ValueError(f"rcnn_detections: box_deltas [B, R, 4C] must have 4 * {num_classes} columns, got "
                             f"shape {box_deltas.shape}")
        box_deltas = tf.reshape(box_deltas, tf.concat([tf.shape(box_deltas)[:2], [num_classes, 4]], 0))
    if box_deltas.shape.rank != 4 or box_deltas.shape[-2:] != (num_classes, 4):
        raise ValueError(f"rcnn_detections: box_deltas must be [B, R, {num_classes}, 4] or [B, R, "
                         f"{4 * num_classes}], got shape {box_deltas.shape}")
    if proposals.shape.rank != 3 or proposals.shape[-1] != 4:
        raise ValueError(f"rcnn_detections: proposals must be [B, R, 4], got shape {proposals.shape}")
    for name, t in (("box_deltas", box_deltas), ("proposals", proposals)):
        if t.shape[:2].is_fully_defined() and class_logits.shape[:2].is_fully_defined() \
                and t.shape[:2] != class_logits.shape[:2]:
            raise ValueError(f"rcnn_detections: {name} {t.shape} and class_logits {class_logits.shape} disagree on "
                             f"[B, R]")
    if image_shape.shape.rank != 2 or image_shape.shape[-1] != 2:
        raise ValueError(f"rcnn_detections: image_shape must be [B, 2] (height, width), got shape "
                         f"{image_shape.shape}")
    if not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"rcnn_detections: max_detections must be an int >= 1, got {max_detections!r}")
    if not 0.0 <= float(score_threshold) < 1.0:
        raise ValueError(f"rcnn_detections: score_threshold must be in [0, 1), got {score_threshold!r}")

    scores = tf.nn.softmax(class_logits, axis=-1)[:, :, 1:]  # [B, R, C-1]
    boxes = box_coder.decode(box_deltas[:, :, 1:], proposals[:, :, None, :], weights, wh_clip,
                             plus_one=plus_one)  # [B, R, C-1, 4]
    boxes = clip_to_image(boxes, image_shape, plus_one)
    keep = (scores > score_threshold) & side_at_least(boxes, min_size, plus_one)  # [B, R, C-1]
    if proposal_valid is not None:
        keep &= tf.cast(proposal_valid, tf.bool)[:, :, None]
    nms = batched_class_nms(boxes, tf.where(keep, scores, -1.0), max_per_class=max_detections,
                            max_total=max_detections, iou_threshold=nms_threshold, score_threshold=score_threshold,
                            plus_one=plus_one)
    return {
        "detection_boxes": nms.boxes,
        "detection_scores": nms.scores,
        "detection_classes": tf.where(nms.valid, nms.classes + 1, 0),
        "num_detections": nms.num_valid,
    }
