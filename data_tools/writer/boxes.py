"""Box checks (absolute continuous pixels, x first, as in `data_tools.records`).

Non-finite coordinates, zero or negative width/height, or nothing left inside the image after clipping
to [0, width] x [0, height] -> the box is skipped with its reason; a box partly outside is clipped (and
counted by the caller).
"""
from __future__ import annotations

import math

from data_tools.records import ImageRecord


def _desc(xmin, ymin, xmax, ymax) -> str:
    return f"[xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}]"


def check_box(obj, width: int, height: int):
    """-> ((xmin, ymin, xmax, ymax) clipped to the image, clipped: bool) or (None, skip reason)."""
    try:
        xmin, ymin, xmax, ymax = float(obj.xmin), float(obj.ymin), float(obj.xmax), float(obj.ymax)
    except (TypeError, ValueError):
        return None, f"non-numeric box coordinates {(obj.xmin, obj.ymin, obj.xmax, obj.ymax)}"
    if not (math.isfinite(xmin) and math.isfinite(ymin) and math.isfinite(xmax) and math.isfinite(ymax)):
        return None, f"non-finite box coordinates {_desc(xmin, ymin, xmax, ymax)}"
    if xmax < xmin or ymax < ymin:
        return None, f"negative box size {_desc(xmin, ymin, xmax, ymax)}"
    if xmax == xmin or ymax == ymin:
        return None, f"zero-size box {_desc(xmin, ymin, xmax, ymax)}"
    cx0 = xmin if xmin >= 0.0 else 0.0
    cy0 = ymin if ymin >= 0.0 else 0.0
    cx1 = xmax if xmax <= width else float(width)
    cy1 = ymax if ymax <= height else float(height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, (f"box {_desc(xmin, ymin, xmax, ymax)} has no area inside the {width}x{height} (WxH) "
                      "image after clipping")
    return (cx0, cy0, cx1, cy1), (cx0 != xmin or cy0 != ymin or cx1 != xmax or cy1 != ymax)


def box_where(record: ImageRecord, j: int, obj) -> str:
    return obj.where or f"{record.where or record.image_path} object {j}"
