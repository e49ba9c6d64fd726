"""TFRecord -> tensors: `decode_example(serialized)` for a `tf.data` map (graph mode, no Python side effects).

Reads the keys of `ssd_tf.data.example` (the TF OD API / Model Garden keys), so it also reads records
written by other tools. Missing optional keys get defaults: classes -1, is_crowd / difficult False,
area = box area in pixels, height / width from the decoded image, source_id / filename "". A record
whose `image/encoded` is empty (e.g. CVAT's annotation-only export) yields a black image of the stated
height x width. JPEG (also grayscale and CMYK), PNG (gray, palette, alpha, 16-bit), GIF and BMP decode
to uint8 [H, W, 3] RGB.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.data import example as ex

_SCALARS = {
    ex.IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    ex.IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value=""),
    ex.IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    ex.IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    ex.IMAGE_SOURCE_ID: tf.io.FixedLenFeature((), tf.string, default_value=""),
    ex.IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
}
_LISTS = {
    ex.BBOX_XMIN: tf.float32, ex.BBOX_YMIN: tf.float32, ex.BBOX_XMAX: tf.float32, ex.BBOX_YMAX: tf.float32,
    ex.CLASS_LABEL: tf.int64, ex.IS_CROWD: tf.int64, ex.DIFFICULT: tf.int64, ex.AREA: tf.float32,
}
FEATURE_SPEC = dict(_SCALARS, **{k: tf.io.VarLenFeature(dtype) for k, dtype in _LISTS.items()})


def _dense(parsed, key):
    return tf.sparse.to_dense(parsed[key])  # [n]


def _or_default(values, n, default):
    """`values` when it has one entry per box, else `default` repeated n times (missing key)."""
    return tf.cond(tf.equal(tf.size(values), n), lambda: values, lambda: tf.fill([n], default))


def decode_image_bytes(encoded) -> tf.Tensor:
    """Encoded JPEG / PNG / GIF / BMP bytes -> uint8 [H, W, 3] RGB (grayscale, CMYK, palette, alpha and 16-bit
    inputs converted; the first frame of an animation). The one image decoder of records, predict and export."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _decode_image(encoded, height, width):
    def decode():
        return decode_image_bytes(encoded)

    def blank():
        return tf.zeros(tf.stack([tf.maximum(height, 0), tf.maximum(width, 0), 3]), tf.uint8)

    image = tf.cond(tf.greater(tf.strings.length(encoded), 0), decode, blank)
    return tf.ensure_shape(image, [None, None, 3])


def decode_example(serialized: tf.Tensor) -> dict:
    """One serialized tf.train.Example -> dict of tensors (see the module docstring for defaults).

    Keys: image uint8 [H,W,3]; height, width int32; source_id, filename string; boxes float32 [N,4]
    normalised [ymin, xmin, ymax, xmax]; classes int64 [N]; is_crowd, difficult bool [N]; area float32 [N].
    """
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    stated_h = tf.cast(parsed[ex.IMAGE_HEIGHT], tf.int32)
    stated_w = tf.cast(parsed[ex.IMAGE_WIDTH], tf.int32)
    image = _decode_image(parsed[ex.IMAGE_ENCODED], stated_h, stated_w)
    shape = tf.shape(image)
    height = tf.where(stated_h > 0, stated_h, shape[0])
    width = tf.where(stated_w > 0, stated_w, shape[1])

    boxes = tf.stack([_dense(parsed, ex.BBOX_YMIN), _dense(parsed, ex.BBOX_XMIN),
                      _dense(parsed, ex.BBOX_YMAX), _dense(parsed, ex.BBOX_XMAX)], axis=-1)  # [N, 4]
    n = tf.shape(boxes)[0]
    box_h = (boxes[:, 2] - boxes[:, 0]) * tf.cast(height, tf.float32)
    box_w = (boxes[:, 3] - boxes[:, 1]) * tf.cast(width, tf.float32)
    return {
        "image": image,
        "height": height,
        "width": width,
        "source_id": parsed[ex.IMAGE_SOURCE_ID],
        "filename": parsed[ex.IMAGE_FILENAME],
        "boxes": boxes,
        "classes": _or_default(_dense(parsed, ex.CLASS_LABEL), n, tf.constant(-1, tf.int64)),
        "is_crowd": tf.cast(_or_default(_dense(parsed, ex.IS_CROWD), n, tf.constant(0, tf.int64)), tf.bool),
        "difficult": tf.cast(_or_default(_dense(parsed, ex.DIFFICULT), n, tf.constant(0, tf.int64)), tf.bool),
        "area": tf.cond(tf.equal(tf.size(parsed[ex.AREA].values), n),
                        lambda: _dense(parsed, ex.AREA), lambda: box_h * box_w),
    }
