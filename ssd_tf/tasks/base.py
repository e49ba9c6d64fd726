"""The task protocol: what the runtime (``ssd_tf/run.py``: train, evaluate, predict, export) needs of a detector
family, and the parts every family shares.

A family subclasses ``Task`` and provides:

    loss_names                       ("total_loss", ...); total_loss drives the gradient
    boxes_frame                      "normalized" (boxes in [0, 1] of the model input) or "input_pixels"
    make_parser(is_training)         its parser for the shared reader (``ssd_tf/data/reader.py``)
    fit_to_training_data(files, log) optional: config values a training run settles from its data
    compute_losses(model, images, labels) -> {name: float32 scalar}, normalised per replica batch
    detect(model, images, image_info) -> {boxes [B,K,4] yxyx in ``boxes_frame``, scores [B,K], classes [B,K]
                                          (contiguous, 1 = first class), num_detections [B]}
    cpu_gradient_needs_determinism   optional: why its CPU gradient is only right with op determinism on

and gets: model building from its config (+ sync BN), the train / eval datasets (per-replica batch, resume
skip), ``predict_fn`` / ``detect_original`` (detections in original-image pixels), ``inference_inputs`` (a
picture through its own evaluation parser, for predict and export: ``ssd_tf/inference``) and ``evaluate``
(COCO / VOC).

**Where detections become image pixels** (decided once, here): every parser sends an ``image_info`` record
float32 [4, 2] with each image — rows (height, width) of the original image, (height, width) of the image
inside the model input, the (y, x) scale original -> input, and the (y, x) offset of the image in the input
(Model Garden's layout). ``to_original_pixels`` maps a family's boxes to original-image pixels with it: SSD
boxes are normalised to the 300x300 input, which is the original stretched, so they are multiplied by the
original size; R-CNN boxes are pixels of the resized, padded input, so the offset is removed, they are divided
by the scale and clipped to the original image.
"""
from __future__ import annotations

import time

import tensorflow as tf

from ssd_tf.config import Config


def to_original_pixels(boxes, image_info, frame: str):
    """yxyx ``boxes`` [B, K, 4] in ``frame`` -> original-image pixels, with ``image_info`` [B, 4, 2]."""
    boxes = tf.cast(boxes, tf.float32)
    info = tf.cast(image_info, tf.float32)
    original = tf.tile(info[:, 0], [1, 2])[:, None, :]  # [B, 1, 4] (h, w, h, w)
    if frame == "normalized":
        return boxes * original
    if frame == "input_pixels":
        scale = tf.tile(info[:, 2], [1, 2])[:, None, :]
        offset = tf.tile(info[:, 3], [1, 2])[:, None, :]
        return tf.clip_by_value((boxes - offset) / scale, 0.0, original)
    raise ValueError(f"boxes_frame must be 'normalized' or 'input_pixels', got {frame!r}")


def synchronize_batchnorm(model) -> int:
    """Make every ``keras.layers.BatchNormalization`` of ``model`` (nested models too) compute its batch
    statistics over all replicas (Keras' ``synchronized=True``, read at call time). Call before the first
    training step traces. Returns how many layers were switched."""
    import keras

    n, stack, seen = 0, list(getattr(model, "layers", [])), set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            n += 1
        stack.extend(getattr(layer, "layers", []))
    return n


def replicas_per_pipeline(input_context) -> int:
    """Batches one input pipeline feeds per step (a resumed run skips start_step * batch * this examples)."""
    if input_context is None:
        return 1
    return max(1, input_context.num_replicas_in_sync // max(1, input_context.num_input_pipelines))


class Task:
    loss_names: tuple = ("total_loss",)
    boxes_frame: str = "normalized"
    # Why this family's gradient is only right on a CPU with TensorFlow's op determinism on ("": it does not
    # depend on it); the runtime then refuses to train on a CPU-only machine without it.
    cpu_gradient_needs_determinism: str = ""
    eval_progress_seconds: float = 60.0  # an evaluation logs its count and rate at most this often

    def __init__(self, cfg: Config, global_batch_size: int = 0, log_fn=print):
        self.cfg = cfg
        self.global_batch_size = global_batch_size
        self.log = log_fn

    # --- model ------------------------------------------------------------------------------------
    def build_model(self):
        from ssd_tf.models.factory import build_from_config

        model = build_from_config(self.cfg.model)
        if self.cfg.runtime.sync_batchnorm:
            n = synchronize_batchnorm(model)
            self.log(f"sync_batchnorm: {n} BatchNormalization layers use statistics of the global batch"
                     if n else "sync_batchnorm: the model has no BatchNormalization layer (nothing to synchronise)")
        return model

    # --- data -------------------------------------------------------------------------------------
    def make_parser(self, is_training: bool):
        raise NotImplementedError

    def fit_to_training_data(self, files, log) -> None:
        """Before a training run builds its model and data: settle config values that depend on the training
        ``files`` (written to the config the run saves). Nothing by default."""

    def per_replica_batch(self, input_context) -> int:
        if input_context is not None and self.global_batch_size:
            return input_context.get_per_replica_batch_size(self.global_batch_size)
        return self.cfg.train.train_batch_size

    def build_train_dataset(self, input_context: tf.distribute.InputContext | None, start_step: int = 0):
        from ssd_tf.data.reader import build_dataset

        d = self.cfg.data
        batch = self.per_replica_batch(input_context)
        return build_dataset(d.training_file_pattern, self.make_parser(True), batch_size=batch, is_training=True,
                             class_ids=list(d.class_ids), input_context=input_context,
                             shuffle_buffer=d.shuffle_buffer, seed=self.cfg.train.seed,
                             skip_examples=start_step * batch * replicas_per_pipeline(input_context),
                             drop_crowd=d.drop_crowd, drop_difficult=d.drop_difficult,
                             drop_images_without_boxes=d.drop_images_without_boxes, log=self.log)

    def build_eval_dataset(self):
        from ssd_tf.data.reader import build_dataset

        d = self.cfg.data
        ds = build_dataset(d.validation_file_pattern, self.make_parser(False), batch_size=self.cfg.eval.eval_batch_size,
                           is_training=False, class_ids=list(d.class_ids))
        if self.cfg.eval.eval_steps:
            ds = ds.take(self.cfg.eval.eval_steps)
        return ds

    # --- training ---------------------------------------------------------------------------------
    def compute_losses(self, model, images, labels) -> dict:
        raise NotImplementedError

    # --- inference --------------------------------------------------------------------------------
    def detect(self, model, images, image_info) -> dict:
        raise NotImplementedError

    def detect_original(self, model, images, image_info) -> dict:
        """``detect`` with boxes in original-image pixels (graph code; ``predict_fn`` wraps it)."""
        dets = dict(self.detect(model, images, image_info))
        dets["boxes"] = to_original_pixels(dets["boxes"], image_info, self.boxes_frame)
        return dets

    def predict_fn(self, model):
        """A ``tf.function(images, image_info)`` -> detections with boxes in original-image pixels."""

        @tf.function
        @tf.autograph.experimental.do_not_convert
        def predict(images, image_info):
            return self.detect_original(model, images, image_info)

        return predict

    def inference_inputs(self, image):
        """One picture -> (model input, ``image_info`` [4, 2]) through the family's own evaluation parser, so
        predict and export preprocess exactly as evaluation does. ``image``: uint8 [H, W, 3] RGB (graph code).

        The parser receives a decoded example (``data/decoder.py``'s keys) without boxes."""
        image = tf.ensure_shape(tf.convert_to_tensor(image, tf.uint8), [None, None, 3])
        shape = tf.shape(image)
        decoded = {"image": image, "height": shape[0], "width": shape[1], "source_id": tf.constant(""),
                   "filename": tf.constant(""), "boxes": tf.zeros([0, 4], tf.float32),
                   "classes": tf.zeros([0], tf.int32), "is_crowd": tf.zeros([0], tf.bool),
                   "difficult": tf.zeros([0], tf.bool), "area": tf.zeros([0], tf.float32)}
        if getattr(self, "_inference_parser", None) is None:
            self._inference_parser = self.make_parser(False)
        model_input, labels = self._inference_parser.parse(decoded, tf.zeros([2], tf.int64), False)
        return model_input, labels["image_info"]

    # --- evaluation -------------------------------------------------------------------------------
    def pixel_offset(self) -> float:
        """1 where the family exports COCO boxes with inclusive pixels (w = x2 - x1 + 1), else 0."""
        return float(getattr(self.cfg.model, "pixel_offset", 0.0))

    def detection_batches(self, model, dataset=None):
        """Yields (detections, labels) numpy dicts over the validation set (see ``evaluation/runner.py``)."""
        predict = self.predict_fn(model)
        n = 0
        start = last = time.perf_counter()
        for images, labels in (dataset if dataset is not None else self.build_eval_dataset()):
            dets = predict(images, labels["image_info"])
            n += int(images.shape[0])
            yield {k: v.numpy() for k, v in dets.items()}, {k: v.numpy() for k, v in labels.items()}
            now = time.perf_counter()
            if now - last >= self.eval_progress_seconds:  # a long evaluation says it is alive, and how fast
                self.log(f"Evaluating: {n:,} images so far ({n / (now - start):.1f} images/s)")
                last = now
        self.log(f"Evaluated {n} images")

    def evaluate(self, model, details: dict | None = None) -> dict:
        """Runs the validation set through the model and scores it (COCO or VOC). ``details``: a dict that
        receives what the evaluation pictures need (``evaluation/runner.py``)."""
        from ssd_tf.evaluation.runner import evaluate_batches

        d, e = self.cfg.data, self.cfg.eval
        t0 = time.perf_counter()
        metrics = evaluate_batches(self.detection_batches(model), metric=e.eval_metric, class_ids=list(d.class_ids),
                                   class_names=list(d.class_names), val_json_file=d.val_json_file,
                                   validation_file_pattern=d.validation_file_pattern, backend=e.eval_backend,
                                   pixel_offset=self.pixel_offset(), log=self.log, details=details)
        metrics["eval_seconds"] = time.perf_counter() - t0
        return metrics
