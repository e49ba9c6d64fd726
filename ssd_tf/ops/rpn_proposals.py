"""RPN proposal selection (torchvision ``RegionProposalNetwork.filter_proposals``), batched with static shapes.

Per image (REFERENCE_SPECS §3.4):
1. on every FPN level, the ``pre_nms_top_n`` anchors with the highest objectness logits (all of the level if it has
   fewer);
2. decode their deltas (ty, tx, th, tw) with weights (1, 1, 1, 1) and dh, dw clamped at log(1000/16);
3. clip to the true image size (``image_shape``, for padded batches): y in [0, height], x in [0, width];
4. drop boxes with a side < ``min_size`` (1e-3) and boxes whose sigmoid score is < ``score_threshold`` (0.0);
5. NMS at ``nms_threshold`` (0.7) within each level (torchvision's ``batched_nms`` over level ids);
6. keep the ``post_nms_top_n`` highest-scoring survivors of all levels, sorted by decreasing score.
Train: 2000 / 2000; test: 1000 / 1000.

maskrcnn-benchmark switches: ``plus_one`` (clip to [0, size - 1], sides measured + 1, "+1" IoU in NMS and in the
decode), ``min_size=0``, ``max_per_level`` (its per-level POST_NMS_TOP_N after NMS) and ``post_nms_per_batch``
(training: the ``post_nms_top_n`` best proposals of the whole batch, not of each image; FPN_POST_NMS_PER_BATCH).
maskrcnn-benchmark keeps the per-image proposals in level order; here they are sorted by score (the RoI head does
not depend on the order).

Scores rank by logit (sigmoid is monotonic; logits do not saturate into ties as float32 probabilities do); the
returned scores are probabilities. NMS uses ``tf.image.combined_non_max_suppression`` (see ``ops/nms.py``): use
under ``tf.function`` without ``jit_compile``.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.ops import box_coder
from ssd_tf.ops.boxes import clip_to_image, side_at_least
from ssd_tf.ops.nms import batched_class_nms

TRAIN_DEFAULTS = dict(pre_nms_top_n=2000, post_nms_top_n=2000, nms_threshold=0.7, min_size=1e-3, score_threshold=0.0)
TEST_DEFAULTS = dict(pre_nms_top_n=1000, post_nms_top_n=1000, nms_threshold=0.7, min_size=1e-3, score_threshold=0.0)


def rpn_proposals(objectness, deltas, anchors, image_shape, num_anchors_per_level, *, pre_nms_top_n,
                  post_nms_top_n, nms_threshold=0.7, min_size=1e-3, score_threshold=0.0,
                  weights=box_coder.RPN_WEIGHTS, wh_clip=box_coder.TORCHVISION_WH_CLIP, plus_one=False,
                  max_per_level=None, post_nms_per_batch=False):
    """Proposals from RPN outputs.

    Args:
      objectness: float [B, A] logits, anchors of all levels concatenated (head layout (y, x, a) per level).
      deltas: float [B, A, 4] (ty, tx, th, tw).
      anchors: float [A, 4] yxyx pixels (``grid_anchors``), or [B, A, 4].
      image_shape: int or float [B, 2], the true (height, width) of each image inside the padded batch.
      num_anchors_per_level: Python ints summing to A (``grid_anchors.anchors_per_level``).
      pre_nms_top_n: per level and image. post_nms_top_n: N, per image (per batch with ``post_nms_per_batch``).
      nms_threshold, min_size, score_threshold: see the module docstring.
      weights, wh_clip: the decode's.
      plus_one, max_per_level, post_nms_per_batch: maskrcnn-benchmark's variants (module docstring).
    Returns:
      dict: ``proposals`` float32 [B, N, 4] yxyx pixels sorted by decreasing score, ``scores`` float32 [B, N]
      (sigmoid), ``valid`` bool [B, N], ``num_proposals`` int32 [B]; padding rows are 0.
    """
    objectness = tf.convert_to_tensor(objectness, tf.float32)
    deltas = tf.convert_to_tensor(deltas, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    image_shape = tf.convert_to_tensor(image_shape)
    if objectness.shape.rank != 2:
        raise ValueError(f"rpn_proposals: objectness must be [B, A] logits, got shape {objectness.shape}")
    if deltas.shape.rank != 3 or deltas.shape[-1] != 4:
        raise ValueError(f"rpn_proposals: deltas must be [B, A, 4], got shape {deltas.shape}")
    if anchors.shape.rank not in (2, 3) or anchors.shape[-1] != 4:
        raise ValueError(f"rpn_proposals: anchors must be [A, 4] or [B, A, 4], got shape {anchors.shape}")
    if image_shape.shape.rank != 2 or image_shape.shape[-1] != 2:
        raise ValueError(f"rpn_proposals: image_shape must be [B, 2] (height, width), got shape {image_shape.shape}")
    num_anchors_per_level = [int(n) for n in num_anchors_per_level]
    total = sum(num_anchors_per_level)
    for name, t in (("objectness", objectness), ("deltas", deltas), ("anchors", anchors)):
        axis = 0 if t is anchors and t.shape.rank == 2 else 1
        if t.shape[axis] is not None and t.shape[axis] != total:
            raise ValueError(f"rpn_proposals: {name} has {t.shape[axis]} anchors (shape {t.shape}) but "
                             f"num_anchors_per_level sums to {total}")
    if min(num_anchors_per_level, default=0) < 1:
        raise ValueError(f"rpn_proposals: every level needs anchors, got {num_anchors_per_level}")
    for name, value in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"rpn_proposals: {name} must be an int >= 1, got {value!r}")
    if max_per_level is not None and (not isinstance(max_per_level, int) or max_per_level < 1):
        raise ValueError(f"rpn_proposals: max_per_level must be None or an int >= 1, got {max_per_level!r}")

    # 1. per-level top-k on the logits (static k per level).
    selected, level_ids, start = [], [], 0
    for level, count in enumerate(num_anchors_per_level):
        k = min(pre_nms_top_n, count)
        _, idx = tf.math.top_k(objectness[:, start:start + count], k=k, sorted=True)  # [B, k]
        selected.append(idx + start)
        level_ids.append(tf.fill([k], level))
        start += count
    index = tf.concat(selected, axis=1)  # [B, K]
    level_ids = tf.concat(level_ids, axis=0)  # [K]
    logits = tf.gather(objectness, index, batch_dims=1)  # [B, K]
    picked_deltas = tf.gather(deltas, index, batch_dims=1)  # [B, K, 4]
    if anchors.shape.rank == 2:
        picked_anchors = tf.gather(anchors, index)  # [B, K, 4]
    else:
        picked_anchors = tf.gather(anchors, index, batch_dims=1)

    # 2-4. decode, clip, filter.
    boxes = box_coder.decode(picked_deltas, picked_anchors, weights, wh_clip, plus_one=plus_one)  # [B, K, 4]
    boxes = clip_to_image(boxes, image_shape, plus_one)
    probs = tf.sigmoid(logits)
    keep = side_at_least(boxes, min_size, plus_one) & (probs >= score_threshold)  # [B, K]

    # 5-6. NMS within each level: one score column per level, -1 outside it. NMS ranks by the probability, as
    # torchvision does: combined NMS reports any score below -1 as -1, so ranking raw logits would leave every
    # proposal with a logit < -1 in arbitrary order.
    num_levels = len(num_anchors_per_level)
    in_level = tf.one_hot(level_ids, num_levels, on_value=True, off_value=False)  # [K, L]
    scores = tf.where(keep[:, :, None] & in_level[None], probs[:, :, None], -1.0)  # [B, K, L]
    per_image = post_nms_top_n
    per_level = min(max_per_level or per_image, per_image)
    nms = batched_class_nms(boxes[:, :, None, :], scores, max_per_class=per_level, max_total=per_image,
                            iou_threshold=nms_threshold, score_threshold=-0.5, plus_one=plus_one)
    valid, num = nms.valid, nms.num_valid
    if post_nms_per_batch:
        # The post_nms_top_n best of the whole batch; each image's list is sorted, so its share is a prefix.
        flat = tf.reshape(tf.where(valid, nms.scores, float("-inf")), [-1])  # [B*N]
        _, top = tf.math.top_k(flat, k=post_nms_top_n)  # B*N >= N entries
        chosen = tf.scatter_nd(top[:, None], tf.ones_like(top), tf.shape(flat)) > 0
        valid = valid & tf.reshape(chosen, tf.shape(valid))
        num = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    return {
        "proposals": tf.where(valid[..., None], nms.boxes, 0.0),
        "scores": tf.where(valid, nms.scores, 0.0),
        "valid": valid,
        "num_proposals": num,
    }
