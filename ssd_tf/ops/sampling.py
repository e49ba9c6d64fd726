"""Training-sample selection (static shapes, XLA-safe): SSD's hard negative mining and Faster R-CNN's balanced
random positive/negative sampler."""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


def hard_negative_mining(class_loss, positive_mask, neg_pos_ratio=3):
    """Selects, per image, the k highest-loss negatives, k = min(neg_pos_ratio * num_pos, num_negatives).

    Exactly k entries are chosen even when losses tie (among equal losses the lower anchor index wins), as with
    MLPerf TPU's top-k mask. Positives are never chosen. The references differ only in the cap: MLPerf caps k at
    the number of anchors, torchvision does not cap, ssd.pytorch at anchors - 1; k cannot usefully exceed the
    number of negatives, so that is the cap here.

    Args:
      class_loss: float [B, A], the ranking score (CE of the background class for negatives).
      positive_mask: bool [B, A].
    Returns:
      bool [B, A] negative mask.
    """
    class_loss = tf.convert_to_tensor(class_loss)
    positive_mask = tf.cast(tf.convert_to_tensor(positive_mask), tf.bool)
    if class_loss.shape.rank != 2 or positive_mask.shape.rank != 2:
        raise ValueError(f"hard_negative_mining: class_loss {class_loss.shape} and positive_mask "
                         f"{positive_mask.shape} must both be [B, A]")
    if class_loss.shape.is_fully_defined() and positive_mask.shape.is_fully_defined() \
            and class_loss.shape != positive_mask.shape:
        raise ValueError(f"hard_negative_mining: shapes differ: class_loss {class_loss.shape}, "
                         f"positive_mask {positive_mask.shape}")
    if neg_pos_ratio < 0:
        raise ValueError(f"hard_negative_mining: neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    scores = tf.cast(tf.stop_gradient(class_loss), tf.float32)
    negative = tf.logical_not(positive_mask)
    num_pos = tf.reduce_sum(tf.cast(positive_mask, tf.int32), axis=1, keepdims=True)  # [B, 1]
    num_neg = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)  # [B, 1]
    k = tf.minimum(tf.cast(tf.math.floor(tf.cast(num_pos, tf.float32) * float(neg_pos_ratio)), tf.int32), num_neg)
    # Positives (and NaN losses) rank last.
    scores = tf.where(negative & tf.logical_not(tf.math.is_nan(scores)), scores, -float("inf"))
    # One value sort gives the k-th largest score; everything above it is in, and ties at it are taken in anchor
    # order until exactly k are chosen (3x faster on CPU than ranking with two argsorts).
    sorted_scores = tf.sort(scores, axis=1, direction="DESCENDING")  # [B, A]
    kth = tf.gather(sorted_scores, tf.maximum(k - 1, 0), batch_dims=1)  # [B, 1]
    above = (scores > kth) & negative
    at_kth = (scores == kth) & negative
    remaining = k - tf.reduce_sum(tf.cast(above, tf.int32), axis=1, keepdims=True)  # [B, 1]
    tie_rank = tf.cumsum(tf.cast(at_kth, tf.int32), axis=1, exclusive=True)  # [B, A]
    return (above | (at_kth & (tie_rank < remaining))) & (k > 0)


class BalancedSample(NamedTuple):
    """Output of ``balanced_sample`` (S = batch_size_per_image, A = candidates per image)."""

    indices: tf.Tensor  # int32 [B, S]: sampled positives first, then negatives, then 0 for unused slots
    is_positive: tf.Tensor  # bool [B, S]
    valid: tf.Tensor  # bool [B, S]: slot holds a sample
    positive_mask: tf.Tensor  # bool [B, A]
    negative_mask: tf.Tensor  # bool [B, A]


def balanced_sample(matched, batch_size_per_image, positive_fraction, seed):
    """Uniform random positive/negative sample per image (torchvision's ``BalancedPositiveNegativeSampler``).

    Per image: P = min(#positives, int(batch_size_per_image * positive_fraction)) positives and
    min(#negatives, batch_size_per_image - P) negatives, each a uniform random subset without replacement;
    ignored entries are never picked. Randomness is stateless: the same ``seed`` gives the same sample, so the
    caller derives it from (step, replica); a jit-compiled caller gets a different (equally uniform) sample from
    the same seed than a non-XLA one. The draw is one ``tf.random.stateless_uniform`` key per entry and the k
    largest keys among positives (negatives) are taken.

    Args:
      matched: int [B, A], the matcher's output: >= 0 positive, -1 (``BELOW_LOW_THRESHOLD``) negative, anything
        else (-2 ``BETWEEN_THRESHOLDS``) ignored. Set entries that must not be sampled (padded proposals) to -2.
      batch_size_per_image: int >= 1 (RPN 256, box head 512).
      positive_fraction: float in [0, 1] (RPN 0.5, box head 0.25).
      seed: int tensor [2] for the batch, or [B, 2], one per image: then each image's sample depends on its own
        seed only, not on which other images share its batch (a 2-replica run samples what one process does).
    Returns:
      ``BalancedSample`` (see its fields).
    """
    matched = tf.convert_to_tensor(matched)
    if matched.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"balanced_sample: matched must be an int tensor, got {matched.dtype}")
    matched = tf.cast(matched, tf.int32)
    if matched.shape.rank != 2:
        raise ValueError(f"balanced_sample: matched must be [B, A], got shape {matched.shape}")
    if not isinstance(batch_size_per_image, int) or batch_size_per_image < 1:
        raise ValueError(f"balanced_sample: batch_size_per_image must be an int >= 1, got {batch_size_per_image!r}")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ValueError(f"balanced_sample: positive_fraction must be in [0, 1], got {positive_fraction!r}")
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank not in (1, 2) or seed.shape[-1] != 2 or not seed.dtype.is_integer:
        raise ValueError(f"balanced_sample: seed must be an int tensor of shape [2] or [B, 2], got "
                         f"{seed.dtype.name} {seed.shape}")
    num_candidates = matched.shape[1]
    if num_candidates is None:
        raise ValueError(f"balanced_sample: matched needs a static candidate axis, got shape {matched.shape}")
    size = batch_size_per_image
    pos_cap = int(size * float(positive_fraction))  # torchvision truncates
    batch = tf.shape(matched)[0]

    positive = matched >= 0
    negative = tf.equal(matched, -1)
    # Philox explicitly: under XLA on CPU the default ("auto_select") key generation was ~9x slower (82 ms vs
    # 9 ms for 400k keys). XLA and the TF kernels draw different numbers from the same seed.
    if seed.shape.rank == 1:
        keys = tf.random.stateless_uniform(tf.shape(matched), seed=seed, alg="philox")  # [B, A] in [0, 1)
    else:  # one key row per image, from that image's seed
        keys = tf.map_fn(lambda s: tf.random.stateless_uniform([num_candidates], seed=s, alg="philox"), seed,
                         fn_output_signature=tf.float32)  # [B, A]
    # Pad with k never-chosen columns so that top_k works when A < k.
    pad = [[0, 0], [0, size]]
    never = tf.constant(-1.0, keys.dtype)  # below every key
    pos_keys = tf.pad(tf.where(positive, keys, never), pad, constant_values=-1.0)  # [B, A+S]
    neg_keys = tf.pad(tf.where(negative, keys, never), pad, constant_values=-1.0)  # [B, A+S]
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), pos_cap)  # [B]
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), size - num_pos)  # [B]
    _, pos_idx = tf.math.top_k(pos_keys, k=max(pos_cap, 1), sorted=True)  # [B, max(P,1)]
    _, neg_idx = tf.math.top_k(neg_keys, k=size, sorted=True)  # [B, S]

    # Slot i holds positive i while i < num_pos, else negative i - num_pos.
    slots = tf.broadcast_to(tf.range(size, dtype=tf.int32)[None, :], [batch, size])  # [B, S]
    is_positive = slots < num_pos[:, None]  # [B, S]
    valid = slots < (num_pos + num_neg)[:, None]  # [B, S]
    from_pos = tf.gather(pos_idx, tf.minimum(slots, max(pos_cap, 1) - 1), batch_dims=1)  # [B, S]
    from_neg = tf.gather(neg_idx, tf.maximum(slots - num_pos[:, None], 0), batch_dims=1)  # [B, S]
    indices = tf.where(valid, tf.where(is_positive, from_pos, from_neg), 0)

    # Masks over the candidates: scatter the valid slots.
    rows = tf.broadcast_to(tf.range(batch)[:, None], [batch, size])  # [B, S]
    coords = tf.stack([rows, indices], axis=-1)  # [B, S, 2]
    shape = tf.stack([batch, num_candidates])
    positive_mask = tf.scatter_nd(coords, tf.cast(valid & is_positive, tf.int32), shape) > 0
    negative_mask = tf.scatter_nd(coords, tf.cast(valid & ~is_positive, tf.int32), shape) > 0
    return BalancedSample(indices, is_positive & valid, valid, positive_mask, negative_mask)
