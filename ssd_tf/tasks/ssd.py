"""The SSD family's task: parser, losses and detections of an ``SSDModelConfig`` (see ``tasks/base.py``)."""
from __future__ import annotations

import tensorflow as tf

from ssd_tf.tasks.base import Task


class SSDTask(Task):
    loss_names = ("total_loss", "box_loss", "class_loss")
    boxes_frame = "normalized"

    def __init__(self, cfg, global_batch_size: int = 0, log_fn=print):
        super().__init__(cfg, global_batch_size, log_fn)
        from ssd_tf.ops.anchors import ssd_default_boxes

        self.anchors = tf.constant(ssd_default_boxes(cfg.model.anchors), tf.float32)

    def make_parser(self, is_training: bool):
        from ssd_tf.data.ssd_parser import SSDParser

        return SSDParser(self.cfg.model, max_boxes=self.cfg.data.max_boxes, encode_targets=is_training)

    def compute_losses(self, model, images, labels):
        from ssd_tf.models.ssd_loss import ssd_loss

        m = self.cfg.model
        box_regression, class_logits = model(images, training=True)
        if "box_targets" in labels:
            box_targets, class_targets = labels["box_targets"], labels["class_targets"]
        else:
            from ssd_tf.ops.targets import ssd_targets_batched

            box_targets, class_targets, _ = ssd_targets_batched(
                labels["boxes"], labels["classes"], labels["num_boxes"], self.anchors,
                iou_threshold=m.matching.iou_threshold, strict_threshold=m.matching.strict,
                weights=m.box_coder_weights)
        return ssd_loss(tf.cast(box_regression, tf.float32), tf.cast(class_logits, tf.float32), box_targets,
                        class_targets, normalization=m.loss_normalization, neg_pos_ratio=m.neg_pos_ratio)

    def detect(self, model, images, image_info=None):
        from ssd_tf.ops.postprocess import ssd_postprocess

        m = self.cfg.model
        box_regression, class_logits = model(images, training=False)
        p = m.postprocess
        return ssd_postprocess(tf.cast(box_regression, tf.float32), tf.cast(class_logits, tf.float32), self.anchors,
                               score_threshold=p.score_threshold, iou_threshold=p.iou_threshold,
                               max_candidates_per_class=p.max_candidates_per_class,
                               max_detections=p.max_detections, wh_clip=p.wh_clip, weights=m.box_coder_weights)
