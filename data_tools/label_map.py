"""Label map files: class names and their dataset ids, in dataset order.

A label map is returned as a `dict[int, str]` (id -> name) whose iteration order is the dataset order.
`read_label_map(path)` accepts, chosen by the file's extension:

- `.json`: either an object `{"1": "cat", "2": "dog"}` or a list `[{"id": 1, "name": "cat"}, ...]`
  (the converter sidecar's `label_map` list has this form too, as does a COCO `categories` list).
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

from data_tools.records import ConversionError

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
        raise ConversionError(f"label map {path}: file not found")
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
        raise ConversionError(f"label map {path}: no classes found")
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
            raise ConversionError(f"label map {path} line {lineno}: duplicate class {name!r} (first on line {seen[name]})")
        seen[name] = lineno
        label_map[len(label_map) + 1] = name
    return label_map


def _parse_json(text: str, path: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversionError(f"label map {path} line {e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(data, dict) and "label_map" in data:  # a converter sidecar
        data = data["label_map"]
    label_map = {}
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
                raise ConversionError(f"label map {path} entry {i}: expected {{\"id\": int, \"name\": str}}, got {entry!r}")
            items.append((entry["id"], entry["name"]))
    else:
        raise ConversionError(f"label map {path}: expected a JSON object or list, got {type(data).__name__}")
    for key, name in items:
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise ConversionError(f"label map {path}: id {key!r} is not an integer") from None
        if isinstance(key, float) and key != class_id:
            raise ConversionError(f"label map {path}: id {key!r} is not an integer")
        if class_id in label_map:
            raise ConversionError(f"label map {path}: duplicate id {class_id}")
        if not isinstance(name, str):
            raise ConversionError(f"label map {path}: name of id {class_id} is not a string: {name!r}")
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
            raise ConversionError(f"label map {path} line {lineno}: item without id or name")
        class_id = int(id_match.group(1))
        if class_id in label_map:
            raise ConversionError(f"label map {path} line {lineno}: duplicate id {class_id}")
        label_map[class_id] = name_match.group(1) if name_match.group(1) is not None else name_match.group(2)
    return label_map


def _validate(label_map: dict, where: str) -> None:
    names = {}
    for class_id, name in label_map.items():
        if class_id < 0:
            raise ConversionError(f"label map {where}: negative id {class_id}")
        if not name.strip():
            raise ConversionError(f"label map {where}: empty name for id {class_id}")
        if name in names:
            raise ConversionError(f"label map {where}: class {name!r} has two ids, {names[name]} and {class_id}")
        names[name] = class_id


def name_to_id(label_map: dict) -> dict:
    """{id: name} -> {name: id}."""
    return {name: class_id for class_id, name in label_map.items()}
