"""Importers of torchvision state dicts into the Faster R-CNN models (``ssd_tf.models.faster_rcnn``).

* ``load_torchvision_fasterrcnn`` -- a torchvision ``FasterRCNN`` on ``resnet_fpn_backbone`` (R-50:
  ``fasterrcnn_resnet50_fpn``; R-101 has the same names with 23 layer3 blocks). Both key generations are read:
  the old ``backbone.fpn.{inner,layer}_blocks.{i}.{weight,bias}`` / ``rpn.head.conv.{weight,bias}`` of the
  released COCO weights and the newer ``...blocks.{i}.0.*`` / ``rpn.head.conv.0.0.*`` that torchvision writes
  today (it remaps the old ones on load). A dict holding both spellings of one tensor is an error.
* ``load_torchvision_resnet`` -- an ImageNet ``resnet50`` / ``resnet101`` classifier as the backbone only: FPN
  and heads keep their initialisation, ``fc.*`` is dropped, BN statistics go into the frozen BN layers.

Layout changes (REFERENCE_SPECS §4): conv OIHW -> HWIO, linear [out, in] -> [in, out]; box-delta channels
(dx, dy, dw, dh) -> (dy, dx, dh, dw) in the RPN head (anchor-major) and the box predictor (class-major); fc6's
input axis from PyTorch's C x 7 x 7 flattening to NHWC's 7 x 7 x C.
"""
from __future__ import annotations

import re

import numpy as np

from ssd_tf.weights.common import (
    FlatView,
    WeightImportError,
    assign_state_dict,
    bn_entries,
    compose,
    conv_entries,
    dense_kernel,
    describe_source,
    identity,
    load_torch_state_dict,
    out_channel_permutation,
)
from ssd_tf.weights.layouts import XY_TO_YX, anchor_major_xy_box_index

# Old torchvision key -> the current spelling (torchvision's own _load_from_state_dict remaps these).
_OLD_KEYS = (
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
)


def normalize_fasterrcnn_keys(state):
    """Rewrite old torchvision FPN/RPN key names to the current ones; both spellings of one tensor is an error."""
    out, renamed = {}, {}
    for key, value in state.items():
        new = key
        for pattern, repl in _OLD_KEYS:
            new = pattern.sub(repl, new)
        if new in out:
            raise WeightImportError(f"state dict holds both {renamed.get(new, new)!r} and {key!r} for one tensor")
        out[new] = value
        if new != key:
            renamed[new] = key
    return out, renamed


def fc6_kernel(pool_size, channels):
    """fc6 weight [out, C*P*P] (PyTorch flattens C x P x P) -> Dense kernel [P*P*C, out] (NHWC flattening)."""

    def transform(w):
        if w.ndim != 2 or w.shape[1] != channels * pool_size * pool_size:
            raise WeightImportError(f"fc6 weight must be [out, {channels}*{pool_size}*{pool_size}], got {w.shape}")
        w = w.reshape(w.shape[0], channels, pool_size, pool_size)
        return np.transpose(w, (2, 3, 1, 0)).reshape(pool_size * pool_size * channels, w.shape[0])

    return transform


def class_major_xy_box_index(num_classes):
    """Box predictor columns 4j + (dx, dy, dw, dh) -> ours 4j + (dy, dx, dh, dw)."""
    return np.array([4 * j + XY_TO_YX[k] for j in range(num_classes) for k in range(4)])


def resnet_body_mapping(depth, prefix="", stem_prefix=None):
    """Our backbone layers <- ResNet module names: torchvision's (``prefix`` e.g. "backbone.body.") or
    maskrcnn-benchmark's, which are the same but for the stem (``stem_prefix``, default ``prefix``)."""
    from ssd_tf.models.backbones.resnet_fpn import RESNET_BLOCKS

    if depth not in RESNET_BLOCKS:
        raise WeightImportError(f"no ResNet-{depth} layout")
    stem = prefix if stem_prefix is None else stem_prefix
    mapping = {"conv1": conv_entries(f"{stem}conv1", bias=False), "bn1": bn_entries(f"{stem}bn1")}
    for stage, blocks in enumerate(RESNET_BLOCKS[depth], start=1):
        for block in range(blocks):
            ours, theirs = f"layer{stage}_{block}", f"{prefix}layer{stage}.{block}"
            for i in (1, 2, 3):
                mapping[f"{ours}_conv{i}"] = conv_entries(f"{theirs}.conv{i}", bias=False)
                mapping[f"{ours}_bn{i}"] = bn_entries(f"{theirs}.bn{i}")
            if block == 0:
                mapping[f"{ours}_downsample_conv"] = conv_entries(f"{theirs}.downsample.0", bias=False)
                mapping[f"{ours}_downsample_bn"] = bn_entries(f"{theirs}.downsample.1")
    return mapping


def fpn_and_heads_mapping(model, *, fpn_inner, fpn_layer, rpn_conv, box_head, box_predictor):
    """Our FPN, RPN head and box head <- module names (``fpn_inner`` / ``fpn_layer`` take ``{i}``, our level
    index from C2 = 0, or ``{n}`` = i + 1), with the layout changes both references need."""
    mapping = {}
    for i in range(4):
        mapping[f"fpn_inner{i}"] = conv_entries(fpn_inner.format(i=i, n=i + 1))
        mapping[f"fpn_layer{i}"] = conv_entries(fpn_layer.format(i=i, n=i + 1))
    mapping["rpn_conv"] = conv_entries(rpn_conv)
    mapping["rpn_cls_logits"] = conv_entries("rpn.head.cls_logits")
    mapping["rpn_bbox_pred"] = conv_entries("rpn.head.bbox_pred",
                                            out_permutation=anchor_major_xy_box_index(model.num_cell_anchors))
    head = model.box_head
    mapping["fc6"] = [(f"{box_head}.fc6.weight", fc6_kernel(head.pooled_size, head.channels)),
                      (f"{box_head}.fc6.bias", identity)]
    mapping["fc7"] = [(f"{box_head}.fc7.weight", dense_kernel), (f"{box_head}.fc7.bias", identity)]
    mapping["cls_score"] = [(f"{box_predictor}.cls_score.weight", dense_kernel),
                            (f"{box_predictor}.cls_score.bias", identity)]
    perm = out_channel_permutation(class_major_xy_box_index(model.cfg.num_classes))
    mapping["bbox_pred"] = [(f"{box_predictor}.bbox_pred.weight", compose(dense_kernel, perm)),
                            (f"{box_predictor}.bbox_pred.bias", perm)]
    return mapping


def fasterrcnn_mapping(model):
    """Full mapping of a FasterRCNN model from torchvision (current key names)."""
    mapping = resnet_body_mapping(model.cfg.backbone.depth, "backbone.body.")
    mapping.update(fpn_and_heads_mapping(
        model, fpn_inner="backbone.fpn.inner_blocks.{i}.0", fpn_layer="backbone.fpn.layer_blocks.{i}.0",
        rpn_conv="rpn.head.conv.0.0", box_head="roi_heads.box_head", box_predictor="roi_heads.box_predictor"))
    return mapping


def load_torchvision_fasterrcnn(model, source):
    """torchvision FasterRCNN (resnet_fpn_backbone) state dict (path or mapping) -> a FasterRCNN model."""
    where = describe_source(f"torchvision fasterrcnn_resnet{model.cfg.backbone.depth}_fpn state dict", source)
    state, renamed = normalize_fasterrcnn_keys(load_torch_state_dict(source))
    try:
        report = assign_state_dict(FlatView(model), state, fasterrcnn_mapping(model), where=where)
    except WeightImportError as err:  # name the tensors as the file spells them
        message = str(err)
        for new, old in renamed.items():
            message = message.replace(repr(new), repr(old))
        raise WeightImportError(message) from None
    return dict(report, renamed_old_keys=len(renamed))


def load_torchvision_resnet(model, source):
    """ImageNet torchvision ``resnet50`` / ``resnet101`` -> the ResNet body of a FasterRCNN model (backbone only)."""
    depth = model.cfg.backbone.depth
    return assign_state_dict(
        FlatView(model), load_torch_state_dict(source), resnet_body_mapping(depth),
        skip_layers=(r"^fpn_(inner|layer)\d$", r"^rpn_", r"^(fc6|fc7|cls_score|bbox_pred)$"),
        ignore_keys=(r"^fc\.",), where=describe_source(f"torchvision resnet{depth} state dict", source))
