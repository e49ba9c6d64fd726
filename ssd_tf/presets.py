"""Every preset as a complete config value: the model, its input, loss and post-processing numbers, and its
reference training recipe (REFERENCE_SPECS.md). The only place a preset name means anything.

* ``ssd_resnet34``: MLPerf v0.6 SSD-ResNet34 (strict IoU > 0.5 matching, per-image loss, MLPerf crop and colour
  jitter, post-processing 0.05 / 0.5 / 200 / 200); recipe of the seed's Ascend port: 3e-3 per 32 images, linear
  warmup 0.8 epochs, cosine to alpha 0.01, weight decay 5e-4 (coupled L2 on every parameter), momentum 0.9.
* ``ssd_vgg16``: torchvision ``ssd300_vgg16`` (wh-only anchor clip, IoU >= 0.5, per-batch loss, SSD augmentation,
  0.01 / 0.45 / 400 / 200, dh/dw clamp); 2e-3 per 64 images, x0.1 at 2/3 and 11/12 of 60,000 iterations
  (torchvision's epochs 80 / 110 of 120), warmup 1,000 iterations from 1e-3.
* ``ssd_vgg16_voc``: ssd.pytorch's VOC model and recipe (VOC anchor scales, difficult boxes dropped in training,
  0.01 / 0.45 / 200); 1e-3 per 32 images, x0.1 at 80k and 100k of 120k iterations.
* ``faster_rcnn_r50_fpn``: torchvision ``fasterrcnn_resnet50_fpn`` (v1) and its recipe: 0.02 per 16 images,
  momentum 0.9, weight decay 1e-4 on every trainable weight, 26 epochs, x0.1 at epochs 16 and 22, linear warmup
  over 1,000 iterations from 1e-3; crowd boxes and images without boxes left out of training.
* ``faster_rcnn_r101_fpn``: maskrcnn-benchmark's ``e2e_faster_rcnn_R_101_FPN_1x`` (the seed's model, 81 contiguous
  classes) with every convention where it differs from torchvision (REFERENCE_SPECS §3, §5): MSRA bottleneck
  (stride on the 1x1), frozen BN epsilon 0, stem + res2 frozen; BGR 0-255 input minus (102.9801, 115.9465,
  122.7717), std 1; shorter side 800 / longer <= 1333 with truncated sizes; Detectron anchors; the "+1" pixel
  convention; RPN training ignores anchors crossing the border; training keeps the top 2000 proposals of each
  per-device batch (1000 per image at 2 images per device; set ``model.rpn.post_nms_top_n_train`` to 1000 x the
  per-device batch to keep that); no minimum box size; RoI box loss Smooth-L1 beta 1. Recipe: 0.02 per 16 images,
  biases at 2x the learning rate and without weight decay, weight decay 1e-4, momentum 0.9, linear warmup over 500
  iterations from 1/3, x0.1 at 60k and 80k of 90k iterations of 16 images (``steps_reference_batch``: the
  iterations and drops scale with the global batch, e.g. 720k / 480k / 640k at 2 images; the warmup does not).
  Either convention combines with either depth: ``model.backbone.depth=50`` gives the maskrcnn-benchmark R-50 model;
  ``faster_rcnn_r50_fpn`` with ``model.backbone.depth=101`` torchvision's conventions at depth 101.
"""
from __future__ import annotations

import dataclasses
import math

from ssd_tf.config import Config, DataConfig, EvalConfig, TrainConfig
from ssd_tf.model_configs.common import Normalization
from ssd_tf.model_configs.faster_rcnn import (FasterRCNNModelConfig, FPNAnchors, RCNNPostprocess, ResNetBackbone,
                                              RoIHeadConfig, RPNConfig)
from ssd_tf.model_configs.ssd import (MLPERF_AUGMENTATION, SSD_AUGMENTATION, SSDMatching, SSDModelConfig,
                                      SSDPostprocess)
from ssd_tf.ops.anchors import AnchorSpec

_FEATURES = (38, 19, 10, 5, 3, 1)
_STEPS = (8, 16, 32, 64, 100, 300)
_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
# torchvision ssd300_vgg16 / ssd.pytorch: RGB on the 0..255 scale minus (123, 117, 104), std 1.
_VGG_NORMALIZATION = Normalization(scale=1.0, mean=(123.0, 117.0, 104.0), std=(1.0, 1.0, 1.0))
TORCHVISION_WH_CLIP = math.log(1000.0 / 16.0)


def _ssd_resnet34() -> Config:
    model = SSDModelConfig(
        name="ssd_resnet34", num_classes=81, backbone="resnet34_mlperf",
        # MLPerf REF dboxes300_coco / TPU ssd_constants: pixel scales / 300, all of (cx, cy, w, h) clipped.
        anchors=AnchorSpec(_FEATURES, _STEPS, tuple(s / 300.0 for s in (21, 45, 99, 153, 207, 261, 315)), _RATIOS,
                           clip="all"),
        matching=SSDMatching(iou_threshold=0.5, strict=True),  # REF: IoU > 0.5
        normalization=Normalization(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        augmentation=MLPERF_AUGMENTATION, loss_normalization="per_image",
        postprocess=SSDPostprocess(score_threshold=0.05, iou_threshold=0.5, max_candidates_per_class=200,
                                   max_detections=200, wh_clip=None))
    return Config(model=model, train=TrainConfig())


def _ssd_vgg16() -> Config:
    model = SSDModelConfig(
        name="ssd_vgg16", num_classes=91, backbone="vgg16_reduced_fc",
        # torchvision DefaultBoxGenerator: scales 0.07..1.05, only w, h clipped.
        anchors=AnchorSpec(_FEATURES, _STEPS, (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05), _RATIOS, clip="wh"),
        matching=SSDMatching(iou_threshold=0.5, strict=False), normalization=_VGG_NORMALIZATION,
        augmentation=SSD_AUGMENTATION, loss_normalization="per_batch",
        postprocess=SSDPostprocess(score_threshold=0.01, iou_threshold=0.45, max_candidates_per_class=400,
                                   max_detections=200, wh_clip=TORCHVISION_WH_CLIP))
    train = TrainConfig(base_learning_rate=2e-3, lr_reference_batch=64, lr_schedule="multistep", warmup_epochs=0.0,
                        warmup_steps=1000, warmup_start_factor=1e-3, lr_boundaries=[2 / 3, 11 / 12],
                        train_steps=60000)
    return Config(model=model, train=train)


def _ssd_vgg16_voc() -> Config:
    model = SSDModelConfig(
        name="ssd_vgg16_voc", num_classes=21, backbone="vgg16_reduced_fc",
        # ssd.pytorch VOC config: min_sizes 30..264, max size of the last level 315, all four clipped.
        anchors=AnchorSpec(_FEATURES, _STEPS, tuple(s / 300.0 for s in (30, 60, 111, 162, 213, 264, 315)), _RATIOS,
                           clip="all"),
        matching=SSDMatching(iou_threshold=0.5, strict=False), normalization=_VGG_NORMALIZATION,
        augmentation=SSD_AUGMENTATION, loss_normalization="per_batch",
        # ssd.pytorch Detect: score > 0.01, top 200 per class, NMS 0.45; no working per-image cap (200 used).
        postprocess=SSDPostprocess(score_threshold=0.01, iou_threshold=0.45, max_candidates_per_class=200,
                                   max_detections=200, wh_clip=None))
    train = TrainConfig(base_learning_rate=1e-3, lr_reference_batch=32, lr_schedule="multistep", warmup_epochs=0.0,
                        warmup_steps=0, lr_boundaries=[80000, 100000], train_steps=120000)
    # ssd.pytorch VOCAnnotationTransform(keep_difficult=False) in training.
    return Config(model=model, data=DataConfig(drop_difficult=True), train=train)


def _faster_rcnn(name: str, depth: int) -> Config:
    model = FasterRCNNModelConfig(name=name, num_classes=91, backbone=ResNetBackbone(depth=depth))
    data = DataConfig(drop_crowd=True, drop_images_without_boxes=True)
    train = TrainConfig(base_learning_rate=0.02, lr_reference_batch=16, lr_schedule="multistep", num_epochs=26.0,
                        lr_boundaries=[16 / 26, 22 / 26], warmup_epochs=0.0, warmup_steps=1000,
                        warmup_start_factor=1e-3, momentum=0.9, weight_decay=1e-4, train_batch_size=2,
                        deterministic_ops=True)
    return Config(model=model, data=data, train=train, eval=EvalConfig(eval_batch_size=2))


# maskrcnn-benchmark's Caffe2 ImageNet models: BGR on the 0..255 scale minus these means, std 1 (TO_BGR255).
MRB_NORMALIZATION = Normalization(scale=1.0, mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0),
                                  channel_order="bgr")


def _maskrcnn_benchmark(name: str, depth: int) -> Config:
    """maskrcnn-benchmark e2e_faster_rcnn_R_{depth}_FPN_1x (module docstring)."""
    model = FasterRCNNModelConfig(
        name=name, num_classes=81,
        backbone=ResNetBackbone(depth=depth, stride_in_1x1=True, frozen_bn_epsilon=0.0, trainable_layers=3),
        anchors=FPNAnchors(style="detectron"),
        rpn=RPNConfig(pre_nms_top_n_train=2000, post_nms_top_n_train=2000, pre_nms_top_n_test=1000,
                      post_nms_top_n_test=1000, post_nms_per_batch=True, min_size=0.0, straddle_threshold=0.0),
        roi=RoIHeadConfig(box_loss_beta=1.0),
        postprocess=RCNNPostprocess(score_threshold=0.05, iou_threshold=0.5, max_detections=100, min_size=0.0),
        pixel_offset=1.0, normalization=MRB_NORMALIZATION, min_size=800, max_size=1333, resize_rounding="truncate")
    data = DataConfig(drop_crowd=True, drop_images_without_boxes=True)
    train = TrainConfig(base_learning_rate=0.02, lr_reference_batch=16, lr_schedule="multistep", train_steps=90000,
                        lr_boundaries=[60000, 80000], steps_reference_batch=16, warmup_epochs=0.0, warmup_steps=500,
                        warmup_start_factor=1.0 / 3.0, momentum=0.9, weight_decay=1e-4, bias_lr_factor=2.0,
                        bias_weight_decay=0.0, train_batch_size=2, deterministic_ops=True)
    return Config(model=model, data=data, train=train, eval=EvalConfig(eval_batch_size=2))


_PRESETS = {
    "ssd_resnet34": _ssd_resnet34,
    "ssd_vgg16": _ssd_vgg16,
    "ssd_vgg16_voc": _ssd_vgg16_voc,
    "faster_rcnn_r50_fpn": lambda: _faster_rcnn("faster_rcnn_r50_fpn", 50),
    "faster_rcnn_r101_fpn": lambda: _maskrcnn_benchmark("faster_rcnn_r101_fpn", 101),
}
PRESETS = tuple(_PRESETS)


def preset(name: str) -> Config:
    """A fresh complete config of preset ``name`` (see the module docstring)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return _PRESETS[name]()


def model_config(name: str, **overrides):
    """The model config of preset ``name`` with top-level model fields replaced (``num_classes=21``,
    ``width_multiplier=0.25``, ...); an unknown field is an error naming it."""
    model = preset(name).model
    known = {f.name for f in dataclasses.fields(model)} - {"family"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown model option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(model, **overrides)
