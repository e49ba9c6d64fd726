"""Faster R-CNN through the runtime: what the input pipeline delivers and what the trainer adds to the bare step.
Prints one JSON object on stdout (logs on stderr).

    python bench/frcnn_runtime.py [--images 64] [--batch 2] [--steps 4] [--min_size 800] [--max_size 1333]
        [--width 1.0] [--precision auto|fp32|bf16] [--padding_sizes COCO_JSON[,COCO_JSON...]]

* Pipeline: the R-CNN parser on the shared reader (decode, aspect-preserving resize to 800/1333, flip 0.5,
  normalisation, padding to the orientation's canvas, orientation streams) on COCO-like JPEGs (640x480 and
  480x640, 3:1, 8 boxes each) written here; images/s over ``--images`` after a warm-up, against the images/s the
  train step consumes.
* Bare step: ``model.compute_losses`` + gradient + MomentumSGD update in one tf.function on a fixed padded batch.
* Runtime step: ``loop.Trainer`` + ``FasterRCNNTask`` + that pipeline (losses logged every step), its step time
  from ``train_log.jsonl`` without the first (tracing) steps; overhead = runtime / bare - 1 (target <= 5 %).
* Padding: what the orientation canvases alone, and with the canvases a training run fits to the images
  (``model.auto_canvases``), cost against torchvision's per-batch tight padding (each batch padded to its largest
  resized image, rounded up to 32). Image sizes from ``--padding_sizes`` (COCO JSONs: their
  ``images`` entries; e.g. ../shared/data/coco_tiny/annotations/*.json) or the bench's own 3:1 mix; batches are
  random same-orientation groups of ``--batch``. Reports the pixels each way and the bare step time at the
  orientation canvas against the step at the most common tight shape and at the most used fitted canvas.
"""
import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402
from timing import timed  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def write_records(path, num_images, seed=0):
    """COCO-like JPEGs (3 landscape 640x480 for 1 portrait 480x640), 8 random boxes each, classes 1..80."""
    import tensorflow as tf
    from PIL import Image

    from ssd_tf.data.example import encode_example

    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num_images):
            h, w = (640, 480) if i % 4 == 3 else (480, 640)
            pixels = rng.integers(0, 255, (h // 8, w // 8, 3)).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).resize((w, h)).save(buf, format="JPEG", quality=90)
            yx = rng.uniform(0, 0.7, (8, 2))
            hw = rng.uniform(0.05, 0.3, (8, 2))
            writer.write(encode_example(
                encoded=buf.getvalue(), image_format="jpeg", height=h, width=w, source_id=str(i + 1),
                filename=f"{i}.jpg", xmin=list(yx[:, 1]), ymin=list(yx[:, 0]), xmax=list(yx[:, 1] + hw[:, 1]),
                ymax=list(yx[:, 0] + hw[:, 0]), labels=[int(c) for c in rng.integers(1, 81, 8)],
                texts=["x"] * 8, is_crowd=[0] * 8, area=[1.0] * 8, difficult=[0] * 8, truncated=[0] * 8))


def padding_cost(sizes, model, batch, seed=0):
    """Pixels per image of the orientation canvases alone, of those plus the canvases a training run fits to these
    images (``model.auto_canvases`` per orientation), and of per-batch tight padding, for images of ``sizes``
    [(h, w), ...] resized as torchvision does and grouped by orientation into random batches of ``batch``."""
    import collections
    import math

    from ssd_tf.data.rcnn_parser import fit_canvases, model_canvases, padded_pixels, smallest_canvas

    divisor = model.size_divisibility

    def ceil(v):
        return int(math.ceil(v / divisor) * divisor)

    def resized(h, w):
        s = min(model.min_size / min(h, w), model.max_size / max(h, w))
        return int(math.floor(h * s)), int(math.floor(w * s))

    images = [resized(h, w) for h, w in sizes]
    canvas = {True: (ceil(model.min_size), ceil(model.max_size)), False: (ceil(model.max_size), ceil(model.min_size))}
    fitted = fit_canvases(images, model, model.auto_canvases)
    all_canvases = model_canvases(dataclasses.replace(model, canvases=tuple(fitted)))
    rng = np.random.default_rng(seed)
    fixed = tight = valid = 0
    shapes, on_fitted = collections.Counter(), collections.Counter()
    for landscape in (True, False):
        group = [m for m in images if (m[0] <= m[1]) == landscape]
        order = rng.permutation(len(group))
        for k in range(0, len(order), batch):
            members = [group[i] for i in order[k:k + batch]]
            th, tw = ceil(max(m[0] for m in members)), ceil(max(m[1] for m in members))
            shapes[(th, tw)] += len(members)
            tight += th * tw * len(members)
            fixed += canvas[landscape][0] * canvas[landscape][1] * len(members)
            valid += sum(h * w for h, w in members)
    for h, w in images:
        on_fitted[smallest_canvas(h, w, all_canvases)] += 1
    fitted_pixels = padded_pixels(images, all_canvases)
    n = len(sizes)
    return {"images": n, "canvases": [list(canvas[True]), list(canvas[False])],
            "fitted_canvases": [list(c) for c in fitted],
            "valid_pixels_per_image": valid / n, "fixed_canvas_pixels_per_image": fixed / n,
            "fitted_canvas_pixels_per_image": fitted_pixels / n, "tight_pixels_per_image": tight / n,
            "fixed_over_tight": fixed / tight, "fitted_over_tight": fitted_pixels / tight,
            "padding_fraction_fixed": 1 - valid / fixed, "padding_fraction_fitted": 1 - valid / fitted_pixels,
            "padding_fraction_tight": 1 - valid / tight,
            "most_common_tight_shape": list(shapes.most_common(1)[0][0]),
            "most_common_fitted_canvas": list(on_fitted.most_common(1)[0][0])}


def _sizes_from(files):
    sizes = []
    for path in files.split(","):
        with open(path) as f:
            sizes += [(im["height"], im["width"]) for im in json.load(f)["images"]]
    return sizes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--min_size", type=int, default=800)
    p.add_argument("--max_size", type=int, default=1333)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--deterministic", action="store_true", help="TensorFlow op determinism for both steps (the "
                   "Faster R-CNN presets' train.deterministic_ops)")
    p.add_argument("--padding_sizes", default="", help="COCO JSON file(s), comma-separated, whose image sizes the "
                   "padding measurement uses (default: the bench's own 3:1 landscape/portrait mix)")
    a = p.parse_args()

    import keras
    import tensorflow as tf

    from ssd_tf import config as config_lib
    from ssd_tf import presets
    from ssd_tf.run import _set_precision
    from ssd_tf.tasks import build_task
    from ssd_tf.training import loop
    from ssd_tf.training.optimizer import MomentumSGD
    from ssd_tf.training.precision import machine_summary

    if a.deterministic:
        tf.config.experimental.enable_op_determinism()
    work = tempfile.mkdtemp(prefix="frcnn_runtime_")
    pattern = os.path.join(work, "train-00000-of-00001.tfrecord")
    write_records(pattern, a.images)
    cfg = presets.preset("faster_rcnn_r50_fpn")
    for path, value in (("model.min_size", a.min_size), ("model.max_size", a.max_size),
                        ("model.width_multiplier", a.width), ("train.precision", a.precision),
                        ("train.train_batch_size", a.batch), ("data.shuffle_buffer", 16)):
        config_lib.set_value(cfg, path, value)
    cfg.model.num_classes = 81
    cfg.data.training_file_pattern = pattern
    cfg.data.class_ids, cfg.data.class_names = list(range(1, 81)), [str(i) for i in range(1, 81)]
    cfg.data.num_train_images = a.images
    _set_precision(cfg, log)
    out = {"machine": machine_summary(), "precision": cfg.runtime.precision, "deterministic_ops": a.deterministic,
           "batch": a.batch,
           "size": [a.min_size, a.max_size], "width": a.width}

    task = build_task(cfg, global_batch_size=a.batch, log_fn=log)
    # Pipeline alone.
    it = iter(task.build_train_dataset(None, 0))
    for _ in range(2):
        next(it)
    n = max(1, a.images // a.batch)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    out["pipeline_images_per_s"] = n * a.batch / (time.perf_counter() - t0)
    log(f"pipeline: {out['pipeline_images_per_s']:.2f} images/s")

    # Bare step on one fixed batch.
    keras.utils.set_random_seed(0)
    model = task.build_model()
    optimizer = MomentumSGD(1e-3, momentum=0.9, weight_decay=1e-4)
    optimizer.build(model.trainable_variables)
    images, labels = next(it)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            losses = task.compute_losses(model, images, labels)
        grads = tape.gradient(losses["total_loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses["total_loss"]

    bare = timed(lambda: step(images, labels).numpy(), a.steps, warmup=2)
    out.update(bare_step_s=bare, train_images_per_s=a.batch / bare,
               pipeline_vs_train_consumption=out["pipeline_images_per_s"] * bare / a.batch)
    log(f"bare step: {bare:.3f} s ({a.batch / bare:.2f} images/s)")

    # Padding: the fixed canvas against per-batch tight padding, in pixels and in bare-step time.
    sizes = _sizes_from(a.padding_sizes) if a.padding_sizes else [(640, 480) if i % 4 == 3 else (480, 640)
                                                                  for i in range(a.images)]
    pad = padding_cost(sizes, cfg.model, a.batch)
    pad["sizes_from"] = a.padding_sizes or "bench mix (3 x 480x640 : 1 x 640x480)"
    canvas_h, canvas_w = images.shape[1], images.shape[2]
    pad["bare_step_s_canvas"] = bare
    for name, (th, tw) in (("tight", pad["most_common_tight_shape"]), ("fitted", pad["most_common_fitted_canvas"])):
        if (th <= tw) != (canvas_h <= canvas_w):
            continue  # only the fixed batch's orientation: crop it to the shape
        if (th, tw) == (canvas_h, canvas_w):
            seconds = bare
        else:
            cropped = images[:, :th, :tw]
            step_cropped = tf.function(step.python_function)
            seconds = timed(lambda: step_cropped(cropped, labels).numpy(), a.steps, warmup=2)
        pad.update({f"bare_step_s_{name}": seconds, f"canvas_step_over_{name}": bare / seconds})
        log(f"padding: canvas {canvas_h}x{canvas_w} step {bare:.3f} s, {name} {th}x{tw} {seconds:.3f} s")
    out["padding"] = pad

    # Runtime step: Trainer + task + pipeline.
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    opts = loop.LoopOptions(total_steps=a.steps + 2, steps_per_loop=1, log_every_steps=1, checkpoint_every_steps=0,
                            precision=cfg.runtime.precision)
    model_dir = os.path.join(work, "runtime")
    trainer = loop.Trainer(task, strategy, model_dir, lambda: MomentumSGD(1e-3, momentum=0.9, weight_decay=1e-4),
                           opts, log_fn=log)
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    with open(os.path.join(model_dir, "summaries", "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    full = float(np.mean([r["step_time"] for r in records[2:]]))
    out.update(runtime_step_s=full, runtime_overhead_vs_bare_step=full / bare - 1.0,
               runtime_data_wait_s=None if a.deterministic else float(np.mean([r["data_wait"] for r in records[2:]])))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
