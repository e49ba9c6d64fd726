"""``build_ssd_dataset``: the shared reader (``reader.build_dataset``) with the SSD parser (``SSDParser``).

Training labels: ``boxes`` [B,max_boxes,4], ``classes`` [B,max_boxes] int32 (contiguous, 0 = padding),
``num_boxes`` [B] int32 and, with ``encode_targets``, ``box_targets`` [B,A,4], ``class_targets`` [B,A] int32,
``num_positives`` [B] int32 against the model config's default boxes. Batches drop the remainder; infinite.
Evaluation labels: ``source_id`` [B] string, ``image_info`` [B,4,2] float32, ``boxes`` (normalised to the original
image), ``classes``, ``is_crowd``, ``difficult`` (bool), ``num_boxes``; one pass, the last batch may be short.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.data.reader import build_dataset, list_files  # noqa: F401  (list_files: part of this module's API)
from ssd_tf.data.ssd_parser import SSDParser


def build_ssd_dataset(file_pattern, *, model, batch_size, is_training, class_ids, max_boxes=100, input_context=None,
                      shuffle_buffer=1024, seed=None, encode_targets=True, cache=False, augmentation="model",
                      drop_crowd=False, drop_difficult=False, drop_images_without_boxes=False, skip_examples=0,
                      num_parallel_calls=tf.data.AUTOTUNE):
    """SSD input pipeline -> ``tf.data.Dataset`` of ``(images [B,S,S,3] float32 normalised, labels)``.

    ``model``: an ``SSDModelConfig`` (``ssd_tf.presets.model_config(name)``). ``augmentation``: "model" (its
    recipe), None, or an ``SSDAugmentation``. The other arguments: ``reader.build_dataset``.
    """
    parser = SSDParser(model, max_boxes=max_boxes, encode_targets=encode_targets and is_training,
                       augmentation=augmentation)
    return build_dataset(file_pattern, parser, batch_size=batch_size, is_training=is_training, class_ids=class_ids,
                         input_context=input_context, shuffle_buffer=shuffle_buffer, seed=seed, cache=cache,
                         skip_examples=skip_examples, drop_crowd=drop_crowd, drop_difficult=drop_difficult,
                         drop_images_without_boxes=drop_images_without_boxes, num_parallel_calls=num_parallel_calls)
