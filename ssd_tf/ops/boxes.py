"""The package's one box convention, and the helpers that convert to and from it.

Convention
----------
Every box inside ssd_tf is ``[ymin, xmin, ymax, xmax]`` in the last axis (the ``tf.image`` order):

* SSD: normalised to the network input, i.e. 0..1 of the 300x300 image (a default box may poke out of [0, 1]);
* Faster R-CNN: absolute pixels of the padded network input.

Centre form, used by the box coder, is ``[cy, cx, h, w]``. Other layouts appear only at the edges (converters,
COCO/VOC export, weight importers) and are reached through the converters below: ``xyxy`` = ``[xmin, ymin, xmax,
ymax]`` (torchvision, PIL), ``xywh`` = ``[xmin, ymin, width, height]`` (COCO json).

The converters accept numpy arrays (and return numpy) or anything TensorFlow accepts (and return tf.Tensor);
``iou``, ``area``, ``clip_to_image`` and ``side_at_least`` are TensorFlow. Nothing here imports the rest of the
package.
"""
from __future__ import annotations

import numpy as np


class _LazyTensorFlow:
    """TensorFlow, imported on first use: the conversions also serve numpy callers (COCO export, evaluation)
    that should not pay for importing TensorFlow."""

    def __getattr__(self, name):
        import tensorflow

        return getattr(tensorflow, name)


tf = _LazyTensorFlow()


def _backend(x):
    return np if isinstance(x, np.ndarray) else tf


def _unpack(boxes, name):
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"{name}: last axis must be 4 box coordinates, got shape {tuple(boxes.shape)}")
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _as_array(boxes):
    if isinstance(boxes, np.ndarray):
        return boxes
    if isinstance(boxes, (list, tuple)):
        return np.asarray(boxes, dtype=np.float32)
    return tf.convert_to_tensor(boxes)


def yxyx_to_cyxhw(boxes):
    """[ymin, xmin, ymax, xmax] -> [cy, cx, h, w]."""
    boxes = _as_array(boxes)
    ymin, xmin, ymax, xmax = _unpack(boxes, "yxyx_to_cyxhw")
    xp = _backend(boxes)
    return xp.stack([(ymin + ymax) * 0.5, (xmin + xmax) * 0.5, ymax - ymin, xmax - xmin], axis=-1)


def cyxhw_to_yxyx(boxes):
    """[cy, cx, h, w] -> [ymin, xmin, ymax, xmax]."""
    boxes = _as_array(boxes)
    cy, cx, h, w = _unpack(boxes, "cyxhw_to_yxyx")
    xp = _backend(boxes)
    return xp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def xyxy_to_yxyx(boxes):
    """[xmin, ymin, xmax, ymax] -> [ymin, xmin, ymax, xmax] (its own inverse)."""
    boxes = _as_array(boxes)
    a, b, c, d = _unpack(boxes, "xyxy_to_yxyx")
    return _backend(boxes).stack([b, a, d, c], axis=-1)


def yxyx_to_xyxy(boxes):
    """[ymin, xmin, ymax, xmax] -> [xmin, ymin, xmax, ymax]."""
    boxes = _as_array(boxes)
    a, b, c, d = _unpack(boxes, "yxyx_to_xyxy")
    return _backend(boxes).stack([b, a, d, c], axis=-1)


def yxyx_to_xywh(boxes):
    """[ymin, xmin, ymax, xmax] -> COCO [xmin, ymin, width, height] (same units as the input)."""
    boxes = _as_array(boxes)
    ymin, xmin, ymax, xmax = _unpack(boxes, "yxyx_to_xywh")
    return _backend(boxes).stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=-1)


def xywh_to_yxyx(boxes):
    """COCO [xmin, ymin, width, height] -> [ymin, xmin, ymax, xmax]."""
    boxes = _as_array(boxes)
    x, y, w, h = _unpack(boxes, "xywh_to_yxyx")
    return _backend(boxes).stack([y, x, y + h, x + w], axis=-1)


def clip_boxes(boxes, max_y=1.0, max_x=1.0, min_value=0.0):
    """Clips yxyx boxes to [min_value, max_y] x [min_value, max_x] (defaults: the normalised image)."""
    boxes = _as_array(boxes)
    ymin, xmin, ymax, xmax = _unpack(boxes, "clip_boxes")
    xp = _backend(boxes)
    if xp is np:
        clip = np.clip
    else:
        def clip(t, lo, hi):
            return tf.clip_by_value(t, tf.cast(lo, t.dtype), tf.cast(hi, t.dtype))
    return xp.stack([clip(ymin, min_value, max_y), clip(xmin, min_value, max_x),
                     clip(ymax, min_value, max_y), clip(xmax, min_value, max_x)], axis=-1)


def clip_to_image(boxes, image_shape, plus_one=False):
    """Clips yxyx pixel boxes [B, N, ..., 4] to per-image sizes ``image_shape`` [B, 2] (height, width): y in [0, h],
    x in [0, w] (torchvision ``clip_boxes_to_image``); ``plus_one``: [0, h - 1], [0, w - 1] (maskrcnn-benchmark)."""
    boxes = tf.convert_to_tensor(boxes)
    _unpack(boxes, "clip_to_image")
    if boxes.shape.rank is not None and boxes.shape.rank < 2:
        raise ValueError(f"clip_to_image: boxes must be [B, ..., 4], got shape {boxes.shape}")
    image_shape = tf.cast(image_shape, boxes.dtype)
    if image_shape.shape.rank != 2 or image_shape.shape[-1] != 2:
        raise ValueError(f"clip_to_image: image_shape must be [B, 2] (height, width), got shape {image_shape.shape}")
    limits = image_shape - 1.0 if plus_one else image_shape  # [B, 2]
    limits = tf.reshape(tf.tile(limits, [1, 2]), tf.concat([[-1], tf.ones([boxes.shape.rank - 2], tf.int32), [4]],
                                                          0))  # [B, 1, .., 4] = (h, w, h, w)
    return tf.clip_by_value(boxes, tf.zeros_like(limits), limits)


def side_at_least(boxes, min_size, plus_one=False):
    """True where both sides of yxyx boxes [..., 4] are >= min_size (torchvision ``remove_small_boxes`` keeps
    these); ``plus_one``: side = max - min + 1."""
    boxes = tf.convert_to_tensor(boxes)
    _unpack(boxes, "side_at_least")
    one = 1.0 if plus_one else 0.0
    return ((boxes[..., 2] - boxes[..., 0] + one) >= min_size) & ((boxes[..., 3] - boxes[..., 1] + one) >= min_size)


def area(boxes, plus_one=False):
    """Area of yxyx boxes [..., 4] -> [...]; inverted boxes count as 0.

    ``plus_one=True``: maskrcnn-benchmark's pixel convention, side = max - min + 1 (a box [0, 0, 0, 0] covers one
    pixel); default continuous (side = max - min).
    """
    boxes = tf.convert_to_tensor(boxes)
    ymin, xmin, ymax, xmax = _unpack(boxes, "area")
    one = 1.0 if plus_one else 0.0
    return tf.maximum(ymax - ymin + one, 0.0) * tf.maximum(xmax - xmin + one, 0.0)


def iou(boxes_a, boxes_b, plus_one=False):
    """Pairwise IoU of yxyx boxes: a [..., N, 4], b [..., M, 4] -> [..., N, M].

    Leading (batch) axes must broadcast. Continuous convention (no +1) by default, as torchvision; ``plus_one=True``
    is maskrcnn-benchmark's ``boxlist_iou`` (sides and intersections measured as max - min + 1). Pairs whose union
    is 0 get IoU 0.
    """
    boxes_a = tf.convert_to_tensor(boxes_a)
    boxes_b = tf.convert_to_tensor(boxes_b, dtype=boxes_a.dtype)
    if boxes_a.shape.rank is not None and boxes_a.shape.rank < 2:
        raise ValueError(f"iou: boxes_a must be [..., N, 4], got shape {boxes_a.shape}")
    if boxes_b.shape.rank is not None and boxes_b.shape.rank < 2:
        raise ValueError(f"iou: boxes_b must be [..., M, 4], got shape {boxes_b.shape}")
    ay0, ax0, ay1, ax1 = [t[..., :, None] for t in _unpack(boxes_a, "iou boxes_a")]  # [..., N, 1]
    by0, bx0, by1, bx1 = [t[..., None, :] for t in _unpack(boxes_b, "iou boxes_b")]  # [..., 1, M]
    if plus_one:
        ay1, ax1, by1, bx1 = ay1 + 1.0, ax1 + 1.0, by1 + 1.0, bx1 + 1.0
    inter_h = tf.maximum(tf.minimum(ay1, by1) - tf.maximum(ay0, by0), 0.0)
    inter_w = tf.maximum(tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0), 0.0)
    inter = inter_h * inter_w  # [..., N, M]
    area_a = tf.maximum(ay1 - ay0, 0.0) * tf.maximum(ax1 - ax0, 0.0)
    area_b = tf.maximum(by1 - by0, 0.0) * tf.maximum(bx1 - bx0, 0.0)
    union = area_a + area_b - inter
    return tf.math.divide_no_nan(inter, union)
