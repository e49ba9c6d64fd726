"""Finding the record that broke an input pipeline.

The pipeline decodes images inside ``tf.data`` for speed, where a corrupt image (a JPEG damaged in the middle
passes a header check) fails with an error that names no file. When that happens, the runtime calls
``find_undecodable_record`` to read the files again one record at a time and name the culprit: file, record
index and source_id. It costs nothing until something fails.
"""
from __future__ import annotations

import dataclasses

from ssd_tf.data.shards import expand_pattern


@dataclasses.dataclass(frozen=True)
class BadRecord:
    file: str
    index: int  # 0-based record index within the file
    source_id: str
    error: str

    def describe(self) -> str:
        return (f"record {self.index} of {self.file} (source_id {self.source_id!r}) does not decode: {self.error}")


def _first_line(error) -> str:
    text = str(getattr(error, "message", error))
    text = text.split("}}", 1)[-1].strip()  # drop TensorFlow's function-node prefix
    return text.splitlines()[0][:300] if text else type(error).__name__


def find_undecodable_record(file_pattern, log=None) -> BadRecord | None:
    """The first record of ``file_pattern`` whose image fails to decode (None when every record decodes)."""
    import tensorflow as tf

    from ssd_tf.data.decoder import decode_example

    decode = tf.function(lambda s: tf.shape(decode_example(s)["image"]))
    source_id = tf.function(lambda s: tf.io.parse_single_example(
        s, {"image/source_id": tf.io.FixedLenFeature((), tf.string, default_value="")})["image/source_id"])
    for path in expand_pattern(file_pattern):
        if log is not None:
            log(f"checking {path}")
        for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
            try:
                decode(serialized)
            except tf.errors.InvalidArgumentError as e:
                sid = source_id(serialized).numpy().decode("utf-8", "replace")
                return BadRecord(path, index, sid, _first_line(e))
    return None
