"""The SSD family's parser: decoded examples -> 300x300 model inputs and targets (values from an
``SSDModelConfig``: image size, normalisation, augmentation recipe, anchors, matching rule, coder weights).

Training: the boxes training keeps (``decoded["train_keep"]``) -> the recipe's augmentation (or a plain resize
with boxes clipped to the image) -> normalisation -> labels ``boxes`` [max_boxes, 4] normalised yxyx,
``classes`` [max_boxes] int32 (contiguous, 0 = padding), ``num_boxes`` and, with ``encode_targets``,
``box_targets`` [A, 4], ``class_targets`` [A] int32, ``num_positives``, matched against the unpadded boxes
(measured: ~1-3.6 ms CPU per image here, overlapped with the step, against ~10 ms per image inside a graph train
step). More than ``max_boxes`` boxes: the first ``max_boxes`` are kept.

Evaluation: plain resize; labels ``source_id``, ``image_info`` float32 [4, 2] (see ``image_info``), and the
ground truth (``boxes`` normalised to the original image, ``classes``, ``is_crowd``, ``difficult``,
``num_boxes``). The model's boxes are normalised to the 300x300 input, which is the original image stretched,
so ``image_info``'s scale maps them to original pixels.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.data import augment
from ssd_tf.data.preprocess import normalize_image
from ssd_tf.data.reader import pad_to
from ssd_tf.ops.anchors import ssd_default_boxes


def image_info(original_size, input_size, scale, offset=(0.0, 0.0)) -> tf.Tensor:
    """Model Garden's per-image record, float32 [4, 2]: rows (height, width) of the original image, (height,
    width) of the image inside the model input (the valid, unpadded part), the (y, x) scale from original to
    input pixels, and the (y, x) offset of the image inside the input."""
    rows = [tf.cast(original_size, tf.float32), tf.cast(input_size, tf.float32), tf.cast(scale, tf.float32),
            tf.cast(offset, tf.float32)]
    return tf.ensure_shape(tf.stack([tf.reshape(r, [2]) for r in rows]), [4, 2])


class SSDParser:
    def __init__(self, model, *, max_boxes=100, encode_targets=True, augmentation="model"):
        """``model``: an ``SSDModelConfig``. ``augmentation``: "model" (the config's recipe), None (none), or an
        ``SSDAugmentation`` value."""
        from ssd_tf.model_configs.ssd import SSDAugmentation, SSDModelConfig

        if not isinstance(model, SSDModelConfig):
            raise ValueError(f"SSDParser needs an SSDModelConfig (ssd_tf.presets.model_config(name)), got {model!r}")
        if not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes must be a positive int, got {max_boxes!r}")
        if not (augmentation in ("model", None) or isinstance(augmentation, SSDAugmentation)):
            raise ValueError(f"augmentation must be 'model', None or an SSDAugmentation, got {augmentation!r}")
        self.model = model
        self.max_boxes = max_boxes
        self.size = (int(model.image_size), int(model.image_size))
        self.recipe = model.augmentation if augmentation == "model" else augmentation
        self.encode_targets = encode_targets
        self._anchors = ssd_default_boxes(model.anchors) if encode_targets else None

    def parse(self, decoded, seed, is_training):
        from ssd_tf.ops.targets import ssd_targets

        boxes, classes = decoded["boxes"], decoded["classes"]
        if not is_training:
            image = augment.resize_image(decoded["image"], self.size)
            original = tf.stack([decoded["height"], decoded["width"]])
            labels = {"source_id": decoded["source_id"],
                      "image_info": image_info(original, self.size,
                                               tf.constant(self.size, tf.float32) / tf.cast(original, tf.float32))}
            extras = {"classes": classes, "is_crowd": decoded["is_crowd"], "difficult": decoded["difficult"]}
            return self._finish(image, boxes, extras, labels)
        keep = decoded["train_keep"]
        boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
        if self.recipe is None:
            image = augment.resize_image(decoded["image"], self.size)
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        else:
            image, boxes, extras = augment.augment_example(decoded["image"], boxes, seed, self.recipe, self.size,
                                                           {"classes": classes})
            classes = extras["classes"]
        labels = {}
        if self.encode_targets:  # on the unpadded boxes: an [A, n] IoU matrix instead of [A, max_boxes]
            m = self.max_boxes
            num = tf.minimum(tf.shape(boxes)[0], m)
            box_t, cls_t, num_pos = ssd_targets(
                boxes[:m], classes[:m], num, tf.constant(self._anchors), iou_threshold=self.model.matching.iou_threshold,
                strict_threshold=self.model.matching.strict, weights=self.model.box_coder_weights)
            labels.update(box_targets=box_t, class_targets=cls_t, num_positives=num_pos)
        return self._finish(image, boxes, {"classes": classes}, labels)

    def _finish(self, image, boxes, extras, labels):
        m = self.max_boxes
        labels["boxes"] = pad_to(boxes, m)
        for key, value in extras.items():
            labels[key] = pad_to(value, m, False if value.dtype == tf.bool else 0)
        labels["num_boxes"] = tf.minimum(tf.shape(boxes)[0], m)
        image = tf.ensure_shape(normalize_image(image, self.model.normalization), [self.size[0], self.size[1], 3])
        return image, labels
