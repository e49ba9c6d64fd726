"""SSD training augmentation as pure, stateless TF ops (graph mode, usable in ``tf.data`` map).

Two recipes (``SSDAugmentation`` values in the model config; the presets pick the reference's):

* ``mlperf`` (MLPerf v0.6 REF ``SSDTransformer``): SSDCropping -> flip -> resize -> ColorJitter.
* ``ssd`` (torchvision detection references' "ssd" preset = ssd.pytorch recipe): RandomPhotometricDistort ->
  RandomZoomOut -> RandomIoUCrop -> flip -> resize.

Boxes are normalised ``[ymin, xmin, ymax, xmax]``. Every random draw comes from stateless ops fed by one
``seed`` tensor (int32/int64 ``[2]``), so an example is augmented identically for an identical seed.

How it is computed (equivalent up to sub-pixel rounding to the references' step-by-step form):
all geometric steps (zoom-out canvas, IoU crop, flip) are composed into ONE window in the original image's
normalised frame (it may extend past [0, 1] after zoom-out), and the 300x300 output is sampled directly from
the original image by separable bilinear interpolation with half-pixel centres (exactly what
``tf.image.resize(..., 'bilinear')`` does to the cropped image). Samples outside the image take the fill
colour, so the up-to-4x zoom-out canvas (16x the pixels) is never materialised. Photometric ops are
per-pixel, so they are applied to the 300x300 output instead of the full-size original; the one global
statistic they need (the grey mean used by contrast) is computed on a subsampled copy of the whole original
image that goes through the same colour ops, and canvas pixels keep the undistorted fill, as in torchvision.

Deviations from the references (documented in ``DEVIATIONS``): continuous crop/zoom-out geometry instead of
``int()`` pixel truncation; a bounded number of sampling rounds (``MLPERF_CROP_DRAWS``, ``SSD_CROP_ROUNDS``)
after which the whole image is kept, instead of an unbounded ``while True``; colour ops on float pixels
(clipped to [0, 255] after each op) instead of PIL uint8; colour ops after, not before, resampling in the
``ssd`` recipe (exact for brightness / contrast / saturation / channel swap up to clipping, approximate for hue).
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssd_tf.model_configs.ssd import SSDAugmentation
from ssd_tf.ops import boxes as box_ops

MEAN_RGB = (123.0, 117.0, 104.0)  # zoom-out canvas fill (torchvision SSD recipe / ssd.pytorch, in RGB)

# MLPerf REF SSDCropping: 7 equally likely modes; None = keep, -inf = no IoU constraint.
MLPERF_CROP_MODES = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)
# REF loops "draw a mode, make one trial" until success. We draw this many (mode, trial) pairs at once and take
# the first valid one; if none is valid the whole image is kept. P(no 'keep' mode in 64 draws) = (6/7)^64 = 5e-5.
MLPERF_CROP_DRAWS = 64

# torchvision RandomIoUCrop: options (1.0 = keep), 40 trials per option draw.
SSD_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SSD_CROP_TRIALS = 40
# torchvision loops over option draws until one succeeds; we evaluate this many rounds x 40 trials at once, take
# the first valid trial of the first successful round, else keep the whole image (which is also what 'keep' does).
SSD_CROP_ROUNDS = 8

_STATS_SIDE = 64  # the contrast mean of the ssd recipe is taken over a ~64x64 subsample of the whole image

DEVIATIONS = (
    "crop / zoom-out geometry is continuous (normalised floats) instead of int() pixel truncation",
    f"mlperf crop: at most {MLPERF_CROP_DRAWS} (mode, trial) draws, then the whole image is kept",
    f"ssd crop: at most {SSD_CROP_ROUNDS} option rounds x {SSD_CROP_TRIALS} trials, then the whole image is kept",
    "zoom-out is not materialised: one bilinear resampling of the original with out-of-image samples = fill; "
    "the image/fill border is sharp instead of blended over one canvas pixel",
    "colour ops run on float pixels clipped to [0,255] after each op (PIL rounds to uint8 after each op)",
    "ssd recipe: colour ops are applied after resampling; contrast uses the grey mean of a subsampled copy of "
    "the whole image put through the same ops",
    "resize is tf.image.resize-style bilinear, half-pixel centres, no antialias (REF MLPerf uses PIL bilinear)",
    "the ssd crop follows torchvision RandomIoUCrop, not ssd.pytorch (whose min-IoU test never fires and whose "
    "options lack 0.5); the mlperf crop follows the PyTorch REF, not the TPU variant (50 trials, last valid)",
)


# The recipe is a model-config value (``SSDAugmentation``: which steps run, their probabilities, the fill).
AugmentRecipe = SSDAugmentation


# ----------------------------------------------------------------------------------------------- geometry


def _uniform(seed, shape, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=tf.float32)


def _iou_with_windows(boxes, windows):
    """boxes [N,4], windows [K,4] -> IoU [K,N] (invariant to per-axis scaling, so normalised coords are fine)."""
    return box_ops.iou(windows, boxes)


def _centres_inside(boxes, windows):
    """boxes [N,4], windows [K,4] -> bool [K,N]: box centre strictly inside the window."""
    cy = 0.5 * (boxes[:, 0] + boxes[:, 2])[None, :]
    cx = 0.5 * (boxes[:, 1] + boxes[:, 3])[None, :]
    return ((cy > windows[:, 0:1]) & (cy < windows[:, 2:3]) &
            (cx > windows[:, 1:2]) & (cx < windows[:, 3:4]))


def _pick_first(valid, windows, inside, num_boxes, threshold, is_keep):
    """First valid candidate (valid [K], windows [K,4], inside [K,N]); none valid -> whole image, all kept.

    Returns (window [4], keep [N], info) with info = {"cropped": bool, "min_iou": threshold of the chosen draw}.
    """
    found = tf.reduce_any(valid)
    idx = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    window = tf.where(found, windows[idx], tf.constant([0.0, 0.0, 1.0, 1.0]))
    keep = tf.where(found, inside[idx], tf.ones([num_boxes], tf.bool))
    info = {"cropped": found & ~is_keep[idx], "min_iou": threshold[idx]}
    return window, keep, info


def sample_mlperf_crop(seed, boxes):
    """MLPerf REF SSDCropping. Returns (window [4] normalised yxyx in the image, keep [N] bool, info dict
    {"cropped": bool, "min_iou": the chosen mode's threshold}).

    Draws ``MLPERF_CROP_DRAWS`` (mode, trial) pairs: mode uniform over ``MLPERF_CROP_MODES``; w, h ~ U(0.3, 1)
    (fractions of the image), rejected unless w/h in [0.5, 2]; left ~ U(0, 1-w), top ~ U(0, 1-h); valid if every
    box has IoU > min_iou and at least one centre is strictly inside. Mode None is the whole image.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    k = MLPERF_CROP_DRAWS
    s = tf.random.experimental.stateless_split(seed, 3)
    mode = tf.random.stateless_uniform([k], seed=s[0], minval=0, maxval=len(MLPERF_CROP_MODES), dtype=tf.int32)
    min_ious = tf.constant([-math.inf if m is None else m for m in MLPERF_CROP_MODES], tf.float32)
    min_iou = tf.gather(min_ious, mode)  # [K]
    wh = _uniform(s[1], [k, 2], 0.3, 1.0)  # [K,(w,h)]
    lt = _uniform(s[2], [k, 2]) * (1.0 - wh)  # [K,(left,top)]
    windows = tf.stack([lt[:, 1], lt[:, 0], lt[:, 1] + wh[:, 1], lt[:, 0] + wh[:, 0]], axis=1)  # [K,4] yxyx
    aspect = wh[:, 0] / wh[:, 1]
    aspect_ok = (aspect >= 0.5) & (aspect <= 2.0)
    iou_ok = tf.reduce_all(_iou_with_windows(boxes, windows) > min_iou[:, None], axis=1)
    inside = _centres_inside(boxes, windows)  # [K,N]
    valid = aspect_ok & iou_ok & tf.reduce_any(inside, axis=1)
    keep_mode = tf.equal(mode, 0)
    valid = valid | keep_mode
    n = tf.shape(boxes)[0]
    whole = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    windows = tf.where(keep_mode[:, None], whole, windows)
    inside = tf.where(keep_mode[:, None], tf.ones([k, n], tf.bool), inside)
    return _pick_first(valid, windows, inside, n, min_iou, keep_mode)


def sample_ssd_crop(seed, boxes, frame_hw):
    """torchvision RandomIoUCrop. Returns (window [4] normalised yxyx in the frame, keep [N] bool, info dict
    {"cropped": bool, "min_iou": the chosen option}).

    ``frame_hw`` = (height, width) of the frame being cropped (the zoom-out canvas if any), used for the pixel
    aspect ratio new_w/new_h in [0.5, 2]. Per round an option from ``SSD_CROP_OPTIONS`` (1.0 = keep), then
    ``SSD_CROP_TRIALS`` trials: scale U(0.3, 1) per side, needs >= 1 centre strictly inside, and the MAX IoU of
    the boxes with a centre inside must be >= the option.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    r, t = SSD_CROP_ROUNDS, SSD_CROP_TRIALS
    k = r * t
    s = tf.random.experimental.stateless_split(seed, 3)
    opt_idx = tf.random.stateless_uniform([r], seed=s[0], minval=0, maxval=len(SSD_CROP_OPTIONS), dtype=tf.int32)
    option = tf.repeat(tf.gather(tf.constant(SSD_CROP_OPTIONS, tf.float32), opt_idx), t)  # [K] round-major
    keep_round = option >= 1.0
    scale = _uniform(s[1], [k, 2], 0.3, 1.0)  # [K,(sw,sh)]
    lt = _uniform(s[2], [k, 2]) * (1.0 - scale)  # [K,(left,top)]
    windows = tf.stack([lt[:, 1], lt[:, 0], lt[:, 1] + scale[:, 1], lt[:, 0] + scale[:, 0]], axis=1)
    frame_hw = tf.cast(frame_hw, tf.float32)
    aspect = (scale[:, 0] * frame_hw[1]) / (scale[:, 1] * frame_hw[0])
    aspect_ok = (aspect >= 0.5) & (aspect <= 2.0)
    inside = _centres_inside(boxes, windows)  # [K,N]
    iou = tf.where(inside, _iou_with_windows(boxes, windows), -1.0)
    max_iou = tf.reduce_max(tf.concat([iou, -tf.ones([k, 1])], axis=1), axis=1)  # [K]; -1 when no box inside
    iou_ok = max_iou >= option
    valid = aspect_ok & tf.reduce_any(inside, axis=1) & iou_ok
    n = tf.shape(boxes)[0]
    valid = valid | keep_round
    windows = tf.where(keep_round[:, None], tf.constant([[0.0, 0.0, 1.0, 1.0]]), windows)
    inside = tf.where(keep_round[:, None], tf.ones([k, n], tf.bool), inside)
    return _pick_first(valid, windows, inside, n, option, keep_round)


def sample_expand_window(seed, prob=0.5, max_ratio=4.0):
    """torchvision RandomZoomOut: with p ``prob`` a canvas ratio r ~ U(1, max_ratio) times the image, the image at a
    uniformly random place. Returns the canvas as a window [4] in the image's normalised frame (may exceed [0,1])."""
    s = tf.random.experimental.stateless_split(seed, 2)
    u = _uniform(s[0], [3])
    ratio = 1.0 + u[0] * (max_ratio - 1.0)
    ratio = tf.where(u[1] < prob, ratio, 1.0)
    off = _uniform(s[1], [2]) * (ratio - 1.0)  # canvas margin before the image, in image units (y, x)
    y0, x0 = -off[0], -off[1]
    return tf.stack([y0, x0, y0 + ratio, x0 + ratio])


def compose_windows(outer, inner):
    """``inner`` is a window in ``outer``'s normalised frame; returns it in the frame ``outer`` is expressed in."""
    oy, ox = outer[0], outer[1]
    oh, ow = outer[2] - outer[0], outer[3] - outer[1]
    return tf.stack([oy + inner[0] * oh, ox + inner[1] * ow, oy + inner[2] * oh, ox + inner[3] * ow])


def boxes_to_window(boxes, window):
    """Express boxes [N,4] in the normalised frame of ``window`` [4] and clip them to [0, 1]."""
    h = window[2] - window[0]
    w = window[3] - window[1]
    offset = tf.stack([window[0], window[1], window[0], window[1]])
    scale = tf.stack([h, w, h, w])
    return tf.clip_by_value((boxes - offset) / scale, 0.0, 1.0)


def flip_boxes(boxes):
    """Horizontal flip of normalised yxyx boxes [N,4]."""
    return tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)


def horizontal_flip(image, boxes):
    """Flip an image [H,W,C] and its normalised boxes [N,4] left-right."""
    return tf.reverse(image, axis=[1]), flip_boxes(boxes)


def _axis_samples(start, stop, n_out, n_in, flip):
    """Half-pixel-centre bilinear sample positions of ``n_out`` outputs over [start, stop] (normalised) of an
    axis with ``n_in`` pixels: (lower index, upper index, upper weight, inside-image mask)."""
    n_in_f = tf.cast(n_in, tf.float32)
    pos = start + (tf.range(n_out, dtype=tf.float32) + 0.5) * ((stop - start) / n_out)  # [n_out] normalised
    if flip:
        pos = tf.reverse(pos, axis=[0])
    inside = (pos >= 0.0) & (pos <= 1.0)
    # Pixel-centre index coordinates, clamped to the window's own pixels (as resizing the cropped image does)
    # and to the image.
    first = tf.maximum(start * n_in_f, 0.0)
    last = tf.maximum(tf.minimum(stop * n_in_f - 1.0, n_in_f - 1.0), first)
    u = tf.clip_by_value(pos * n_in_f - 0.5, first, last)
    lo = tf.floor(u)
    frac = u - lo
    lo = tf.cast(lo, tf.int32)
    hi = tf.minimum(lo + 1, n_in - 1)
    return lo, hi, frac, inside


def resample_window(image, window, size, fill=MEAN_RGB, flip=False):
    """Bilinear-resample ``window`` (normalised yxyx, may extend past the image) of ``image`` [H,W,3] to
    ``size`` = (h, w), half-pixel centres, no antialias; samples outside the image get ``fill``.

    For a window inside the image this equals ``tf.image.resize(crop, size)`` of the cropped pixels. Returns
    (float32 [h,w,3], inside-image mask bool [h,w]). ``flip`` (python or tensor bool) mirrors the output.
    """
    out_h, out_w = int(size[0]), int(size[1])
    shape = tf.shape(image)
    ylo, yhi, yw, yin = _axis_samples(window[0], window[2], out_h, shape[0], False)
    flip = tf.convert_to_tensor(flip, tf.bool)
    xlo, xhi, xw, xin = tf.cond(
        flip,
        lambda: _axis_samples(window[1], window[3], out_w, shape[1], True),
        lambda: _axis_samples(window[1], window[3], out_w, shape[1], False))
    top = tf.cast(tf.gather(image, ylo, axis=0), tf.float32)  # [h,W,3]
    bot = tf.cast(tf.gather(image, yhi, axis=0), tf.float32)
    rows = top + (bot - top) * yw[:, None, None]
    left = tf.gather(rows, xlo, axis=1)  # [h,w,3]
    right = tf.gather(rows, xhi, axis=1)
    out = left + (right - left) * xw[None, :, None]
    mask = yin[:, None] & xin[None, :]
    out = tf.where(mask[..., None], out, tf.constant(fill, tf.float32))
    return out, mask


# ------------------------------------------------------------------------------------------- photometric

_GREY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale / tf.image.rgb_to_grayscale weights


def _grey(pixels):
    return tf.tensordot(pixels, tf.constant(_GREY)[:, None], axes=[[-1], [0]])  # [...,3] -> [...,1]


def _clip(x):
    return tf.clip_by_value(x, 0.0, 255.0)


def adjust_brightness(pixels, factor):
    """torchvision brightness: multiply, clip (pixels float 0..255, [...,3])."""
    return _clip(pixels * factor)


def adjust_contrast(pixels, factor, mean=None):
    """torchvision contrast: blend with the grey mean (of ``pixels`` unless ``mean`` is given), clip."""
    if mean is None:
        mean = tf.reduce_mean(_grey(pixels))
    return _clip(factor * pixels + (1.0 - factor) * mean)


def adjust_saturation(pixels, factor):
    """torchvision saturation: blend with the pixel's grey value, clip."""
    return _clip(factor * pixels + (1.0 - factor) * _grey(pixels))


def adjust_hue(pixels, delta):
    """torchvision hue: rotate H by ``delta`` (fraction of a turn) in HSV."""
    shape = tf.shape(pixels)
    flat = tf.reshape(pixels, [-1, 1, 3]) / 255.0  # AdjustHue wants rank >= 3
    return tf.reshape(_clip(tf.image.adjust_hue(flat, delta) * 255.0), shape)


def _stats_contrast(pixels, factor, n_stats):
    """Contrast whose grey mean comes from the last ``n_stats`` rows of ``pixels`` [P,3] (all rows if 0)."""
    stats = pixels if isinstance(n_stats, int) and n_stats == 0 else pixels[-n_stats:]
    return adjust_contrast(pixels, factor, tf.reduce_mean(_grey(stats)))


def color_jitter(pixels, seed, brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, n_stats=0):
    """torchvision ColorJitter on float pixels [P,3] (0..255): factors b~U(1±brightness), c~U(1±contrast),
    s~U(1±saturation), h~U(±hue), applied in a random order (the MLPerf REF recipe)."""
    s = tf.random.experimental.stateless_split(seed, 2)
    u = _uniform(s[0], [4])
    factors = (1.0 + brightness * (2.0 * u[0] - 1.0), 1.0 + contrast * (2.0 * u[1] - 1.0),
               1.0 + saturation * (2.0 * u[2] - 1.0), hue * (2.0 * u[3] - 1.0))
    ops = (adjust_brightness, lambda p, f: _stats_contrast(p, f, n_stats), adjust_saturation, adjust_hue)
    order = tf.argsort(_uniform(s[1], [4]))
    for step in range(4):
        cur = pixels
        branches = [lambda fn=fn, f=f, cur=cur: fn(cur, f) for fn, f in zip(ops, factors)]
        pixels = tf.switch_case(order[step], branches)
    return pixels


def _maybe(flag, fn, x):
    return tf.cond(flag, lambda: fn(x), lambda: x)


def photometric_distort(pixels, seed, n_stats=0, p=0.5):
    """torchvision RandomPhotometricDistort on float pixels [P,3] (0..255): each with probability ``p``
    brightness U(0.875,1.125), contrast U(0.5,1.5) before or after (coin flip) saturation U(0.5,1.5) and hue
    U(-0.05,0.05), then a random channel permutation."""
    s = tf.random.experimental.stateless_split(seed, 3)
    r = _uniform(s[0], [7])
    f = _uniform(s[1], [4])
    b, c, sat, h = 0.875 + 0.25 * f[0], 0.5 + f[1], 0.5 + f[2], -0.05 + 0.1 * f[3]
    contrast_before = r[1] < 0.5
    pixels = _maybe(r[0] < p, lambda x: adjust_brightness(x, b), pixels)
    pixels = _maybe(contrast_before & (r[2] < p), lambda x: _stats_contrast(x, c, n_stats), pixels)
    pixels = _maybe(r[3] < p, lambda x: adjust_saturation(x, sat), pixels)
    pixels = _maybe(r[4] < p, lambda x: adjust_hue(x, h), pixels)
    pixels = _maybe(~contrast_before & (r[5] < p), lambda x: _stats_contrast(x, c, n_stats), pixels)
    perm = tf.argsort(_uniform(s[2], [3]))
    return _maybe(r[6] < p, lambda x: tf.gather(x, perm, axis=-1), pixels)


def _stats_sample(image):
    """A ~64x64 strided subsample of the whole image as float pixels [M,3] (for the contrast grey mean)."""
    shape = tf.shape(image)
    sy = tf.maximum(shape[0] // _STATS_SIDE, 1)
    sx = tf.maximum(shape[1] // _STATS_SIDE, 1)
    return tf.reshape(tf.cast(image[::sy, ::sx], tf.float32), [-1, 3])


# ----------------------------------------------------------------------------------------------- recipe


def augment_example(image, boxes, seed, recipe: AugmentRecipe, output_size=(300, 300), extras=None):
    """Augment one example and resize it to ``output_size``.

    Args:
      image: uint8 (or float 0..255) [H,W,3] RGB. boxes: float32 [N,4] normalised yxyx.
      seed: int32/int64 [2] stateless seed. recipe: ``AugmentRecipe``.
      extras: optional dict of per-box tensors [N,...] (classes, is_crowd, difficult, ...) kept/dropped with
        their boxes.
    Returns:
      (image float32 [h,w,3] in [0,255], boxes float32 [M,4] normalised and clipped, extras dict of [M,...]).
    """
    if not isinstance(recipe, SSDAugmentation):
        raise TypeError(f"recipe must be an SSDAugmentation (model config value), got {type(recipe).__name__}")
    extras = dict(extras or {})
    image = tf.convert_to_tensor(image)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 5)
    hw = tf.shape(image)[:2]

    window = tf.constant([0.0, 0.0, 1.0, 1.0])
    if recipe.expand:
        window = sample_expand_window(seeds[0], recipe.expand_prob, recipe.expand_max_ratio)
    keep = tf.ones([tf.shape(boxes)[0]], tf.bool)
    if recipe.crop is not None:
        frame_boxes = boxes_to_window(boxes, window) if recipe.expand else boxes  # expand never clips
        if recipe.crop == "mlperf":
            crop, keep, _ = sample_mlperf_crop(seeds[1], frame_boxes)
        else:
            frame_hw = tf.cast(hw, tf.float32) * (window[2] - window[0])  # canvas keeps the image's aspect
            crop, keep, _ = sample_ssd_crop(seeds[1], frame_boxes, frame_hw)
        window = compose_windows(window, crop)
    boxes = boxes_to_window(tf.boolean_mask(boxes, keep), window)
    extras = {k: tf.boolean_mask(v, keep) for k, v in extras.items()}

    flip = False
    if recipe.flip:
        flip = _uniform(seeds[2], []) < recipe.flip_prob
        boxes = tf.cond(flip, lambda: flip_boxes(boxes), lambda: boxes)
    out, mask = resample_window(image, window, output_size, recipe.fill, flip)

    if recipe.photometric is not None:
        n_img = int(output_size[0]) * int(output_size[1])
        pixels = tf.reshape(out, [n_img, 3])
        if recipe.photometric == "mlperf":  # REF: ColorJitter on the resized crop, its own grey mean
            pixels = color_jitter(pixels, seeds[3])
        else:  # torchvision: distort the whole original; contrast mean from a subsample of it
            stats = _stats_sample(image)
            both = tf.concat([pixels, stats], axis=0)  # [n_img + M, 3]
            both = photometric_distort(both, seeds[3], n_stats=tf.shape(stats)[0])
            pixels = both[:n_img]
        out = tf.reshape(pixels, [int(output_size[0]), int(output_size[1]), 3])
        out = tf.where(mask[..., None], out, tf.constant(recipe.fill, tf.float32))
    return out, boxes, extras


def resize_image(image, output_size=(300, 300)):
    """Eval resize: bilinear, half-pixel centres, no antialias -> float32 [h,w,3] in [0,255]."""
    return tf.image.resize(tf.cast(image, tf.float32), output_size, method="bilinear")
