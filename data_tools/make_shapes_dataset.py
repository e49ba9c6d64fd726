"""A deterministic synthetic detection dataset: filled shapes on noisy / gradient backgrounds, COCO JSON.

    python -m data_tools.make_shapes_dataset --output_dir D [--num_train 1000 --num_val 200
                                             --image_size 300 --seed 0]

writes `D/train/*.jpg`, `D/val/*.jpg`, `D/annotations/instances_{train,val}.json` (COCO format,
categories 1=circle, 2=square, 3=triangle, 4=cross) and `D/labels.txt` (the names, one per line).
Python: `make_shapes_dataset(output_dir, num_train, num_val, image_size, seed) -> dict of paths`.

Each image has 1-4 shapes whose size is 15-60 % of the image side, in solid colours chosen far from
the background colours; later shapes may overlap earlier ones, but every shape keeps at least 60 % of
its pixels visible. Each COCO `bbox` is the exact tight bound of the shape's *visible* pixels as
drawn (pixel columns c0..c1 -> x = c0, w = c1 - c0 + 1), `area` the number of visible pixels, and
`segmentation` the outline polygon of the whole shape. Shapes are drawn without anti-aliasing and
saved as JPEG (quality 90, no chroma subsampling), so edges survive compression to within a pixel.
Every image draws from its own random generator seeded by (seed, split, index): the same seed gives
byte-identical files, and the val split does not depend on --num_train.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys

if __package__ in (None, ""):  # `python data_tools/make_shapes_dataset.py`: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
SPLITS = ("train", "val")
MIN_SIZE_FRACTION = 0.15
MAX_SIZE_FRACTION = 0.60
MIN_VISIBLE_FRACTION = 0.6
MAX_OBJECTS = 4
JPEG_QUALITY = 90
_PLACEMENT_TRIES = 30


def _outline(kind: str, x: float, y: float, s: float, rng) -> list:
    """Polygon [(x, y), ...] of a shape in the square [x, x+s] x [y, y+s]."""
    if kind == "circle":
        r = s / 2.0
        n = 48
        return [(x + r + r * math.cos(2 * math.pi * i / n), y + r + r * math.sin(2 * math.pi * i / n)) for i in range(n)]
    if kind == "square":
        return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]
    if kind == "triangle":
        if rng.random() < 0.5:  # apex up
            return [(x + s / 2.0, y), (x + s, y + s), (x, y + s)]
        return [(x, y), (x + s, y), (x + s / 2.0, y + s)]
    if kind == "cross":
        a, b = x + s / 3.0, x + 2 * s / 3.0
        c, d = y + s / 3.0, y + 2 * s / 3.0
        return [(a, y), (b, y), (b, c), (x + s, c), (x + s, d), (b, d), (b, y + s), (a, y + s), (a, d),
                (x, d), (x, c), (a, c)]
    raise ValueError(f"unknown shape {kind!r}")


def _mask(kind: str, polygon, x, y, s, size: int) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return np.asarray(img) > 0


def noise_tile(seed: int, size: int) -> np.ndarray:
    """float32 [2S, 2S, 3] standard-normal noise shared by a split; images use random windows of it."""
    return np.random.default_rng([seed, 1000003]).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _interpolation(size: int, n: int):
    """(lo int [size], frac float32 [size]): linear interpolation from n grid points to size pixels."""
    pos = np.linspace(0.0, n - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(np.intp), n - 2)
    return lo, (pos - lo).astype(np.float32)


def _background(rng, size: int, tile=None):
    """float32 [size, size, 3]: a gradient between two colours, plus fine or blotchy noise; and the colours.

    Computed as [S, S*3] rows (numpy is slow when broadcasting over a last axis of length 3).
    """
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-80, 80, 3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    # t(x, y) = (a x + b y - t_min) / (t_max - t_min) on [0, 1]^2: a ramp along the angle, 0 to 1.
    a, b = math.cos(angle), math.sin(angle)
    t_min, t_max = min(a, 0) + min(b, 0), max(a, 0) + max(b, 0)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    delta = np.tile(c1 - c0, size)  # [S*3], per (x, channel)
    row = np.tile(c0, size) + delta * np.repeat((a * ramp - t_min) / (t_max - t_min), 3)  # [S*3], at y = 0
    image = np.multiply.outer(np.float32(b / (t_max - t_min)) * ramp, delta)  # [S, S*3], the y part
    image += row
    noise = ("none", "fine", "blotchy")[int(rng.integers(0, 3))]
    if noise == "fine":
        if tile is None or tile.shape[0] < 2 * size:
            tile = noise_tile(int(rng.integers(0, 2**31)), size)
        oy, ox = (int(v) for v in rng.integers(0, size, 2))
        flat = tile.reshape(tile.shape[0], -1)  # [2S, 2S*3]
        image += flat[oy:oy + size, 3 * ox:3 * (ox + size)] * np.float32(rng.uniform(3.0, 10.0))
    elif noise == "blotchy":  # low-frequency texture: noise on a coarse grid, upsampled
        coarse = rng.standard_normal((size // 10 + 1, size // 10 + 1), dtype=np.float32)
        lo, frac = _interpolation(size, coarse.shape[0])  # bilinear upsampling, no BLAS (threads)
        rows = coarse[lo] * (1 - frac)[:, None] + coarse[lo + 1] * frac[:, None]  # [S, n]
        blot = rows[:, lo] * (1 - frac)[None, :] + rows[:, lo + 1] * frac[None, :]  # [S, S]
        blot *= np.float32(rng.uniform(10.0, 25.0))
        image += np.repeat(blot, 3, axis=1)
    return image.reshape(size, size, 3), (c0, c1)


def _contrasting_colour(rng, avoid) -> np.ndarray:
    """A saturated-ish RGB colour, the farthest from `avoid` of a few random candidates."""
    candidates = rng.integers(0, 256, (12, 3)).astype(np.float64)
    dist = np.min([np.linalg.norm(candidates - np.asarray(a)[None], axis=1) for a in avoid], axis=0)
    return candidates[int(np.argmax(dist))]


def render_sample(rng, image_size: int, tile=None):
    """-> (uint8 [S, S, 3] image, [object dicts: category_id, name, bbox (x0, y0, x1, y1) inclusive
    pixel indices of the visible pixels, area, polygon, visible_mask, colour]).

    tile: optional `noise_tile(...)` to draw the fine noise from (saves generating it per image).
    """
    size = int(image_size)
    image, background_colours = _background(rng, size, tile)
    owner = np.full((size, size), -1, np.int16)  # index of the shape that owns each pixel
    full_area, visible_area = [], []
    shapes = []
    num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(num_objects):
        kind_index = int(rng.integers(0, len(CLASSES)))
        kind = CLASSES[kind_index]
        for _ in range(_PLACEMENT_TRIES):
            s = rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION) * size
            x = rng.uniform(0, size - s - 1)
            y = rng.uniform(0, size - s - 1)
            polygon = _outline(kind, x, y, s, rng)
            mask = _mask(kind, polygon, x, y, s, size)
            area = int(np.count_nonzero(mask))
            if area == 0:
                continue
            lost = np.bincount(owner[mask] + 1, minlength=len(shapes) + 1)[1:]  # pixels each shape would lose
            remaining = [visible_area[k] - int(lost[k]) for k in range(len(shapes))]
            if all(remaining[k] >= MIN_VISIBLE_FRACTION * full_area[k] for k in range(len(shapes))):
                owner[mask] = len(shapes)
                visible_area[:] = remaining
                full_area.append(area)
                visible_area.append(area)
                colour = _contrasting_colour(rng, list(background_colours) + [sh["colour"] for sh in shapes])
                shapes.append({"category_id": kind_index + 1, "name": kind, "polygon": polygon, "colour": colour})
                break
    for k, shape in enumerate(shapes):
        visible = owner == k
        image[visible] = shape["colour"]
        cols = np.flatnonzero(visible.any(axis=0))
        rows = np.flatnonzero(visible.any(axis=1))
        shape["bbox"] = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
        shape["area"] = int(visible_area[k])
        shape["visible_mask"] = visible
    image += np.float32(0.5)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), shapes


def _write_split(output_dir: str, split_index: int, count: int, image_size: int, seed: int) -> str:
    split = SPLITS[split_index]
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    tile = noise_tile(seed, image_size) if count else None
    for i in range(count):
        rng = np.random.default_rng([seed, split_index, i])
        pixels, shapes = render_sample(rng, image_size, tile)
        file_name = f"{i + 1:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), format="JPEG", quality=JPEG_QUALITY,
                                     subsampling=0)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for shape in shapes:
            x0, y0, x1, y1 = shape["bbox"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": shape["category_id"],
                "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                "area": float(shape["area"]), "iscrowd": 0,
                "segmentation": [[round(v, 2) for xy in shape["polygon"] for v in xy]],
            })
    coco = {
        "info": {"description": f"ssd_tf synthetic shapes, {split} split", "seed": seed, "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)],
    }
    json_path = os.path.join(output_dir, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    return json_path


def make_shapes_dataset(output_dir: str, num_train: int = 1000, num_val: int = 200, image_size: int = 300,
                        seed: int = 0) -> dict:
    """Writes the dataset; returns {"root", "train_images", "val_images", "train_json", "val_json", "labels"}."""
    for name, value, low in (("num_train", num_train, 0), ("num_val", num_val, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    os.makedirs(output_dir, exist_ok=True)
    paths = {"root": output_dir}
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        paths[f"{split}_json"] = _write_split(output_dir, split_index, int(count), int(image_size), int(seed))
        paths[f"{split}_images"] = os.path.join(output_dir, split)
    labels = os.path.join(output_dir, "labels.txt")
    with open(labels, "w", encoding="utf-8") as f:
        f.write("\n".join(CLASSES) + "\n")
    paths["labels"] = labels
    return paths


def main(argv):
    from absl import flags

    from data_tools.cli_help import usage_error, writable_dir_problem

    if len(argv) > 1:
        usage_error(f"unexpected positional argument(s) {' '.join(argv[1:])!r}")
    FLAGS = flags.FLAGS
    if not FLAGS.output_dir:
        usage_error("--output_dir is required")
    if writable_dir_problem(FLAGS.output_dir):
        usage_error(f"--output_dir={FLAGS.output_dir}: {writable_dir_problem(FLAGS.output_dir)}")
    paths = make_shapes_dataset(FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.image_size, FLAGS.seed)
    print(json.dumps(paths, indent=1))


def define_flags():
    """Defines the flags (idempotent; a name another tool already defined is shared)."""
    from data_tools.cli_help import define_flag as define

    define("DEFINE_string", "output_dir", None, "Where to write train/, val/, annotations/.")
    define("DEFINE_integer", "num_train", 1000, "Training images.", lower_bound=0)
    define("DEFINE_integer", "num_val", 200, "Validation images.", lower_bound=0)
    define("DEFINE_integer", "image_size", 300, "Image side in pixels (square images).", lower_bound=32)
    define("DEFINE_integer", "seed", 0, "Random seed; the same seed gives byte-identical files.", lower_bound=0)


def run():
    from absl import app

    define_flags()
    from data_tools.cli_help import expose_flags_in_help, parse_flags

    expose_flags_in_help(__spec__.name if __spec__ else "data_tools.make_shapes_dataset")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
