"""The Faster R-CNN family's task: R-CNN parser, the model's four losses, detections in resized-input pixels
(see ``tasks/base.py``; the model: ``ssd_tf/models/faster_rcnn.py``)."""
from __future__ import annotations

import dataclasses

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

    def fit_to_training_data(self, files, log) -> None:
        """Fills ``model.canvases`` (when empty) with ``model.auto_canvases`` per orientation fitted to the sizes of
        the first ``reader.GROUP_SAMPLE`` training images, so fewer pixels are padding (torchvision pads each batch
        to its largest image; static shapes need a fixed set). The run's config.json records them, so a resumed run,
        its evaluation and its export use the same canvases."""
        from ssd_tf.data.rcnn_parser import fit_canvases, model_canvases, padded_pixels, record_resized_size
        from ssd_tf.data.reader import sample_map

        m = self.cfg.model
        if m.canvases or not m.auto_canvases:
            return
        sizes = [(int(h), int(w)) for h, w in sample_map(files, lambda s: record_resized_size(s, m))]
        m.canvases = tuple(fit_canvases(sizes, m, m.auto_canvases))
        padded = padded_pixels(sizes, model_canvases(m))
        alone = padded_pixels(sizes, model_canvases(dataclasses.replace(m, canvases=())))
        log(f"Canvases fitted to {len(sizes)} training images: {[list(c) for c in m.canvases] or 'none added'} "
            f"besides the orientation canvases ({padded / max(alone, 1):.0%} of their pixels)")

    def _on_canvas(self, images, fn):
        """``fn(images)`` with the batch's static canvas shape. Batches of every canvas come through one input
        pipeline, so their height and width are not static there; a ``tf.switch_case`` on the canvas runs ``fn``
        traced once per canvas (static-shape graphs, gradients included)."""
        if images.shape[1] is not None and images.shape[2] is not None:
            return fn(images)
        canvases = self.make_parser(False).canvases
        batch = images.shape[0]
        matches = tf.reduce_all(tf.equal(tf.constant(canvases, tf.int32), tf.shape(images)[None, 1:3]), axis=1)
        index = tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32)
        return tf.switch_case(index, [lambda c=c: fn(tf.ensure_shape(images, [batch, *c, 3])) for c in canvases])

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
