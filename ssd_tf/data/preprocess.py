"""Network input normalisation per preset, and its inverse for visualisation.

* ``ssd_resnet34`` (MLPerf REF / TPU): RGB / 255, then mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
* ``ssd_vgg16``, ``ssd_vgg16_voc`` (torchvision ssd300_vgg16 / ssd.pytorch): RGB on the 0..255 scale minus
  (123, 117, 104), std 1 (torchvision's mean 0.48235.. with std 1/255 is the same thing).
"""
from __future__ import annotations

import tensorflow as tf

_NORMALISATION = {
    # preset: (scale applied first, mean, std) — normalised = (image * scale - mean) / std
    "ssd_resnet34": (1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "ssd_vgg16": (1.0, (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)),
    "ssd_vgg16_voc": (1.0, (123.0, 117.0, 104.0), (1.0, 1.0, 1.0)),
}


def _params(preset):
    if preset not in _NORMALISATION:
        raise ValueError(f"no input normalisation for preset {preset!r}; known: {sorted(_NORMALISATION)}")
    scale, mean, std = _NORMALISATION[preset]
    return scale, tf.constant(mean, tf.float32), tf.constant(std, tf.float32)


def normalize_image(image, preset: str) -> tf.Tensor:
    """RGB image on the 0..255 scale (uint8 or float, [..., 3]) -> float32 network input for ``preset``."""
    scale, mean, std = _params(preset)
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"normalize_image: expected RGB [..., 3], got shape {image.shape}")
    return (tf.cast(image, tf.float32) * scale - mean) / std


def denormalize_image(image, preset: str) -> tf.Tensor:
    """Inverse of ``normalize_image``: network input -> float32 RGB on the 0..255 scale (not clipped)."""
    scale, mean, std = _params(preset)
    return (tf.convert_to_tensor(image, tf.float32) * std + mean) / scale
