"""TFRecords -> batched SSD model inputs: ``build_ssd_dataset``.

Order: list files -> shard (files, or records when there are fewer files than pipelines) -> parallel
interleave -> [cache serialized records] -> shuffle + repeat (training) -> parallel map (decode, class-id
mapping, augmentation or plain resize, normalisation, padding, target encoding) -> batch -> prefetch.

Decisions:
* Class ids: a record whose class id is not in ``class_ids`` is an ERROR (InvalidArgumentError naming the
  record's source_id and the ids), not a silent drop: a wrong label map otherwise trains a wrong model quietly.
  To train on a subset of classes, convert with that label map.
* Training images without boxes are kept (the loss gives them box loss 0 and only background class loss).
* More than ``max_boxes`` boxes: the first ``max_boxes`` are kept (COCO train2017 has at most 93 per image).
* Crowd boxes are kept by default (neither MLPerf implementation filters them); ``drop_crowd`` drops them in
  training only (eval keeps them: COCO eval uses them as ignore regions).
* Difficult boxes: ``drop_difficult=None`` follows the preset's reference: dropped in training for
  ``ssd_vgg16_voc`` (ssd.pytorch ``keep_difficult=False``), kept otherwise; always kept in eval.
* Augmentation seeds: example i of pipeline p gets ``fold_in([seed, p], i)``, so a run with a seed is
  reproducible (and resumable with ``skip_examples``); ``seed=None`` draws a fresh global seed.
* Targets are encoded in the pipeline by default (``encode_targets=True``), matched against the unpadded boxes.
  Measured (bench/pipeline_throughput.py, coco_tiny, batch 8, 2 loaded cores): ~1-3.6 ms CPU per image in the
  pipeline (overlapped with the step) vs ~10 ms CPU per image in a graph train step / ~3 ms with XLA, i.e.
  72-143 ms of step wall time per batch of 8 (padded to 100 boxes), paid inside the step.
* Matching rule per preset: ``MATCHING`` (MLPerf REF IoU > 0.5 for ssd_resnet34, >= 0.5 for the VGG presets).
"""
from __future__ import annotations

import random

import tensorflow as tf

from ssd_tf.data import augment
from ssd_tf.data.decoder import decode_example
from ssd_tf.data.preprocess import normalize_image
from ssd_tf.data.shards import expand_pattern

PRESETS = ("ssd_resnet34", "ssd_vgg16", "ssd_vgg16_voc")
IMAGE_SIZE = (300, 300)
# Positive-match rule of each preset's reference: MLPerf REF IoU > 0.5; torchvision / ssd.pytorch IoU >= 0.5.
MATCHING = {
    "ssd_resnet34": {"iou_threshold": 0.5, "strict_threshold": True},
    "ssd_vgg16": {"iou_threshold": 0.5, "strict_threshold": False},
    "ssd_vgg16_voc": {"iou_threshold": 0.5, "strict_threshold": False},
}
_AUGMENTATION_ALIASES = {"mlperf": "ssd_resnet34", "ssd": "ssd_vgg16"}


def list_files(file_pattern) -> list[str]:
    """Sorted files matching a glob, a comma-separated list of globs, or a list of globs."""
    files = expand_pattern(file_pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match file_pattern {file_pattern!r}")
    return files


def resolve_augmentation(augmentation, preset):
    """'auto' -> the preset's recipe; 'none'/None -> no augmentation; 'mlperf' | 'ssd' | a preset name ->
    that recipe; an ``AugmentRecipe`` as is."""
    if isinstance(augmentation, augment.AugmentRecipe):
        return augmentation
    if augmentation is None or augmentation == "none":
        return None
    if augmentation == "auto":
        return augment.recipe_for_preset(preset)
    name = _AUGMENTATION_ALIASES.get(augmentation, augmentation)
    if name not in augment.RECIPES:
        raise ValueError(f"augmentation must be 'auto', 'none', 'mlperf', 'ssd', a preset name or an AugmentRecipe, "
                         f"got {augmentation!r}")
    return augment.RECIPES[name]


def _class_table(class_ids):
    keys = tf.constant([int(c) for c in class_ids], tf.int64)
    values = tf.range(1, len(class_ids) + 1, dtype=tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def _pad(tensor, max_boxes, value=0):
    """Pad / truncate the first axis of a per-box tensor to ``max_boxes`` (static shape)."""
    tensor = tensor[:max_boxes]
    pad = [[0, max_boxes - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    out = tf.pad(tensor, pad, constant_values=value)
    return tf.ensure_shape(out, [max_boxes] + tensor.shape.as_list()[1:])


def _validate(preset, batch_size, class_ids, max_boxes, shuffle_buffer):
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_boxes, int) or max_boxes < 1:
        raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be a positive int, got {shuffle_buffer!r}")
    ids = [int(c) for c in class_ids]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"class_ids must be a non-empty list of distinct dataset ids, got {list(class_ids)!r}")


def build_ssd_dataset(file_pattern, *, preset, batch_size, is_training, class_ids, max_boxes=100,
                      input_context=None, shuffle_buffer=1024, seed=None, encode_targets=True, cache=False,
                      augmentation="auto", drop_crowd=False, drop_difficult=None, skip_examples=0,
                      num_parallel_calls=tf.data.AUTOTUNE):
    """SSD input pipeline -> ``tf.data.Dataset`` of ``(images [B,300,300,3] float32 normalised, labels)``.

    Training labels: ``boxes`` [B,max_boxes,4], ``classes`` [B,max_boxes] int32 (contiguous, 0 = padding),
    ``num_boxes`` [B] int32 and, with ``encode_targets``, ``box_targets`` [B,A,4], ``class_targets`` [B,A] int32,
    ``num_positives`` [B] int32 against ``ssd_default_boxes(preset)``. Batches drop the remainder; infinite.
    Eval labels: ``source_id`` [B] string, ``original_size`` [B,2] int32 (h, w), ``boxes``, ``classes``,
    ``is_crowd``, ``difficult`` (bool), ``num_boxes``; one pass, last batch may be short.

    ``class_ids``: dataset ids in contiguous order (class_ids[i] -> i + 1). ``input_context``: a
    ``tf.distribute.InputContext`` (file-level sharding when there are at least as many files as pipelines,
    else record-level). ``cache`` keeps the serialized records in memory. ``skip_examples`` skips that many
    training examples (resume), before decoding.
    """
    _validate(preset, batch_size, class_ids, max_boxes, shuffle_buffer)
    recipe = resolve_augmentation(augmentation, preset) if is_training else None
    files = list_files(file_pattern)
    num_pipes = input_context.num_input_pipelines if input_context is not None else 1
    pipe_id = input_context.input_pipeline_id if input_context is not None else 0
    shard_records = num_pipes > 1 and len(files) < num_pipes
    if num_pipes > 1 and not shard_records:
        files = files[pipe_id::num_pipes]
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if drop_difficult is None:
        drop_difficult = preset == "ssd_vgg16_voc"

    ds = tf.data.Dataset.from_tensor_slices(files)
    if is_training and len(files) > 1 and not shard_records:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if len(files) > 1:
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1,
                           num_parallel_calls=min(len(files), 16), deterministic=True)
    else:
        ds = ds.flat_map(tf.data.TFRecordDataset)
    if shard_records:
        ds = ds.shard(num_pipes, pipe_id)
    if cache:
        ds = ds.cache()
    if is_training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.enumerate()
        if skip_examples:
            ds = ds.skip(int(skip_examples))
    else:
        ds = ds.map(lambda s: (tf.constant(0, tf.int64), s))

    table = _class_table(class_ids)
    anchors = None
    if is_training and encode_targets:
        from ssd_tf.ops.anchors import ssd_default_boxes
        from ssd_tf.ops.targets import ssd_targets

        anchors = tf.constant(ssd_default_boxes(preset), tf.float32)
    base_seed = tf.constant([seed, pipe_id], tf.int64)

    @tf.autograph.experimental.do_not_convert  # plain graph code (explicit tf.cond): tracing 3x faster
    def parse(index, serialized):
        d = decode_example(serialized)
        classes = table.lookup(d["classes"])
        unknown = tf.boolean_mask(d["classes"], classes < 0)
        check = tf.debugging.Assert(tf.equal(tf.size(unknown), 0), [
            "record with source_id", d["source_id"], "has class ids not in class_ids:", unknown,
            f"(file_pattern {file_pattern!r}, class_ids {list(class_ids)[:20]})"], summarize=20)
        with tf.control_dependencies([check]):
            classes = tf.cast(classes, tf.int32)
        boxes = d["boxes"]
        extras = {"classes": classes, "is_crowd": d["is_crowd"], "difficult": d["difficult"]}
        if not is_training:
            image = augment.resize_image(d["image"], IMAGE_SIZE)
            labels = {"source_id": d["source_id"], "original_size": tf.stack([d["height"], d["width"]])}
            return _finish(image, boxes, extras, labels)
        keep = tf.ones_like(classes, tf.bool)
        if drop_crowd:
            keep &= ~d["is_crowd"]
        if drop_difficult:
            keep &= ~d["difficult"]
        boxes = tf.boolean_mask(boxes, keep)
        extras = {k: tf.boolean_mask(v, keep) for k, v in extras.items()}
        if recipe is None:
            image = augment.resize_image(d["image"], IMAGE_SIZE)
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        else:
            example_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
            image, boxes, extras = augment.augment_example(d["image"], boxes, example_seed, recipe, IMAGE_SIZE,
                                                           extras)
        return _finish(image, boxes, {"classes": extras["classes"]}, {})

    def _finish(image, boxes, extras, labels):
        num = tf.minimum(tf.shape(boxes)[0], max_boxes)
        if anchors is not None:  # on the unpadded boxes: an [A, n] IoU matrix instead of [A, max_boxes]
            box_t, cls_t, num_pos = ssd_targets(boxes[:max_boxes], extras["classes"][:max_boxes], num, anchors,
                                                **MATCHING[preset])
        labels["boxes"] = _pad(boxes, max_boxes)
        for key, value in extras.items():
            labels[key] = _pad(value, max_boxes, False if value.dtype == tf.bool else 0)
        labels["num_boxes"] = num
        if anchors is not None:
            labels.update(box_targets=box_t, class_targets=cls_t, num_positives=num_pos)
        image = tf.ensure_shape(normalize_image(image, preset), [IMAGE_SIZE[0], IMAGE_SIZE[1], 3])
        return image, labels

    ds = ds.map(parse, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=is_training)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
