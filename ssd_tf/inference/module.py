"""The inference graph every family shares: pictures in, detections in the dataset's terms out.

``DetectorModule(task, model, class_ids)`` is a ``tf.Module`` with two ``tf.function``s, each taking a batch
of pictures of any sizes and doing the whole job inside the graph:

    detect_encoded(images: string [B])           encoded JPEG / PNG / GIF / BMP (``data/decoder.py``'s decoder)
    detect_uint8(images: uint8 [B, H, W, 3])     RGB pixels

pre-processing through the family's own evaluation parser (``Task.inference_inputs``), ``Task.detect``,
boxes to original-image pixels (``Task.detect_original``), contiguous classes back to dataset ids. Both return
the TF Object Detection API's outputs:

    detection_boxes    float32 [B, K, 4]  [ymin, xmin, ymax, xmax] normalised to the original picture
    detection_scores   float32 [B, K]     sorted, 0 in padding rows
    detection_classes  int64   [B, K]     the dataset's category ids, 0 in padding rows
    num_detections     int32   [B]        valid rows of each picture

``--mode=predict`` runs this module in process and ``--mode=export`` saves it as the SavedModel's
``serving_default`` / ``serving_uint8`` signatures, so the two cannot drift apart.

When the parser's model input has a static shape (SSD: 300x300) the pictures are pre-processed one by one and
the model runs on the whole batch; otherwise (a parser that keeps each picture's aspect ratio without padding
to a fixed size) every picture goes through the model alone.
"""
from __future__ import annotations

import tensorflow as tf

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_DET_DTYPES = {"boxes": tf.float32, "scores": tf.float32, "classes": tf.int32, "num_detections": tf.int32}


def decode_image(encoded) -> tf.Tensor:
    from ssd_tf.data.decoder import decode_image_bytes

    return decode_image_bytes(encoded)


class DetectorModule(tf.Module):
    def __init__(self, task, model, class_ids, batched: bool | None = None, name: str = "detector"):
        """``class_ids``: dataset ids in contiguous order (contiguous id i -> class_ids[i - 1]). ``batched``:
        force (True) or refuse (False) one model call per batch; default: when the parser's output has a
        static shape."""
        super().__init__(name=name)
        self.model = model
        self._task = task
        # contiguous id -> dataset id; index 0 (padding) -> 0
        self._class_ids = tf.constant([0] + [int(c) for c in class_ids], tf.int64)
        spec = tf.function(task.inference_inputs, autograph=False).get_concrete_function(
            tf.TensorSpec([None, None, 3], tf.uint8)).structured_outputs[0]
        self.input_shape = tuple(spec.shape.as_list())
        static = spec.shape.is_fully_defined()
        if batched and not static:
            raise ValueError(f"batched inference needs a parser output of static shape, got {spec.shape}")
        self.batched = static if batched is None else bool(batched)
        self._input_spec = tf.TensorSpec(spec.shape, spec.dtype)

        def detect_encoded(images):
            return self._detect(images, decode_image)

        def detect_uint8(images):
            return self._detect(images, lambda image: image)

        self.detect_encoded = tf.function(detect_encoded, autograph=False,
                                          input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.detect_uint8 = tf.function(detect_uint8, autograph=False,
                                        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                                       name="images")])

    # ----------------------------------------------------------------------------------------------
    def _outputs(self, dets, image_info):
        size = tf.tile(tf.cast(image_info[:, 0], tf.float32), [1, 2])[:, None, :]  # [B, 1, 4] (h, w, h, w)
        classes = tf.cast(dets["classes"], tf.int32)
        return {"detection_boxes": tf.cast(dets["boxes"], tf.float32) / size,
                "detection_scores": tf.cast(dets["scores"], tf.float32),
                "detection_classes": tf.gather(self._class_ids, classes),
                "num_detections": tf.cast(dets["num_detections"], tf.int32)}

    def _detect(self, images, to_uint8):
        task, model = self._task, self.model
        if self.batched:
            inputs, image_info = tf.map_fn(
                lambda x: task.inference_inputs(to_uint8(x)), images,
                fn_output_signature=(self._input_spec, tf.TensorSpec([4, 2], tf.float32)))
            return self._outputs(task.detect_original(model, inputs, image_info), image_info)

        def one(x):
            model_input, info = task.inference_inputs(to_uint8(x))
            dets = task.detect_original(model, model_input[None], info[None])
            out = self._outputs(dets, info[None])
            return {k: v[0] for k, v in out.items()}

        signature = {"detection_boxes": tf.TensorSpec([None, 4], tf.float32),
                     "detection_scores": tf.TensorSpec([None], tf.float32),
                     "detection_classes": tf.TensorSpec([None], tf.int64),
                     "num_detections": tf.TensorSpec([], tf.int32)}
        return tf.map_fn(one, images, fn_output_signature=signature)
