"""The SSD family's model config: every value the SSD model, its parser, loss and post-processing need.

Presets (``ssd_tf/presets.py``) fill it with each reference's numbers (REFERENCE_SPECS.md §1, §2); ops, data
and models receive these values, never a preset name.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from ssd_tf.model_configs.common import Normalization
from ssd_tf.ops.anchors import AnchorSpec

BACKBONES = ("resnet34_mlperf", "vgg16_reduced_fc")
CROPS = ("mlperf", "ssd")
PHOTOMETRICS = ("mlperf", "ssd")


@dataclasses.dataclass
class SSDMatching:
    """Anchor <-> gt matching: positive when IoU >= threshold (``strict``: > threshold, MLPerf REF)."""

    iou_threshold: float = 0.5
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class SSDAugmentation:
    """Which training augmentations run, in the fixed order photometric(ssd) -> expand -> crop -> flip
    (see ``ssd_tf/data/augment.py``)."""

    crop: Optional[str] = None  # 'mlperf' | 'ssd' | None
    expand: bool = False
    flip: bool = False
    photometric: Optional[str] = None  # 'mlperf' (ColorJitter after resize) | 'ssd' (photometric distort) | None
    expand_prob: float = 0.5
    expand_max_ratio: float = 4.0
    flip_prob: float = 0.5
    fill: tuple[float, float, float] = (123.0, 117.0, 104.0)  # zoom-out canvas (RGB)

    def __post_init__(self):
        if self.crop not in (None,) + CROPS:
            raise ValueError(f"augmentation.crop must be one of {CROPS} or None, got {self.crop!r}")
        if self.photometric not in (None,) + PHOTOMETRICS:
            raise ValueError(f"augmentation.photometric must be one of {PHOTOMETRICS} or None, got {self.photometric!r}")
        for name in ("expand_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augmentation.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.expand_max_ratio < 1.0:
            raise ValueError(f"augmentation.expand_max_ratio must be >= 1, got {self.expand_max_ratio}")


# The two reference recipes, by the name the --augmentation flag uses.
MLPERF_AUGMENTATION = SSDAugmentation(crop="mlperf", expand=False, flip=True, photometric="mlperf")
SSD_AUGMENTATION = SSDAugmentation(crop="ssd", expand=True, flip=True, photometric="ssd")
AUGMENTATIONS = {"mlperf": MLPERF_AUGMENTATION, "ssd": SSD_AUGMENTATION, "none": None}


@dataclasses.dataclass
class SSDPostprocess:
    """Softmax; per class: score > score_threshold, the max_candidates_per_class best, NMS at iou_threshold;
    the max_detections best over all classes. ``wh_clip`` bounds dh, dw before exp() (torchvision)."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_candidates_per_class: int = 200
    max_detections: int = 200
    wh_clip: Optional[float] = None


@dataclasses.dataclass
class SSDModelConfig:
    # The fields a trained checkpoint depends on: a model directory keeps them (the others may change on resume).
    architecture_fields: ClassVar[tuple] = ("backbone", "width_multiplier", "num_classes", "image_size", "anchors")
    # Weights (by path) whose shape follows the class count: a fine-tuning run on other classes re-initialises them.
    classifier_layers: ClassVar[tuple] = (r"^conf_\d+/",)

    family: str = "ssd"
    name: str = ""  # the preset this config was made from (informational)
    num_classes: int = 0  # incl. background; 0: 1 + the number of classes in the label map
    backbone: str = "resnet34_mlperf"  # resnet34_mlperf | vgg16_reduced_fc
    width_multiplier: float = 1.0  # scales every channel count; 1.0 is the reference model
    trainable_backbone_stages: Optional[int] = None  # VGG: None trains all; k freezes conv stages 1..5-k
    image_size: int = 300
    anchors: AnchorSpec = dataclasses.field(default_factory=lambda: AnchorSpec(
        (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300), tuple(s / 300.0 for s in (21, 45, 99, 153, 207, 261, 315)),
        ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)), clip="all"))
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    matching: SSDMatching = dataclasses.field(default_factory=SSDMatching)
    normalization: Normalization = dataclasses.field(default_factory=Normalization)
    augmentation: Optional[SSDAugmentation] = MLPERF_AUGMENTATION  # None: no augmentation
    loss_normalization: str = "per_image"  # per_image (MLPerf) | per_batch (torchvision, ssd.pytorch)
    neg_pos_ratio: int = 3
    postprocess: SSDPostprocess = dataclasses.field(default_factory=SSDPostprocess)

    def __post_init__(self):
        if self.family != "ssd":
            raise ValueError(f"SSDModelConfig.family must be 'ssd', got {self.family!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.loss_normalization not in ("per_image", "per_batch"):
            raise ValueError(f"model.loss_normalization must be 'per_image' or 'per_batch', "
                             f"got {self.loss_normalization!r}")
        if not self.width_multiplier > 0:
            raise ValueError(f"model.width_multiplier must be > 0, got {self.width_multiplier}")
        if self.image_size != self.anchors.image_size:
            raise ValueError(f"model.image_size {self.image_size} != model.anchors.image_size "
                             f"{self.anchors.image_size}")
