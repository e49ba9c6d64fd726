"""Boxes, class names and scores drawn on a picture (Pillow; no TensorFlow).

``draw_detections(image, boxes, class_ids, scores, label_map)`` returns an annotated ``PIL.Image``:

* one colour per class (a fixed 20-colour palette indexed by the class's position in the label map, so a class
  keeps its colour across pictures, predict runs and evaluation plots);
* labels ``name 0.87`` on a filled tag in the box's colour, text black or white by the tag's brightness, placed
  above the box when there is room, else inside it, and kept inside the picture;
* readable on small and large pictures: a picture whose shorter side is under ``min_side`` pixels is enlarged
  first (boxes with it), and the font size and line width follow the picture's size.

``side_by_side(left, right, titles)`` puts two pictures next to each other (ground truth | detections).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# tab20 reordered so that neighbouring classes get distinct hues (RGB).
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)


def class_color(class_id: int, label_map: dict | None = None) -> tuple:
    """The colour of a dataset class id: by its position in ``label_map`` when it is there, else by the id."""
    ids = list(label_map) if label_map else []
    index = ids.index(class_id) if class_id in ids else int(class_id)
    return PALETTE[index % len(PALETTE)]


@functools.lru_cache(maxsize=32)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_color(rgb) -> tuple:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def as_pil(image) -> Image.Image:
    """uint8 [H, W, 3] / [H, W] array or a PIL image -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def _enlarged(picture: Image.Image, min_side: int) -> tuple[Image.Image, float]:
    short = min(picture.size)
    if short <= 0 or short >= min_side:
        return picture, 1.0
    factor = min_side / short
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.Resampling.BILINEAR), factor


def font_size(width: int, height: int) -> int:
    """Label font size in pixels for a picture of that size (after enlargement): 1/40 of the longer side, at
    least 13."""
    return max(13, round(max(width, height) / 40))


def draw_detections(image, boxes, class_ids, scores=None, label_map: dict | None = None, *,
                    score_threshold: float = 0.0, min_side: int = 320, max_labels: int = 100) -> Image.Image:
    """Draws ``boxes`` (yxyx pixels of ``image``) with class names (``label_map`` {dataset id: name}) and
    ``scores`` (None: names only, e.g. ground truth). Boxes under ``score_threshold`` are left out; at most
    ``max_labels`` boxes are drawn (the best first), the lowest-scored below the others."""
    picture, factor = _enlarged(as_pil(image), min_side)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * factor
    class_ids = np.asarray(class_ids).reshape(-1).astype(np.int64)
    scores = None if scores is None else np.asarray(scores, np.float64).reshape(-1)
    order = np.arange(len(boxes))
    if scores is not None:
        order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    order = list(order)[:max_labels][::-1]  # best drawn last, i.e. on top

    width, height = picture.size
    line = max(2, round(max(width, height) / 400))
    font = _font(font_size(width, height))
    draw = ImageDraw.Draw(picture)
    for i in order:
        y0, x0, y1, x1 = (float(v) for v in boxes[i])
        x0, x1 = sorted((min(max(x0, 0.0), width - 1.0), min(max(x1, 0.0), width - 1.0)))
        y0, y1 = sorted((min(max(y0, 0.0), height - 1.0), min(max(y1, 0.0), height - 1.0)))
        cid = int(class_ids[i])
        color = class_color(cid, label_map)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
        name = (label_map or {}).get(cid, str(cid))
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(1, th // 5)
        tag_h = th + 2 * pad
        ty = y0 - tag_h if y0 - tag_h >= 0 else y0  # above the box, else inside its top edge
        tx = min(max(x0, 0.0), max(width - tw - 2 * pad, 0.0))
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + tag_h], fill=color)
        draw.text((tx + pad - left, ty + pad - top), text, fill=_text_color(color), font=font)
    return picture


def side_by_side(left: Image.Image, right: Image.Image, titles=("ground truth", "detections"),
                 gap: int = 8) -> Image.Image:
    """Two pictures next to each other on a white sheet, each with a title above it."""
    height = max(left.height, right.height)
    font = _font(max(12, round(max(left.width + right.width, height) / 60)))
    title_h = math.ceil(font.size * 1.5) if hasattr(font, "size") else 16
    sheet = Image.new("RGB", (left.width + right.width + 3 * gap, height + title_h + 2 * gap), "white")
    draw = ImageDraw.Draw(sheet)
    x = gap
    for picture, title in zip((left, right), titles):
        draw.text((x, gap // 2), title, fill=(0, 0, 0), font=font)
        sheet.paste(picture, (x, title_h + gap))
        x += picture.width + gap
    return sheet
