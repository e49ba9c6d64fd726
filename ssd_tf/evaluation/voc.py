"""PASCAL VOC detection metrics: per-class AP (VOC07 11-point or VOC2010+ all-points area) and mAP.

Matching follows the VOC devkit / the classic `voc_eval.py`:
- per class, detections are taken in descending score (stable order for ties);
- a detection is matched to the gt of its image and class with the highest IoU; it counts when IoU > threshold
  (strictly greater, as the devkit's `ovmax > 0.5`);
- if that gt is `difficult` the detection is ignored (neither TP nor FP); if that gt was already matched the
  detection is a FP (duplicate) -- there is no fall-back to the second-best gt; otherwise TP and the gt is taken;
- recall = TP / (number of non-difficult gts), precision = TP / (TP + FP);
- mAP is the mean over classes that have at least one non-difficult gt; other classes report AP = -1.

Box area convention (`plus_one`): the devkit treats boxes as inclusive integer pixel indices and adds 1 to widths
and heights. The package's boxes are continuous (normalised or float pixels), so the default is `plus_one=False`.
Pass pixel boxes in VOC's original coordinates with `plus_one=True` to reproduce devkit numbers exactly
(normalised boxes are refused with `plus_one=True`).

Input formats (boxes may be in any consistent frame, e.g. normalised [ymin, xmin, ymax, xmax]; IoU is symmetric
in x/y so [xmin, ymin, xmax, ymax] gives the same numbers):
- detections: one entry per image, {"boxes": [n, 4], "labels": [n] int, "scores": [n]};
- ground_truths: one entry per image, {"boxes": [m, 4], "labels": [m] int, "difficult": [m] bool (optional)};
  both as sequences in the same image order, or as dicts keyed by image id (same keys; a missing detection
  entry means no detections for that image).
- class_names: a list (label i -> class_names[i]) or a dict {label: name}.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a PR curve (recall ascending, as produced by cumulative sums).

    VOC07: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t (0 if none).
    VOC2010+: area under the precision envelope (precision made monotonically non-increasing), summed where
    recall changes.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = recall >= t
            ap += (precision[above].max() if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: max precision to the right
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def _iou(a: np.ndarray, b: np.ndarray, offset: float) -> np.ndarray:
    """IoU [n, m] of boxes a [n, 4], b [m, 4] (corners (lo0, lo1, hi0, hi1)); offset 1 = devkit inclusive pixels."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo + offset, 0.0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2] + offset, axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2] + offset, axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _pairs(detections: Any, ground_truths: Any) -> list[tuple[Any, Mapping | None, Mapping]]:
    """Align detections and ground truths per image -> [(image key, det entry or None, gt entry)]."""
    if isinstance(ground_truths, Mapping):
        dets = detections if isinstance(detections, Mapping) else None
        if dets is None:
            raise TypeError("ground_truths is a dict keyed by image id, so detections must be one too")
        extra = set(dets) - set(ground_truths)
        if extra:
            raise ValueError(f"detections for image {sorted(extra, key=str)[0]!r} which has no ground-truth entry")
        return [(key, dets.get(key), gt) for key, gt in ground_truths.items()]
    if isinstance(detections, Mapping):
        raise TypeError("detections is a dict, so ground_truths must be a dict keyed by the same image ids")
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection entries but {len(ground_truths)} ground-truth entries; "
                         "give one entry per image in the same order")
    return [(i, d, g) for i, (d, g) in enumerate(zip(detections, ground_truths))]


def _arrays(entry: Mapping | None, keys: Sequence[str], where: str) -> dict[str, np.ndarray]:
    if entry is None:
        return {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0),
                "difficult": np.zeros(0, bool)}
    out = {}
    boxes = np.asarray(entry["boxes"], np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be [n, 4], got shape {boxes.shape}")
    out["boxes"] = boxes
    n = len(boxes)
    for key in keys:
        if key == "difficult" and key not in entry:
            out[key] = np.zeros(n, bool)
            continue
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}")
        arr = np.asarray(entry[key]).reshape(-1)
        if arr.shape[0] != n:
            raise ValueError(f"{where}: {key} has {arr.shape[0]} entries but boxes has {n}")
        out[key] = arr.astype({"labels": np.int64, "scores": np.float64, "difficult": bool}[key])
    return out


def evaluate_voc(detections: Any, ground_truths: Any, class_names: Sequence[str] | Mapping[int, str],
                 use_07_metric: bool = True, iou_threshold: float = 0.5, plus_one: bool = False) -> dict:
    """VOC AP per class and mAP (see the module docstring for formats and matching rules).

    Returns {"VOC/mAP": float, "VOC/AP/<name>": float per class (-1 if the class has no non-difficult gt)}.
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    if not names:
        raise ValueError("class_names is empty")
    offset = 1.0 if plus_one else 0.0

    # Per image: match every detection against the gts of its class (vectorised per image).
    det_label, det_score, det_gt, det_iou, det_order = [], [], [], [], []
    gt_label, gt_difficult = [], []
    max_coord = 0.0
    for key, det_entry, gt_entry in _pairs(detections, ground_truths):
        gt = _arrays(gt_entry, ("labels", "difficult"), f"ground truth for image {key!r}")
        dt = _arrays(det_entry, ("labels", "scores"), f"detections for image {key!r}")
        for where, labels in (("ground truth", gt["labels"]), ("detections", dt["labels"])):
            unknown = set(labels.tolist()) - set(names)
            if unknown:
                raise ValueError(f"{where} for image {key!r} use label {sorted(unknown)[0]} which is not in "
                                 f"class_names (labels {sorted(names)})")
        if len(gt["boxes"]):
            max_coord = max(max_coord, float(np.abs(gt["boxes"]).max()))
        gt_label.append(gt["labels"])
        gt_difficult.append(gt["difficult"])
        n_gt = len(gt["labels"])
        if not len(dt["labels"]):
            continue
        if n_gt:
            iou = _iou(dt["boxes"], gt["boxes"], offset)  # [n_det, n_gt]
            iou = np.where(dt["labels"][:, None] == gt["labels"][None, :], iou, -1.0)  # other classes never match
            best = iou.argmax(axis=1)
            best_iou = iou[np.arange(len(best)), best]
        else:
            best = np.zeros(len(dt["labels"]), np.int64)
            best_iou = np.full(len(dt["labels"]), -1.0)
        det_label.append(dt["labels"])
        det_score.append(dt["scores"])
        det_gt.append(best)  # index within this image's gts
        det_iou.append(best_iou)
        det_order.append(np.full(len(best), len(gt_label) - 1))  # image index of each detection
    if plus_one and max_coord <= 1.0 and max_coord > 0:
        raise ValueError("plus_one=True needs pixel boxes, but every gt coordinate is <= 1 (normalised boxes?)")

    gt_offsets = np.cumsum([0] + [len(g) for g in gt_label])  # global index of each image's first gt
    all_gt_label = np.concatenate(gt_label) if gt_label else np.zeros(0, np.int64)
    all_gt_difficult = np.concatenate(gt_difficult) if gt_difficult else np.zeros(0, bool)
    if det_label:
        labels = np.concatenate(det_label)
        scores = np.concatenate(det_score)
        image_of_det = np.concatenate(det_order)
        gt_index = np.concatenate(det_gt) + gt_offsets[image_of_det]  # global gt index of the best match
        best_iou = np.concatenate(det_iou)
    else:
        labels, scores = np.zeros(0, np.int64), np.zeros(0)
        gt_index, best_iou = np.zeros(0, np.int64), np.zeros(0)

    # Global order: descending score, ties in input order. Within one gt, the first hit in this order is the TP.
    order = np.argsort(-scores, kind="stable")
    labels, gt_index, best_iou = labels[order], gt_index[order], best_iou[order]
    hit = best_iou > iou_threshold
    safe_index = np.where(hit, gt_index, 0)  # images without gts point past their (empty) range
    difficult_hit = hit & all_gt_difficult[safe_index] if len(all_gt_difficult) else np.zeros_like(hit)
    counted = hit & ~difficult_hit
    first = np.zeros(len(order), bool)
    hits = np.flatnonzero(counted)
    _, first_pos = np.unique(gt_index[hits], return_index=True)
    first[hits[first_pos]] = True
    tp = first
    fp = ~hit | (counted & ~first)
    keep = ~difficult_hit  # ignored detections take no part in the PR curve

    result: dict[str, float] = {}
    aps = []
    for label, name in names.items():
        npos = int(np.sum((all_gt_label == label) & ~all_gt_difficult))
        if npos == 0:
            result[f"VOC/AP/{name}"] = -1.0
            continue
        sel = keep & (labels == label)
        ctp = np.cumsum(tp[sel])
        cfp = np.cumsum(fp[sel])
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        ap = voc_ap(recall, precision, use_07_metric) if sel.any() else 0.0
        result[f"VOC/AP/{name}"] = ap
        aps.append(ap)
    result["VOC/mAP"] = float(np.mean(aps)) if aps else -1.0
    return result
