"""The Faster R-CNN family's parser: decoded examples -> resized, padded model inputs (values from a
``FasterRCNNModelConfig``).

Per image (REFERENCE_SPECS §3.7):
* resize keeping the aspect ratio: torchvision's rule (``resize_rounding="torchvision"``: scale =
  min(min_size / shorter side, max_size / longer side), output size floor(side * scale), bilinear with half-pixel
  centres = ``F.interpolate(align_corners=False)``) or maskrcnn-benchmark's (``"truncate"``: its integer
  ``Resize.get_size``);
* training: boxes in pixels of the resized image (``pixel_offset`` 1: maskrcnn-benchmark's inclusive pixels, see
  ``_pixel_boxes``), horizontal flip with probability ``flip_prob`` (x' = W - x, or W - x - 1 with ``pixel_offset``
  1), stateless in the example's seed;
* the config's normalisation (RGB 0-1 mean/std, or BGR 0-255 mean only), then zero padding (0 in normalised
  space, as torchvision pads after normalising) to the smallest of the model's fixed canvases that holds the
  resized image (``canvases``): the two orientation canvases, landscape (h <= w) ceil32(min_size) x
  ceil32(max_size) and portrait the transpose, which hold every image, then the config's extra ``canvases``
  (``fit_canvases`` chooses them from the training images' sizes). A run sees one input shape per canvas.

Labels: training — ``boxes`` [max_boxes, 4] yxyx in pixels of the resized (flipped) image, ``classes`` (contiguous,
0 = padding), ``num_boxes``, ``image_info``, ``image_key`` (int64 hash of the source_id, else the file name: the
task derives each image's anchor / RoI sampling seed from it and the step, so an image draws the same samples
whichever replica or batch it is in, and a resumed run draws what an uninterrupted one does); crowd (and difficult) boxes are left out of training targets by the
reader's ``train_keep``. Evaluation — ``source_id``, ``image_info`` and the ground truth normalised to the
original image (``boxes``, ``classes``, ``is_crowd``, ``difficult``, ``num_boxes``), as every family sends it.

``image_info`` (float32 [4, 2]): original (h, w), resized (h, w) — the valid part of the canvas, top-left —,
scale (h'/h, w'/w) and offset (0, 0). The model's detections are pixels of the resized image
(``boxes_frame="input_pixels"``).

Batching: every batch holds one canvas (``group``). Training reads a stream per canvas, each shuffled and
repeated, in the proportion of the training set's images on each canvas (estimated from its first
``reader.GROUP_SAMPLE`` records; ``reader.group_choice``) — torchvision's aspect-ratio grouping, with every
stream's position a closed-form function of the step, so a resumed run skips exactly what it consumed.
Evaluation groups consecutive images by canvas.
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssd_tf.data import example as ex
from ssd_tf.data.preprocess import normalize_image
from ssd_tf.data.reader import pad_to
from ssd_tf.data.ssd_parser import image_info

LANDSCAPE, PORTRAIT = 0, 1  # the two orientation canvases' groups


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def resized_size(height, width, min_size: int, max_size: int, rounding: str = "torchvision"):
    """(new height, new width) int32 of an image of ``height`` x ``width`` (scalar tensors or ints)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    if rounding == "torchvision":
        # torchvision (eager): scale = min(min_size / short, max_size / long) in Python floats, size floor(side * scale).
        s = tf.minimum(float(min_size) / short, float(max_size) / long)
        return tf.cast(tf.floor(h * s), tf.int32), tf.cast(tf.floor(w * s), tf.int32)
    if rounding == "truncate":
        # maskrcnn-benchmark Resize.get_size: the shorter side becomes `size` (lowered so the longer side fits
        # max_size, rounded), the longer one int(size * long / short).
        size = tf.where(long / short * float(min_size) > float(max_size),
                        tf.round(float(max_size) * short / long), float(min_size))
        size = tf.cast(size, tf.float64)
        h64, w64 = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
        keep = (tf.logical_and(w64 <= h64, tf.equal(w64, size)) | tf.logical_and(h64 <= w64, tf.equal(h64, size)))
        oh = tf.where(w64 < h64, tf.floor(size * h64 / w64), size)
        ow = tf.where(w64 < h64, size, tf.floor(size * w64 / h64))
        oh, ow = tf.where(keep, h64, oh), tf.where(keep, w64, ow)
        return tf.cast(oh, tf.int32), tf.cast(ow, tf.int32)
    raise ValueError(f"resize_rounding must be 'torchvision' or 'truncate', got {rounding!r}")


def image_key(decoded) -> tf.Tensor:
    """int64 identity of an image: a hash of its source_id (its file name when that is empty)."""
    name = tf.where(tf.strings.length(decoded["source_id"]) > 0, decoded["source_id"], decoded["filename"])
    return tf.strings.to_hash_bucket_fast(name, 2**62)


def record_size(serialized):
    """(height, width) int64 of a serialized example, from its stated size (the image header when the record
    states none), without decoding the pixels."""
    parsed = tf.io.parse_single_example(serialized, {
        ex.IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        ex.IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        ex.IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value="")})
    h, w = parsed[ex.IMAGE_HEIGHT], parsed[ex.IMAGE_WIDTH]

    def from_image():
        shape = tf.shape(tf.io.decode_image(parsed[ex.IMAGE_ENCODED], channels=3, expand_animations=False))
        return tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)

    return tf.cond((h > 0) & (w > 0), lambda: (h, w), from_image)


def record_resized_size(serialized, model):
    """(height, width) int32 a serialized example has once resized by ``model``'s rule (``record_size``)."""
    height, width = record_size(serialized)
    return resized_size(height, width, model.min_size, model.max_size, model.resize_rounding)


def model_canvases(model) -> list:
    """The padding canvases [(height, width), ...] of a ``FasterRCNNModelConfig``: the landscape and portrait
    orientation canvases (groups ``LANDSCAPE`` and ``PORTRAIT``), then its extra ``canvases``; every side rounded
    up to ``size_divisibility``; duplicates dropped."""
    d = model.size_divisibility
    short, long = _ceil_to(model.min_size, d), _ceil_to(model.max_size, d)
    out = []
    for h, w in [(short, long), (long, short)] + [tuple(c) for c in model.canvases]:
        c = (_ceil_to(h, d), _ceil_to(w, d))
        if c not in out:
            out.append(c)
    return out


def canvas_group(height, width, canvases, allowed=None) -> tf.Tensor:
    """int64 index of the smallest canvas (by area; the first on ties) that holds a ``height`` x ``width``
    resized image, among the ``allowed`` ones (a list of bools; default all); -1 when none does."""
    allowed = [True] * len(canvases) if allowed is None else list(allowed)
    ch = tf.constant([c[0] for c in canvases], tf.int64)
    cw = tf.constant([c[1] for c in canvases], tf.int64)
    fits = (tf.cast(height, tf.int64) <= ch) & (tf.cast(width, tf.int64) <= cw) & tf.constant(allowed)
    area = tf.where(fits, ch * cw, tf.constant(2**62, tf.int64))
    return tf.where(tf.reduce_any(fits), tf.argmin(area, output_type=tf.int64), tf.constant(-1, tf.int64))


def smallest_canvas(height: int, width: int, canvases):
    """``canvas_group`` in Python: the smallest of ``canvases`` holding a ``height`` x ``width`` image (None if none)."""
    return min((c for c in canvases if height <= c[0] and width <= c[1]), key=lambda c: c[0] * c[1], default=None)


def padded_pixels(sizes, canvases) -> int:
    """Pixels of images of resized ``sizes`` [(h, w), ...], each padded to its ``smallest_canvas``."""
    return sum(c[0] * c[1] for c in (smallest_canvas(h, w, canvases) for h, w in sizes) if c is not None)


def fit_canvases(sizes, model, per_orientation: int, min_saving: float = 0.02) -> list:
    """Extra canvases for images of resized ``sizes`` [(h, w), ...] (``resized_size``), up to ``per_orientation``
    per orientation: each canvas keeps the orientation canvas's short side and cuts its long side to the padded
    long side of some images, the cuts chosen to minimise the pixels of all images padded to their smallest
    canvas (exactly, by dynamic programming over the distinct padded lengths). A further cut is added only while
    it saves at least ``min_saving`` of that orientation's pixels on the orientation canvas alone."""
    d = model.size_divisibility
    short, full = _ceil_to(model.min_size, d), _ceil_to(model.max_size, d)
    extra = []
    for landscape in (True, False):
        lengths = sorted(_ceil_to(max(h, w), d) for h, w in sizes if (h <= w) == landscape)
        if not lengths:
            continue
        values = sorted(set(v for v in lengths if v < full))
        count = {v: lengths.count(v) for v in values}
        base = len(lengths) * full  # every image on the orientation canvas (in units of short-side rows)
        best = [((), base)]  # the optimum with 0, 1, 2, ... cuts
        # cost(cuts) = sum over images of the smallest cut (or full) >= its length; f[t][j]: images up to
        # values[j] with t cuts, the last at values[j]; plus the rest on the full canvas.
        n = len(values)
        f = [[None] * n for _ in range(per_orientation + 1)]
        prev = [[None] * n for _ in range(per_orientation + 1)]
        below = [0] * (n + 1)  # images with length <= values[j-1]
        for j, v in enumerate(values):
            below[j + 1] = below[j] + count[v]
        for t in range(1, per_orientation + 1):
            for j in range(n):
                if t == 1:
                    f[t][j] = below[j + 1] * values[j]
                    continue
                options = [(f[t - 1][i] + (below[j + 1] - below[i + 1]) * values[j], i) for i in range(j)
                           if f[t - 1][i] is not None]
                if options:
                    f[t][j], prev[t][j] = min(options)
            candidates = [(f[t][j] + (len(lengths) - below[j + 1]) * full, j) for j in range(n) if f[t][j] is not None]
            if not candidates:
                break
            cost, j = min(candidates)
            cuts, k = [], t
            while j is not None:
                cuts.append(values[j])
                j, k = prev[k][j], k - 1
            best.append((tuple(sorted(cuts)), cost))
        chosen, cost = best[0]
        for cuts, c in best[1:]:
            if cost - c < min_saving * base:
                break
            chosen, cost = cuts, c
        extra += [(short, v) if landscape else (v, short) for v in chosen]
    return extra


class RCNNParser:
    def __init__(self, model, *, max_boxes=100):
        """``model``: a ``FasterRCNNModelConfig``."""
        from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig

        if not isinstance(model, FasterRCNNModelConfig):
            raise ValueError(f"RCNNParser needs a FasterRCNNModelConfig, got {model!r}")
        if not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
        self.model = model
        self.max_boxes = max_boxes
        self.canvases = model_canvases(model)  # group index -> (height, width)
        self.num_groups = len(self.canvases)

    # --- one example --------------------------------------------------------------------------------
    def parse(self, decoded, seed, is_training):
        m = self.model
        height, width = decoded["height"], decoded["width"]
        new_h, new_w = resized_size(height, width, m.min_size, m.max_size, m.resize_rounding)
        image = tf.image.resize(tf.cast(decoded["image"], tf.float32), tf.stack([new_h, new_w]), method="bilinear")
        original = tf.stack([height, width])
        resized = tf.stack([new_h, new_w])
        info = image_info(original, resized, tf.cast(resized, tf.float32) / tf.cast(original, tf.float32))
        boxes, classes = decoded["boxes"], decoded["classes"]
        if is_training:
            keep = decoded["train_keep"]
            boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
            pixels, keep = self._pixel_boxes(boxes, height, width, new_h, new_w)
            if keep is not None:
                pixels, classes = tf.boolean_mask(pixels, keep), tf.boolean_mask(classes, keep)
            flip = tf.random.stateless_uniform([], seed=seed) < m.flip_prob
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
            pixels = tf.cond(flip, lambda: self._flip_boxes(pixels, new_w), lambda: pixels)
            labels = {"boxes": pad_to(pixels, self.max_boxes), "classes": pad_to(classes, self.max_boxes),
                      "num_boxes": tf.minimum(tf.shape(pixels)[0], self.max_boxes), "image_info": info,
                      "image_key": image_key(decoded)}
        else:
            m_ = self.max_boxes
            labels = {"source_id": decoded["source_id"], "image_info": info, "boxes": pad_to(boxes, m_),
                      "classes": pad_to(classes, m_), "is_crowd": pad_to(decoded["is_crowd"], m_, False),
                      "difficult": pad_to(decoded["difficult"], m_, False),
                      "num_boxes": tf.minimum(tf.shape(boxes)[0], m_)}
        image = normalize_image(image, m.normalization)
        return self._pad(image, new_h, new_w), labels

    def _pixel_boxes(self, boxes, height, width, new_h, new_w):
        """Normalised training boxes [N, 4] -> (boxes in pixels of the resized image, keep mask or None).

        ``pixel_offset`` 0: ``clip(box, 0, 1) * resized size``. ``pixel_offset`` 1 (maskrcnn-benchmark's COCO
        dataset): inclusive pixels of the original image, xmax = x + w - 1, clipped to [0, size - 1]; boxes left
        with xmax <= xmin or ymax <= ymin are dropped; then scaled by resized / original size."""
        resized = tf.cast(tf.stack([new_h, new_w, new_h, new_w]), tf.float32)
        if not self.model.pixel_offset:
            return tf.clip_by_value(boxes, 0.0, 1.0) * resized, None
        original = tf.cast(tf.stack([height, width, height, width]), tf.float32)
        pixels = boxes * original - tf.constant([0.0, 0.0, 1.0, 1.0])
        pixels = tf.clip_by_value(pixels, 0.0, original - 1.0)
        keep = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
        return pixels * (resized / original), keep

    def _flip_boxes(self, boxes, width):
        w = tf.cast(width, tf.float32) - float(self.model.pixel_offset)
        ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
        return tf.stack([ymin, w - xmax, ymax, w - xmin], axis=-1)

    def _pad(self, image, new_h, new_w):
        """Zero-pads to the smallest canvas that holds the image; returns [H, W, 3] (dynamic shape)."""
        group = canvas_group(new_h, new_w, self.canvases)
        target = tf.gather(tf.constant(self.canvases, tf.int32), group)
        image = tf.pad(image, [[0, target[0] - new_h], [0, target[1] - new_w], [0, 0]])
        return tf.ensure_shape(image, [None, None, 3])

    # --- batches --------------------------------------------------------------------------------------
    def group(self, serialized, allowed=None):
        """The canvas (group) index of a serialized example among the ``allowed`` canvases (default all; -1 when
        none holds it), from its stated size, without decoding the pixels."""
        new_h, new_w = record_resized_size(serialized, self.model)
        return canvas_group(new_h, new_w, self.canvases, allowed)

    def batch(self, dataset, batch_size, is_training):
        """Evaluation: consecutive images of one canvas per batch (the last of each may be short).
        Training batches are formed by the reader from one stream per canvas (``group``)."""
        if is_training:
            raise ValueError("RCNNParser: training batches come from the reader's per-canvas streams")

        def key(image, labels):
            shape = tf.cast(tf.shape(image), tf.int64)
            return shape[0] * 2**20 + shape[1]

        def to_batch(_, window):
            return window.batch(batch_size)

        return dataset.group_by_window(key, to_batch, window_size=batch_size)

    def group_label(self, group) -> str:
        return "x".join(map(str, self.canvases[group]))

    def unheld_groups(self, allowed) -> list:
        """The canvases without a stream (``allowed`` False) that no allowed canvas holds: images that need one of
        them (at least its largest) have no stream and are left out of training."""
        held = [c for c, a in zip(self.canvases, allowed) if a]
        return [g for g, c in enumerate(self.canvases) if not allowed[g] and smallest_canvas(*c, held) is None]

    def fix_shape(self, images, group):
        """The static canvas of a training batch of ``group``."""
        h, w = self.canvases[group]
        return tf.ensure_shape(images, [None, h, w, 3])
