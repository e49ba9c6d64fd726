"""Model detections (yxyx original-image pixels, contiguous classes) -> COCO results (xywh pixels, dataset ids).

This is the one place where the contiguous class ids of the model are mapped back to the dataset's ids and
where boxes leave the package's [ymin, xmin, ymax, xmax] convention.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ssd_tf.ops.boxes import yxyx_to_xywh

BOX_DECIMALS = 2  # 0.01 px
SCORE_DECIMALS = 6  # about float32 resolution, so ranking ties are not created by rounding


def _source_id_str(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value.item() if isinstance(value, np.generic) else value)


def _image_ids(source_ids: np.ndarray, image_id_map: Mapping[str, int] | None) -> np.ndarray:
    """Map source ids to integer COCO image ids [N] (int64)."""
    keys = [_source_id_str(s) for s in source_ids.reshape(-1)]
    if image_id_map is not None:
        missing = [k for k in keys if k not in image_id_map]
        if missing:
            raise ValueError(f"source_id {missing[0]!r} is not in image_id_map ({len(missing)} of {len(keys)} "
                             "missing)")
        return np.asarray([image_id_map[k] for k in keys], np.int64)
    try:
        return np.asarray([int(k) for k in keys], np.int64)
    except ValueError:
        bad = next(k for k in keys if not k.strip().lstrip("-").isdigit())
        raise ValueError(f"source_id {bad!r} is not an integer; pass image_id_map (e.g. the gt dict's "
                         "'source_id_to_image_id' from coco_gt_from_tfrecords)") from None


def _columns(boxes, scores, classes, num_detections, source_ids, class_ids, image_id_map, pixel_offset=0.0):
    """Validated, vectorised conversion -> (image_id [D], category_id [D], bbox [D,4] xywh, score [D])."""
    boxes = np.asarray(boxes, np.float64)
    scores = np.asarray(scores, np.float64)
    classes = np.asarray(classes)
    num_detections = np.asarray(num_detections).reshape(-1).astype(np.int64)
    source_ids = np.asarray(source_ids).reshape(-1)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, K, 4], got shape {boxes.shape}")
    n, k = boxes.shape[:2]
    for name, arr, shape in (("scores", scores, (n, k)), ("classes", classes, (n, k)),
                             ("num_detections", num_detections, (n,)), ("source_ids", source_ids, (n,))):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match boxes {boxes.shape}, got {arr.shape}")
    if np.any(num_detections < 0) or np.any(num_detections > k):
        bad = int(np.flatnonzero((num_detections < 0) | (num_detections > k))[0])
        raise ValueError(f"num_detections[{bad}] = {num_detections[bad]} is outside [0, {k}]")
    lookup = np.asarray([0] + [int(c) for c in class_ids], np.int64)  # contiguous id i -> class_ids[i - 1]

    valid = np.arange(k)[None, :] < num_detections[:, None]  # [N, K]; padding rows are dropped
    img_idx, det_idx = np.nonzero(valid)
    cls = classes[img_idx, det_idx].astype(np.int64)
    bad = np.flatnonzero((cls < 1) | (cls >= len(lookup)))
    if bad.size:
        i = bad[0]
        raise ValueError(f"image {img_idx[i]} detection {det_idx[i]} has class {cls[i]}, outside the contiguous "
                         f"range 1..{len(lookup) - 1} given by class_ids")
    b = boxes[img_idx, det_idx]  # [D, 4] yxyx pixels
    xywh = yxyx_to_xywh(b) + np.array([0.0, 0.0, pixel_offset, pixel_offset])
    image_ids = _image_ids(source_ids, image_id_map)[img_idx] if n else np.zeros(0, np.int64)
    return (image_ids, lookup[cls], np.round(xywh, BOX_DECIMALS),
            np.round(scores[img_idx, det_idx], SCORE_DECIMALS))


def _to_dicts(image_ids, category_ids, bboxes, scores) -> list[dict]:
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(image_ids.tolist(), category_ids.tolist(), bboxes.tolist(), scores.tolist())]


def detections_to_coco(boxes, scores, classes, num_detections, source_ids, class_ids: Sequence[int],
                       image_id_map: Mapping[str, int] | None = None, pixel_offset: float = 0.0) -> list[dict]:
    """Batched detections -> COCO results list.

    Args:
      boxes: [N, K, 4] [ymin, xmin, ymax, xmax] in original-image pixels; scores: [N, K]; classes: [N, K]
        contiguous ids 1..C-1.
      num_detections: [N] valid rows per image (rows beyond are padding and skipped).
      source_ids: [N] image/source_id (bytes, str or int).
      class_ids: dataset category id of each contiguous id (contiguous i -> class_ids[i - 1]).
      image_id_map: {source_id str: COCO image id}; default int(source_id).
      pixel_offset: 1 for maskrcnn-benchmark's inclusive-pixel export (w = x2 - x1 + 1), else 0.

    Returns:
      [{"image_id": int, "category_id": int, "bbox": [x, y, w, h] pixels (2 decimals), "score": float}, ...]
    """
    return _to_dicts(*_columns(boxes, scores, classes, num_detections, source_ids, class_ids, image_id_map,
                               pixel_offset))


def write_coco_results(dets: Sequence[Mapping], path: str | os.PathLike) -> str:
    """Write a COCO results list as JSON (creating the parent directory); returns the path."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(list(dets), f, separators=(",", ":"))
    return path


class CocoDetectionAccumulator:
    """Collects detections batch by batch (numpy columns) and returns one COCO results list at the end.

    `on_duplicate`: what to do when an image id arrives a second time (e.g. repeated padding images in a
    distributed eval): "error" (default) or "skip" (keep the first occurrence).
    """

    def __init__(self, class_ids: Sequence[int], image_id_map: Mapping[str, int] | None = None,
                 on_duplicate: str = "error", pixel_offset: float = 0.0):
        if not len(class_ids):
            raise ValueError("class_ids must not be empty")
        if on_duplicate not in ("error", "skip"):
            raise ValueError(f"on_duplicate must be 'error' or 'skip', got {on_duplicate!r}")
        self.class_ids = [int(c) for c in class_ids]
        self.image_id_map = image_id_map
        self.on_duplicate = on_duplicate
        self.pixel_offset = float(pixel_offset)
        self._chunks: list[tuple[np.ndarray, ...]] = []
        self._seen: set[int] = set()
        self.num_duplicates_skipped = 0

    @property
    def num_images(self) -> int:
        return len(self._seen)

    def image_ids(self) -> set:
        """The COCO image ids added so far (images without detections included)."""
        return set(self._seen)

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self._chunks)

    def add_batch(self, boxes, scores, classes, num_detections, source_ids) -> None:
        """Add one batch (arguments as in detections_to_coco; numpy or anything np.asarray accepts)."""
        source_ids = np.asarray(source_ids).reshape(-1)
        batch_ids = _image_ids(source_ids, self.image_id_map)
        keep = np.ones(len(batch_ids), bool)
        for i, image_id in enumerate(batch_ids.tolist()):
            if image_id in self._seen:
                if self.on_duplicate == "error":
                    raise ValueError(f"image id {image_id} (source_id {_source_id_str(source_ids[i])!r}) was "
                                     "already added; pass on_duplicate='skip' to drop repeats")
                keep[i] = False
                self.num_duplicates_skipped += 1
            self._seen.add(image_id)
        if not keep.all():
            take = lambda a: np.asarray(a)[keep]  # noqa: E731
            boxes, scores, classes, num_detections, source_ids = map(
                take, (boxes, scores, classes, num_detections, source_ids))
        self._chunks.append(_columns(boxes, scores, classes, num_detections, source_ids, self.class_ids,
                                     self.image_id_map, self.pixel_offset))

    def results(self) -> list[dict]:
        """All detections added so far as a COCO results list."""
        if not self._chunks:
            return []
        return _to_dicts(*(np.concatenate(parts) for parts in zip(*self._chunks)))

    def write(self, path: str | os.PathLike) -> str:
        return write_coco_results(self.results(), path)
