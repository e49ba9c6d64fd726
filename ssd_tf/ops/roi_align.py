"""RoIAlign on NHWC feature maps, single level and FPN multi-level (torchvision / maskrcnn-benchmark semantics).

Semantics (torchvision ``ops.roi_align`` CPU kernel with ``aligned=False``, the "legacy" RoIAlign that
maskrcnn-benchmark also uses; REFERENCE_SPECS §3.5 and §4.8):

* a RoI [ymin, xmin, ymax, xmax] in input pixels starts at (ymin * scale, xmin * scale) on the level and is
  (ymax - ymin) * scale by (xmax - xmin) * scale feature pixels, each side clamped to >= 1 (``aligned=True``:
  0.5 is subtracted from the start and end, no clamp);
* it is cut into P x P bins (``output_size``); bin (ph, pw) averages S x S bilinear samples (``sampling_ratio``)
  at y = start_y + ph * bin_h + (iy + 0.5) * bin_h / S (same for x);
* a sample with y < -1 or y > H (or x < -1 or x > W) contributes 0; otherwise y and x are clamped into
  [0, H - 1] and [0, W - 1] and interpolated bilinearly; the bin value is the sum over its S x S samples / S².

FPN level of a RoI (torchvision ``LevelMapper``, canonical 224 px at level 4):
k = floor(4 + log2(sqrt(area) / 224) + 1e-6) clamped to [min_level, max_level]. maskrcnn-benchmark measures the
area with "+1" sides and adds the 1e-6 inside the log: floor(4 + log2(sqrt(area) / 224 + 1e-6)). The decision is
made by comparing the area against the exact level thresholds (float64), so it agrees with the references except
for areas within float32 rounding of a threshold.

Two implementations (``method``), both computing torchvision's sample positions with the same float operations
in the same order (so they agree with torchvision's float32 kernel to ~1e-6, where any other order of operations
differs by ~1e-4 on a 200 x 304 P2 map: float32 positions near 300 have a 3e-5 px ulp):

* ``"crop_and_resize"`` (default, fastest on CPU): every sample is a 1 x 1 ``tf.image.crop_and_resize`` at its
  clamped position; each level is zero-padded to 2**k + 1 rows and columns so that the normalised coordinate
  position / 2**k is exact and crop_and_resize recovers the position bit for bit; empty samples read a zero
  pixel; S x S average pooling makes the bins. RoIs go to their level with ``tf.dynamic_partition`` /
  ``tf.dynamic_stitch``. ``CropAndResize`` has no XLA kernel; positions are float32 whatever the feature dtype.
* ``"gather"``: the four bilinear corners of every sample gathered from all levels flattened into one tensor,
  weighted and summed. XLA-compilable (and fast only under XLA, where the gathers fuse with the sums), exact in
  float64; outside XLA it materialises [B * R * (S*P)², C] per corner.

Measured on a shared 2-core Xeon (AVX-512; other sessions kept the load at 4-8, so process CPU time is the steadier
figure), B = 2, C = 256, P2..P5 of an 800 x 1216 input, CPU ms (wall ms):

* ``"crop_and_resize"`` (default): forward 2 x 1000 RoIs 218 (408), forward + backward 2 x 512 546 (1119);
* ``"gather"`` under XLA: 660 (1373), 858 (1305); without XLA: 1917 (3462), 2077 (4600);
* 14 x 14 crop_and_resize + 2 x 2 mean (not kept: 1.2e-4 from torchvision): 235 (458), 430 (946);
* torchvision ``MultiScaleRoIAlign``, 2 threads: 624 (1310), 2211 (4564).

Gradients flow to the features only (torchvision does not differentiate with respect to the RoIs).

Nothing here imports the rest of the package.
"""
from __future__ import annotations

import tensorflow as tf

METHODS = ("crop_and_resize", "gather")
DEFAULT_METHOD = "crop_and_resize"  # fastest outside XLA; jit-compiled callers pass method="gather"
FPN_ROI_LEVELS = (2, 3, 4, 5)  # P2..P5, scales 1/4 .. 1/32


# ----------------------------------------------------------------------------------------------------------------
# Level assignment
# ----------------------------------------------------------------------------------------------------------------

def roi_levels(rois, min_level=2, max_level=5, canonical_size=224.0, canonical_level=4, eps=1e-6, plus_one=False,
               eps_in_log=None):
    """FPN level of each RoI.

    Args:
      rois: float [..., 4] yxyx in input pixels.
      min_level, max_level: the clamp (P2..P5 by default).
      canonical_size, canonical_level, eps: the FPN heuristic's constants (224, 4, 1e-6).
      plus_one: measure the area with "+1" sides (maskrcnn-benchmark ``BoxList.area``).
      eps_in_log: add ``eps`` to sqrt(area) / canonical_size inside the log (maskrcnn-benchmark) instead of to the
        log (torchvision); default: ``plus_one``.
    Returns:
      int32 [...] levels in [min_level, max_level].
    """
    rois = tf.convert_to_tensor(rois)
    if rois.shape.rank is not None and (rois.shape.rank < 1 or rois.shape[-1] != 4):
        raise ValueError(f"roi_levels: rois must be [..., 4], got shape {rois.shape}")
    if not (isinstance(min_level, int) and isinstance(max_level, int) and 0 <= min_level <= max_level):
        raise ValueError(f"roi_levels: need ints 0 <= min_level <= max_level, got {min_level}, {max_level}")
    eps_in_log = plus_one if eps_in_log is None else eps_in_log
    ymin, xmin, ymax, xmax = tf.unstack(rois, 4, axis=-1)
    one = 1.0 if plus_one else 0.0
    area = (xmax - xmin + one) * (ymax - ymin + one)  # as the references: no clamp (inverted boxes are invalid)
    area = tf.cast(area, tf.float64)
    level = tf.fill(tf.shape(area), tf.constant(min_level, tf.int32))
    for n in range(min_level + 1, max_level + 1):
        # floor(lvl0 + log2(s / s0) + eps) >= n  <=>  s >= s0 * 2^(n - lvl0 - eps)
        # floor(lvl0 + log2(s / s0 + eps)) >= n  <=>  s >= s0 * (2^(n - lvl0) - eps)
        if eps_in_log:
            threshold = canonical_size * (2.0 ** (n - canonical_level) - eps)
        else:
            threshold = canonical_size * 2.0 ** (n - canonical_level - eps)
        level += tf.cast(area >= threshold * threshold, tf.int32)
    return level


# ----------------------------------------------------------------------------------------------------------------
# Shared argument checks and sample geometry
# ----------------------------------------------------------------------------------------------------------------

def _check_common(name, rois, output_size, sampling_ratio, method):
    if rois.shape.rank != 3 or rois.shape[-1] != 4:
        raise ValueError(f"{name}: rois must be [B, R, 4] yxyx, got shape {rois.shape}")
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"{name}: output_size must be an int >= 1, got {output_size!r}")
    if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
        raise ValueError(f"{name}: sampling_ratio must be an int >= 1 (adaptive sampling is not supported), "
                         f"got {sampling_ratio!r}")
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")


def _check_features(name, features, batch_axis):
    if features.shape.rank != 4:
        raise ValueError(f"{name}: feature maps must be [B, H, W, C], got shape {features.shape}")
    if (batch_axis is not None and features.shape[0] is not None and features.shape[0] != batch_axis):
        raise ValueError(f"{name}: feature map batch {features.shape[0]} differs from rois batch {batch_axis}")


def _divide(x, constant):
    """x / constant rounded as a true division. XLA rewrites division by a constant into multiplication by its
    reciprocal (a different rounding for 7, say); a divisor that depends on the data (constant + min(|x|, 0), equal
    to the constant for finite x) keeps the division."""
    return x / (constant + tf.minimum(tf.abs(x), 0.0))


def _product(x, y):
    """x * y rounded on its own. XLA on CPU contracts a multiply feeding an add into one fused multiply-add (a
    different rounding of start + p * bin); adding min(|x|, 0) (0 for finite x) to the product keeps the
    product's own rounding whether or not that add is fused."""
    return x * y + tf.minimum(tf.abs(x), 0.0)


def _roi_geometry(rois, scale, output_size, aligned, dtype):
    """Per-RoI start and bin size on the level, in torchvision's float order. rois [...,4]; scale [...] or scalar."""
    rois = tf.cast(rois, dtype)
    scale = tf.cast(scale, dtype)
    offset = tf.constant(0.5 if aligned else 0.0, dtype)
    ymin, xmin, ymax, xmax = tf.unstack(rois, 4, axis=-1)
    start_y, start_x = ymin * scale - offset, xmin * scale - offset
    size_y, size_x = (ymax * scale - offset) - start_y, (xmax * scale - offset) - start_x
    if not aligned:
        size_y, size_x = tf.maximum(size_y, 1.0), tf.maximum(size_x, 1.0)
    return start_y, start_x, _divide(size_y, float(output_size)), _divide(size_x, float(output_size))


def _sample_positions(start, bin_size, output_size, sampling_ratio):
    """Sample coordinates [..., P * S] (bin-major): start + p * bin + ((i + 0.5) * bin) / S."""
    dtype = start.dtype
    p = tf.cast(tf.range(output_size), dtype)  # [P]
    i = tf.cast(tf.range(sampling_ratio), dtype) + 0.5  # [S]
    start, bin_size = start[..., None, None], bin_size[..., None, None]
    pos = (start + _product(bin_size, p[:, None])) + _divide(i[None, :] * bin_size, float(sampling_ratio))  # [.., P, S]
    return tf.reshape(pos, tf.concat([tf.shape(pos)[:-2], [output_size * sampling_ratio]], 0))


# ----------------------------------------------------------------------------------------------------------------
# Method "gather"
# ----------------------------------------------------------------------------------------------------------------

def _axis_taps(pos, size):
    """Bilinear taps along one axis, torchvision's rule. pos [..., N] float; size [...] int32 (H or W).

    Returns (low, high) int32 [..., N] and (w_low, w_high) [..., N]; both weights are 0 for samples outside
    [-1, size] (torchvision's empty sample) and their taps point at pixel 0."""
    dtype = pos.dtype
    size = size[..., None]
    inside = (pos >= -1.0) & (pos <= tf.cast(size, dtype))
    y = tf.maximum(pos, 0.0)
    low = tf.cast(tf.floor(y), tf.int32)
    at_end = low >= size - 1
    low = tf.where(at_end, size - 1, low)
    high = tf.where(at_end, low, low + 1)
    y = tf.where(at_end, tf.cast(low, dtype), y)
    frac = y - tf.cast(low, dtype)
    zero = tf.zeros_like(frac)
    w_low = tf.where(inside, 1.0 - frac, zero)
    w_high = tf.where(inside, frac, zero)
    return tf.where(inside, low, 0), tf.where(inside, high, 0), w_low, w_high


def _gather_align(flat_features, rois, scale, height, width, offset, output_size, sampling_ratio, aligned):
    """flat_features [B, T, C]; rois [B, R, 4]; per RoI: scale (feature dtype), height, width and the offset of
    its level in T (int32), all [B, R]. Returns [B, R, P, P, C]."""
    dtype = flat_features.dtype
    p, s = output_size, sampling_ratio
    batch, num_rois = tf.shape(rois)[0], tf.shape(rois)[1]
    total, channels = tf.shape(flat_features)[1], tf.shape(flat_features)[2]
    start_y, start_x, bin_y, bin_x = _roi_geometry(rois, scale, output_size, aligned, dtype)  # [B, R]
    y_low, y_high, wy_low, wy_high = _axis_taps(_sample_positions(start_y, bin_y, p, s), height)  # [B, R, n]
    x_low, x_high, wx_low, wx_high = _axis_taps(_sample_positions(start_x, bin_x, p, s), width)
    params = tf.reshape(flat_features, tf.stack([-1, channels]))  # [B*T, C]
    base = (offset + tf.range(batch)[:, None] * total)[..., None, None]  # [B, R, 1, 1] row of pixel (0, 0)
    row_stride = width[..., None, None]
    # Four corner gathers over the n x n sample grid, accumulated in torchvision's corner order; under XLA the
    # gathers, products and the bin sums fuse into one loop.
    acc = None
    for ys, wy in ((y_low, wy_low), (y_high, wy_high)):
        for xs, wx in ((x_low, wx_low), (x_high, wx_high)):
            index = base + ys[..., :, None] * row_stride + xs[..., None, :]  # [B, R, n, n]
            weight = wy[..., :, None] * wx[..., None, :]  # [B, R, n, n]
            term = tf.gather(params, tf.reshape(index, [-1])) * tf.reshape(weight, [-1, 1])  # [B*R*n*n, C]
            acc = term if acc is None else acc + term
    acc = tf.reshape(acc, tf.stack([batch, num_rois, p, s, p, s, channels]))
    return tf.reduce_sum(acc, axis=[3, 5]) / tf.constant(float(s * s), dtype)  # [B, R, P, P, C]


def _flatten_levels(features):
    """[B, H_l, W_l, C] per level -> [B, sum H_l W_l, C], with int32 H, W and flat offsets per level."""
    flats, heights, widths, offsets = [], [], [], []
    total = tf.constant(0, tf.int32)
    for f in features:
        shape = tf.shape(f)
        heights.append(shape[1])
        widths.append(shape[2])
        offsets.append(total)
        total = total + shape[1] * shape[2]
        flats.append(tf.reshape(f, tf.stack([shape[0], shape[1] * shape[2], shape[3]])))
    flat = flats[0] if len(flats) == 1 else tf.concat(flats, axis=1)
    return flat, tf.stack(heights), tf.stack(widths), tf.stack(offsets)


# ----------------------------------------------------------------------------------------------------------------
# Method "crop_and_resize"
# ----------------------------------------------------------------------------------------------------------------

def _pow2_plus_one(n):
    """Smallest 2**k + 1 >= n + 1 (room for one zero row after n rows): an int, or an int32 tensor for a dynamic n."""
    if isinstance(n, int):
        k = 0
        while (1 << k) < n:
            k += 1
        return (1 << k) + 1
    # ceil(log2(n)) in float may come out one too high at exact powers of two: still >= n, just a larger pad.
    k = tf.math.ceil(tf.math.log(tf.cast(tf.maximum(n, 1), tf.float32)) / tf.math.log(2.0))
    return tf.cast(tf.pow(2.0, k), tf.int32) + 1


def _crop_align(features, rois_flat, batch_index, scale, output_size, sampling_ratio, aligned):
    """features [B, H, W, C] (one level); rois_flat [N, 4]; batch_index [N] -> [N, P, P, C].

    Every sample is a 1 x 1 crop at torchvision's (clamped) position. The map is zero-padded to 2**k + 1 rows and
    columns (at least one zero row and column), so that position / 2**k is exact and crop_and_resize's
    0.5 * (y1 + y2) * (H - 1) gives the position back bit for bit; empty samples read the zero corner."""
    dtype = features.dtype
    shape = tf.shape(features)
    height = features.shape[1] if features.shape[1] is not None else shape[1]
    width = features.shape[2] if features.shape[2] is not None else shape[2]
    p, s = output_size, sampling_ratio
    n = p * s
    pad_h, pad_w = _pow2_plus_one(height), _pow2_plus_one(width)
    padded = tf.pad(features, [[0, 0], [0, pad_h - height], [0, pad_w - width], [0, 0]])
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    last_y, last_x = tf.cast(pad_h - 1, tf.float32), tf.cast(pad_w - 1, tf.float32)  # powers of two
    # Positions in float32 (crop_and_resize's box dtype), in torchvision's operation order.
    start_y, start_x, bin_y, bin_x = _roi_geometry(rois_flat, scale, output_size, aligned, tf.float32)  # [N]
    ys = _sample_positions(start_y, bin_y, p, s)  # [N, n]
    xs = _sample_positions(start_x, bin_x, p, s)
    inside = (((ys >= -1.0) & (ys <= height_f))[:, :, None]
              & ((xs >= -1.0) & (xs <= width_f))[:, None, :])  # [N, n, n]
    ys = tf.clip_by_value(ys, 0.0, height_f - 1.0)[:, :, None]
    xs = tf.clip_by_value(xs, 0.0, width_f - 1.0)[:, None, :]
    ys = tf.where(inside, ys, last_y) / last_y  # empty samples -> the zero corner
    xs = tf.where(inside, xs, last_x) / last_x
    boxes = tf.reshape(tf.stack([ys, xs, ys, xs], axis=-1), [-1, 4])  # [N*n*n, 4]
    box_index = tf.reshape(tf.broadcast_to(batch_index[:, None, None], tf.shape(inside)), [-1])
    samples = tf.image.crop_and_resize(padded, boxes, box_index, [1, 1], method="bilinear")  # [N*n*n, 1, 1, C]
    samples = tf.reshape(tf.cast(samples, dtype), [-1, n, n, features.shape[-1] or tf.shape(features)[-1]])
    if s == 1:
        return samples
    return tf.nn.avg_pool2d(samples, s, s, "VALID")  # [N, P, P, C]: sum of the S x S samples / S^2


def _crop_multilevel(features, rois, levels, min_level, output_size, sampling_ratio, aligned):
    """features: list per level; rois [B, R, 4]; levels [B, R] int32 in [min_level, min_level + L)."""
    batch, num_rois = tf.shape(rois)[0], tf.shape(rois)[1]
    rois_flat = tf.reshape(rois, [-1, 4])  # [B*R, 4]
    batch_index = tf.reshape(tf.broadcast_to(tf.range(batch)[:, None], [batch, num_rois]), [-1])  # [B*R]
    which = tf.reshape(levels - min_level, [-1])
    positions = tf.dynamic_partition(tf.range(batch * num_rois), which, len(features))
    outputs = []
    for i, f in enumerate(features):
        outputs.append(_crop_align(f, tf.gather(rois_flat, positions[i]), tf.gather(batch_index, positions[i]),
                                   2.0 ** -(min_level + i), output_size, sampling_ratio, aligned))
    merged = tf.dynamic_stitch(positions, outputs)  # [B*R, P, P, C]
    return tf.reshape(merged, tf.stack([batch, num_rois, output_size, output_size, tf.shape(merged)[-1]]))


# ----------------------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------------------

def roi_align(features, rois, spatial_scale, output_size=7, sampling_ratio=2, aligned=False,
              method=DEFAULT_METHOD):
    """RoIAlign on one feature map, equal to ``torchvision.ops.roi_align`` (see the module docstring).

    Args:
      features: float [B, H, W, C] (NHWC).
      rois: float [B, R, 4] yxyx in input pixels; RoI r of image b reads ``features[b]``.
      spatial_scale: feature pixels per input pixel (1/4 for P2).
      output_size: P, bins per side (7). sampling_ratio: S, samples per bin side (2; must be >= 1).
      aligned: torchvision's ``aligned`` (False: the legacy kernel of both references).
      method: ``"crop_and_resize"`` or ``"gather"`` (XLA-compilable).
    Returns:
      [B, R, P, P, C] in the dtype of ``features``.
    """
    features = tf.convert_to_tensor(features)
    rois = tf.convert_to_tensor(rois)
    _check_common("roi_align", rois, output_size, sampling_ratio, method)
    _check_features("roi_align", features, rois.shape[0])
    if not float(spatial_scale) > 0:
        raise ValueError(f"roi_align: spatial_scale must be > 0, got {spatial_scale!r}")
    rois = tf.stop_gradient(rois)
    batch, num_rois = tf.shape(rois)[0], tf.shape(rois)[1]
    if method == "gather":
        flat, heights, widths, _ = _flatten_levels([features])
        per_roi = lambda v: tf.fill([batch, num_rois], v)  # noqa: E731
        return _gather_align(flat, rois, tf.constant(spatial_scale, features.dtype), per_roi(heights[0]),
                             per_roi(widths[0]), per_roi(0), output_size, sampling_ratio, aligned)
    rois_flat = tf.reshape(rois, [-1, 4])
    batch_index = tf.reshape(tf.broadcast_to(tf.range(batch)[:, None], [batch, num_rois]), [-1])
    out = _crop_align(features, rois_flat, batch_index, float(spatial_scale), output_size, sampling_ratio,
                      aligned)
    return tf.reshape(out, tf.stack([batch, num_rois, output_size, output_size, tf.shape(out)[-1]]))


def multilevel_roi_align(features, rois, output_size=7, sampling_ratio=2, min_level=FPN_ROI_LEVELS[0],
                         aligned=False, plus_one=False, canonical_size=224.0, canonical_level=4,
                         method=DEFAULT_METHOD):
    """FPN RoIAlign: each RoI pooled from its level (``roi_levels``), equal to torchvision's
    ``MultiScaleRoIAlign(['0', '1', '2', '3'], 7, 2)`` on P2..P5.

    Args:
      features: sequence of float [B, H_l, W_l, C] NHWC maps for levels min_level, min_level + 1, ...; level l has
        scale 2**-l (P2 = 1/4 of the padded input).
      rois: float [B, R, 4] yxyx in input pixels (padded proposals are pooled too; mask them downstream).
      output_size, sampling_ratio, aligned, method: as ``roi_align``.
      plus_one: maskrcnn-benchmark's level mapper (+1 area, eps inside the log); torchvision's by default.
      canonical_size, canonical_level: FPN heuristic constants (224, 4).
    Returns:
      [B, R, P, P, C] in the dtype of the features.
    """
    rois = tf.convert_to_tensor(rois)
    _check_common("multilevel_roi_align", rois, output_size, sampling_ratio, method)
    if isinstance(features, dict) or not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"multilevel_roi_align: features must be a non-empty list of [B, H, W, C] maps, got "
                         f"{type(features).__name__}")
    features = [tf.convert_to_tensor(f) for f in features]
    for f in features:
        _check_features("multilevel_roi_align", f, rois.shape[0])
    dtypes = {f.dtype for f in features}
    if len(dtypes) != 1:
        raise ValueError(f"multilevel_roi_align: feature maps have different dtypes {sorted(d.name for d in dtypes)}")
    channels = {f.shape[-1] for f in features}
    if len(channels) != 1:
        raise ValueError(f"multilevel_roi_align: feature maps have different channel counts {sorted(channels)}")
    if not isinstance(min_level, int) or min_level < 0:
        raise ValueError(f"multilevel_roi_align: min_level must be an int >= 0, got {min_level!r}")
    max_level = min_level + len(features) - 1
    rois = tf.stop_gradient(rois)
    levels = roi_levels(rois, min_level, max_level, canonical_size, canonical_level, plus_one=plus_one)  # [B, R]
    if method == "crop_and_resize":
        return _crop_multilevel(features, rois, levels, min_level, output_size, sampling_ratio, aligned)
    flat, heights, widths, offsets = _flatten_levels(features)
    index = levels - min_level
    scales = tf.constant([2.0 ** -(min_level + i) for i in range(len(features))], features[0].dtype)
    return _gather_align(flat, rois, tf.gather(scales, index), tf.gather(heights, index), tf.gather(widths, index),
                         tf.gather(offsets, index), output_size, sampling_ratio, aligned)
