"""Input-pipeline throughput (decode + full training augmentation + resize + normalise [+ SSD targets]) per
preset at 300x300, and where SSD target encoding is cheaper: in the pipeline (per image, overlapped with the
step) or in the train step (batched ``ssd_targets_batched``). Prints one JSON object.

    python bench/pipeline_throughput.py [--presets ssd_resnet34,ssd_vgg16] [--batch 8] [--images 320]

Records: the 80 real COCO train2017 images of ../shared/data/coco_tiny when present (written here with
``encode_example``), else a synthetic shapes set from ``data_tools.make_shapes_dataset``.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssd_tf.data.example import encode_example  # noqa: E402
from ssd_tf import presets  # noqa: E402
from ssd_tf.data.pipeline import build_ssd_dataset  # noqa: E402
from ssd_tf.ops.anchors import ssd_default_boxes  # noqa: E402
from ssd_tf.ops.targets import ssd_targets_batched  # noqa: E402

COCO_TINY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco_tiny")


def _write_records(coco_json, image_dir, path):
    with open(coco_json) as f:
        gt = json.load(f)
    anns = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    with tf.io.TFRecordWriter(path) as writer:
        for im in gt["images"]:
            h, w = im["height"], im["width"]
            objs = anns.get(im["id"], [])
            x, y, bw, bh = (np.array([o["bbox"][k] for o in objs], np.float64) for k in range(4))
            with open(os.path.join(image_dir, im["file_name"]), "rb") as f:
                encoded = f.read()
            writer.write(encode_example(
                encoded=encoded, image_format="jpeg", height=h, width=w, source_id=str(im["id"]),
                filename=im["file_name"], xmin=list(x / w), ymin=list(y / h), xmax=list((x + bw) / w),
                ymax=list((y + bh) / h), labels=[o["category_id"] for o in objs],
                texts=[""] * len(objs), is_crowd=[int(o.get("iscrowd", 0)) for o in objs],
                area=[float(o["area"]) for o in objs], difficult=[0] * len(objs), truncated=[0] * len(objs)))
    return sorted(c["id"] for c in gt["categories"]), len(gt["images"])


def build_records(tmp):
    path = os.path.join(tmp, "bench.tfrecord")
    if os.path.isdir(COCO_TINY):
        ids, n = _write_records(os.path.join(COCO_TINY, "annotations", "instances_train2017.json"),
                                os.path.join(COCO_TINY, "train2017"), path)
        return path, ids, f"coco_tiny train2017 ({n} real COCO images)"
    from data_tools.make_shapes_dataset import make_shapes_dataset

    p = make_shapes_dataset(os.path.join(tmp, "shapes"), num_train=64, num_val=0, image_size=480, seed=0)
    ids, n = _write_records(p["train_json"], p["train_images"], path)
    return path, ids, f"synthetic shapes ({n} images, 480x480)"


def pipeline_rate(path, class_ids, preset, batch, images, warmup, encode_targets):
    ds = build_ssd_dataset(path, model=presets.model_config(preset), batch_size=batch, is_training=True,
                           class_ids=class_ids, shuffle_buffer=64, seed=0, encode_targets=encode_targets)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    steps = max(1, images // batch)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(it)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = steps * batch
    return {"images_per_s": round(n / wall, 2), "cpu_ms_per_image": round(1000 * cpu / n, 2), "images": n}


def step_targets_cost(preset, batch, reps=20, max_boxes=100):
    """CPU/wall cost of encoding a batch of targets inside a (non-XLA and XLA) tf.function."""
    model = presets.model_config(preset)
    anchors = tf.constant(ssd_default_boxes(model.anchors))
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 0.6, (batch, max_boxes, 2))
    boxes = tf.constant(np.concatenate([yx, yx + rng.uniform(0.05, 0.4, (batch, max_boxes, 2))], -1), tf.float32)
    classes = tf.constant(rng.integers(1, 81, (batch, max_boxes)), tf.int32)
    num = tf.constant(rng.integers(1, 20, (batch,)), tf.int32)
    out = {}
    for xla in (False, True):
        match = dict(iou_threshold=model.matching.iou_threshold, strict_threshold=model.matching.strict)
        fn = tf.function(lambda b, c, n: ssd_targets_batched(b, c, n, anchors, **match), jit_compile=xla)
        fn(boxes, classes, num)
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            r = fn(boxes, classes, num)
        r[0].numpy()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        out["xla" if xla else "graph"] = {"wall_ms_per_batch": round(1000 * wall / reps, 2),
                                          "cpu_ms_per_image": round(1000 * cpu / (reps * batch), 2)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="ssd_resnet34,ssd_vgg16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--warmup", type=int, default=5, help="batches")
    args = parser.parse_args()
    result = {"batch": args.batch, "image_size": 300, "cpu_count": os.cpu_count(),
              "load_avg_1min": round(os.getloadavg()[0], 2), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path, class_ids, source = build_records(tmp)
        result["records"] = source
        for preset in args.presets.split(","):
            r = {}
            r["with_targets"] = pipeline_rate(path, class_ids, preset, args.batch, args.images, args.warmup, True)
            r["without_targets"] = pipeline_rate(path, class_ids, preset, args.batch, args.images, args.warmup,
                                                 False)
            r["targets_in_pipeline_cpu_ms_per_image"] = round(
                r["with_targets"]["cpu_ms_per_image"] - r["without_targets"]["cpu_ms_per_image"], 2)
            r["targets_in_step"] = step_targets_cost(preset, args.batch)
            result["presets"][preset] = r
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
