"""Importers for torchvision state dicts: ``ssd300_vgg16`` (full model), ImageNet ``resnet34`` (backbone of
ssd_resnet34 only), and the "torchvision SSD-R34" layout: torchvision's ``SSD`` class around a resnet34 cut
after layer3, with module names ``backbone.body.{conv1,bn1,layer1..3}``, ``backbone.extra.{0..4}.{0,2}`` (1x1,
3x3 conv of each extra block) and torchvision's ``SSDHead`` (``head.{regression,classification}_head.module_list.i``).
"""
from ssd_tf.weights.common import assign_state_dict, conv_entries, describe_source, load_torch_state_dict
from ssd_tf.weights.layouts import (
    anchor_major_xy_box_index,
    extras_mapping,
    resnet34_backbone_mapping,
    ssd_head_mapping,
    vgg16_layer_names,
)

# torchvision ssd300_vgg16 module names of our VGG convs (REFERENCE_SPECS §2.10).
_TV_VGG_MODULES = [f"backbone.features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)] + [
    "backbone.extra.0.1", "backbone.extra.0.3", "backbone.extra.0.5", "backbone.extra.0.7.1", "backbone.extra.0.7.3",
]


def _tv_head_mapping(num_classes):
    return ssd_head_mapping(
        num_classes,
        loc_prefix=lambda i: f"head.regression_head.module_list.{i}",
        conf_prefix=lambda i: f"head.classification_head.module_list.{i}",
        box_index=anchor_major_xy_box_index,
    )


def ssd300_vgg16_mapping(num_classes):
    mapping = {ours: conv_entries(theirs) for ours, theirs in zip(vgg16_layer_names(), _TV_VGG_MODULES)}
    mapping["l2norm"] = [("backbone.scale_weight", lambda w: w)]
    mapping.update(extras_mapping(4, lambda i, j: f"backbone.extra.{i + 1}.{2 * j}"))
    mapping.update(_tv_head_mapping(num_classes))
    return mapping


def load_torchvision_ssd300_vgg16(model, source):
    """torchvision ``ssd300_vgg16`` state dict (path or mapping) -> an ssd_vgg16 / ssd_vgg16_voc model."""
    num_classes = model.output_shape[1][-1]
    return assign_state_dict(
        model, load_torch_state_dict(source), ssd300_vgg16_mapping(num_classes),
        where=describe_source("torchvision ssd300_vgg16 state dict", source),
    )


def ssd_resnet34_mapping(num_classes):
    mapping = resnet34_backbone_mapping(lambda name: f"backbone.body.{name}")
    mapping.update(extras_mapping(5, lambda i, j: f"backbone.extra.{i}.{2 * j}"))
    mapping.update(_tv_head_mapping(num_classes))
    return mapping


def load_torchvision_ssd_resnet34(model, source):
    """torchvision-``SSD``-layout SSD-R34 state dict (see module docstring) -> an ssd_resnet34 model."""
    return assign_state_dict(
        model, load_torch_state_dict(source), ssd_resnet34_mapping(model.output_shape[1][-1]),
        where=describe_source("torchvision SSD-R34 state dict", source),
    )


def load_torchvision_resnet34(model, source):
    """ImageNet torchvision ``resnet34`` -> the backbone of an ssd_resnet34 model.

    Explicitly backbone-only: extras and heads keep their initialisation; layer4 and fc of the source are
    dropped (the SSD backbone stops after layer3). Anything else missing or unexpected is an error.
    """
    return assign_state_dict(
        model, load_torch_state_dict(source), resnet34_backbone_mapping(lambda name: name),
        skip_layers=(r"^extra\d+_", r"^loc_\d+$", r"^conf_\d+$"), ignore_keys=(r"^layer4\.", r"^fc\."),
        where=describe_source("torchvision resnet34 state dict", source),
    )
