"""Network input normalisation from a model config's ``Normalization`` value, and its inverse for pictures.

normalised = (pixels[channel_order] * scale - mean) / std, with pixels RGB on the 0..255 scale. The references'
values live in the presets: MLPerf / torchvision ImageNet models take RGB / 255 minus (0.485, 0.456, 0.406)
over (0.229, 0.224, 0.225); torchvision's ssd300_vgg16 and ssd.pytorch take RGB on the 0..255 scale minus
(123, 117, 104); maskrcnn-benchmark's Caffe2 models take BGR on the 0..255 scale minus
(102.98, 115.95, 122.77).
"""
from __future__ import annotations

import tensorflow as tf


def _params(normalization):
    for name in ("scale", "mean", "std", "channel_order"):
        if not hasattr(normalization, name):
            raise ValueError(f"normalization must be a Normalization value (model config), got {normalization!r}")
    return (float(normalization.scale), tf.constant(normalization.mean, tf.float32),
            tf.constant(normalization.std, tf.float32), normalization.channel_order == "bgr")


def normalize_image(image, normalization) -> tf.Tensor:
    """RGB image on the 0..255 scale (uint8 or float, [..., 3]) -> float32 network input."""
    scale, mean, std, bgr = _params(normalization)
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"normalize_image: expected RGB [..., 3], got shape {image.shape}")
    image = tf.cast(image, tf.float32)
    if bgr:
        image = tf.reverse(image, axis=[-1])
    return (image * scale - mean) / std


def denormalize_image(image, normalization) -> tf.Tensor:
    """Inverse of ``normalize_image``: network input -> float32 RGB on the 0..255 scale (not clipped)."""
    scale, mean, std, bgr = _params(normalization)
    image = (tf.convert_to_tensor(image, tf.float32) * std + mean) / scale
    return tf.reverse(image, axis=[-1]) if bgr else image
