"""``--mode=predict``: a trained model on one's own pictures.

    python ssd_main.py --mode=predict --model_dir=D --input_pattern='photos/*.jpg' --output_dir=O \\
        [--score_threshold=0.3] [--checkpoint=best]

Input: a file, a glob, a comma-separated list, or a directory (its JPEG / PNG / GIF / BMP / WebP files). Every picture
goes through the shared inference graph (``module.py``: the family's evaluation parser, ``Task.detect``, boxes
to original pixels, dataset class ids), one at a time, so any size works. Output:

* ``O/detections.json``: COCO results (``image_id`` = 1.. in input order, ``category_id`` = dataset id,
  ``bbox`` = [x, y, width, height] in original-image pixels, ``score``) plus ``file_name`` (the input path)
  and ``category_name``;
* ``O/<name>.jpg``: the picture with boxes, class names and scores drawn (``draw.py``); ``<name>`` is the
  input's name without extension (``<name>_2.jpg`` ... when names repeat or would overwrite an input).

``--score_threshold`` (default 0.3 here) is the post-processing threshold, so what is written is what is drawn.
A file that cannot be read or decoded is named in one line, counted and skipped; the run goes on and its end
says what was skipped. ``check_args`` does every check a user can fail before TensorFlow starts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

DEFAULT_SCORE_THRESHOLD = 0.3
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclasses.dataclass
class PredictArgs:
    inputs: list
    output_dir: str
    checkpoint: str


@dataclasses.dataclass
class PredictSummary:
    num_images: int = 0
    num_detections: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    output_dir: str = ""


def list_inputs(pattern: str) -> list:
    """Files of ``pattern`` (a file, a glob, a comma-separated list of them, or a directory, whose files with an
    image extension are taken), sorted per pattern, without duplicates. No TensorFlow."""
    from ssd_tf.data.shards import expand_pattern, split_patterns

    files, seen = [], set()
    for part in split_patterns(pattern):
        matches = [part] if os.path.isdir(part) else expand_pattern(part)
        for path in matches:
            if os.path.isdir(path):
                found = sorted(os.path.join(path, n) for n in os.listdir(path)
                               if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, n)))
            else:
                found = [path]
            for f in found:
                key = os.path.realpath(f)
                if key not in seen:
                    seen.add(key)
                    files.append(f)
    return files


def check_args(cfg, input_pattern, output_dir, checkpoint) -> PredictArgs:
    """The predict flags -> PredictArgs; a ValueError (the CLI's exit 2) naming what to fix. No TensorFlow."""
    from ssd_tf.training.checkpoints import resolve_checkpoint

    if not input_pattern:
        raise ValueError("--mode=predict needs --input_pattern (a picture, a glob, a comma list or a directory)")
    if not output_dir:
        raise ValueError("--mode=predict needs --output_dir (detections.json and the annotated pictures go there)")
    inputs = list_inputs(input_pattern)
    if not inputs:
        raise ValueError(f"--input_pattern={input_pattern} matches no file")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output_dir={output_dir} cannot be created: {e.strerror or e}") from None
    if not os.access(output_dir, os.W_OK):
        raise ValueError(f"--output_dir={output_dir} is not writable")
    return PredictArgs(inputs=inputs, output_dir=output_dir,
                       checkpoint=resolve_checkpoint(cfg.runtime.model_dir, checkpoint))


def apply_defaults(cfg, score_threshold_given: bool) -> None:
    """predict's own default: post-processing at ``DEFAULT_SCORE_THRESHOLD`` unless --score_threshold is given."""
    from ssd_tf.config import set_value

    if not score_threshold_given:
        set_value(cfg, "model.postprocess.score_threshold", DEFAULT_SCORE_THRESHOLD)


def output_names(inputs: list, output_dir: str) -> list:
    """``output_dir/<name>.jpg`` per input, unique, never one of the inputs."""
    taken = {os.path.realpath(p) for p in inputs}
    names = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        candidate, k = os.path.join(output_dir, stem + ".jpg"), 1
        while os.path.realpath(candidate) in taken:
            k += 1
            candidate = os.path.join(output_dir, f"{stem}_{k}.jpg")
        taken.add(os.path.realpath(candidate))
        names.append(candidate)
    return names


def load_detector(cfg, checkpoint: str, log=print):
    """(task, DetectorModule) with the weights of ``checkpoint`` (float32, no distribution strategy)."""
    from ssd_tf.inference.module import DetectorModule
    from ssd_tf.run import restore_model
    from ssd_tf.tasks import build_task

    task = build_task(cfg, log_fn=log)
    model = task.build_model()
    step = restore_model(cfg, model, checkpoint)
    log(f"Model {cfg.model.name} ({cfg.model.family}) from {checkpoint} (step {step})")
    return task, DetectorModule(task, model, list(cfg.data.class_ids))


def image_detections(outputs: dict, index: int, height: int, width: int) -> tuple:
    """(boxes [n, 4] yxyx original pixels float64, dataset class ids [n], scores [n]) of picture ``index`` of
    a DetectorModule output."""
    import numpy as np

    n = int(outputs["num_detections"][index])
    boxes = np.asarray(outputs["detection_boxes"][index, :n], np.float64) * np.array([height, width, height, width])
    return boxes, np.asarray(outputs["detection_classes"][index, :n]), np.asarray(
        outputs["detection_scores"][index, :n], np.float64)


def coco_results(image_id: int, file_name: str, boxes, class_ids, scores, label_map: dict) -> list:
    """COCO result dicts (+ file_name, category_name) of one picture; rounding as ``evaluation/export.py``."""
    import numpy as np

    from ssd_tf.evaluation.export import BOX_DECIMALS, SCORE_DECIMALS
    from ssd_tf.ops.boxes import yxyx_to_xywh

    xywh = np.round(yxyx_to_xywh(np.asarray(boxes, np.float64).reshape(-1, 4)), BOX_DECIMALS)
    return [{"image_id": image_id, "file_name": file_name, "category_id": int(c),
             "category_name": label_map.get(int(c), str(int(c))), "bbox": b,
             "score": round(float(s), SCORE_DECIMALS)}
            for b, c, s in zip(xywh.tolist(), np.asarray(class_ids).tolist(), np.asarray(scores).tolist())]


def predict(cfg, args: PredictArgs, log=print, progress: bool = True) -> PredictSummary:
    """Runs the model on ``args.inputs`` and writes detections.json and the annotated pictures."""
    import tensorflow as tf
    from tqdm import tqdm

    from ssd_tf.data.decoder import decode_image_bytes
    from ssd_tf.inference.draw import draw_detections

    label_map = dict(zip(cfg.data.class_ids, cfg.data.class_names))
    _, detector = load_detector(cfg, args.checkpoint, log=log)
    threshold = float(cfg.model.postprocess.score_threshold)
    summary = PredictSummary(output_dir=args.output_dir)
    results = []
    bar = tqdm(total=len(args.inputs), unit="img", desc="predict", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    for path, out_path in zip(args.inputs, output_names(args.inputs, args.output_dir)):
        try:
            with open(path, "rb") as f:
                encoded = f.read()
            image = decode_image_bytes(tf.constant(encoded))
        except (OSError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
            bar.write(f"skipped {path}: not a readable image ({reason})", file=sys.stderr)
            summary.skipped.append((path, reason))
            bar.update(1)
            continue
        image = image.numpy()
        height, width = image.shape[:2]
        outputs = {k: v.numpy() for k, v in detector.detect_uint8(tf.constant(image[None])).items()}
        boxes, class_ids, scores = image_detections(outputs, 0, height, width)
        summary.num_images += 1
        summary.num_detections += len(scores)
        results += coco_results(summary.num_images, path, boxes, class_ids, scores, label_map)
        draw_detections(image, boxes, class_ids, scores, label_map, score_threshold=threshold).save(
            out_path, quality=90)
        bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    with open(os.path.join(args.output_dir, "detections.json"), "w") as f:
        json.dump(results, f, separators=(",", ":"))
    rate = summary.num_images / summary.seconds if summary.seconds > 0 else float("nan")
    log(f"Predicted {summary.num_images} image(s), {summary.num_detections} detection(s) with score >= "
        f"{threshold:g}, in {summary.seconds:.1f} s ({rate:.2f} images/s); pictures and detections.json in "
        f"{args.output_dir}")
    if summary.skipped:
        names = ", ".join(p for p, _ in summary.skipped[:5]) + (", ..." if len(summary.skipped) > 5 else "")
        log(f"Skipped {len(summary.skipped)} file(s) that are not readable images: {names}")
    return summary


def _first_line(error) -> str:
    """TensorFlow's error text without its op and device decorations."""
    import re

    text = str(getattr(error, "message", error)).strip()
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", (text.splitlines() or ["unknown error"])[0])
    return text[:200] or "unknown error"
