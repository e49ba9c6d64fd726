"""The generic reader every detector family shares (Model Garden's decoder -> parser -> reader split).

``build_dataset(file_pattern, parser, ...)``: list files -> shard (files, or records when there are fewer files
than input pipelines) -> parallel interleave -> [cache serialized records] -> training: shuffle + repeat ->
[drop images without training boxes] -> number the stream -> skip what a resumed run already consumed ->
decode (``decoder.decode_example``) -> dataset class ids to contiguous ids -> ``parser`` (family-specific:
augmentation, resizing, normalisation, targets) -> ``parser.batch`` -> prefetch.

Decisions:
* Class ids: a record whose class id is not in ``class_ids`` is an ERROR (InvalidArgumentError naming the
  record's source_id and the ids), not a silent drop: a wrong label map otherwise trains a wrong model quietly.
  To train on a subset of classes, convert with that label map.
* Augmentation seeds: example i of pipeline p gets ``fold_in([seed, p], i)``, so a run with a seed is
  reproducible, and resumable with ``skip_examples`` (counted after the empty-image filter, before decoding);
  ``seed=None`` draws a fresh global seed.
* Evaluation reads every record once, in file order.

A parser provides ``parse(decoded, seed, is_training) -> (image, labels)`` and optionally
``batch(dataset, batch_size, is_training) -> dataset`` (default: fixed batches, the remainder dropped in
training). ``decoded`` is ``decode_example``'s dict with contiguous ``classes`` and, in training,
``train_keep`` (bool [N], the boxes training targets keep).
"""
from __future__ import annotations

import math
import random

import numpy as np
import tensorflow as tf

from ssd_tf.data import example as ex
from ssd_tf.data.decoder import decode_example
from ssd_tf.data.shards import expand_pattern

GROUP_SAMPLE = 2000  # records read (headers only) to estimate each group's share of the training set


def list_files(file_pattern) -> list[str]:
    """Sorted files matching a glob, a comma-separated list of globs, or a list of globs."""
    files = expand_pattern(file_pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match file_pattern {file_pattern!r}")
    return files


def class_table(class_ids) -> tf.lookup.StaticHashTable:
    """Dataset ids -> contiguous ids 1..N (class_ids[i] -> i + 1); unknown ids -> -1."""
    keys = tf.constant([int(c) for c in class_ids], tf.int64)
    values = tf.range(1, len(class_ids) + 1, dtype=tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def to_contiguous_classes(decoded: dict, table, file_pattern, class_ids) -> tf.Tensor:
    """int32 [N] contiguous classes of a decoded example; an id outside ``class_ids`` fails the pipeline with
    the record's source_id."""
    classes = table.lookup(decoded["classes"])
    unknown = tf.boolean_mask(decoded["classes"], classes < 0)
    check = tf.debugging.Assert(tf.equal(tf.size(unknown), 0), [
        "record with source_id", decoded["source_id"], "has class ids not in class_ids:", unknown,
        f"(file_pattern {file_pattern!r}, class_ids {list(class_ids)[:20]})"], summarize=20)
    with tf.control_dependencies([check]):
        return tf.cast(classes, tf.int32)


def pad_to(tensor, size, value=0):
    """Pad / truncate the first axis of a per-box tensor to ``size`` (static shape)."""
    tensor = tensor[:size]
    pad = [[0, size - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    out = tf.pad(tensor, pad, constant_values=value)
    return tf.ensure_shape(out, [size] + tensor.shape.as_list()[1:])


def training_box_mask(decoded: dict, drop_crowd: bool, drop_difficult: bool) -> tf.Tensor:
    """bool [N]: the boxes a training target keeps (crowd / difficult boxes left out when asked)."""
    keep = tf.ones_like(decoded["is_crowd"], tf.bool)
    if drop_crowd:
        keep &= ~decoded["is_crowd"]
    if drop_difficult:
        keep &= ~decoded["difficult"]
    return keep


_BOX_FLAGS = {ex.BBOX_XMIN: tf.io.VarLenFeature(tf.float32), ex.IS_CROWD: tf.io.VarLenFeature(tf.int64),
              ex.DIFFICULT: tf.io.VarLenFeature(tf.int64)}


def _has_training_boxes(serialized, drop_crowd, drop_difficult):
    """Whether a record keeps at least one training box (parses the box lists only, no image decode)."""
    parsed = tf.io.parse_single_example(serialized, _BOX_FLAGS)
    n = tf.size(parsed[ex.BBOX_XMIN].values)

    def flag(key):
        values = parsed[key].values
        return tf.cond(tf.equal(tf.size(values), n), lambda: values > 0, lambda: tf.zeros([n], tf.bool))

    decoded = {"is_crowd": flag(ex.IS_CROWD), "difficult": flag(ex.DIFFICULT)}
    return tf.reduce_any(training_box_mask(decoded, drop_crowd, drop_difficult))


def _validate(batch_size, class_ids, shuffle_buffer):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be a positive int, got {shuffle_buffer!r}")
    ids = [int(c) for c in class_ids]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"class_ids must be a non-empty list of distinct dataset ids, got {list(class_ids)!r}")


def _serialized_records(files, *, is_training, num_pipes, pipe_id, seed, shuffle_buffer, cache):
    """The serialized records this input pipeline reads: file- or record-level sharding, interleave, [cache],
    and for training a shuffled, repeated stream."""
    shard_records = num_pipes > 1 and len(files) < num_pipes
    if num_pipes > 1 and not shard_records:
        files = files[pipe_id::num_pipes]
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
    return ds


def sample_map(files, fn, sample: int | None = None) -> list:
    """``fn(serialized)`` of the first ``sample`` (default ``GROUP_SAMPLE``) records of ``files`` (in file order),
    as numpy values."""
    sample = GROUP_SAMPLE if sample is None else sample
    ds = tf.data.TFRecordDataset(list(files)).take(sample).map(fn, num_parallel_calls=tf.data.AUTOTUNE,
                                                               deterministic=True)
    return list(ds.as_numpy_iterator())


def group_split(fractions) -> list:
    """The split ratios of ``group_choice``: group g's share of the batches that groups 0..g-1 left."""
    ratios, rest = [], 1.0
    for p in fractions[:-1]:
        ratios.append(min(1.0, p / rest) if rest > 0 else 1.0)
        rest -= p
    return ratios


def group_choice(k, fractions, phi: float):
    """The group (an index into ``fractions``, which sum to 1) batch k comes from. Group 0 takes batch k when
    floor((k + 1) q + phi) > floor(k q + phi), q its fraction, so its first K batches hold exactly floor(K q + phi)
    of its (phi in [0, 1)); the batches it leaves, renumbered, are split the same way between group 1 and the
    rest with group 1's share of them, and so on."""
    k = tf.cast(k, tf.float64)
    chosen = tf.constant(len(fractions) - 1, tf.int64)
    decided = tf.constant(False)
    for g, q in enumerate(group_split(fractions)):
        take = tf.floor((k + 1.0) * q + phi) > tf.floor(k * q + phi)
        chosen = tf.where(~decided & take, tf.constant(g, tf.int64), chosen)
        decided = decided | take
        k = k - tf.floor(k * q + phi)
    return chosen


def groups_before(batches: int, fractions, phi: float) -> list:
    """How many of the first ``batches`` batches of ``group_choice`` each group holds."""
    counts, left = [], int(batches)
    for q in group_split(fractions):
        taken = int(math.floor(left * q + phi))
        counts.append(taken)
        left -= taken
    return counts + [left]


def build_dataset(file_pattern, parser, *, batch_size, is_training, class_ids, input_context=None,
                  shuffle_buffer=1024, seed=None, cache=False, skip_examples=0, drop_crowd=False,
                  drop_difficult=False, drop_images_without_boxes=False, num_parallel_calls=tf.data.AUTOTUNE,
                  log=None):
    """TFRecords -> batches of ``parser``'s ``(image, labels)`` (see the module docstring).

    ``class_ids``: dataset ids in contiguous order. ``input_context``: a ``tf.distribute.InputContext``.
    ``cache`` keeps the serialized records in memory. ``skip_examples`` skips that many training examples
    (resume; a multiple of ``batch_size``). ``drop_crowd`` / ``drop_difficult``: which boxes training targets
    leave out (passed to the parser as ``decoded["train_keep"]``); ``drop_images_without_boxes``: training skips
    images none of whose boxes is kept. Training batches repeat forever; evaluation is one pass.

    A parser with ``num_groups`` and a ``group(serialized, allowed) -> index | -1`` method gets single-group
    training batches from one stream per group (see ``group_choice``; R-CNN's canvases), and its
    ``fix_shape(images, group)`` gives each stream's batches their static shape. The groups are those of the
    first ``GROUP_SAMPLE`` records; ``log`` hears each group's share and, from ``unheld_groups(allowed)``, which
    groups no sampled group can stand in for (their later images are left out).
    """
    _validate(batch_size, class_ids, shuffle_buffer)
    files = list_files(file_pattern)
    num_pipes = input_context.num_input_pipelines if input_context is not None else 1
    pipe_id = input_context.input_pipeline_id if input_context is not None else 0
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    table = class_table(class_ids)

    def parse_fn(group):
        base_seed = tf.constant([seed, pipe_id] + ([] if group is None else [group]), tf.int64)

        @tf.autograph.experimental.do_not_convert  # plain graph code (explicit tf.cond): tracing 3x faster
        def parse(index, serialized):
            decoded = decode_example(serialized)
            decoded["classes"] = to_contiguous_classes(decoded, table, file_pattern, class_ids)
            if is_training:
                decoded["train_keep"] = training_box_mask(decoded, drop_crowd, drop_difficult)
            example_seed = tf.random.experimental.stateless_fold_in(base_seed[:2], index)
            if group is not None:
                example_seed = tf.random.experimental.stateless_fold_in(example_seed, group)
            return parser.parse(decoded, example_seed, is_training)

        return parse

    def records(stream_seed):
        ds = _serialized_records(files, is_training=is_training, num_pipes=num_pipes, pipe_id=pipe_id,
                                 seed=stream_seed, shuffle_buffer=shuffle_buffer, cache=cache)
        if is_training and drop_images_without_boxes:
            ds = ds.filter(lambda s: _has_training_boxes(s, drop_crowd, drop_difficult))
        return ds

    grouped = is_training and hasattr(parser, "group")
    if grouped:
        counts = np.bincount(np.asarray(sample_map(files, parser.group), np.int64) + 1,
                             minlength=parser.num_groups + 1)[1:]
        allowed = [bool(c) for c in counts]  # canvases with images in the sample: one stream each
        active = [g for g, a in enumerate(allowed) if a]
        if not active:
            raise ValueError(f"{file_pattern}: none of the first {GROUP_SAMPLE} training records fits a canvas")
        fractions = [float(counts[g]) / float(counts.sum()) for g in active]
        phi = (seed % 9973) / 9973.0
        skip_batches = int(skip_examples) // batch_size
        before = groups_before(skip_batches, fractions, phi)
        if log is not None:
            shares = ", ".join(f"{parser.group_label(g)} {p:.1%}" for g, p in zip(active, fractions))
            log(f"Training batches by canvas: {shares}")
            unheld = [parser.group_label(g) for g in parser.unheld_groups(allowed)]
            if unheld and counts.sum() >= GROUP_SAMPLE:  # (a smaller sample read every record)
                log(f"WARNING: none of the first {int(counts.sum())} training records needs canvas "
                    f"{', '.join(unheld)}: the streams come from those records' sizes, so later images that need "
                    f"it are left out of training")
        streams = []
        for g, skip in zip(active, before):
            ds = records(seed + 7919 * g).filter(
                lambda s, g=g: tf.equal(parser.group(s, allowed), g)).enumerate()
            if skip:
                ds = ds.skip(skip * batch_size)
            ds = ds.map(parse_fn(g), num_parallel_calls=num_parallel_calls, deterministic=True)
            ds = ds.batch(batch_size, drop_remainder=True)
            ds = ds.map(lambda images, labels, g=g: (parser.fix_shape(images, g), labels))
            streams.append(ds)
        if len(streams) == 1:
            ds = streams[0]
        else:
            choice = tf.data.Dataset.range(skip_batches, 2**62).map(lambda k: group_choice(k, fractions, phi))
            ds = tf.data.Dataset.choose_from_datasets(streams, choice)
    else:
        ds = records(seed)
        if is_training:
            ds = ds.enumerate()
            if skip_examples:
                ds = ds.skip(int(skip_examples))
        else:
            ds = ds.map(lambda s: (tf.constant(0, tf.int64), s))
        ds = ds.map(parse_fn(None), num_parallel_calls=num_parallel_calls, deterministic=True)
        batch = getattr(parser, "batch", None)
        ds = batch(ds, batch_size, is_training) if batch is not None else ds.batch(batch_size,
                                                                                     drop_remainder=is_training)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
