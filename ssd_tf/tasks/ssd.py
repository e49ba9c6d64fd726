"""The SSD task: what the generic training runtime needs to train and evaluate an SSD preset."""
from __future__ import annotations

import json
import time

import numpy as np
import tensorflow as tf

from ssd_tf.config import Config


class SSDTask:
    loss_names = ("total_loss", "box_loss", "class_loss")

    def __init__(self, cfg: Config, global_batch_size: int = 0, log_fn=print):
        self.cfg = cfg
        self.global_batch_size = global_batch_size
        self.log = log_fn
        from ssd_tf.ops.anchors import ssd_default_boxes

        self.anchors = tf.constant(ssd_default_boxes(cfg.model.name), tf.float32)

    # --- model ------------------------------------------------------------------------------------
    def build_model(self):
        from ssd_tf.models.factory import build_model

        kwargs = {}
        if self.cfg.model.width_multiplier != 1.0:
            kwargs["width_multiplier"] = self.cfg.model.width_multiplier
        model = build_model(self.cfg.model.name, num_classes=self.cfg.model.num_classes, **kwargs)
        if self.cfg.runtime.sync_batchnorm:
            n = synchronize_batchnorm(model)
            self.log(f"sync_batchnorm: {n} BatchNormalization layers use statistics of the global batch"
                     if n else "sync_batchnorm: the model has no BatchNormalization layer (nothing to synchronise)")
        return model

    # --- data -------------------------------------------------------------------------------------
    def build_train_dataset(self, input_context: tf.distribute.InputContext | None, start_step: int = 0):
        from ssd_tf.data.pipeline import build_ssd_dataset

        d = self.cfg.data
        batch = self.cfg.train.train_batch_size
        if input_context is not None and self.global_batch_size:
            batch = input_context.get_per_replica_batch_size(self.global_batch_size)
        return build_ssd_dataset(d.training_file_pattern, preset=self.cfg.model.name, batch_size=batch,
                                 is_training=True, class_ids=list(d.class_ids), max_boxes=d.max_boxes,
                                 input_context=input_context, shuffle_buffer=d.shuffle_buffer,
                                 seed=self.cfg.train.seed, augmentation=d.augmentation,
                                 skip_examples=start_step * batch * _replicas_per_pipeline(input_context))

    def build_eval_dataset(self):
        from ssd_tf.data.pipeline import build_ssd_dataset

        d = self.cfg.data
        return build_ssd_dataset(d.validation_file_pattern, preset=self.cfg.model.name,
                                 batch_size=self.cfg.eval.eval_batch_size, is_training=False,
                                 class_ids=list(d.class_ids), max_boxes=d.max_boxes)

    # --- losses -----------------------------------------------------------------------------------
    def compute_losses(self, model, images, labels):
        from ssd_tf.models.ssd_loss import ssd_loss

        box_regression, class_logits = model(images, training=True)
        if "box_targets" in labels:
            box_targets, class_targets = labels["box_targets"], labels["class_targets"]
        else:
            from ssd_tf.data.pipeline import MATCHING
            from ssd_tf.ops.targets import ssd_targets_batched

            box_targets, class_targets, _ = ssd_targets_batched(labels["boxes"], labels["classes"],
                                                                labels["num_boxes"], self.anchors,
                                                                **MATCHING[self.cfg.model.name])
        return ssd_loss(tf.cast(box_regression, tf.float32), tf.cast(class_logits, tf.float32), box_targets,
                        class_targets, normalization=self.cfg.train.loss_normalization)

    # --- evaluation -------------------------------------------------------------------------------
    def postprocess_params(self) -> dict:
        from ssd_tf.ops.postprocess import POSTPROCESS_DEFAULTS

        params = dict(POSTPROCESS_DEFAULTS[self.cfg.model.name])
        e = self.cfg.eval
        for key, value in (("score_threshold", e.score_threshold), ("iou_threshold", e.nms_iou_threshold),
                           ("max_candidates_per_class", e.max_candidates_per_class),
                           ("max_detections", e.max_detections)):
            if value is not None:
                params[key] = value
        return params

    def predict_fn(self, model):
        from ssd_tf.ops.postprocess import ssd_postprocess

        params = self.postprocess_params()

        @tf.function
        @tf.autograph.experimental.do_not_convert
        def predict(images):
            box_regression, class_logits = model(images, training=False)
            return ssd_postprocess(tf.cast(box_regression, tf.float32), tf.cast(class_logits, tf.float32),
                                   self.anchors, **params)

        return predict

    def evaluate(self, model) -> dict:
        """Runs the validation set through the model and scores it (COCO or VOC)."""
        e = self.cfg.eval
        t0 = time.perf_counter()
        predict = self.predict_fn(model)
        dataset = self.build_eval_dataset()
        if e.eval_steps:
            dataset = dataset.take(e.eval_steps)
        metric = e.eval_metric
        if metric == "coco":
            return self._evaluate_coco(dataset, predict, t0)
        return self._evaluate_voc(dataset, predict, use_07=(metric == "voc07"), t0=t0)

    def _batches(self, dataset, predict):
        n = 0
        for images, labels in dataset:
            dets = predict(images)
            n += int(images.shape[0])
            yield {k: v.numpy() for k, v in dets.items()}, {k: v.numpy() for k, v in labels.items()}
        self.log(f"Evaluated {n} images")

    def _evaluate_coco(self, dataset, predict, t0):
        from ssd_tf.evaluation import coco, export

        d, e = self.cfg.data, self.cfg.eval
        if d.val_json_file:
            with open(d.val_json_file) as f:
                gt = json.load(f)
        else:
            gt = coco.coco_gt_from_tfrecords(d.validation_file_pattern,
                                             label_map=dict(zip(d.class_ids, d.class_names)) or None)
        image_id_map = gt.get("source_id_to_image_id")  # records' source ids -> COCO image ids
        acc = export.CocoDetectionAccumulator(class_ids=list(d.class_ids), image_id_map=image_id_map)
        for dets, labels in self._batches(dataset, predict):
            acc.add_batch(boxes=dets["boxes"], scores=dets["scores"], classes=dets["classes"],
                          num_detections=dets["num_detections"], source_ids=labels["source_id"],
                          original_sizes=labels["original_size"])
        metrics = coco.evaluate_coco(gt, acc.results(), backend=e.eval_backend)
        metrics["eval_seconds"] = time.perf_counter() - t0
        return metrics

    def _evaluate_voc(self, dataset, predict, use_07, t0):
        from ssd_tf.evaluation import voc

        d = self.cfg.data
        detections, ground_truths = [], []
        for dets, labels in self._batches(dataset, predict):
            for i in range(dets["boxes"].shape[0]):
                k, g = int(dets["num_detections"][i]), int(labels["num_boxes"][i])
                detections.append({"boxes": dets["boxes"][i, :k], "labels": dets["classes"][i, :k],
                                   "scores": dets["scores"][i, :k]})
                ground_truths.append({"boxes": labels["boxes"][i, :g], "labels": labels["classes"][i, :g],
                                      "difficult": labels.get("difficult", np.zeros_like(labels["classes"]))[i, :g]})
        metrics = voc.evaluate_voc(detections, ground_truths, class_names=list(d.class_names),
                                   use_07_metric=use_07)
        metrics["eval_seconds"] = time.perf_counter() - t0
        return metrics


def synchronize_batchnorm(model) -> int:
    """Make every BatchNormalization layer of `model` (nested ones too) compute its batch mean and variance over
    all replicas of the strategy (Keras' `synchronized=True`, read at call time; TF backend only). Call before
    the first training step traces. Returns how many layers were switched."""
    import keras

    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            n += 1
    return n


def _replicas_per_pipeline(input_context) -> int:
    """Batches one input pipeline feeds per step (resume skips start_step * batch * this examples)."""
    if input_context is None:
        return 1
    return max(1, input_context.num_replicas_in_sync // max(1, input_context.num_input_pipelines))
