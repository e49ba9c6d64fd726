r"""COCO instances JSON -> TFRecord shards + `{prefix}.meta.json` (flag names of TF Model Garden's converter).

    python data_tools/create_coco_tfrecord.py --image_dir=train2017 \
        --object_annotations_file=annotations/instances_train2017.json \
        --output_file_prefix=out/train --num_shards=32   # --num_processes: default one per CPU

Also `python -m data_tools.create_coco_tfrecord` or the `create_coco_tfrecord` console script.
The label map is the `categories` list in file order; class labels are the COCO category ids. bbox
[x, y, w, h] (continuous pixels) becomes [x, y, x + w, y + h]; `area` and `iscrowd` are kept (crowd boxes
are written with is_crowd=1 unless --skip_crowd). Images with no annotation are kept with empty lists.

Memory does not grow with the JSON: data_tools.coco_stream decodes it with msgspec through a ~1 MB window
(two passes: images and categories, then the annotations, read into compact columns, `CocoRecords`);
segmentation polygons are never built. Input it does not handle is decoded whole (msgspec, then json.loads
for what msgspec rejects), so every message below is unchanged.

The whole JSON is validated before any image is read. Errors (ConversionError, naming the file and the
image / annotation): malformed JSON (with line and column), missing or mistyped fields, duplicate image
or category ids, image ids above 2^31 - 1 (int32 consumers overflow; --allow_large_ids accepts them up
to 2^63 - 1, they are stored as strings), a `file_name` that is absolute or has a `..` component (nothing
outside --image_dir is read), an empty 'images' list, an --image_dir that is not a directory (and, from
the writer, an --image_dir holding none of the images). Skips (listed in the sidecar; errors under --strict): an
annotation whose category_id or image_id is unknown; then the writer's image and box checks
(see data_tools/writer.py).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any, List, Optional

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.records import (ConversionError, ImageRecord, ObjectAnnotation, SkipReport,  # noqa: E402
                                unsafe_relative_path)

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

try:  # fast path: decodes only the fields below (segmentation polygons are skipped in C, never built)
    import msgspec

    from data_tools import coco_stream
except ImportError:  # pragma: no cover - only without the pinned dependency (stdlib json, ~5x slower, more memory)
    msgspec = None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_NUMBER_TYPES = (int, float)  # type() checks: bool is not accepted as a number


# The fields the converter reads; absent keys take the defaults the checks below expect (dict.get semantics).
if msgspec is not None:
    class _Cat(msgspec.Struct, gc=False):
        id: Any = None
        name: Any = None

    class _Img(msgspec.Struct, gc=False):
        id: Any = None
        file_name: Any = None
        height: Any = None
        width: Any = None

    class _Ann(msgspec.Struct, gc=False):
        id: Any = None
        image_id: Any = None
        category_id: Any = None
        bbox: Any = None
        area: Any = None
        iscrowd: Any = 0

    class _Coco(msgspec.Struct, gc=False):
        images: Optional[List[_Img]] = None
        categories: Optional[List[_Cat]] = None
        annotations: Optional[List[msgspec.Raw]] = []  # each decoded on its own: the structs never pile up

    _DECODER = msgspec.json.Decoder(_Coco)
    _ANN_DECODER = msgspec.json.Decoder(_Ann)
else:  # pragma: no cover
    import types

    _Cat = _Img = _Ann = _Coco = types.SimpleNamespace


def _ann_where(path, ann, n) -> str:
    return f"{path} annotation id {ann.id} (annotations[{n}])"


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


class _Fallback(Exception):
    """msgspec did not accept the input: parse it again with the standard library."""


class _Batches:
    """The annotations array, streamed: `make()` iterates over decoded batches (coco_stream)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        try:
            for batch in self.make():
                yield from batch
        except coco_stream.Unsupported as e:  # e.g. an element that is not an object
            raise _Fallback() from e


def _load_coco(path: str, fast: bool):
    """-> _Coco: lists of _Cat/_Img and _Ann (or, fast, msgspec.Raw views of the annotations, decoded one
    at a time by the caller); an element that is not a JSON object is kept as it is, for the checks.

    fast: coco_stream decodes the file through a small window (annotations as batches, `_Batches`); if it
    cannot, msgspec decodes the whole file in one C pass into the structs above (unknown keys such as
    `segmentation` are skipped without building Python objects). Anything it does not accept (malformed
    JSON, non-UTF-8, NaN literals, a wrongly typed list) goes through the standard library parser, whose
    result the same checks then see, so every error message is the same as before.
    """
    if fast and msgspec is not None:
        try:
            images, categories, annotations = coco_stream.stream_coco(path, _Img, _Cat, _Ann)
            return _Coco(images=images, categories=categories,
                         annotations=[] if annotations is None else _Batches(annotations))
        except FileNotFoundError as e:
            raise ConversionError(f"{path}: annotation file not found") from e
        except (coco_stream.Unsupported, OSError):
            pass
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise ConversionError(f"{path}: annotation file not found") from e
        try:
            return _DECODER.decode(raw)
        except msgspec.MsgspecError:
            pass
        finally:
            del raw
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: top level must be a JSON object with 'images', got {type(data).__name__}")

    def structs(values, cls, fields, defaults=None):
        if not isinstance(values, list):
            return values
        defaults = defaults or {}
        return [cls(**{k: v.get(k, defaults.get(k)) for k in fields}) if isinstance(v, dict) else v for v in values]

    return _Coco(images=structs(data.get("images"), _Img, ("id", "file_name", "height", "width")),
                 categories=structs(data.get("categories"), _Cat, ("id", "name")),
                 annotations=structs(data.get("annotations", []), _Ann,
                                     ("id", "image_id", "category_id", "bbox", "area", "iscrowd"), {"iscrowd": 0}))


def _check_id(path, what, value, allow_large_ids):
    if not _is_int(value) or value < 0:
        raise ConversionError(f"{path}: {what}: id must be a non-negative integer, got {value!r}")
    limit = INT64_MAX if allow_large_ids else INT32_MAX
    if value > limit:
        hint = "" if allow_large_ids else " (ids above 2^31 - 1 overflow int32 consumers; --allow_large_ids accepts them)"
        raise ConversionError(f"{path}: {what}: id {value} is beyond {limit}{hint}")


def _int_column(values):
    """array('q') of ints (compact), or the list itself when one does not fit in int64."""
    try:
        return array("q", values)
    except OverflowError:
        return list(values)


class CocoRecords(Sequence):
    """The parsed images as a read-only sequence of `ImageRecord`s, built on access from compact columns.

    Per image: file name, id, stated size; per kept annotation: box (x0, y0, x1, y1), category id,
    crowd flag, area, its annotation id and index (for messages) and the next annotation of the same
    image (a chain in JSON order). About 100 bytes per box instead of ~1 KB of Python objects, and
    no reference counts to touch, so forked writer processes share these pages with the parent.
    """

    def __init__(self, path, image_dir, label_map, names, ids, heights, widths, boxes, head, nxt):
        self.path, self.image_dir, self.label_map = path, image_dir, label_map
        self._names, self._ids, self._heights, self._widths = names, ids, heights, widths
        (self._x0, self._y0, self._x1, self._y1, self._label, self._crowd, self._area, self._has_area,
         self._ann_id, self._ann_n) = boxes
        self._head, self._next = head, nxt

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self):
        for i in range(len(self._names)):
            yield self[i]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        name, image_id = self._names[i], self._ids[i]
        path, label_map = self.path, self.label_map
        objects, a = [], self._head[i]
        while a >= 0:
            label = self._label[a]
            objects.append(ObjectAnnotation(
                self._x0[a], self._y0[a], self._x1[a], self._y1[a], label, label_map[label], bool(self._crowd[a]),
                False, False, self._area[a] if self._has_area[a] else None,
                f"{path} annotation id {self._ann_id[a]} (annotations[{self._ann_n[a]}])"))
            a = self._next[a]
        return ImageRecord(image_path=os.path.join(self.image_dir, name), source_id=str(image_id), filename=name,
                           height=self._heights[i] or None, width=self._widths[i] or None, objects=objects,
                           where=f"{path} image id {image_id}")


def parse_coco(annotations_file: str, image_dir: str, *, skips: SkipReport, skip_crowd: bool = False,
               allow_large_ids: bool = False):
    """COCO instances JSON -> (records: CocoRecords (a sequence of ImageRecord), label_map: {id: name}, info).

    info counts what was dropped on purpose (crowd boxes under skip_crowd). Problems: see the module doc.
    The cyclic garbage collector is paused meanwhile: the parse creates no cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    first_skip = len(skips.entries)
    try:
        try:
            return _parse_coco(annotations_file, image_dir, skips, skip_crowd, allow_large_ids, True)
        except _Fallback:  # an annotation msgspec does not accept: start again with the standard library
            del skips.entries[first_skip:]
            return _parse_coco(annotations_file, image_dir, skips, skip_crowd, allow_large_ids, False)
    finally:
        if was_enabled:
            gc.enable()


def _parse_coco(annotations_file, image_dir, skips, skip_crowd, allow_large_ids, fast):
    path = annotations_file
    data = _load_coco(path, fast)
    for key in ("images", "categories"):
        if not isinstance(getattr(data, key), list):
            raise ConversionError(f"{path}: '{key}' must be a list (is it a COCO instances file?)")
    annotations = data.annotations
    if not isinstance(annotations, (list, _Batches)):
        raise ConversionError(f"{path}: 'annotations' must be a list")

    label_map = {}
    for n, cat in enumerate(data.categories):
        what = f"categories[{n}]"
        if type(cat) is not _Cat or not isinstance(cat.name, str):
            raise ConversionError(f"{path}: {what}: expected an object with an 'id' and a string 'name'")
        _check_id(path, f"{what} ({cat.name!r})", cat.id, allow_large_ids)
        if cat.id in label_map:
            raise ConversionError(f"{path}: {what}: duplicate category id {cat.id} "
                                  f"({label_map[cat.id]!r} and {cat.name!r})")
        label_map[cat.id] = cat.name

    by_id, names, ids, heights, widths = {}, [], [], [], []
    for n, img in enumerate(data.images):
        what = f"images[{n}]"
        if type(img) is not _Img:
            raise ConversionError(f"{path}: {what}: expected an object")
        image_id = img.id
        _check_id(path, what, image_id, allow_large_ids)
        if image_id in by_id:
            raise ConversionError(f"{path}: {what}: duplicate image id {image_id} "
                                  f"(first at images[{by_id[image_id]}])")
        name = img.file_name
        if not isinstance(name, str) or not name:
            raise ConversionError(f"{path}: {what} (id {image_id}): missing or empty 'file_name'")
        if name[0] in "/\\" or name[1:2] == ":" or ".." in name:  # (cheap test first: ~1 us per image saved)
            problem = unsafe_relative_path(name)
            if problem == "absolute":
                raise ConversionError(f"{path}: {what} (id {image_id}): file_name {name!r} is an absolute path; it "
                                      f"must be relative to --image_dir {image_dir}")
            if problem:
                raise ConversionError(f"{path}: {what} (id {image_id}): file_name {name!r} escapes --image_dir "
                                      f"{image_dir}")
        height, width = img.height, img.width
        for dim, v in (("height", height), ("width", width)):
            if v is not None and (not _is_int(v) or v <= 0):
                raise ConversionError(f"{path}: {what} (id {image_id}): '{dim}' must be a positive integer, got {v!r}")
        by_id[image_id] = n
        names.append(name)
        ids.append(image_id)
        heights.append(height or 0)  # 0: not stated
        widths.append(width or 0)
    data.images = None  # the structs are no longer needed
    if not names:
        raise ConversionError(f"{path}: 'images' is empty: no image to convert")

    num_images = len(names)
    head, tail = array("q", [-1]) * num_images, array("q", [-1]) * num_images
    nxt, x0s, y0s, x1s, y1s = array("q"), array("d"), array("d"), array("d"), array("d")
    labels, crowds, areas, has_area, ann_ids, ann_ns = array("q"), array("b"), array("d"), array("b"), [], array("q")
    dropped_crowd = 0
    num = _NUMBER_TYPES
    raw_type = msgspec.Raw if msgspec is not None else None
    for n, ann in enumerate(annotations):
        if type(ann) is raw_type:
            try:
                ann = _ANN_DECODER.decode(ann)
            except msgspec.MsgspecError as e:
                raise _Fallback() from e
            annotations[n] = None  # the JSON text stays in the file buffer; nothing else accumulates
        if type(ann) is not _Ann:
            raise ConversionError(f"{path}: annotations[{n}]: expected an object")
        bbox, area, crowd = ann.bbox, ann.area, ann.iscrowd
        if (type(bbox) is not list or len(bbox) != 4 or type(bbox[0]) not in num or type(bbox[1]) not in num
                or type(bbox[2]) not in num or type(bbox[3]) not in num):
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        if area is not None and type(area) not in num:
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'area' must be a number, got {area!r}")
        if crowd != 0 and crowd != 1 or type(crowd) not in num:
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'iscrowd' must be 0 or 1, got {crowd!r}")
        image_id, category_id = ann.image_id, ann.category_id
        i = by_id.get(image_id) if type(image_id) is int else None
        if i is None:
            skips.skip("box", _ann_where(path, ann, n), f"unknown image_id {image_id!r} (not in 'images')")
            continue
        if (label_map.get(category_id) if type(category_id) is int else None) is None:
            skips.skip("box", _ann_where(path, ann, n), f"unknown category_id {category_id!r} (not in 'categories')")
            continue
        if crowd and skip_crowd:
            dropped_crowd += 1
            continue
        x, y, w, h = bbox
        try:
            x0s.append(x)
            y0s.append(y)
            x1s.append(x + w)
            y1s.append(y + h)
            areas.append(0.0 if area is None else area)
        except OverflowError as e:
            raise ConversionError(f"{_ann_where(path, ann, n)}: 'bbox' or 'area' is beyond the float range") from e
        has_area.append(area is not None)
        labels.append(category_id)
        crowds.append(1 if crowd else 0)
        ann_ids.append(ann.id)
        ann_ns.append(n)
        a = len(nxt)
        nxt.append(-1)
        if head[i] < 0:
            head[i] = a
        else:
            nxt[tail[i]] = a
        tail[i] = a
    data.annotations = None
    if all(type(v) is int for v in ann_ids):
        ann_ids = _int_column(ann_ids)
    else:  # any JSON value; the messages print it as str() does
        ann_ids = [str(v) for v in ann_ids]
    boxes = (x0s, y0s, x1s, y1s, labels, crowds, areas, has_area, ann_ids, ann_ns)
    records = CocoRecords(path, image_dir, label_map, names, array("q", ids), _int_column(heights),
                          _int_column(widths), boxes, head, nxt)
    info = {"format": "coco", "annotations_file": os.path.abspath(path), "image_dir": os.path.abspath(image_dir),
            "skip_crowd": bool(skip_crowd), "crowd_boxes_dropped": dropped_crowd}
    return records, label_map, info


def convert_coco(*, image_dir: str, object_annotations_file: str, output_file_prefix: str, num_shards: int = 8,
                 num_processes: int = 0, strict: bool = False, skip_crowd: bool = False,
                 allow_large_ids: bool = False, verify_images: str = "header", progress: bool = True) -> dict:
    """Parse + write; returns the sidecar dict."""
    from data_tools import writer

    t0 = time.perf_counter()
    if not os.path.isdir(image_dir):
        raise ConversionError(f"--image_dir {image_dir}: not a directory")
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

    from data_tools.cli_help import usage_error

    if len(argv) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(argv[1:])!r}")
    f = flags.FLAGS
    if f.include_masks:
        usage_error("--include_masks is not supported: this converter writes boxes only")
    return writer.run_conversion(
        lambda: convert_coco(image_dir=f.image_dir, object_annotations_file=f.object_annotations_file,
                             strict=f.strict, skip_crowd=f.skip_crowd, allow_large_ids=f.allow_large_ids,
                             output_file_prefix=f.output_file_prefix, num_shards=f.num_shards,
                             num_processes=f.num_processes, verify_images=f.verify_images),
        f.output_file_prefix)


def run():
    """Console-script entry point."""
    from absl import app

    from data_tools.cli_help import expose_flags_in_help, parse_flags

    _define_flags()
    expose_flags_in_help(__spec__.name if __spec__ else "data_tools.create_coco_tfrecord")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
