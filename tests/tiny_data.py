"""Tiny TFRecords written by the tests themselves (PNG images with bright boxes on a dark background)."""
from __future__ import annotations

import numpy as np

CLASS_IDS = [4, 9]
CLASS_NAMES = ["a", "b"]
SIZES = [(60, 80), (72, 64), (50, 50), (64, 96)]


def write_records(directory, sizes=SIZES, seed=0, name="tiny") -> str:
    """One shard `name-00000-of-00001.tfrecord` of len(sizes) images with one to three boxes each (dataset ids
    4 and 9, source ids 1..N); returns its path."""
    import tensorflow as tf

    from ssd_tf.data.example import encode_example

    rng = np.random.default_rng(seed)
    path = directory / f"{name}-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (h, w) in enumerate(sizes):
            img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            n = 1 + i % 3
            y0, x0 = rng.uniform(0.05, 0.45, n), rng.uniform(0.05, 0.45, n)
            y1, x1 = y0 + rng.uniform(0.3, 0.5, n), x0 + rng.uniform(0.3, 0.5, n)
            for a, b, c, d in zip(y0, x0, y1, x1):
                img[int(a * h):int(c * h), int(b * w):int(d * w)] = 230
            labels = [CLASS_IDS[k % 2] for k in range(n)]
            writer.write(encode_example(
                encoded=tf.io.encode_png(img).numpy(), image_format="png", height=h, width=w, source_id=str(i + 1),
                filename=f"{i}.png", xmin=list(x0), ymin=list(y0), xmax=list(x1), ymax=list(y1), labels=labels,
                texts=[CLASS_NAMES[CLASS_IDS.index(c)] for c in labels], is_crowd=[0] * n, area=[1.0] * n,
                difficult=[0] * n, truncated=[0] * n))
    return str(path)
