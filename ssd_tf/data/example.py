"""The TFRecord contract: feature keys (TF Object Detection API / Model Garden) and the Example encoder.

`encode_example(...)` builds the serialized `tf.train.Example` bytes in pure Python (no TensorFlow
import, so converters start fast and fork cheaply). The encoding is protobuf's wire format with map
keys in sorted order, i.e. the same bytes as TF's `SerializeToString(deterministic=True)`.
`make_example(...)` returns the same record as a `tf.train.Example` (imports TensorFlow lazily).

Boxes are normalised to [0, 1]; class labels are the dataset's own ids. Every object list is always
written (possibly empty), so an image with no objects keeps typed, empty features.
"""
from __future__ import annotations

import struct

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_SOURCE_ID = "image/source_id"
IMAGE_FILENAME = "image/filename"
IMAGE_SHA256 = "image/key/sha256"
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
CLASS_LABEL = "image/object/class/label"
CLASS_TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"
DIFFICULT = "image/object/difficult"
TRUNCATED = "image/object/truncated"

ALL_KEYS = (
    IMAGE_ENCODED, IMAGE_FORMAT, IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_SOURCE_ID, IMAGE_FILENAME, IMAGE_SHA256,
    BBOX_XMIN, BBOX_YMIN, BBOX_XMAX, BBOX_YMAX, CLASS_LABEL, CLASS_TEXT, IS_CROWD, AREA, DIFFICULT, TRUNCATED,
)

# Feature kinds: protobuf field numbers of tf.train.Feature's oneof.
BYTES, FLOAT, INT64 = 1, 2, 3


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64 two's complement, 10 bytes on the wire
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAG2 = {field: _varint((field << 3) | 2) for field in (1, 2, 3)}  # length-delimited tags


def _len_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _TAG2[field] + _varint(len(payload)) + payload


def _feature_parts(kind: int, values) -> list:
    """tf.train.Feature (as a map-entry value) as byte chunks; big bytes values are not copied."""
    if kind == BYTES:
        parts = []
        for v in values:
            parts += (_TAG2[1], _varint(len(v)), v)
    elif kind == FLOAT:
        parts = [_len_field(1, struct.pack(f"<{len(values)}f", *values))] if len(values) else []
    elif kind == INT64:
        if not len(values):
            parts = []
        elif min(values) >= 0 and max(values) < 128:  # one byte per varint (flags, small ids)
            parts = [_len_field(1, bytes(values))]
        else:
            parts = [_len_field(1, b"".join([_varint(int(v)) for v in values]))]
    else:
        raise ValueError(f"unknown feature kind {kind!r} (expected BYTES, FLOAT or INT64)")
    return [_TAG2[kind], _varint(sum(map(len, parts)))] + parts


_KEY_FIELDS = {}  # key -> its encoded map-entry key field


def encode_features_parts(features: dict) -> list:
    """Serialize `{key: (kind, values)}` as a tf.train.Example, as a list of byte chunks to join or write.

    Keys are sorted (deterministic bytes). BYTES values are `bytes` or `str` (UTF-8 encoded); FLOAT
    values are stored as float32.
    """
    body = []
    for key in sorted(features):
        kind, values = features[key]
        if kind == BYTES:
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        key_field = _KEY_FIELDS.get(key)
        if key_field is None:
            key_field = _KEY_FIELDS.setdefault(key, _len_field(1, key.encode("utf-8")))
        feature = _feature_parts(kind, values)
        entry = [key_field, _TAG2[2], _varint(sum(map(len, feature)))] + feature
        body += [_TAG2[1], _varint(sum(map(len, entry)))]
        body += entry
    return [_TAG2[1], _varint(sum(map(len, body)))] + body


def encode_features(features: dict) -> bytes:
    """`encode_features_parts` joined into one bytes object."""
    return b"".join(encode_features_parts(features))


def example_features(*, encoded: bytes, image_format: str, height: int, width: int, source_id: str,
                     filename: str, sha256: str = "", xmin=(), ymin=(), xmax=(), ymax=(), labels=(),
                     texts=(), is_crowd=(), area=(), difficult=(), truncated=()) -> dict:
    """The contract's feature dict `{key: (kind, values)}` for one image; object lists are parallel."""
    n = len(xmin)
    lists = {"ymin": ymin, "xmax": xmax, "ymax": ymax, "labels": labels, "texts": texts,
             "is_crowd": is_crowd, "area": area, "difficult": difficult, "truncated": truncated}
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"image {source_id!r} ({filename}): {name} has {len(values)} entries, xmin has {n}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image {source_id!r} ({filename}): height and width must be > 0, got {height}x{width}")
    return {
        IMAGE_ENCODED: (BYTES, [encoded]),
        IMAGE_FORMAT: (BYTES, [image_format]),
        IMAGE_HEIGHT: (INT64, [height]),
        IMAGE_WIDTH: (INT64, [width]),
        IMAGE_SOURCE_ID: (BYTES, [str(source_id)]),
        IMAGE_FILENAME: (BYTES, [filename]),
        IMAGE_SHA256: (BYTES, [sha256]),
        BBOX_XMIN: (FLOAT, list(xmin)),
        BBOX_YMIN: (FLOAT, list(ymin)),
        BBOX_XMAX: (FLOAT, list(xmax)),
        BBOX_YMAX: (FLOAT, list(ymax)),
        CLASS_LABEL: (INT64, list(labels)),
        CLASS_TEXT: (BYTES, list(texts)),
        IS_CROWD: (INT64, [int(bool(v)) for v in is_crowd]),
        AREA: (FLOAT, list(area)),
        DIFFICULT: (INT64, [int(bool(v)) for v in difficult]),
        TRUNCATED: (INT64, [int(bool(v)) for v in truncated]),
    }


def encode_example(**kwargs) -> bytes:
    """Serialized tf.train.Example for one image; arguments as in `example_features`."""
    return encode_features(example_features(**kwargs))


def encode_example_parts(**kwargs) -> list:
    """`encode_example` as byte chunks (the image bytes are not copied)."""
    return encode_features_parts(example_features(**kwargs))


def make_example(**kwargs):
    """The same record as a `tf.train.Example` (arguments as in `example_features`)."""
    import tensorflow as tf  # lazy: converters never import TensorFlow

    return tf.train.Example.FromString(encode_example(**kwargs))
