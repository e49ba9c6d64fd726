"""SSD / Faster R-CNN box coder on yxyx boxes: codes (ty, tx, th, tw).

ty = wy * (cy - cy_a) / h_a, tx = wx * (cx - cx_a) / w_a, th = wh * log(h / h_a), tw = ww * log(w / w_a).
SSD's variances (0.1, 0.2) are weights (10, 10, 5, 5). ``encode(anchors, anchors)`` is exactly 0.

Faster R-CNN: the RPN uses weights (1, 1, 1, 1) (``RPN_WEIGHTS``), the box head (10, 10, 5, 5) (``ROI_WEIGHTS``),
and both decode with ``wh_clip=TORCHVISION_WH_CLIP`` (maskrcnn-benchmark uses the same clip). ``plus_one=True`` is
maskrcnn-benchmark's pixel convention: h = ymax - ymin + 1, centre = ymin + h / 2, and a decoded box ends at
centre + h / 2 - 1. Anchors may carry batch axes ([..., N, 4], broadcast against the boxes), e.g. proposals
[B, R, 4] per image, or [B, R, 1, 4] against class-specific codes [B, R, C, 4].
"""
from __future__ import annotations

import math

import tensorflow as tf

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # Faster R-CNN RPN (torchvision and maskrcnn-benchmark)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN box head (torchvision and maskrcnn-benchmark)
# torchvision clamps dh, dw (after dividing by the weight) at log(1000 / 16) before exp() when decoding.
TORCHVISION_WH_CLIP = math.log(1000.0 / 16.0)
# Heights/widths are floored at this before log() so a degenerate gt gives a large but finite code.
_MIN_SIZE = 1e-8


def _check(weights, name, boxes, anchors):
    if len(weights) != 4:
        raise ValueError(f"{name}: weights must have 4 entries (wy, wx, wh, ww), got {weights!r}")
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"{name}: last axis must be 4, got boxes shape {boxes.shape}")
    if anchors.shape.rank is not None and (anchors.shape.rank < 2 or anchors.shape[-1] != 4):
        raise ValueError(f"{name}: anchors must be [N, 4] or [..., N, 4], got shape {anchors.shape}")
    if anchors.shape.rank == 2:
        if (boxes.shape.rank is not None and boxes.shape.rank >= 2 and boxes.shape[-2] is not None
                and anchors.shape[0] is not None and boxes.shape[-2] != anchors.shape[0]):
            raise ValueError(f"{name}: boxes {boxes.shape} and anchors {anchors.shape} disagree on N")
    elif boxes.shape.rank is not None and anchors.shape.rank is not None:
        try:
            tf.broadcast_static_shape(boxes.shape[:-1], anchors.shape[:-1])
        except ValueError:
            raise ValueError(f"{name}: boxes {boxes.shape} and anchors {anchors.shape} do not broadcast") from None


def _centre_size(boxes, plus_one=False):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    if plus_one:  # maskrcnn-benchmark: "+1" sides, centre = min + side / 2
        h, w = ymax - ymin + 1.0, xmax - xmin + 1.0
        return ymin + 0.5 * h, xmin + 0.5 * w, h, w
    return (ymin + ymax) * 0.5, (xmin + xmax) * 0.5, ymax - ymin, xmax - xmin


def encode(boxes, anchors, weights=SSD_WEIGHTS, plus_one=False):
    """Encodes yxyx ``boxes`` [..., N, 4] against ``anchors`` [N, 4] -> codes [..., N, 4] (ty, tx, th, tw).

    ``anchors`` may also be [..., N, 4] with leading axes that broadcast against ``boxes``. ``plus_one``:
    maskrcnn-benchmark's "+1" sides (see the module docstring).
    """
    boxes = tf.convert_to_tensor(boxes)
    anchors = tf.cast(tf.convert_to_tensor(anchors), boxes.dtype)
    _check(weights, "encode", boxes, anchors)
    wy, wx, wh, ww = (tf.constant(w, boxes.dtype) for w in weights)
    cy, cx, h, w = _centre_size(boxes, plus_one)
    acy, acx, ah, aw = _centre_size(anchors, plus_one)
    h = tf.maximum(h, _MIN_SIZE)
    w = tf.maximum(w, _MIN_SIZE)
    return tf.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw,
                     wh * tf.math.log(h / ah), ww * tf.math.log(w / aw)], axis=-1)


def decode(codes, anchors, weights=SSD_WEIGHTS, wh_clip=None, plus_one=False):
    """Decodes codes [..., N, 4] (ty, tx, th, tw) against anchors [N, 4] -> yxyx boxes [..., N, 4].

    ``anchors`` may also be [..., N, 4] with leading axes that broadcast against ``codes``.
    ``wh_clip``: upper bound on th/wh and tw/ww before exp() (torchvision: ``TORCHVISION_WH_CLIP``; MLPerf: None).
    ``plus_one``: maskrcnn-benchmark's "+1" sides; the decoded ymax/xmax then get "-1".
    Computed in the dtype of ``codes``.
    """
    codes = tf.convert_to_tensor(codes)
    anchors = tf.cast(tf.convert_to_tensor(anchors), codes.dtype)
    _check(weights, "decode", codes, anchors)
    ty, tx, th, tw = tf.unstack(codes, 4, axis=-1)
    acy, acx, ah, aw = _centre_size(anchors, plus_one)
    dh = th / weights[2]
    dw = tw / weights[3]
    if wh_clip is not None:
        dh = tf.minimum(dh, wh_clip)
        dw = tf.minimum(dw, wh_clip)
    cy = ty / weights[0] * ah + acy
    cx = tx / weights[1] * aw + acx
    h = tf.exp(dh) * ah
    w = tf.exp(dw) * aw
    if plus_one:
        return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h - 1.0, cx + 0.5 * w - 1.0], axis=-1)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
