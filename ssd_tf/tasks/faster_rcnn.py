"""The Faster R-CNN family's task: R-CNN parser, the model's four losses, detections in resized-input pixels
(see ``tasks/base.py``; the model: ``ssd_tf/models/faster_rcnn.py``)."""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.tasks.base import Task

LOSS_PARTS = ("rpn_objectness_loss", "rpn_box_loss", "roi_classification_loss", "roi_box_loss")


class FasterRCNNTask(Task):
    loss_names = ("total_loss",) + LOSS_PARTS
    boxes_frame = "input_pixels"

    def make_parser(self, is_training: bool):
        from ssd_tf.data.rcnn_parser import RCNNParser

        return RCNNParser(self.cfg.model, max_boxes=self.cfg.data.max_boxes)

    def compute_losses(self, model, images, labels):
        """The model's losses on a padded batch. Anchor and RoI sampling draw from a stateless seed derived from
        the first example's position in the data stream (``labels["seed"]``), so each replica samples
        differently and a resumed run draws exactly the samples an uninterrupted one does."""
        image_shape = tf.cast(labels["image_info"][:, 1], tf.int32)  # the resized image inside the canvas
        seed = tf.random.experimental.stateless_fold_in(tf.cast(labels["seed"][0], tf.int64), 1)
        losses = model.compute_losses(images, image_shape, labels["boxes"], labels["classes"], labels["num_boxes"],
                                      seed)
        return {k: tf.cast(losses[k], tf.float32) for k in self.loss_names}

    def detect(self, model, images, image_info):
        out = model({"images": images, "image_shape": tf.cast(image_info[:, 1], tf.int32)}, training=False)
        return {"boxes": out["detection_boxes"], "scores": out["detection_scores"],
                "classes": tf.cast(out["detection_classes"], tf.int32),
                "num_detections": tf.cast(out["num_detections"], tf.int32)}
