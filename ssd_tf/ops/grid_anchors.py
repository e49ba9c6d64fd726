"""Grid anchors of a feature pyramid (Faster R-CNN RPN), yxyx in pixels of the padded input.

Layout: for every level, anchors are flattened in (y, x, a) order (location-major, cell anchor fastest), and the
levels are concatenated from the finest (P2) to the coarsest (P6). Within a cell, anchors run over the aspect
ratios (ratio = height / width) and, for each ratio, over the level's sizes. This is the RPN head layout of
DESIGN.md and the order of both references.

Two styles (REFERENCE_SPECS §3.2):

* ``"torchvision"`` (``AnchorGenerator``): a cell anchor of size s and ratio r is centred on 0, with
  w = s / sqrt(r), h = s * sqrt(r) computed in float32 and corners round(±w/2), round(±h/2) (round half to
  even). The stride of a level is ``image_size // feature_size`` per axis (so P6 of an 800-pixel side, 13
  cells, has stride 61, not 64), unless ``strides`` is given. Cell (i, j) is shifted by (i * stride_y,
  j * stride_x).
* ``"detectron"`` (maskrcnn-benchmark / Detectron ``generate_anchors``): base window (0, 0, stride-1,
  stride-1) with centre c = (stride-1)/2; for ratio r, ws = round(sqrt(stride² / r)), hs = round(ws * r);
  then scaled by size / stride; corners use the "+1" width convention, c ± (w-1)/2. Strides are the fixed
  anchor strides (default 4, 8, 16, 32, 64), also used for the shifts.

Everything is a TensorFlow op on static or dynamic sizes (XLA-compilable); cell anchors are computed once in
numpy. Nothing here imports the rest of the package.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

FPN_LEVELS = (2, 3, 4, 5, 6)
FPN_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one size per level, P2..P6
FPN_ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width
FPN_ANCHOR_STRIDES = (4, 8, 16, 32, 64)  # maskrcnn-benchmark ANCHOR_STRIDE
STYLES = ("torchvision", "detectron")


def _sizes_tuple(size, name):
    sizes = tuple(size) if isinstance(size, (list, tuple)) else (size,)
    if not sizes or any(not isinstance(s, (int, float)) or s <= 0 for s in sizes):
        raise ValueError(f"{name}: anchor sizes must be positive numbers, got {size!r}")
    return sizes


def _ratios_tuple(aspect_ratios, name):
    ratios = tuple(aspect_ratios)
    if not ratios or any(not isinstance(r, (int, float)) or r <= 0 for r in ratios):
        raise ValueError(f"{name}: aspect_ratios must be positive numbers, got {aspect_ratios!r}")
    return ratios


def _check_style(style, name):
    if style not in STYLES:
        raise ValueError(f"{name}: style must be one of {STYLES}, got {style!r}")


def cell_anchors(size, aspect_ratios=FPN_ASPECT_RATIOS, style="torchvision", stride=None):
    """The anchors of one cell at the origin.

    Args:
      size: a size in pixels, or a tuple of sizes (anchors per cell = len(aspect_ratios) * len(sizes)).
      aspect_ratios: height / width ratios.
      style: ``"torchvision"`` (zero-centred, rounded) or ``"detectron"`` (base window at (0, 0), "+1" widths).
      stride: the level's anchor stride, needed by ``"detectron"`` (ignored by ``"torchvision"``).
    Returns:
      float32 numpy [len(aspect_ratios) * len(sizes), 4] yxyx, ratio-major, size fastest.
    """
    sizes = _sizes_tuple(size, "cell_anchors")
    ratios = _ratios_tuple(aspect_ratios, "cell_anchors")
    _check_style(style, "cell_anchors")
    if style == "torchvision":
        # float32 throughout, as torchvision computes them; np.round is round-half-to-even like torch.round.
        scales = np.asarray(sizes, np.float32)
        h_ratios = np.sqrt(np.asarray(ratios, np.float32))
        w_ratios = np.float32(1.0) / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return np.round(np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0)).astype(np.float32)
    if stride is None or not isinstance(stride, (int, float)) or stride <= 0:
        raise ValueError(f"cell_anchors: style='detectron' needs a positive stride, got {stride!r}")
    # Detectron's generate_anchors, in float64 numpy as the reference does.
    base = float(stride)
    centre = 0.5 * (base - 1.0)
    rows = []
    for ratio in ratios:
        ws = np.round(np.sqrt(base * base / ratio))
        hs = np.round(ws * ratio)
        for s in sizes:
            w, h = ws * (s / base), hs * (s / base)
            rows.append([centre - 0.5 * (h - 1.0), centre - 0.5 * (w - 1.0),
                         centre + 0.5 * (h - 1.0), centre + 0.5 * (w - 1.0)])
    return np.asarray(rows, np.float64).astype(np.float32)


def _static_int(value):
    """A Python int if ``value`` is known at trace time, else None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    static = tf.get_static_value(value)
    return None if static is None else int(static)


def _pair(value, name):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be (height, width), got {value!r}")
        return tuple(value)
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 1 or (value.shape[0] is not None and value.shape[0] != 2):
        raise ValueError(f"{name} must be (height, width), got shape {value.shape}")
    return value[0], value[1]


def fpn_feature_sizes(image_size, levels=FPN_LEVELS):
    """Feature-map sizes of a ResNet + FPN on an input of ``image_size`` (height, width).

    Every stride-2 step of the ResNet stem, its stages and the P6 max-pool (kernel 1, stride 2) maps n to
    ceil(n / 2), so level l has ceil(n / 2**l) cells per axis. Returns a tuple of (h, w) per level (ints when
    ``image_size`` is static, else scalar tensors).
    """
    height, width = _pair(image_size, "fpn_feature_sizes: image_size")
    out = []
    for level in levels:
        if not isinstance(level, int) or level < 0:
            raise ValueError(f"fpn_feature_sizes: levels must be non-negative ints, got {levels!r}")
        step = 2 ** level
        sizes = []
        for n in (height, width):
            n_static = _static_int(n)
            sizes.append(-(-n_static // step) if n_static is not None else (n + step - 1) // step)
        out.append(tuple(sizes))
    return tuple(out)


def anchors_per_level(feature_sizes, num_cell_anchors=len(FPN_ASPECT_RATIOS)):
    """Number of anchors of each level: h * w * num_cell_anchors (ints for static sizes)."""
    out = []
    for h, w in feature_sizes:
        hs, ws = _static_int(h), _static_int(w)
        out.append(hs * ws * num_cell_anchors if hs is not None and ws is not None else h * w * num_cell_anchors)
    return tuple(out)


def grid_anchors(image_size, feature_sizes=None, sizes=FPN_ANCHOR_SIZES, aspect_ratios=FPN_ASPECT_RATIOS,
                 style="torchvision", strides=None):
    """Anchors of every level, concatenated.

    Args:
      image_size: (height, width) of the padded network input (ints or an int tensor [2]).
      feature_sizes: (h, w) per level; default ``fpn_feature_sizes(image_size)`` for P2..P6.
      sizes: one entry per level, each a size or a tuple of sizes in pixels (default 32..512).
      aspect_ratios: height / width ratios shared by all levels (default 0.5, 1, 2).
      style: ``"torchvision"`` or ``"detectron"`` (see the module docstring).
      strides: anchor stride per level, an int or (stride_y, stride_x). Default: torchvision's
        ``image_size // feature_size`` per axis for ``"torchvision"``, ``FPN_ANCHOR_STRIDES`` for ``"detectron"``.
    Returns:
      float32 [N, 4] yxyx pixels, N = sum over levels of h * w * len(aspect_ratios) * sizes per level;
      order per level (y, x, a), levels in the given order.
    """
    _check_style(style, "grid_anchors")
    ratios = _ratios_tuple(aspect_ratios, "grid_anchors")
    height, width = _pair(image_size, "grid_anchors: image_size")
    if feature_sizes is None:
        feature_sizes = fpn_feature_sizes(image_size, FPN_LEVELS[:len(sizes)])
    feature_sizes = [_pair(fs, "grid_anchors: feature_sizes entry") for fs in feature_sizes]
    if len(sizes) != len(feature_sizes):
        raise ValueError(f"grid_anchors: sizes has {len(sizes)} levels but feature_sizes has {len(feature_sizes)}")
    if strides is None and style == "detectron":
        if len(feature_sizes) != len(FPN_ANCHOR_STRIDES):
            raise ValueError(f"grid_anchors: style='detectron' with {len(feature_sizes)} levels needs strides")
        strides = FPN_ANCHOR_STRIDES
    if strides is not None and len(strides) != len(feature_sizes):
        raise ValueError(f"grid_anchors: strides has {len(strides)} levels but feature_sizes has "
                         f"{len(feature_sizes)}")
    levels = []
    for index, ((grid_h, grid_w), size) in enumerate(zip(feature_sizes, sizes)):
        if strides is None:
            stride_y, stride_x = height // grid_h, width // grid_w
            cell_stride = None
        else:
            stride = strides[index]
            stride_y, stride_x = stride if isinstance(stride, (list, tuple)) else (stride, stride)
            if not all(isinstance(s, (int, np.integer)) and s > 0 for s in (stride_y, stride_x)):
                raise ValueError(f"grid_anchors: strides[{index}] must be positive ints, got {stride!r}")
            if style == "detectron" and stride_y != stride_x:
                raise ValueError(f"grid_anchors: style='detectron' needs square strides, got {stride!r}")
            cell_stride = stride_y
        cell = tf.constant(cell_anchors(size, ratios, style, cell_stride))  # [A, 4]
        shift_y = tf.cast(tf.range(grid_h) * tf.cast(stride_y, tf.int32), tf.float32)  # [h]
        shift_x = tf.cast(tf.range(grid_w) * tf.cast(stride_x, tf.int32), tf.float32)  # [w]
        sy, sx = tf.meshgrid(shift_y, shift_x, indexing="ij")  # [h, w]
        shifts = tf.stack([sy, sx, sy, sx], axis=-1)  # [h, w, 4]
        levels.append(tf.reshape(shifts[:, :, None, :] + cell[None, None], [-1, 4]))  # [h*w*A, 4]
    return tf.concat(levels, axis=0)


def anchor_visibility(anchors, image_shape, straddle_thresh=0.0):
    """maskrcnn-benchmark's RPN ``STRADDLE_THRESH`` rule: which anchors lie inside each image (torchvision uses all).

    An anchor is visible when ymin >= -t, xmin >= -t, ymax < height + t and xmax < width + t; a negative
    ``straddle_thresh`` makes every anchor visible. maskrcnn-benchmark ignores invisible anchors in RPN training
    (set their matcher output to -2 before sampling).

    Args:
      anchors: float [A, 4] yxyx pixels. image_shape: [B, 2] true (height, width) of each image.
    Returns:
      bool [B, A].
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
    if anchors.shape.rank != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchor_visibility: anchors must be [A, 4], got shape {anchors.shape}")
    if image_shape.shape.rank != 2 or image_shape.shape[-1] != 2:
        raise ValueError(f"anchor_visibility: image_shape must be [B, 2] (height, width), got shape "
                         f"{image_shape.shape}")
    shape = tf.stack([tf.shape(image_shape)[0], tf.shape(anchors)[0]])
    if straddle_thresh < 0:
        return tf.fill(shape, True)
    t = float(straddle_thresh)
    height, width = image_shape[:, 0:1], image_shape[:, 1:2]  # [B, 1]
    return ((anchors[None, :, 0] >= -t) & (anchors[None, :, 1] >= -t)
            & (anchors[None, :, 2] < height + t) & (anchors[None, :, 3] < width + t))
