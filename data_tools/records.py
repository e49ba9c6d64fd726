"""The intermediate form every converter produces before writing TFRecords.

A converter's *parser* turns its annotation format (COCO JSON, VOC XML, text lines) into a list of
`ImageRecord`s and reports what it could not use in a `SkipReport`. The shared *writer*
(`data_tools.writer`) then reads each image, checks it against its record, clips or skips boxes,
builds the `tf.train.Example` and writes the shards. Boxes here are in the source's absolute pixel
frame, x first, continuous coordinates (a box covering pixel columns 0..9 is xmin=0, xmax=10);
conversion to the package convention (normalised [ymin, xmin, ymax, xmax]) happens in the writer.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional


class ConversionError(ValueError):
    """Bad input that stops a conversion. The message names the file and the record or line."""


def unsafe_relative_path(name: str) -> Optional[str]:
    """Why an image path taken from an annotation file may not be joined to the image directory: "absolute"
    (POSIX or Windows: `/x`, `\\x`, `C:...`) or "escapes" (a `..` component, `/` or `\\` separated); None
    for a plain relative path. Every converter refuses both (a file outside the image directory is never read).
    """
    if name.startswith(("/", "\\")) or name[1:2] == ":" or os.path.isabs(name):
        return "absolute"
    if ".." in name and ".." in name.replace("\\", "/").split("/"):
        return "escapes"
    return None


@dataclasses.dataclass
class ObjectAnnotation:
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int  # the dataset's own category id (COCO 1..90, label-map id for VOC / text lines)
    text: str  # category name
    is_crowd: bool = False
    difficult: bool = False
    truncated: bool = False
    area: Optional[float] = None  # None: the writer uses the (clipped) box area in pixels
    where: str = ""  # e.g. "Annotations/0001.xml object 3" or "instances.json annotation id 17"


@dataclasses.dataclass
class ImageRecord:
    image_path: str  # absolute or relative to the working directory; read by the writer
    source_id: str  # COCO image id, VOC file stem, ...
    filename: str  # name as given by the annotation
    height: Optional[int]  # size stated by the annotation (None: take it from the image)
    width: Optional[int]
    objects: list  # list[ObjectAnnotation]
    where: str = ""  # e.g. "instances.json image id 42", "train.txt line 7"


class SkipReport:
    """Collects everything a conversion leaves out, with the reason; `strict` raises instead."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.entries = []  # dicts: {"kind": "image"|"box", "where": str, "reason": str}

    def skip(self, kind: str, where: str, reason: str) -> None:
        if self.strict:
            raise ConversionError(f"{where}: {reason} (--strict turns skips into errors)")
        self.entries.append({"kind": kind, "where": where, "reason": reason})

    def extend(self, entries) -> None:
        for e in entries:
            self.skip(e["kind"], e["where"], e["reason"])

    def counts(self) -> dict:
        out = {}
        for e in self.entries:
            out[e["kind"]] = out.get(e["kind"], 0) + 1
        return out

    def to_json(self) -> str:
        return json.dumps(self.entries)
