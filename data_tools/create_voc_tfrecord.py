r"""Pascal VOC XML annotations -> TFRecord shards (+ `{prefix}.meta.json` sidecar).

Two layouts:

- VOCdevkit: `--data_dir=VOCdevkit --year=VOC2007,VOC2012 --set=trainval` reads the ids listed in
  `<data_dir>/<year>/ImageSets/Main/<set>.txt` for every year folder (any folder name, e.g. `BCCD`),
  their XML in `<year>/Annotations/` and images in `<year>/JPEGImages/`.
- loose (annotation-tool exports such as labelImg / CVAT): `--annotations_dir=A --images_dir=I`
  reads every `A/*.xml` (or only the ids listed in `--set_file`); images are looked up in `I`.

Classes: the 20 VOC classes (ids 1..20, alphabetical) by default; `--label_map=FILE` (see
`data_tools.label_map`; a converter sidecar `PREFIX.meta.json` works too, so a validation split reuses
the training split's ids); or `--label_map=discover`: the names found in the XML, sorted, ids 1..K
(written to the sidecar). Object names not in the label map are an error listing them (a dataset of
other classes, e.g. BCCD's RBC/WBC/Platelets, needs `discover` or a file); `--skip_unknown_classes`
skips those objects instead, each listed with its reason (an error again with --strict). `difficult`
and `truncated` are kept.

Pixel convention (`--pixel_convention`):
- `voc` (default): VOC coordinates are 1-based, inclusive pixel indices: `xmin=1, xmax=W` covers the
  whole image row. In the continuous 0-based frame of `data_tools.records` (pixel column c spans
  [c, c+1)) that box is `[xmin - 1, ymin - 1, xmax, ymax]`. Evidence: in the 5,163 objects of BCCD,
  voc2012_sample and keras-retinanet's VOC2007 image no coordinate is 0, while xmin == 1 (261x),
  ymin == 1 (395x), xmax == W (272x) and ymax == H (364x) all occur: the numbers span [1, W]. The VOC
  devkit's evaluation (`VOCevaldet.m`) measures a box as `xmax - xmin + 1` pixels wide; Detectron2's
  `pascal_voc.py` applies the same `-1` to xmin/ymin only.
  Other tools differ by one pixel: TF OD API `create_pascal_tf_record.py` and CVAT take the numbers
  as they are (the CVAT TFRecord and COCO JSON shipped with voc2012_sample have xmin = VOC xmin), and
  ssd.pytorch (and the keras-retinanet test CSV of the same VOC2007 image) subtract 1 from all four
  numbers. The differences are exactly 1 px on some sides.
- `continuous`: the numbers are already continuous 0-based coordinates (taken as they are); use this
  for exports with float coordinates written by tools that work in that frame.
Float coordinates ("174.0", "12.5") are accepted in both conventions.

Bad input: a `<filename>` that escapes the image directory (absolute, `..`) is an error naming the
XML. A malformed XML file skips its image (recorded in the sidecar), an error with --strict. A box
with missing / non-numeric coordinates, or with xmin == xmax or ymin == ymax in the XML (a point: a
click without a drag; under the 1-based reading it would become a 1-pixel box), is skipped with its
reason. Inverted, zero-size (after conversion), out-of-image and size-mismatch checks happen in the
shared writer, which reads every image.

Run as `python data_tools/create_voc_tfrecord.py`, `python -m data_tools.create_voc_tfrecord` or
the `create_voc_tfrecord` console script.
"""
from __future__ import annotations

import math
import os
import pathlib
import sys
from xml.etree.ElementTree import ParseError

if __package__ in (None, ""):  # `python data_tools/create_voc_tfrecord.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import defusedxml
import defusedxml.ElementTree as SafeET
from absl import app, flags

from data_tools import label_map as label_map_lib
from data_tools.records import ConversionError, ImageRecord, ObjectAnnotation, SkipReport, unsafe_relative_path

PIXEL_CONVENTIONS = ("voc", "continuous")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


# ----------------------------------------------------------------------------------------------------
# Finding the annotation files


def devkit_entries(data_dir: str, years, set_name: str) -> list:
    """[(xml_path, image_dir, id)] for the ids of `<year>/ImageSets/Main/<set>.txt`, years merged.

    years and set_name may be lists or comma-separated ("VOC2007,VOC2012", "trainval,test"); an id
    listed by several sets of the same year is taken once.
    """
    years = [y for y in years.split(",") if y] if isinstance(years, str) else list(years)
    sets = [s for s in set_name.split(",") if s] if isinstance(set_name, str) else list(set_name)
    if not years:
        raise ConversionError("no --year given (e.g. VOC2007 or VOC2007,VOC2012 or BCCD)")
    if not sets:
        raise ConversionError("no --set given (train, val, trainval or test)")
    entries = []
    for year in years:
        root = os.path.join(data_dir, year)
        if not os.path.isdir(root):
            raise ConversionError(f"{root}: year folder not found (--data_dir={data_dir} --year={year})")
        taken = set()
        for name in sets:
            for image_id in read_set_file(os.path.join(root, "ImageSets", "Main", f"{name}.txt")):
                if image_id in taken:
                    continue
                taken.add(image_id)
                entries.append((os.path.join(root, "Annotations", image_id + ".xml"),
                                os.path.join(root, "JPEGImages"), image_id))
    return entries


def loose_entries(annotations_dir: str, images_dir: str, set_file: str | None = None) -> list:
    """[(xml_path, image_dir, id)] for every `*.xml` in annotations_dir, or the ids of set_file."""
    if not os.path.isdir(annotations_dir):
        raise ConversionError(f"--annotations_dir {annotations_dir}: not a directory")
    if not os.path.isdir(images_dir):
        raise ConversionError(f"--images_dir {images_dir}: not a directory")
    if set_file:
        ids = read_set_file(set_file)
    else:
        ids = sorted(p[:-4] for p in os.listdir(annotations_dir) if p.lower().endswith(".xml"))
    return [(os.path.join(annotations_dir, i + ".xml"), images_dir, i) for i in ids]


def read_set_file(path: str) -> list:
    """Image ids of an ImageSets file: first token of each non-blank line ('000005  1' -> '000005')."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: set file not found")
    ids = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            image_id = tokens[0]
            if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
                raise ConversionError(f"{path} line {lineno}: id {image_id!r} is not a plain file stem")
            ids.append(image_id)
    return ids


# ----------------------------------------------------------------------------------------------------
# Parsing one XML file


def read_voc_xml(xml_path: str) -> dict:
    """The fields of one VOC XML file, unconverted. Raises ConversionError naming the file if malformed."""
    try:
        root = SafeET.parse(xml_path).getroot()
    except (ParseError, defusedxml.DefusedXmlException) as e:
        raise ConversionError(f"{xml_path}: malformed XML ({e})") from None
    except OSError as e:
        raise ConversionError(f"{xml_path}: cannot read ({e.strerror or e})") from None
    if root.tag != "annotation":
        raise ConversionError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    out = {
        "filename": _text(root, "filename"),
        "width": _int_or_none(_text(size, "width")) if size is not None else None,
        "height": _int_or_none(_text(size, "height")) if size is not None else None,
        "objects": [],
    }
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        out["objects"].append({
            "name": (_text(obj, "name") or "").strip(),
            "bndbox": None if box is None else {k: _text(box, k) for k in ("xmin", "ymin", "xmax", "ymax")},
            "difficult": _flag(_text(obj, "difficult")),
            "truncated": _flag(_text(obj, "truncated")),
        })
    return out


def _text(node, tag):
    child = node.find(tag) if node is not None else None
    return None if child is None or child.text is None else child.text.strip()


def _int_or_none(text):
    try:
        value = int(float(text))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None  # some tools write 0 for "unknown"


def _flag(text) -> bool:
    if text is None or text == "":
        return False
    if text.lower() in ("true", "yes"):
        return True
    try:
        return float(text) != 0
    except ValueError:
        return False


def image_path_for(filename: str | None, image_dir: str, image_id: str, xml_path: str) -> str:
    """Path of the image named by `<filename>`, refusing names that escape image_dir."""
    if not filename:
        filename = image_id + ".jpg"
    problem = unsafe_relative_path(filename)
    if problem == "absolute":
        raise ConversionError(f"{xml_path}: <filename> {filename!r} is an absolute path; it must be relative to {image_dir}")
    if problem:
        raise ConversionError(f"{xml_path}: <filename> {filename!r} escapes the image directory {image_dir}")
    parts = pathlib.PurePosixPath(filename.replace("\\", "/")).parts
    path = os.path.join(image_dir, *parts)
    if not os.path.splitext(filename)[1] and not os.path.exists(path):
        for ext in IMAGE_EXTENSIONS:  # some exporters drop the extension
            if os.path.exists(path + ext):
                return path + ext
    return path


def _convert_box(raw: dict, convention: str):
    """Raw VOC numbers -> (xmin, ymin, xmax, ymax) continuous 0-based, or a reason string."""
    values = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        text = raw.get(key)
        if text is None or text == "":
            return f"<bndbox> has no <{key}>"
        try:
            v = float(text)
        except ValueError:
            return f"<{key}> {text!r} is not a number"
        if not math.isfinite(v):
            return f"<{key}> {text!r} is not finite"
        values.append(v)
    xmin, ymin, xmax, ymax = values
    if xmin == xmax or ymin == ymax:
        # Read as 1-based inclusive indices this would be a 1-pixel-wide box, but annotation tools write
        # it for a click without a drag (BCCD has two such points): no object has zero extent.
        return f"zero-size box in the XML (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
    if convention == "voc":
        xmin, ymin = xmin - 1.0, ymin - 1.0
    return xmin, ymin, xmax, ymax


def parse_voc_xml(xml_path: str, image_dir: str, image_id: str, class_ids: dict, skips: SkipReport,
                  pixel_convention: str = "voc", parsed: dict | None = None):
    """One XML file -> ImageRecord (None if the file is malformed and skips is not strict).

    class_ids: {name: dataset id}. Objects with other names are skipped (error if strict).
    """
    if pixel_convention not in PIXEL_CONVENTIONS:
        raise ValueError(f"pixel_convention must be one of {PIXEL_CONVENTIONS}, got {pixel_convention!r}")
    if parsed is None:
        try:
            parsed = read_voc_xml(xml_path)
        except ConversionError as e:
            skips.skip("image", xml_path, str(e).split(": ", 1)[-1] if str(e).startswith(xml_path) else str(e))
            return None
    image_path = image_path_for(parsed["filename"], image_dir, image_id, xml_path)
    objects = []
    for index, obj in enumerate(parsed["objects"]):
        where = f"{xml_path} object {index}"
        name = obj["name"]
        if not name:
            skips.skip("box", where, "object without <name>")
            continue
        if name not in class_ids:
            skips.skip("box", where, f"class {name!r} is not in the label map")
            continue
        if obj["bndbox"] is None:
            skips.skip("box", where, "object without <bndbox>")
            continue
        box = _convert_box(obj["bndbox"], pixel_convention)
        if isinstance(box, str):
            skips.skip("box", where, box)
            continue
        objects.append(ObjectAnnotation(
            xmin=box[0], ymin=box[1], xmax=box[2], ymax=box[3], label=class_ids[name], text=name,
            difficult=obj["difficult"], truncated=obj["truncated"], where=where))
    return ImageRecord(
        image_path=image_path, source_id=image_id,
        filename=os.path.basename(image_path), height=parsed["height"], width=parsed["width"],
        objects=objects, where=xml_path)


def _unknown_classes_error(parsed, class_ids: dict, label_map) -> ConversionError | None:
    """The error for object names not in the label map (None when every name is in it)."""
    counts, first = {}, None
    for xml_path, _, _, fields in parsed:
        for index, obj in enumerate(fields["objects"]):
            name = obj["name"]
            if name and name not in class_ids:
                counts[name] = counts.get(name, 0) + 1
                first = first or f"{xml_path} object {index}"
    if not counts:
        return None
    if isinstance(label_map, dict):
        source = "the given label map"
    elif label_map in (None, "", "voc"):
        source = "the 20 VOC classes"
    else:
        source = label_map
    names = sorted(counts)
    listed = ", ".join(f"{n!r} ({counts[n]})" for n in names[:20]) + (f", ... ({len(names)} names)" if len(names) > 20 else "")
    total = sum(counts.values())
    return ConversionError(
        f"{total} object{'s' if total != 1 else ''} of {len(names)} class{'es' if len(names) != 1 else ''} not in "
        f"the label map ({source}): {listed} (the first: {first}); pass --label_map=discover (the names found in "
        "the XML, sorted) or a label map file (one name per line, .json, .pbtxt, or the PREFIX.meta.json of "
        "another split), or --skip_unknown_classes to leave these objects out")


def build_records(entries, label_map="voc", *, skips: SkipReport, pixel_convention: str = "voc",
                  skip_unknown_classes: bool = False):
    """[(xml_path, image_dir, id)] -> (records, label_map {id: name}).

    label_map: "voc" (20 VOC classes), "discover" (sorted names found in the XML, ids 1..K), a path
    to a label map file (or a converter sidecar PREFIX.meta.json), or a {id: name} dict. Object names not
    in the label map are an error listing them, unless skip_unknown_classes (then each such object is a
    skip, an error under strict).
    """
    seen = {}
    for xml_path, _, image_id in entries:
        if image_id in seen:
            raise ConversionError(f"image id {image_id!r} appears twice: {seen[image_id]} and {xml_path}")
        seen[image_id] = xml_path
    parsed = []
    for xml_path, image_dir, image_id in entries:
        if not os.path.isfile(xml_path):
            skips.skip("image", xml_path, "annotation file not found")
            continue
        try:
            fields = read_voc_xml(xml_path)
        except ConversionError as e:
            skips.skip("image", xml_path, str(e)[len(xml_path) + 2:] if str(e).startswith(xml_path) else str(e))
            continue
        parsed.append((xml_path, image_dir, image_id, fields))
    if isinstance(label_map, dict):
        resolved = dict(label_map)
    elif label_map in (None, "", "voc"):
        resolved = label_map_lib.voc_label_map()
    elif label_map == "discover":
        names = sorted({o["name"] for *_, fields in parsed for o in fields["objects"] if o["name"]})
        if not names:
            raise ConversionError("--label_map=discover found no object names in the XML files")
        resolved = label_map_lib.from_names(names)
    else:
        resolved = label_map_lib.read_label_map(label_map)
    class_ids = label_map_lib.name_to_id(resolved)
    if not skip_unknown_classes:
        error = _unknown_classes_error(parsed, class_ids, label_map)
        if error is not None:
            raise error
    records = []
    for xml_path, image_dir, image_id, fields in parsed:
        records.append(parse_voc_xml(xml_path, image_dir, image_id, class_ids, skips, pixel_convention, parsed=fields))
    return records, resolved


# ----------------------------------------------------------------------------------------------------
# CLI


def convert_voc(*, output_file_prefix: str, data_dir: str | None = None, years=("VOC2007",),
                set_name: str = "train", annotations_dir: str | None = None, images_dir: str | None = None,
                set_file: str | None = None, label_map="voc", pixel_convention: str = "voc", strict: bool = False,
                num_shards: int = 8, num_processes: int = 0, verify_images: str = "header",
                progress: bool = True, skip_unknown_classes: bool = False) -> dict:
    """Parse (VOCdevkit layout when data_dir is given, else the loose layout) + write; returns the sidecar."""
    from data_tools import writer

    skips = SkipReport(strict=strict)
    if annotations_dir or images_dir:
        if not (annotations_dir and images_dir):
            raise ConversionError("the loose layout needs both --annotations_dir and --images_dir")
        if data_dir:
            raise ConversionError("give either --data_dir (VOCdevkit layout) or --annotations_dir/--images_dir")
        entries = loose_entries(annotations_dir, images_dir, set_file)
        source = {"format": "voc", "layout": "loose", "annotations_dir": os.path.abspath(annotations_dir),
                  "images_dir": os.path.abspath(images_dir), "set_file": set_file}
    elif data_dir:
        years = [y for y in years.split(",") if y] if isinstance(years, str) else list(years)
        entries = devkit_entries(data_dir, years, set_name)
        source = {"format": "voc", "layout": "devkit", "data_dir": os.path.abspath(data_dir), "years": years,
                  "set": set_name}
    else:
        raise ConversionError("give --data_dir (VOCdevkit layout) or --annotations_dir and --images_dir")
    records, resolved = build_records(entries, label_map, skips=skips, pixel_convention=pixel_convention,
                                      skip_unknown_classes=skip_unknown_classes)
    source.update(pixel_convention=pixel_convention,
                  label_map=label_map if isinstance(label_map, str) else "dict",
                  skip_unknown_classes=bool(skip_unknown_classes))
    return writer.convert(records, output_prefix=output_file_prefix, num_shards=num_shards,
                          num_processes=num_processes, label_map=resolved, skips=skips, source=source,
                          verify_images=verify_images, progress=progress)


def define_flags():
    """The converter's flags plus the writer's output flags (idempotent; shared names defined once)."""
    from data_tools import writer

    from data_tools.cli_help import define_flag as define

    define("DEFINE_string", "data_dir", None, "VOCdevkit root (the folder holding VOC2007/, VOC2012/, BCCD/, ...).")
    define("DEFINE_list", "year", ["VOC2007"], "Year folder(s) under --data_dir, merged: VOC2007,VOC2012 or BCCD.")
    define("DEFINE_string", "set", "train", "Image set(s): ImageSets/Main/<set>.txt (train, val, trainval, test; "
           "several comma-separated are merged).")
    define("DEFINE_string", "annotations_dir", None, "Loose layout: folder of XML files (instead of --data_dir).")
    define("DEFINE_string", "images_dir", None, "Loose layout: folder of the images.")
    define("DEFINE_string", "set_file", None, "Loose layout: optional list of ids (one per line) to convert.")
    define("DEFINE_string", "label_map", "voc", "'voc' (the 20 VOC classes), 'discover' (names found in the XML, "
           "sorted) or a label map file (.txt one name per line, .json, .pbtxt), e.g. the PREFIX.meta.json "
           "sidecar of the training split, so that another split gets the same ids.")
    define("DEFINE_boolean", "skip_unknown_classes", False, "Leave out objects whose class is not in the label "
           "map (counted in the sidecar's skips) instead of stopping with an error that lists them.")
    define("DEFINE_enum", "pixel_convention", "voc", list(PIXEL_CONVENTIONS),
           "voc: 1-based inclusive pixel indices -> (xmin-1, ymin-1, xmax, ymax); continuous: as they are.")
    writer.add_output_flags()


def main(argv):
    from data_tools.cli_help import usage_error

    if len(argv) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(argv[1:])!r}")
    f = flags.FLAGS
    from data_tools import writer

    return writer.run_conversion(
        lambda: convert_voc(output_file_prefix=f.output_file_prefix, data_dir=f.data_dir, years=f.year,
                            set_name=f.set, annotations_dir=f.annotations_dir, images_dir=f.images_dir,
                            set_file=f.set_file, label_map=f.label_map, pixel_convention=f.pixel_convention,
                            strict=f.strict, num_shards=f.num_shards, num_processes=f.num_processes,
                            verify_images=f.verify_images, skip_unknown_classes=f.skip_unknown_classes),
        f.output_file_prefix)


def run():
    """Console-script entry point."""
    define_flags()
    from data_tools.cli_help import expose_flags_in_help, parse_flags

    expose_flags_in_help(__spec__.name if __spec__ else "data_tools.create_voc_tfrecord")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
