"""The Faster R-CNN family's task: R-CNN parser, the model's four losses, detections in resized-input pixels
(see ``tasks/base.py``; the model: ``ssd_tf/models/faster_rcnn.py``)."""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.tasks.base import Task

LOSS_PARTS = ("rpn_objectness_loss", "rpn_box_loss", "roi_classification_loss", "roi_box_loss")


class FasterRCNNTask(Task):
    loss_names = ("total_loss",) + LOSS_PARTS
    boxes_frame = "input_pixels"
    cpu_gradient_needs_determinism = (
        "RoIAlign's gradient (TensorFlow's CPU CropAndResizeGradImage) adds into the feature-map gradient from "
        "several threads without synchronisation unless op determinism is on, so overlapping RoIs lose updates")

    def make_parser(self, is_training: bool):
        from ssd_tf.data.rcnn_parser import RCNNParser

        return RCNNParser(self.cfg.model, max_boxes=self.cfg.data.max_boxes)

    def _on_canvas(self, images, fn):
        """``fn(images)`` with the batch's static canvas shape. Batches of both orientations come through one
        input pipeline, so their height and width are not static there; a ``tf.cond`` on the orientation runs
        ``fn`` traced once per canvas (two static-shape graphs, gradients included)."""
        if images.shape[1] is not None and images.shape[2] is not None:
            return fn(images)
        parser = self.make_parser(False)
        landscape, portrait = parser.canvas[0], parser.canvas[1]
        batch = images.shape[0]
        is_landscape = tf.shape(images)[1] <= tf.shape(images)[2]
        return tf.cond(is_landscape, lambda: fn(tf.ensure_shape(images, [batch, *landscape, 3])),
                       lambda: fn(tf.ensure_shape(images, [batch, *portrait, 3])))

    def sampling_seeds(self, labels):
        """[B, 2] stateless seeds of the anchor and RoI sampling, one per image: (run seed, image identity) folded
        with the training step (``step_counter``, which the Trainer sets; 0 outside training). An image therefore
        draws the same samples whichever replica or batch it lands in, fresh ones at every step, and the same
        ones again when a run resumes."""
        step = getattr(self, "step_counter", None)
        step = tf.cast(step.read_value(), tf.int64) if step is not None else tf.constant(0, tf.int64)
        keys = tf.cast(labels["image_key"], tf.int64)
        base = tf.stack([tf.fill(tf.shape(keys), tf.constant(self.cfg.train.seed, tf.int64)), keys], axis=1)
        return tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, step), base)

    def compute_losses(self, model, images, labels):
        """The model's losses on a padded batch (sampling seeds: ``sampling_seeds``)."""
        image_shape = tf.cast(labels["image_info"][:, 1], tf.int32)  # the resized image inside the canvas
        seed = self.sampling_seeds(labels)

        def losses(canvas):
            out = model.compute_losses(canvas, image_shape, labels["boxes"], labels["classes"], labels["num_boxes"],
                                       seed)
            return {k: tf.cast(out[k], tf.float32) for k in self.loss_names}

        return self._on_canvas(images, losses)

    def detect(self, model, images, image_info):
        def detections(canvas):
            out = model({"images": canvas, "image_shape": tf.cast(image_info[:, 1], tf.int32)}, training=False)
            return {"boxes": out["detection_boxes"], "scores": out["detection_scores"],
                    "classes": tf.cast(out["detection_classes"], tf.int32),
                    "num_detections": tf.cast(out["num_detections"], tf.int32)}

        return self._on_canvas(images, detections)
