"""COCO box evaluation: faster-coco-eval (default) or pycocotools, plus ground truth from TFRecords.

`evaluate_coco` returns the 12 standard COCOeval stats under `COCO/...` keys and a per-class AP@[.5:.95];
`evaluate_coco_full` also the evaluator's own precision array (`CocoArrays`, for PR curves).
`coco_gt_from_tfrecords` rebuilds a COCO-format ground-truth dict from validation TFRecords.

CLI (the last printed line is one JSON object with the 12 stats):
    python -m ssd_tf.evaluation.coco --gt GT.json --detections DETS.json [--backend faster|pycocotools]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# Re-exported: the team interface lists detections_to_coco beside evaluate_coco.
from ssd_tf.data import label_map as label_map_lib
from ssd_tf.data import shards
from ssd_tf.ops.boxes import yxyx_to_xywh
from ssd_tf.evaluation.export import CocoDetectionAccumulator, detections_to_coco, write_coco_results  # noqa: F401

BACKENDS = ("faster", "pycocotools")
STAT_KEYS = (
    "COCO/AP", "COCO/AP50", "COCO/AP75", "COCO/APs", "COCO/APm", "COCO/APl",
    "COCO/ARmax1", "COCO/ARmax10", "COCO/ARmax100", "COCO/ARs", "COCO/ARm", "COCO/ARl",
)
# (title, IoU, area, maxDets) of each line of COCOeval.summarize(), in STAT_KEYS order.
_SUMMARY_LINES = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read JSON file {os.fspath(path)!r}: {e}") from e


def _gt_dataset(gt: Any) -> dict:
    """A COCO gt given as a path, a dict or a COCO object (either backend) -> the dataset dict."""
    if isinstance(gt, (str, os.PathLike)):
        data, where = _read_json(gt), repr(os.fspath(gt))
    elif isinstance(gt, Mapping):
        data, where = dict(gt), "the gt dict"
    elif hasattr(gt, "dataset") and isinstance(gt.dataset, Mapping):
        data, where = dict(gt.dataset), f"the {type(gt).__name__} object"
    else:
        raise TypeError(f"gt must be a path, a dict or a COCO object, got {type(gt).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"COCO ground truth in {where} has no {missing} key(s)")
    return data


def _detection_list(detections: Any) -> list:
    """Detections given as a path, a list of dicts, or a dict with an `annotations` list -> list of dicts."""
    where = "the detections argument"
    if isinstance(detections, (str, os.PathLike)):
        where = repr(os.fspath(detections))
        detections = _read_json(detections)
    if isinstance(detections, Mapping) and "annotations" in detections:
        detections = detections["annotations"]
    if not isinstance(detections, (list, tuple)):
        raise TypeError(f"detections in {where} must be a list of dicts, got {type(detections).__name__}")
    return list(detections)


def _check_detections(dets: Sequence[Mapping], dataset: Mapping) -> None:
    """Every detection must name an image and a category of the gt (O(N) set operations)."""
    for i, d in enumerate(dets[:1]):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise ValueError(f"detection {i} has no {missing} key(s): {d}")
    gt_images = {img["id"] for img in dataset["images"]}
    unknown = {d["image_id"] for d in dets} - gt_images
    if unknown:
        example = sorted(unknown, key=str)[0]
        raise ValueError(
            f"{len(unknown)} image id(s) in the detections are not in the ground truth, e.g. image_id={example!r} "
            f"(gt has {len(gt_images)} images); check the source_id -> image id mapping")
    gt_cats = {c["id"] for c in dataset["categories"]}
    unknown = {d["category_id"] for d in dets} - gt_cats
    if unknown:
        example = sorted(unknown, key=str)[0]
        raise ValueError(
            f"{len(unknown)} category id(s) in the detections are not gt categories, e.g. category_id={example!r}; "
            "detections must carry dataset category ids, not contiguous model ids")


# ----------------------------------------------------------------------------------------------------------------
# Backends: each returns (stats[12], precision [T,R,K,A,M], category ids in precision's K order, params)
# ----------------------------------------------------------------------------------------------------------------
def _run_faster(dataset: dict, dets: list, iou_type: str):
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    coco_gt = COCO(dataset)
    coco_gt.print_function = quiet
    coco_dt = coco_gt.loadRes(dets)
    coco_dt.print_function = quiet
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12], np.float64), np.asarray(ev.eval["precision"]), list(ev.params.catIds), ev.params


def _run_pycocotools(dataset: dict, dets: list, iou_type: str):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # pycocotools' loadRes indexes anns[0]; an empty result set is built by hand.
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(dataset["images"]), "annotations": [],
                               "categories": list(dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12], np.float64), np.asarray(ev.eval["precision"]), list(ev.params.catIds), ev.params


def _per_class_ap(precision: np.ndarray, cat_ids: Sequence[int], dataset: Mapping) -> dict:
    """AP@[.5:.95] per category (area all, maxDets 100) from precision [T,R,K,A,M]; -1 where a class has no gt."""
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    out = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        name = names.get(cat_id, str(cat_id))
        if name in out:  # two categories with one name: keep both visible
            name = f"{name} (id {cat_id})"
        out[name] = float(valid.mean()) if valid.size else -1.0
    return out


def format_summary(stats: Mapping[str, float]) -> str:
    """The 12-line COCOeval summary for a dict with STAT_KEYS."""
    lines = []
    for key, (title, iou, area, max_dets) in zip(STAT_KEYS, _SUMMARY_LINES):
        lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[key]:0.3f}")
    return "\n".join(lines)


@dataclasses.dataclass
class CocoArrays:
    """The evaluator's own accumulated arrays (``COCOeval.eval`` and ``COCOeval.params``), for plots.

    ``precision`` [T, R, K, A, M]: precision at IoU threshold t, recall threshold r, category k (``cat_ids``
    order), area range a (``area_labels``), max detections m (``max_dets``); -1 where category k has no ground
    truth."""
    precision: np.ndarray
    iou_thresholds: np.ndarray  # [T]
    recall_thresholds: np.ndarray  # [R]
    cat_ids: list
    cat_names: list
    area_labels: list
    max_dets: list

    def pr_curve(self, k: int, iou: float, area: str = "all", max_dets: int | None = None):
        """(recall [R], precision [R]) of category index ``k`` at IoU threshold ``iou`` (0.5, 0.75, ...), area
        range ``area``, ``max_dets`` (default the largest): a slice of ``precision``, nothing recomputed."""
        t = int(np.argmin(np.abs(self.iou_thresholds - iou)))
        if abs(float(self.iou_thresholds[t]) - iou) > 1e-6:
            raise ValueError(f"IoU {iou} is not one of the evaluator's thresholds {self.iou_thresholds.tolist()}")
        a = self.area_labels.index(area)
        m = len(self.max_dets) - 1 if max_dets is None else self.max_dets.index(max_dets)
        return self.recall_thresholds, self.precision[t, :, k, a, m]


def evaluate_coco_full(gt: Any, detections: Any, backend: str = "faster", iou_type: str = "bbox",
                       verbose: bool = True) -> tuple[dict, CocoArrays]:
    """``evaluate_coco``'s result and the evaluator's arrays (``CocoArrays``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    dataset = _gt_dataset(gt)
    # Both backends write into the result dicts (id, area, segmentation): work on shallow copies.
    dets = [dict(d) for d in _detection_list(detections)]
    _check_detections(dets, dataset)
    run = _run_faster if backend == "faster" else _run_pycocotools
    stats, precision, cat_ids, params = run(dataset, dets, iou_type)
    result = {key: float(v) for key, v in zip(STAT_KEYS, stats)}
    result["per_class_AP"] = _per_class_ap(precision, cat_ids, dataset)
    if verbose:
        print(format_summary(result))
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    arrays = CocoArrays(precision=precision, iou_thresholds=np.asarray(params.iouThrs, np.float64),
                        recall_thresholds=np.asarray(params.recThrs, np.float64), cat_ids=list(cat_ids),
                        cat_names=[names.get(c, str(c)) for c in cat_ids], area_labels=list(params.areaRngLbl),
                        max_dets=[int(m) for m in params.maxDets])
    return result, arrays


def evaluate_coco(gt: Any, detections: Any, backend: str = "faster", iou_type: str = "bbox",
                  verbose: bool = True) -> dict:
    """Score COCO results against a COCO ground truth.

    Args:
      gt: path to a COCO annotation JSON, the dict itself, or a COCO object (pycocotools or faster-coco-eval).
      detections: path to a COCO results JSON, or a list of dicts {image_id, category_id, bbox [x,y,w,h], score}
        (a dict with an `annotations` list is accepted too). May be empty.
      backend: "faster" (faster-coco-eval) or "pycocotools".
      iou_type: "bbox" or "segm".
      verbose: print the 12-line summary.

    Returns:
      {key: float for key in STAT_KEYS} plus `per_class_AP` {category name: AP@[.5:.95], -1 if the class has no gt}.
      ``evaluate_coco_full`` also returns the evaluator's precision array (for PR curves).
    """
    return evaluate_coco_full(gt, detections, backend=backend, iou_type=iou_type, verbose=verbose)[0]


# ----------------------------------------------------------------------------------------------------------------
# Ground truth from TFRecords
# ----------------------------------------------------------------------------------------------------------------
def _sidecar_label_map(files: Sequence[str]) -> dict[int, str] | None:
    """The label map of the converter's `{prefix}.meta.json` beside the shards (None without one)."""
    return label_map_lib.label_map_of_files(files)[0]


def _iter_gt_records(files: Sequence[str]) -> Iterable[dict]:
    """Yield one dict of numpy values per record, via the package decoder (without decoding pixels)."""
    import tensorflow as tf

    from ssd_tf.data import example as ex
    from ssd_tf.data.decoder import decode_example

    keys = ("height", "width", "source_id", "filename", "boxes", "classes", "is_crowd", "area")
    text_spec = {ex.CLASS_TEXT: tf.io.VarLenFeature(tf.string)}

    def gt_only(serialized):
        decoded = decode_example(serialized)
        out = {k: decoded[k] for k in keys}
        # Class names are not part of the decoder's output; read them beside it (optional key).
        out["texts"] = tf.sparse.to_dense(tf.io.parse_single_example(serialized, text_spec)[ex.CLASS_TEXT])
        return out

    ds = tf.data.TFRecordDataset(list(files)).map(gt_only, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.as_numpy_iterator()


def _to_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def coco_gt_from_tfrecords(file_pattern: str | Sequence[str], label_map: Any = None) -> dict:
    """Build a COCO-format ground-truth dict from validation TFRecords (read with `decode_example`).

    Image ids: the records' `source_id`s when every one is a non-negative integer, else 1..N in record order
    (sorted shard names). `gt["source_id_to_image_id"]` always holds {source_id: image id} for
    `export.detections_to_coco(image_id_map=...)`; a record with an empty source_id is keyed by its filename.
    Boxes: normalised yxyx -> absolute xywh with the record's height/width, rounded to 1e-4 px (about the float32
    resolution of the stored coordinates). `area`: the decoder's area (image/object/area, else box area).
    Categories: from `label_map` ({id: name}, [{"id", "name"}], or a sidecar path); by default from the
    converter's sidecar `{prefix}.meta.json` beside the shards, else the class ids found in the records, named by
    their `image/object/class/text` (else by the id).
    """
    files = shards.expand_pattern(file_pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    names = label_map_lib.as_label_map(label_map) if label_map is not None else _sidecar_label_map(files)

    records = list(_iter_gt_records(files))
    # Key of each image: its source_id, or its filename when the source_id is empty (e.g. CVAT exports).
    source_ids = [_to_str(r["source_id"]) or _to_str(r["filename"]) for r in records]
    numeric = bool(source_ids) and all(s.isdigit() for s in source_ids)
    image_ids = [int(s) for s in source_ids] if numeric else list(range(1, len(records) + 1))
    mapping: dict[str, int] = {}
    used: set[int] = set()
    for i, (sid, iid) in enumerate(zip(source_ids, image_ids)):
        if sid in mapping or iid in used:
            raise ValueError(f"duplicate image/source_id {sid!r} at record {i} of {files}; COCO image ids must "
                             "be unique")
        mapping[sid] = iid
        used.add(iid)

    images, annotations, seen_classes, texts = [], [], set(), {}
    for rec, image_id in zip(records, image_ids):
        h, w = float(rec["height"]), float(rec["width"])
        images.append({"id": image_id, "height": int(h), "width": int(w), "file_name": _to_str(rec["filename"])})
        boxes = np.asarray(rec["boxes"], np.float64).reshape(-1, 4)  # [N, 4] normalised yxyx
        if not len(boxes):
            continue
        xywh = yxyx_to_xywh(boxes * np.array([h, w, h, w]))
        xywh = np.round(xywh, 4)
        area = np.asarray(rec["area"], np.float64).reshape(-1)
        if area.shape[0] != len(boxes):
            area = np.zeros(len(boxes))
        area = np.where(area > 0, area, xywh[:, 2] * xywh[:, 3])
        classes = np.asarray(rec["classes"]).reshape(-1).tolist()
        crowd = np.asarray(rec["is_crowd"]).reshape(-1).astype(bool).tolist()
        seen_classes.update(classes)
        for cls, text in zip(classes, np.asarray(rec["texts"]).reshape(-1).tolist()):
            texts.setdefault(int(cls), _to_str(text))
        for box, cls, a, c in zip(xywh.tolist(), classes, area.tolist(), crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": box, "area": a, "iscrowd": int(c)})

    if names is None:
        names = {int(c): texts.get(int(c)) or str(int(c)) for c in sorted(seen_classes)}
    unknown = seen_classes - set(names)
    if unknown:
        raise ValueError(f"class ids {sorted(unknown)[:10]} in {file_pattern!r} are not in the label map "
                         f"(ids {sorted(names)[:10]}...)")
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in names.items()]
    return {"info": {"description": f"ground truth from {file_pattern}"}, "images": images,
            "annotations": annotations, "categories": categories, "source_id_to_image_id": mapping}


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_tf.evaluation.coco", description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, help="COCO annotation JSON")
    parser.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    parser.add_argument("--backend", default="faster", choices=BACKENDS)
    parser.add_argument("--iou_type", default="bbox", choices=("bbox", "segm"))
    parser.add_argument("--output", default=None, help="write the stats and per-class AP here as JSON")
    args = parser.parse_args(argv)
    result = evaluate_coco(args.gt, args.detections, backend=args.backend, iou_type=args.iou_type, verbose=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    sys.stdout.flush()
    print(json.dumps({key: result[key] for key in STAT_KEYS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
