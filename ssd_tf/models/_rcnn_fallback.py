"""Private stand-ins for the Faster R-CNN ops the ops package does not provide yet (RPN proposal selection,
multi-scale RoIAlign, detection post-processing). Each is replaced by its ``ssd_tf.ops`` counterpart as that
lands; nothing outside ``ssd_tf.models.faster_rcnn`` imports this module.

Semantics are torchvision's (REFERENCE_SPECS §3.3-3.6); shapes are static, batch-first.
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssd_tf.ops import box_coder


def _clip_to_image(boxes, image_shape):
    """yxyx boxes [B, ..., 4] clipped to [0, h] x [0, w] of image_shape [B, 2]."""
    shape = tf.cast(image_shape, boxes.dtype)
    extra = boxes.shape.rank - 2
    h = tf.reshape(shape[:, 0], [-1] + [1] * extra)
    w = tf.reshape(shape[:, 1], [-1] + [1] * extra)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    zero = tf.zeros([], boxes.dtype)
    return tf.stack([tf.clip_by_value(ymin, zero, h), tf.clip_by_value(xmin, zero, w),
                     tf.clip_by_value(ymax, zero, h), tf.clip_by_value(xmax, zero, w)], axis=-1)


def _not_small(boxes, min_size):
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def select_proposals(objectness, deltas, anchors, level_sizes, image_shape, *, pre_nms_top_n, post_nms_top_n,
                     nms_threshold, min_size, score_threshold, weights=box_coder.RPN_WEIGHTS, wh_clip=None):
    """torchvision ``RegionProposalNetwork.filter_proposals``: per level top-n by objectness, decode, clip to the
    true image size, drop sides < min_size and scores < score_threshold, NMS per level, top post_nms_top_n.

    objectness [B, N] logits, deltas [B, N, 4], anchors [N, 4], level_sizes: anchors per level (ints).
    Returns (boxes [B, P, 4], scores [B, P] (sigmoid), valid bool [B, P]), P = post_nms_top_n, best first.
    """
    wh_clip = box_coder.TORCHVISION_WH_CLIP if wh_clip is None else wh_clip
    boxes, scores, levels = [], [], []
    for level, (obj, dlt, anc) in enumerate(zip(tf.split(objectness, level_sizes, 1),
                                                 tf.split(deltas, level_sizes, 1),
                                                 tf.split(anchors, level_sizes, 0))):
        k = min(pre_nms_top_n, obj.shape[1])
        top, idx = tf.math.top_k(obj, k=k)  # [B, k]
        decoded = box_coder.decode(tf.gather(dlt, idx, batch_dims=1), tf.gather(anc, idx), weights, wh_clip)
        boxes.append(decoded)
        scores.append(tf.sigmoid(top))
        levels.append(tf.fill(tf.shape(idx), level))
    boxes = _clip_to_image(tf.concat(boxes, 1), image_shape)  # [B, K, 4]
    scores = tf.concat(scores, 1)
    levels = tf.concat(levels, 1)
    keep = _not_small(boxes, min_size) & (scores >= score_threshold)
    # One NMS "class" per level; everything dropped above scores -1, below combined NMS's strict threshold.
    per_level = tf.where(keep[..., None] & tf.equal(levels[..., None], tf.range(len(level_sizes))),
                         scores[..., None], -1.0)  # [B, K, L]
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], per_level, max_output_size_per_class=post_nms_top_n, max_total_size=post_nms_top_n,
        iou_threshold=nms_threshold, score_threshold=-0.5, pad_per_class=False, clip_boxes=False)
    valid = tf.range(post_nms_top_n)[None, :] < nms.valid_detections[:, None]
    return (tf.where(valid[..., None], nms.nmsed_boxes, 0.0), tf.where(valid, nms.nmsed_scores, 0.0), valid)


def fpn_levels(boxes, min_level=2, max_level=5, canonical_scale=224, canonical_level=4):
    """torchvision ``LevelMapper``: floor(k0 + log2(sqrt(area) / s0) + 1e-6) clamped to [min, max]."""
    area = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    level = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_scale) / math.log(2.0) + 1e-6)
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(features, boxes, output_size=7, sampling_ratio=2, min_level=2, canonical_scale=224,
                         canonical_level=4):
    """torchvision ``MultiScaleRoIAlign`` (aligned=False): features [P_min..P_max] each [B, H_l, W_l, C] with stride
    2**level, boxes [B, R, 4] yxyx pixels -> [B, R, output_size, output_size, C] float32."""
    features = [tf.cast(f, tf.float32) for f in features]
    max_level = min_level + len(features) - 1
    batch = tf.shape(boxes)[0]
    num_rois = tf.shape(boxes)[1]
    channels = features[0].shape[-1]
    levels = fpn_levels(boxes, min_level, max_level, canonical_scale, canonical_level) - min_level  # [B, R]
    sizes = tf.stack([tf.shape(f)[1:3] for f in features])  # [L, 2]
    flat = tf.concat([tf.reshape(f, [batch, -1, channels]) for f in features], axis=1)  # [B, S, C]
    offsets = tf.concat([[0], tf.math.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]], 0)
    scale = tf.gather(tf.constant([2.0 ** -(min_level + i) for i in range(len(features))]), levels)  # [B, R]
    height = tf.cast(tf.gather(sizes[:, 0], levels), tf.float32)
    width = tf.cast(tf.gather(sizes[:, 1], levels), tf.float32)
    samples = output_size * sampling_ratio

    def axis_weights(start, end, size):
        """Per RoI: corner indices int [B, R, samples*2] and weights [B, R, output_size, samples*2]."""
        start = start * scale
        length = tf.maximum(end * scale - start, 1.0)
        pos = start[..., None] + (tf.range(samples, dtype=tf.float32) + 0.5) * (length / samples)[..., None]
        inside = (pos >= -1.0) & (pos <= size[..., None])
        pos = tf.maximum(pos, 0.0)
        low = tf.floor(pos)
        at_end = low >= size[..., None] - 1.0
        low = tf.where(at_end, size[..., None] - 1.0, low)
        high = tf.where(at_end, low, low + 1.0)
        pos = tf.where(at_end, low, pos)
        frac = pos - low
        w = tf.stack([1.0 - frac, frac], -1) * tf.cast(inside, tf.float32)[..., None] / sampling_ratio
        idx = tf.cast(tf.stack([low, high], -1), tf.int32)  # [B, R, samples, 2]
        # bin b owns samples b*ratio .. b*ratio + ratio - 1
        owner = tf.one_hot(tf.range(samples) // sampling_ratio, output_size, dtype=tf.float32)  # [samples, bins]
        weights = tf.einsum("brsk,sp->brpsk", w, owner)
        return (tf.reshape(idx, [batch, num_rois, samples * 2]),
                tf.reshape(weights, [batch, num_rois, output_size, samples * 2]))

    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(boxes, tf.float32), 4, axis=-1)
    row_idx, row_w = axis_weights(ymin, ymax, height)
    col_idx, col_w = axis_weights(xmin, xmax, width)
    level_width = tf.gather(sizes[:, 1], levels)
    base = tf.gather(offsets, levels)  # [B, R]
    flat_idx = (base[..., None, None] + row_idx[..., :, None] * level_width[..., None, None]
                + col_idx[..., None, :])  # [B, R, 2s, 2s]
    gathered = tf.gather(flat, tf.reshape(flat_idx, [batch, -1]), batch_dims=1)
    gathered = tf.reshape(gathered, [batch, num_rois, samples * 2, samples * 2, channels])
    out = tf.einsum("brpi,brijc->brpjc", row_w, gathered)
    return tf.einsum("brqj,brpjc->brpqc", col_w, out)


def detection_postprocess(class_logits, box_deltas, rois, roi_valid, image_shape, *, score_threshold,
                          iou_threshold, max_detections, min_size, weights=box_coder.ROI_WEIGHTS, wh_clip=None):
    """torchvision ``RoIHeads.postprocess_detections``: softmax, class-specific decode, clip to the image, drop
    background, scores <= threshold and sides < min_size, per-class NMS, best ``max_detections``.

    class_logits [B, R, C], box_deltas [B, R, C, 4] (ty, tx, th, tw), rois [B, R, 4], roi_valid bool [B, R].
    Returns dict(boxes [B, K, 4], scores [B, K], classes int32 [B, K] (0 = padding), num_detections int32 [B]).
    """
    wh_clip = box_coder.TORCHVISION_WH_CLIP if wh_clip is None else wh_clip
    boxes = box_coder.decode(box_deltas[:, :, 1:], rois[:, :, None, :], weights, wh_clip)  # [B, R, C-1, 4]
    boxes = _clip_to_image(boxes, image_shape)
    scores = tf.nn.softmax(class_logits, axis=-1)[:, :, 1:]  # [B, R, C-1]
    keep = _not_small(boxes, min_size) & roi_valid[..., None]
    scores = tf.where(keep, scores, 0.0)
    nms = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_detections, max_total_size=max_detections,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    num = tf.cast(nms.valid_detections, tf.int32)
    valid = tf.range(max_detections)[None, :] < num[:, None]
    return {"boxes": tf.where(valid[..., None], nms.nmsed_boxes, 0.0),
            "scores": tf.where(valid, nms.nmsed_scores, 0.0),
            "classes": tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32) + 1, 0),
            "num_detections": num}
