"""Value types shared by the model configs of several families (no TensorFlow)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Normalization:
    """Network input from an RGB image on the 0..255 scale: ``(pixels[channel_order] * scale - mean) / std``.

    ``channel_order`` "bgr" reverses the channels first (maskrcnn-benchmark's Caffe2 models); ``mean`` and
    ``std`` are in that channel order.
    """

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "rgb"  # rgb | bgr

    def __post_init__(self):
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"normalization.channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"normalization.mean and .std need 3 values, got {self.mean!r} and {self.std!r}")
        if any(float(s) <= 0 for s in self.std) or float(self.scale) <= 0:
            raise ValueError(f"normalization.std and .scale must be positive, got {self.std!r}, {self.scale!r}")
