r"""COCO instances JSON -> TFRecord shards + `{prefix}.meta.json` (flag names of TF Model Garden's converter).

    python data_tools/create_coco_tfrecord.py --image_dir=train2017 \
        --object_annotations_file=annotations/instances_train2017.json \
        --output_file_prefix=out/train --num_shards=32 --num_processes=0

Also `python -m data_tools.create_coco_tfrecord` or the `create_coco_tfrecord` console script.
The label map is the `categories` list in file order; class labels are the COCO category ids. bbox
[x, y, w, h] (continuous pixels) becomes [x, y, x + w, y + h]; `area` and `iscrowd` are kept (crowd boxes
are written with is_crowd=1 unless --skip_crowd). Images with no annotation are kept with empty lists.

The whole JSON is validated before any image is read. Errors (ConversionError, naming the file and the
image / annotation): malformed JSON (with line and column), missing or mistyped fields, duplicate image
or category ids, image ids above 2^31 - 1 (int32 consumers overflow; --allow_large_ids accepts them up
to 2^63 - 1, they are stored as strings). Skips (listed in the sidecar; errors under --strict): an
annotation whose category_id or image_id is unknown; then the writer's image and box checks
(see data_tools/writer.py).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.records import ConversionError, ImageRecord, ObjectAnnotation, SkipReport  # noqa: E402

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_NUMBER_TYPES = (int, float)  # type() checks: bool is not accepted as a number


def _ann_where(path, ann, n) -> str:
    return f"{path} annotation id {ann.get('id')} (annotations[{n}])"


def load_json(path: str):
    """Parse a JSON file; errors name the file, line and column."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError as e:
        raise ConversionError(f"{path}: annotation file not found") from e
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text ({e})") from e


def _check_id(path, what, value, allow_large_ids):
    if not _is_int(value) or value < 0:
        raise ConversionError(f"{path}: {what}: id must be a non-negative integer, got {value!r}")
    limit = INT64_MAX if allow_large_ids else INT32_MAX
    if value > limit:
        hint = "" if allow_large_ids else " (ids above 2^31 - 1 overflow int32 consumers; --allow_large_ids accepts them)"
        raise ConversionError(f"{path}: {what}: id {value} is beyond {limit}{hint}")


def parse_coco(annotations_file: str, image_dir: str, *, skips: SkipReport, skip_crowd: bool = False,
               allow_large_ids: bool = False):
    """COCO instances JSON -> (records: list[ImageRecord], label_map: {id: name}, info: dict).

    info counts what was dropped on purpose (crowd boxes under skip_crowd). Problems: see the module doc.
    The cyclic garbage collector is paused meanwhile: the millions of JSON objects only make it rescan
    (about 30% of the parse time) and the parse creates no cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_coco(annotations_file, image_dir, skips, skip_crowd, allow_large_ids)
    finally:
        if was_enabled:
            gc.enable()


def _parse_coco(annotations_file, image_dir, skips, skip_crowd, allow_large_ids):
    path = annotations_file
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: top level must be a JSON object with 'images', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ConversionError(f"{path}: '{key}' must be a list (is it a COCO instances file?)")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ConversionError(f"{path}: 'annotations' must be a list")

    label_map = {}
    for n, cat in enumerate(data["categories"]):
        what = f"categories[{n}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("name"), str):
            raise ConversionError(f"{path}: {what}: expected an object with an 'id' and a string 'name'")
        _check_id(path, f"{what} ({cat['name']!r})", cat.get("id"), allow_large_ids)
        if cat["id"] in label_map:
            raise ConversionError(f"{path}: {what}: duplicate category id {cat['id']} "
                                  f"({label_map[cat['id']]!r} and {cat['name']!r})")
        label_map[cat["id"]] = cat["name"]

    records, by_id = [], {}
    for n, img in enumerate(data["images"]):
        what = f"images[{n}]"
        if not isinstance(img, dict):
            raise ConversionError(f"{path}: {what}: expected an object")
        _check_id(path, what, img.get("id"), allow_large_ids)
        image_id = img["id"]
        if image_id in by_id:
            raise ConversionError(f"{path}: {what}: duplicate image id {image_id} "
                                  f"(first at images[{by_id[image_id][0]}])")
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise ConversionError(f"{path}: {what} (id {image_id}): missing or empty 'file_name'")
        height, width = img.get("height"), img.get("width")
        for dim, v in (("height", height), ("width", width)):
            if v is not None and (not _is_int(v) or v <= 0):
                raise ConversionError(f"{path}: {what} (id {image_id}): '{dim}' must be a positive integer, got {v!r}")
        rec = ImageRecord(image_path=os.path.join(image_dir, name), source_id=str(image_id), filename=name,
                          height=height, width=width, objects=[], where=f"{path} image id {image_id}")
        by_id[image_id] = (n, rec)
        records.append(rec)

    dropped_crowd = 0
    num = _NUMBER_TYPES
    for n, ann in enumerate(annotations):
        if type(ann) is not dict:
            raise ConversionError(f"{path}: annotations[{n}]: expected an object")
        bbox, area, crowd = ann.get("bbox"), ann.get("area"), ann.get("iscrowd", 0)
        if (type(bbox) is not list or len(bbox) != 4 or type(bbox[0]) not in num or type(bbox[1]) not in num
                or type(bbox[2]) not in num or type(bbox[3]) not in num):
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        if area is not None and type(area) not in num:
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'area' must be a number, got {area!r}")
        if crowd != 0 and crowd != 1 or type(crowd) not in num:
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'iscrowd' must be 0 or 1, got {crowd!r}")
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        entry = by_id.get(image_id) if type(image_id) is int else None
        if entry is None:
            skips.skip("box", _ann_where(path, ann, n), f"unknown image_id {image_id!r} (not in 'images')")
            continue
        text = label_map.get(category_id) if type(category_id) is int else None
        if text is None:
            skips.skip("box", _ann_where(path, ann, n), f"unknown category_id {category_id!r} (not in 'categories')")
            continue
        if crowd and skip_crowd:
            dropped_crowd += 1
            continue
        x, y, w, h = bbox
        entry[1].objects.append(ObjectAnnotation(x, y, x + w, y + h, category_id, text, bool(crowd), False, False,
                                                 area, _ann_where(path, ann, n)))
    info = {"format": "coco", "annotations_file": os.path.abspath(path), "image_dir": os.path.abspath(image_dir),
            "skip_crowd": bool(skip_crowd), "crowd_boxes_dropped": dropped_crowd}
    return records, label_map, info


def convert_coco(*, image_dir: str, object_annotations_file: str, output_file_prefix: str, num_shards: int = 8,
                 num_processes: int = 0, strict: bool = False, skip_crowd: bool = False,
                 allow_large_ids: bool = False, verify_images: str = "header", progress: bool = True) -> dict:
    """Parse + write; returns the sidecar dict."""
    from data_tools import writer

    t0 = time.perf_counter()
    skips = SkipReport(strict=strict)
    records, label_map, info = parse_coco(object_annotations_file, image_dir, skips=skips,
                                          skip_crowd=skip_crowd, allow_large_ids=allow_large_ids)
    t1 = time.perf_counter()
    sidecar = writer.convert(records, output_prefix=output_file_prefix, num_shards=num_shards,
                             num_processes=num_processes, label_map=label_map, skips=skips, source=info,
                             verify_images=verify_images, progress=progress)
    if progress:
        print(f"timing: parse {t1 - t0:.3f} s, write {time.perf_counter() - t1:.3f} s", file=sys.stderr)
    return sidecar


def _define_flags():
    from absl import flags

    from data_tools import writer

    if "object_annotations_file" in flags.FLAGS:
        return
    flags.DEFINE_string("image_dir", None, "Directory holding the images named by 'file_name'.")
    flags.DEFINE_string("object_annotations_file", None, "COCO instances JSON (e.g. instances_train2017.json).")
    flags.DEFINE_boolean("skip_crowd", False, "Leave out iscrowd=1 annotations (counted in the sidecar's source).")
    flags.DEFINE_boolean("allow_large_ids", False, "Accept image/category ids up to 2^63 - 1 (default: 2^31 - 1).")
    flags.DEFINE_boolean("include_masks", False, "Model Garden compatibility only: masks are not supported.")
    writer.add_output_flags()
    flags.mark_flags_as_required(["image_dir", "object_annotations_file"])


def main(argv):
    from absl import flags

    from data_tools import writer

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.include_masks:
        raise SystemExit("--include_masks is not supported: this converter writes boxes only")
    try:
        sidecar = convert_coco(image_dir=f.image_dir, object_annotations_file=f.object_annotations_file,
                               strict=f.strict, skip_crowd=f.skip_crowd, allow_large_ids=f.allow_large_ids,
                               output_file_prefix=f.output_file_prefix, num_shards=f.num_shards,
                               num_processes=f.num_processes, verify_images=f.verify_images)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {sidecar['num_images']} images, {sidecar['num_objects']} objects in {len(sidecar['shards'])} "
          f"shards; skipped {sidecar['skipped_counts'] or 'nothing'}; see {writer.sidecar_path(f.output_file_prefix)}",
          file=sys.stderr)
    return 0


def run():
    """Console-script entry point."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
