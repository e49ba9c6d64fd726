"""The Faster R-CNN family's model config (REFERENCE_SPECS.md §3): backbone, FPN, anchors, RPN, RoI head,
input resizing and the pixel conventions where torchvision and maskrcnn-benchmark differ, each a value.

Defaults are torchvision's ``fasterrcnn_resnet50_fpn`` (v1). maskrcnn-benchmark's conventions (§3, §5) are
other values of the same fields: ``backbone.stride_in_1x1``, ``normalization`` (BGR 0-255, mean only),
``anchors.style="detectron"``, ``pixel_offset=1`` ("+1" widths), ``rpn.straddle_threshold=0``,
``rpn.post_nms_per_batch``, ``roi.box_loss_beta=1``, ``resize_rounding="truncate"``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Optional

from ssd_tf.model_configs.common import Normalization

BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


@dataclasses.dataclass
class ResNetBackbone:
    depth: int = 50  # 50 | 101
    stride_in_1x1: bool = False  # True: MSRA / maskrcnn-benchmark; False: torchvision ("v1.5", stride on the 3x3)
    frozen_bn_epsilon: float = 0.0  # torchvision's COCO weights and maskrcnn-benchmark use 0
    norm: str = "frozen"  # frozen (pretrained weights) | batch (trainable BatchNorm: training without them)
    trainable_layers: int = 3  # torchvision trainable_backbone_layers: 0..5 of (layer4, layer3, layer2, layer1, conv1)

    def __post_init__(self):
        if self.depth not in (50, 101):
            raise ValueError(f"model.backbone.depth must be 50 or 101, got {self.depth}")
        if self.norm not in ("frozen", "batch"):
            raise ValueError(f"model.backbone.norm must be 'frozen' or 'batch', got {self.norm!r}")
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"model.backbone.trainable_layers must be in [0, 5], got {self.trainable_layers}")


@dataclasses.dataclass
class FPNAnchors:
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # h / w
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    style: str = "torchvision"  # torchvision (zero-centred) | detectron (maskrcnn-benchmark, "+1")

    def __post_init__(self):
        if self.style not in ("torchvision", "detectron"):
            raise ValueError(f"model.anchors.style must be 'torchvision' or 'detectron', got {self.style!r}")
        if len(self.sizes) != len(self.strides):
            raise ValueError(f"model.anchors: {len(self.sizes)} sizes but {len(self.strides)} strides")


@dataclasses.dataclass
class RPNConfig:
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    post_nms_per_batch: bool = False  # maskrcnn-benchmark: the train top-n is per device batch, not per image
    nms_threshold: float = 0.7
    min_size: float = 1e-3
    score_threshold: float = 0.0
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    box_loss_beta: float = 1.0 / 9.0
    straddle_threshold: Optional[float] = None  # None: every anchor trains; 0: maskrcnn-benchmark's border rule


@dataclasses.dataclass
class RoIHeadConfig:
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss_beta: float = 1.0 / 9.0  # maskrcnn-benchmark: 1
    pool_size: int = 7
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4
    representation_size: int = 1024


@dataclasses.dataclass
class RCNNPostprocess:
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100
    min_size: float = 1e-2


@dataclasses.dataclass
class FasterRCNNModelConfig:
    # The fields a trained checkpoint depends on: a model directory keeps them (the others may change on resume).
    architecture_fields: ClassVar[tuple] = ("backbone.depth", "backbone.stride_in_1x1", "width_multiplier",
                                            "num_classes", "fpn_channels", "anchors.sizes", "anchors.aspect_ratios",
                                            "roi.pool_size", "roi.representation_size")
    # Weights (by path) whose shape follows the class count: a fine-tuning run on other classes re-initialises them.
    classifier_layers: ClassVar[tuple] = (r"cls_score/", r"bbox_pred/")
    # Fields added after config.json files of this family were first written, with the value that reproduces what
    # a file without them trained with (``config.load``): such a run had the two orientation canvases alone.
    fields_added_later: ClassVar[dict] = {"auto_canvases": 0}
    # What makes every weight trainable when no pretrained backbone is given (torchvision's choice then).
    from_scratch_flags: ClassVar[str] = "--params_override=model.backbone.norm=batch --trainable_backbone_layers=5"

    family: str = "faster_rcnn"
    name: str = ""  # the preset this config was made from (informational)
    num_classes: int = 91  # incl. background
    backbone: ResNetBackbone = dataclasses.field(default_factory=ResNetBackbone)
    width_multiplier: float = 1.0  # scales every backbone, FPN and head channel count; 1.0 is the reference
    fpn_channels: int = 256
    anchors: FPNAnchors = dataclasses.field(default_factory=FPNAnchors)
    rpn: RPNConfig = dataclasses.field(default_factory=RPNConfig)
    roi: RoIHeadConfig = dataclasses.field(default_factory=RoIHeadConfig)
    postprocess: RCNNPostprocess = dataclasses.field(default_factory=RCNNPostprocess)
    bbox_xform_clip: float = BBOX_XFORM_CLIP
    pixel_offset: float = 0.0  # 1.0: maskrcnn-benchmark's "+1" widths in coder, IoU, NMS, area, clip, flip, export
    normalization: Normalization = dataclasses.field(default_factory=Normalization)
    min_size: int = 800  # shorter side after resizing
    max_size: int = 1333  # longer side at most
    resize_rounding: str = "torchvision"  # torchvision (scale factor, floor) | truncate (maskrcnn-benchmark int sizes)
    size_divisibility: int = 32
    # Padding canvases [(height, width), ...] besides the two orientation canvases (ceil(min_size) x ceil(max_size)
    # and its transpose, which hold every image); each image is padded to the smallest canvas that holds it.
    # Training fills this from the training images (``auto_canvases`` per orientation) when it is empty.
    canvases: tuple[tuple[int, int], ...] = ()
    auto_canvases: int = 2  # extra canvases per orientation a training run fits to its images (0: none)
    flip_prob: float = 0.5

    def __post_init__(self):
        if self.family != "faster_rcnn":
            raise ValueError(f"FasterRCNNModelConfig.family must be 'faster_rcnn', got {self.family!r}")
        if not self.width_multiplier > 0:
            raise ValueError(f"model.width_multiplier must be > 0, got {self.width_multiplier}")
        if self.pixel_offset not in (0.0, 1.0):
            raise ValueError(f"model.pixel_offset must be 0 or 1, got {self.pixel_offset}")
        if self.resize_rounding not in ("torchvision", "truncate"):
            raise ValueError(f"model.resize_rounding must be 'torchvision' or 'truncate', got {self.resize_rounding!r}")
        if self.auto_canvases < 0:
            raise ValueError(f"model.auto_canvases must be >= 0, got {self.auto_canvases}")
        for c in self.canvases:
            if len(c) != 2 or min(c) < 1:
                raise ValueError(f"model.canvases must be (height, width) pairs of positive sizes, got {c!r}")
        if self.min_size < 1 or self.max_size < self.min_size:
            raise ValueError(f"model.min_size/max_size must satisfy 1 <= min_size <= max_size, got "
                             f"{self.min_size}/{self.max_size}")
