"""The evaluation driver every family shares: batches of detections + ground truth -> COCO or VOC metrics.

Input, per batch (numpy): detections ``{boxes [B,K,4] yxyx in original-image pixels, scores [B,K], classes
[B,K] contiguous ids (1 = first class), num_detections [B]}`` and labels ``{source_id [B], image_info [B,4,2],
boxes [B,M,4] normalised to the original image, classes [B,M], num_boxes [B], difficult [B,M]}`` — what a task's
``predict_fn`` and eval dataset give.

* COCO: ground truth from ``val_json_file`` or rebuilt from the validation TFRecords. When fewer images were
  evaluated than the ground truth holds (``--eval_steps``), the ground truth is restricted to the evaluated
  images, so AP is not deflated by images that were never looked at; ``num_images`` records the count.
* VOC07 / VOC2010+: class labels 1..K are named by ``class_names[label - 1]``.

``details``: a dict the caller passes to receive what the evaluation pictures need (``evaluation/plots.py``):
``coco`` (the COCO evaluator's ``CocoArrays``) and ``samples`` (the first ``num_samples`` images' detections
and labels, numpy, as in the batches).
"""
from __future__ import annotations

import json
import time
from typing import Iterable

import numpy as np


class GroundTruthMismatch(ValueError):
    """The evaluated records' images are not those of ``--val_json_file``."""


def _mismatch(count: int, of: str, example, val_json_file: str) -> GroundTruthMismatch:
    return GroundTruthMismatch(
        f"{count} of {of} are not images of --val_json_file={val_json_file} (e.g. image id {example!r}); does it "
        f"belong to --validation_file_pattern?")


def check_ground_truth(val_json_file: str, validation_file_pattern: str, sample: int = 16) -> None:
    """Before a run spends time training or predicting: the first ``sample`` validation records' images must be in
    ``val_json_file`` (the records' source ids are its image ids); ``GroundTruthMismatch`` otherwise."""
    import tensorflow as tf

    from ssd_tf.data import example as ex
    from ssd_tf.data.shards import expand_pattern
    from ssd_tf.evaluation import export

    with open(val_json_file) as f:
        gt_images = {img["id"] for img in json.load(f).get("images", [])}
    records = tf.data.TFRecordDataset(expand_pattern(validation_file_pattern)[:1]).take(sample)
    source_ids = np.asarray([tf.io.parse_single_example(s, {ex.IMAGE_SOURCE_ID: tf.io.FixedLenFeature(
        (), tf.string, default_value="")})[ex.IMAGE_SOURCE_ID].numpy() for s in records], object)
    try:
        unknown = sorted(set(export._image_ids(source_ids, None).tolist()) - gt_images)
    except ValueError:  # a source id that is not an integer cannot be a COCO image id
        unknown = sorted({export._source_id_str(s) for s in source_ids}, key=str)
    if unknown:
        raise _mismatch(len(unknown), f"the first {len(source_ids)} validation records", unknown[0], val_json_file)


def _restrict_gt(gt: dict, image_ids: set) -> dict:
    """The ground truth of the given image ids only (categories kept)."""
    out = dict(gt)
    out["images"] = [img for img in gt["images"] if img["id"] in image_ids]
    out["annotations"] = [a for a in gt["annotations"] if a["image_id"] in image_ids]
    return out


def _capture_samples(batches: Iterable, details: dict | None, num_samples: int):
    """Passes ``batches`` through, keeping the first ``num_samples`` images' detections and labels in
    ``details["samples"]`` (a list of (detections, labels) dicts of one image each)."""
    samples = []
    if details is not None:
        details["samples"] = samples
    for dets, labels in batches:
        if details is not None and len(samples) < num_samples:
            for i in range(min(len(dets["num_detections"]), num_samples - len(samples))):
                samples.append(({k: v[i] for k, v in dets.items()}, {k: v[i] for k, v in labels.items()}))
        yield dets, labels


def evaluate_coco_batches(batches: Iterable, *, class_ids, class_names, val_json_file: str = "",
                          validation_file_pattern: str = "", backend: str = "faster", pixel_offset: float = 0.0,
                          log=print, details: dict | None = None, num_samples: int = 4) -> dict:
    from ssd_tf.evaluation import coco, export

    t0 = time.perf_counter()
    if val_json_file:
        with open(val_json_file) as f:
            gt = json.load(f)
    else:
        gt = coco.coco_gt_from_tfrecords(validation_file_pattern,
                                         label_map=dict(zip(class_ids, class_names)) or None)
    image_id_map = gt.get("source_id_to_image_id")  # records' source ids -> COCO image ids
    acc = export.CocoDetectionAccumulator(class_ids=list(class_ids), image_id_map=image_id_map,
                                          pixel_offset=pixel_offset)
    for dets, labels in _capture_samples(batches, details, num_samples):
        acc.add_batch(boxes=dets["boxes"], scores=dets["scores"], classes=dets["classes"],
                      num_detections=dets["num_detections"], source_ids=labels["source_id"])
    evaluated = acc.image_ids()
    gt_images = {img["id"] for img in gt["images"]}
    if evaluated != gt_images:
        unknown = evaluated - gt_images
        if unknown:
            raise _mismatch(len(unknown), f"the {len(evaluated)} evaluated images", sorted(unknown)[0], val_json_file)
        log(f"Scoring the {len(evaluated)} evaluated images of the {len(gt_images)} in the ground truth")
        gt = _restrict_gt(gt, evaluated)
    metrics, arrays = coco.evaluate_coco_full(gt, acc.results(), backend=backend)
    if details is not None:
        details["coco"] = arrays
    metrics["num_images"] = len(evaluated)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics


def evaluate_voc_batches(batches: Iterable, *, class_names, use_07_metric: bool, details: dict | None = None,
                         num_samples: int = 4) -> dict:
    from ssd_tf.evaluation import voc

    t0 = time.perf_counter()
    detections, ground_truths = [], []
    for dets, labels in _capture_samples(batches, details, num_samples):
        for i in range(dets["boxes"].shape[0]):
            k, g = int(dets["num_detections"][i]), int(labels["num_boxes"][i])
            size = np.asarray(labels["image_info"][i, 0], np.float64)  # original (height, width)
            gt_boxes = np.asarray(labels["boxes"][i, :g], np.float64) * np.concatenate([size, size])
            difficult = labels.get("difficult", np.zeros_like(labels["classes"]))[i, :g]
            detections.append({"boxes": dets["boxes"][i, :k], "labels": dets["classes"][i, :k],
                               "scores": dets["scores"][i, :k]})
            ground_truths.append({"boxes": gt_boxes, "labels": labels["classes"][i, :g], "difficult": difficult})
    names = {i + 1: name for i, name in enumerate(class_names)}  # contiguous label i + 1 -> class_names[i]
    metrics = voc.evaluate_voc(detections, ground_truths, class_names=names, use_07_metric=use_07_metric)
    metrics["num_images"] = len(detections)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics


def evaluate_batches(batches: Iterable, *, metric: str, class_ids, class_names, val_json_file: str = "",
                     validation_file_pattern: str = "", backend: str = "faster", pixel_offset: float = 0.0,
                     log=print, details: dict | None = None) -> dict:
    """Scores detection batches (see the module docstring) with ``metric`` coco | voc07 | voc."""
    if metric == "coco":
        return evaluate_coco_batches(batches, class_ids=class_ids, class_names=class_names,
                                     val_json_file=val_json_file, validation_file_pattern=validation_file_pattern,
                                     backend=backend, pixel_offset=pixel_offset, log=log, details=details)
    if metric in ("voc07", "voc"):
        return evaluate_voc_batches(batches, class_names=class_names, use_07_metric=metric == "voc07",
                                    details=details)
    raise ValueError(f"eval metric must be coco, voc07 or voc, got {metric!r}")
