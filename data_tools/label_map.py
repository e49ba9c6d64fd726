"""The converters' view of label maps: `ssd_tf.data.label_map` (the one reader), with its errors raised as
`ConversionError` so a converter reports them like any other bad input."""
from __future__ import annotations

import functools

from data_tools.records import ConversionError
from ssd_tf.data import label_map as _lm
from ssd_tf.data.label_map import VOC_CLASSES, name_to_id  # noqa: F401  (part of this module's API)


def _as_conversion_error(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _lm.LabelMapError as e:
            raise ConversionError(str(e)) from None

    return wrapper


read_label_map = _as_conversion_error(_lm.read_label_map)
from_names = _as_conversion_error(_lm.from_names)
voc_label_map = _as_conversion_error(_lm.voc_label_map)
