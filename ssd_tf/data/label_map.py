"""Label maps and converter sidecars: class names and their dataset ids, in dataset order.

The one reader of label maps and sidecars, used by the converters (`data_tools`), `ssd_main.py`, evaluation
and the inspector. No TensorFlow import.

A label map is returned as a `dict[int, str]` (id -> name) whose iteration order is the dataset order.
`read_label_map(path)` accepts, chosen by the file's extension:

- `.json`: either an object `{"1": "cat", "2": "dog"}` or a list `[{"id": 1, "name": "cat"}, ...]`
  (the converter sidecar's `label_map` list has this form too, as does a COCO `categories` list), or a
  converter sidecar `PREFIX.meta.json` itself (its `label_map` entry is used).
- `.pbtxt`: the TF Object Detection API format, `item { id: 1 name: 'cat' }` blocks.
- anything else (`.txt`, `.names`, ...): plain text, one class name per line. Blank lines and lines
  starting with `#` are ignored; the name on the k-th remaining line (k = 0, 1, ...) gets id k + 1
  (id 0 is left for the background, as in TF OD API label maps). Names are taken verbatim after
  whitespace trimming, except in CVAT's `labelmap.txt` (first line `# label:color_rgb:parts:actions`):
  there the name is the text before the first `:` and the `background` entry is dropped.

Names must be unique and non-empty, ids unique non-negative integers; errors name the file and line.
"""
from __future__ import annotations

import json
import os
import re


class LabelMapError(ValueError):
    """A label map file or sidecar that cannot be used; the message names the file and the line or entry."""


# The 20 PASCAL VOC classes in the customary (alphabetical) order, ids 1..20.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def from_names(names) -> dict:
    """Names in order -> {1: names[0], 2: names[1], ...}."""
    label_map = {}
    for i, name in enumerate(names):
        label_map[i + 1] = name
    _validate(label_map, "<names>")
    return label_map


def voc_label_map() -> dict:
    return from_names(VOC_CLASSES)


def read_label_map(path: str) -> dict:
    """Reads a label map file (see the module docstring) -> {id: name} in file order."""
    if not os.path.isfile(path):
        raise LabelMapError(f"label map {path}: file not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        label_map = _parse_json(text, path)
    elif ext == ".pbtxt":
        label_map = _parse_pbtxt(text, path)
    else:
        label_map = _parse_lines(text, path)
    if not label_map:
        raise LabelMapError(f"label map {path}: no classes found")
    _validate(label_map, path)
    return label_map


_CVAT_HEADER = "# label:color_rgb:parts:actions"


def _parse_lines(text: str, path: str) -> dict:
    label_map = {}
    seen = {}
    lines = text.splitlines()
    cvat = bool(lines) and lines[0].strip().replace(" ", "") == _CVAT_HEADER.replace(" ", "")
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if cvat:
            name = name.split(":", 1)[0].strip()
            if name == "background":
                continue
        if name in seen:
            raise LabelMapError(f"label map {path} line {lineno}: duplicate class {name!r} (first on line {seen[name]})")
        seen[name] = lineno
        label_map[len(label_map) + 1] = name
    return label_map


def _parse_json(text: str, path: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelMapError(f"label map {path} line {e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(data, dict) and "label_map" in data:  # a converter sidecar
        data = data["label_map"]
    label_map = {}
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
                raise LabelMapError(f"label map {path} entry {i}: expected {{\"id\": int, \"name\": str}}, got {entry!r}")
            items.append((entry["id"], entry["name"]))
    else:
        raise LabelMapError(f"label map {path}: expected a JSON object or list, got {type(data).__name__}")
    for key, name in items:
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise LabelMapError(f"label map {path}: id {key!r} is not an integer") from None
        if isinstance(key, float) and key != class_id:
            raise LabelMapError(f"label map {path}: id {key!r} is not an integer")
        if class_id in label_map:
            raise LabelMapError(f"label map {path}: duplicate id {class_id}")
        if not isinstance(name, str):
            raise LabelMapError(f"label map {path}: name of id {class_id} is not a string: {name!r}")
        label_map[class_id] = name
    return label_map


_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_ID = re.compile(r"\bid\s*:\s*(-?\d+)")
_NAME = re.compile(r"\b(?:display_)?name\s*:\s*(?:'([^']*)'|\"([^\"]*)\")")


def _parse_pbtxt(text: str, path: str) -> dict:
    label_map = {}
    for match in _ITEM.finditer(text):
        lineno = text.count("\n", 0, match.start()) + 1
        body = match.group(1)
        id_match = _ID.search(body)
        # `name` wins over `display_name` when both are present.
        names = [m for m in _NAME.finditer(body)]
        plain = [m for m in names if not m.group(0).startswith("display_")]
        name_match = (plain or names or [None])[0]
        if id_match is None or name_match is None:
            raise LabelMapError(f"label map {path} line {lineno}: item without id or name")
        class_id = int(id_match.group(1))
        if class_id in label_map:
            raise LabelMapError(f"label map {path} line {lineno}: duplicate id {class_id}")
        label_map[class_id] = name_match.group(1) if name_match.group(1) is not None else name_match.group(2)
    return label_map


def _validate(label_map: dict, where: str) -> None:
    names = {}
    for class_id, name in label_map.items():
        if class_id < 0:
            raise LabelMapError(f"label map {where}: negative id {class_id}")
        if not name.strip():
            raise LabelMapError(f"label map {where}: empty name for id {class_id}")
        if name in names:
            raise LabelMapError(f"label map {where}: class {name!r} has two ids, {names[name]} and {class_id}")
        names[name] = class_id


def name_to_id(label_map: dict) -> dict:
    """{id: name} -> {name: id}."""
    return {name: class_id for class_id, name in label_map.items()}


# ----------------------------------------------------------------------------------------------- sidecars
def read_sidecar(path: str) -> dict:
    """A converter sidecar `PREFIX.meta.json` as a dict (label map, counts, skips, shards)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise LabelMapError(f"sidecar {path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise LabelMapError(f"sidecar {path} line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("label_map"), list):
        raise LabelMapError(f"sidecar {path}: no 'label_map' list; is it a converter's PREFIX.meta.json?")
    return data


def sidecar_label_map(sidecar: dict, path: str = "<sidecar>") -> dict:
    """{id: name} of a sidecar dict, in dataset order."""
    label_map = {}
    for i, entry in enumerate(sidecar.get("label_map", [])):
        try:
            label_map[int(entry["id"])] = str(entry["name"])
        except (TypeError, KeyError, ValueError):
            raise LabelMapError(f"sidecar {path} label_map entry {i}: expected {{\"id\": int, \"name\": str}}, "
                                f"got {entry!r}") from None
    _validate(label_map, path)
    return label_map


def sidecars_of(files) -> dict:
    """{sidecar path: sidecar dict} for the shard prefixes of `files` that have one, in the order of `files`."""
    from ssd_tf.data.shards import sidecars_for

    return {path: read_sidecar(path) for path in sidecars_for(files).values()}


def label_map_of_files(files) -> tuple[dict, str] | tuple[None, None]:
    """The label map the converter recorded for `files` -> ({id: name}, sidecar path), or (None, None) when no
    sidecar exists. Shards of several prefixes must agree; a disagreement is an error naming both sidecars."""
    first, first_path = None, None
    for path, sidecar in sidecars_of(files).items():
        label_map = sidecar_label_map(sidecar, path)
        if first is None:
            first, first_path = label_map, path
        elif list(label_map.items()) != list(first.items()):
            raise LabelMapError(f"the shards' sidecars disagree on the label map: {first_path} has "
                                f"{_describe(first)}, {path} has {_describe(label_map)}")
    return first, first_path


def as_label_map(value) -> dict | None:
    """A label map given as {id: name}, a list of {"id", "name"} dicts, or a path to a label-map file or
    sidecar -> {id: name}; None stays None."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return read_label_map(os.fspath(value))
    if isinstance(value, dict):
        label_map = {int(k): str(v) for k, v in value.items()}
    else:
        try:
            label_map = {int(entry["id"]): str(entry["name"]) for entry in value}
        except (TypeError, KeyError, ValueError) as e:
            raise LabelMapError(f"label map must be {{id: name}} or a list of {{'id', 'name'}} dicts: {e}") from None
    _validate(label_map, "<label map>")
    return label_map


def _describe(label_map: dict, limit: int = 6) -> str:
    items = [f"{k}:{v}" for k, v in list(label_map.items())[:limit]]
    more = f", ... ({len(label_map)} classes)" if len(label_map) > limit else ""
    return "{" + ", ".join(items) + more + "}"
