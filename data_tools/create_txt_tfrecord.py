r"""Text-line annotations -> TFRecord shards (+ `{prefix}.meta.json` sidecar).

Two formats (`--format`):

- `lines` (default; the format keras-yolo3 / YOLOv3-TF style tools write): one image per line,
      relative/path.jpg x1,y1,x2,y2,class x1,y1,x2,y2,class ...
  path relative to `--image_dir` (no spaces), then zero or more boxes. `class` is the 0-based index
  into the label map's entries (for a plain-text label map: the line number of the name, from 0);
  the record gets that entry's id (k + 1 for plain-text label maps, see `data_tools.label_map`).
  Coordinates are absolute pixels, continuous 0-based (x1,y1 top-left corner, x2,y2 bottom-right),
  floats accepted. Blank lines and lines starting with `#` are ignored. An image listed with no box
  is kept as an image without objects.
- `csv` (keras-retinanet CSV): one box per row, `path,x1,y1,x2,y2,class_name`; a row
  `path,,,,,` is an image without objects; rows of the same path are one image. `--label_map` is
  then the keras-retinanet class file (`class_name,id` rows, ids 0-based; records get id + 1 so
  that 0 stays free for the background), or any label map `data_tools.label_map` reads.

`--label_map` may be a converter sidecar `PREFIX.meta.json`: a validation split then gets the training
split's ids (class index k = the sidecar's k-th class; CSV names are looked up in it).
  Coordinates are taken as they are (keras-retinanet uses them directly as continuous pixels).

Errors (ConversionError) name the annotation file and the line: bad syntax, a path that is absolute
or escapes `--image_dir`. A class index out of range / unknown class name skips the box (error with
--strict). Missing images, degenerate and out-of-image boxes are handled by the shared writer.

Run as `python data_tools/create_txt_tfrecord.py`, `python -m data_tools.create_txt_tfrecord` or
the `create_txt_tfrecord` console script.
"""
from __future__ import annotations

import csv
import math
import os
import pathlib
import sys

if __package__ in (None, ""):  # `python data_tools/create_txt_tfrecord.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from data_tools import label_map as label_map_lib
from data_tools.records import ConversionError, ImageRecord, ObjectAnnotation, SkipReport, unsafe_relative_path

FORMATS = ("lines", "csv")


def image_path_under(image_dir: str, rel_path: str, where: str) -> str:
    """image_dir/rel_path, refusing absolute paths and paths with `..`."""
    problem = unsafe_relative_path(rel_path)
    if problem == "absolute":
        raise ConversionError(f"{where}: image path {rel_path!r} is absolute; it must be relative to --image_dir {image_dir}")
    if problem:
        raise ConversionError(f"{where}: image path {rel_path!r} escapes --image_dir {image_dir}")
    parts = pathlib.PurePosixPath(rel_path.replace("\\", "/")).parts
    return os.path.join(image_dir, *parts)


def _numbers(tokens, where):
    values = []
    for t in tokens:
        try:
            v = float(t)
        except ValueError:
            raise ConversionError(f"{where}: coordinate {t!r} is not a number") from None
        if not math.isfinite(v):
            raise ConversionError(f"{where}: coordinate {t!r} is not finite")
        values.append(v)
    return values


def _source_id(rel_path: str) -> str:
    return os.path.splitext(rel_path.replace("\\", "/"))[0]


def parse_lines_file(anno_path: str, image_dir: str, label_map: dict, skips: SkipReport) -> list:
    """keras-yolo style text lines -> [ImageRecord]. label_map: {id: name} in class-index order."""
    entries = list(label_map.items())  # class index k -> entries[k]
    records = []
    seen = {}
    with open(anno_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            where = f"{anno_path} line {lineno}"
            rel_path = tokens[0]
            if "," in rel_path and len(tokens) == 1 and rel_path.count(",") >= 4:
                raise ConversionError(f"{where}: expected 'path x1,y1,x2,y2,class ...', got {line.strip()!r} "
                                      "(a keras-retinanet CSV? use --format=csv)")
            image_path = image_path_under(image_dir, rel_path, where)
            if rel_path in seen:
                raise ConversionError(f"{where}: image {rel_path!r} already listed on line {seen[rel_path]}")
            seen[rel_path] = lineno
            objects = []
            for box_index, token in enumerate(tokens[1:]):
                box_where = f"{where} box {box_index}"
                fields = token.split(",")
                if len(fields) != 5:
                    raise ConversionError(f"{box_where}: expected x1,y1,x2,y2,class, got {token!r}")
                x1, y1, x2, y2 = _numbers(fields[:4], box_where)
                try:
                    class_index = int(fields[4])
                except ValueError:
                    raise ConversionError(f"{box_where}: class {fields[4]!r} is not an integer index") from None
                if not 0 <= class_index < len(entries):
                    skips.skip("box", box_where, f"class index {class_index} is outside the label map "
                               f"(0..{len(entries) - 1})")
                    continue
                class_id, name = entries[class_index]
                objects.append(ObjectAnnotation(xmin=x1, ymin=y1, xmax=x2, ymax=y2, label=class_id, text=name,
                                                where=box_where))
            records.append(ImageRecord(image_path=image_path, source_id=_source_id(rel_path),
                                       filename=os.path.basename(rel_path), height=None, width=None,
                                       objects=objects, where=where))
    return records


def read_retinanet_classes(path: str) -> dict:
    """keras-retinanet class CSV (`name,id` rows, ids from 0) -> {id + 1: name}, ordered by id."""
    pairs = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise ConversionError(f"{path} line {lineno}: expected 'class_name,class_id', got {row!r}")
            try:
                pairs.append((int(row[1]), row[0].strip()))
            except ValueError:
                raise ConversionError(f"{path} line {lineno}: class id {row[1]!r} is not an integer") from None
    label_map = {}
    for class_id, name in sorted(pairs):
        if class_id + 1 in label_map:
            raise ConversionError(f"{path}: duplicate class id {class_id}")
        label_map[class_id + 1] = name
    if not label_map:
        raise ConversionError(f"{path}: no classes")
    label_map_lib.from_names(label_map.values())  # checks unique, non-empty names
    return label_map


def parse_csv_file(anno_path: str, image_dir: str, label_map: dict, skips: SkipReport) -> list:
    """keras-retinanet CSV rows -> [ImageRecord] (images in first-appearance order)."""
    class_ids = label_map_lib.name_to_id(label_map)
    by_path = {}
    with open(anno_path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{anno_path} line {lineno}"
            if len(row) != 6:
                raise ConversionError(f"{where}: expected 'path,x1,y1,x2,y2,class_name', got {row!r}")
            rel_path = row[0].strip()
            if rel_path not in by_path:
                by_path[rel_path] = ImageRecord(
                    image_path=image_path_under(image_dir, rel_path, where), source_id=_source_id(rel_path),
                    filename=os.path.basename(rel_path), height=None, width=None, objects=[], where=where)
            record = by_path[rel_path]
            if not any(c.strip() for c in row[1:]):
                continue  # image without objects
            x1, y1, x2, y2 = _numbers([c.strip() for c in row[1:5]], where)
            name = row[5].strip()
            if name not in class_ids:
                skips.skip("box", where, f"class {name!r} is not in the label map")
                continue
            record.objects.append(ObjectAnnotation(xmin=x1, ymin=y1, xmax=x2, ymax=y2, label=class_ids[name],
                                                   text=name, where=where))
    return list(by_path.values())


def load_label_map(path: str, fmt: str) -> dict:
    if not path:
        raise ConversionError("--label_map is required (class names, one per line)")
    if fmt == "csv" and path.lower().endswith(".csv"):
        return read_retinanet_classes(path)
    return label_map_lib.read_label_map(path)


def build_records(anno_path: str, image_dir: str, label_map_path: str, *, skips: SkipReport, fmt: str = "lines"):
    """-> (records, label_map {id: name})."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not os.path.isfile(anno_path):
        raise ConversionError(f"--anno_path {anno_path}: file not found")
    if not os.path.isdir(image_dir):
        raise ConversionError(f"--image_dir {image_dir}: not a directory")
    label_map = load_label_map(label_map_path, fmt)
    parse = parse_lines_file if fmt == "lines" else parse_csv_file
    return parse(anno_path, image_dir, label_map, skips), label_map


def convert_txt(*, anno_path: str, image_dir: str, label_map: str, output_file_prefix: str, fmt: str = "lines",
                strict: bool = False, num_shards: int = 8, num_processes: int = 0, verify_images: str = "header",
                progress: bool = True) -> dict:
    """Parse + write; returns the sidecar dict."""
    from data_tools import writer

    skips = SkipReport(strict=strict)
    records, resolved = build_records(anno_path, image_dir, label_map, skips=skips, fmt=fmt)
    source = {"format": f"txt_{fmt}", "anno_path": os.path.abspath(anno_path), "image_dir": os.path.abspath(image_dir),
              "label_map": os.path.abspath(label_map)}
    return writer.convert(records, output_prefix=output_file_prefix, num_shards=num_shards,
                          num_processes=num_processes, label_map=resolved, skips=skips, source=source,
                          verify_images=verify_images, progress=progress)


def define_flags():
    """The converter's flags plus the writer's output flags (idempotent; shared names defined once)."""
    from data_tools import writer

    from data_tools.cli_help import define_flag as define

    define("DEFINE_string", "anno_path", None, "Annotation file (text lines, or keras-retinanet CSV with --format=csv).")
    define("DEFINE_string", "image_dir", None, "Folder the image paths of the annotation file are relative to.")
    define("DEFINE_string", "label_map", None, "Class names, one per line (class index k = line k, from 0); "
           ".json / .pbtxt label maps, the PREFIX.meta.json sidecar of another split (same ids) and, with "
           "--format=csv, a keras-retinanet class CSV are accepted.")
    define("DEFINE_enum", "format", "lines", list(FORMATS), "lines: 'path x1,y1,x2,y2,class ...'; csv: keras-retinanet.")
    writer.add_output_flags()


def main(argv):
    from data_tools.cli_help import usage_error

    if len(argv) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(argv[1:])!r}")
    f = flags.FLAGS
    for name in ("anno_path", "image_dir", "label_map"):
        if not getattr(f, name):
            usage_error(f"--{name} is required")
    from data_tools import writer

    return writer.run_conversion(
        lambda: convert_txt(anno_path=f.anno_path, image_dir=f.image_dir, label_map=f.label_map,
                            output_file_prefix=f.output_file_prefix, fmt=f.format, strict=f.strict,
                            num_shards=f.num_shards, num_processes=f.num_processes, verify_images=f.verify_images),
        f.output_file_prefix)


def run():
    """Console-script entry point."""
    define_flags()
    from data_tools.cli_help import expose_flags_in_help, parse_flags

    expose_flags_in_help(__spec__.name if __spec__ else "data_tools.create_txt_tfrecord")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
