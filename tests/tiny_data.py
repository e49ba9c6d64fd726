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


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_python(*args, env=None, timeout=600) -> str:
    """`python ARGS` in the repository (a script or -m module); fails the test with the output tails unless it exits
    0; returns stdout."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, **{k: str(v) for k, v in (env or {}).items()}})
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout


def shapes_tfrecords(directory, num_train: int, num_val: int, seed: int, num_shards: int = 2):
    """The project's shapes dataset (COCO JSON + JPEGs under directory/shapes) converted by its own COCO converter
    to directory/tf/{train,val}-*.tfrecord (+ sidecars); returns directory."""
    run_python("-m", "data_tools.make_shapes_dataset", f"--output_dir={directory}/shapes", f"--num_train={num_train}",
               f"--num_val={num_val}", f"--seed={seed}")
    for split, count in (("train", num_train), ("val", num_val)):
        if not count:
            continue
        run_python("-m", "data_tools.create_coco_tfrecord", f"--image_dir={directory}/shapes/{split}",
                   f"--object_annotations_file={directory}/shapes/annotations/instances_{split}.json",
                   f"--output_file_prefix={directory}/tf/{split}", f"--num_shards={num_shards}", "--num_processes=1")
    return directory
