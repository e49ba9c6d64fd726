"""Importers for amdegroot ssd.pytorch weights.

- Full model (``ssd300_mAP_77.43_v2.pth``): keys ``vgg.N.*``, ``L2Norm.weight``, ``extras.N.*``, ``loc.i.*``,
  ``conf.i.*`` -> ssd_vgg16_voc (or ssd_vgg16 with a matching class count). Same head layout as torchvision
  (anchor-major, (y, x, a)); only the box channels go (dx,dy,dw,dh) -> (dy,dx,dh,dw).
- ``vgg16_reducedfc.pth``: the `vgg` ModuleList alone (keys ``N.weight`` / ``N.bias``), conv1_1..conv7 incl.
  the subsampled fc6/fc7. Backbone-only: L2Norm keeps its init 20, extras and heads their initialisation.
"""
from ssd_tf.weights.common import assign_state_dict, conv_entries, describe_source, load_torch_state_dict
from ssd_tf.weights.layouts import (
    SSD_PYTORCH_VGG_INDICES,
    anchor_major_xy_box_index,
    extras_mapping,
    ssd_head_mapping,
    vgg16_layer_names,
)


def vgg_mapping(prefix):
    return {ours: conv_entries(f"{prefix}{i}") for ours, i in zip(vgg16_layer_names(), SSD_PYTORCH_VGG_INDICES)}


def ssd_pytorch_mapping(num_classes):
    mapping = vgg_mapping("vgg.")
    mapping["l2norm"] = [("L2Norm.weight", lambda w: w)]
    mapping.update(extras_mapping(4, lambda i, j: f"extras.{2 * i + j}"))
    mapping.update(
        ssd_head_mapping(num_classes, lambda i: f"loc.{i}", lambda i: f"conf.{i}", anchor_major_xy_box_index)
    )
    return mapping


def load_ssd_pytorch(model, source):
    """Full ssd.pytorch SSD300 state dict -> ssd_vgg16_voc / ssd_vgg16 model."""
    return assign_state_dict(
        model, load_torch_state_dict(source), ssd_pytorch_mapping(model.output_shape[1][-1]),
        where=describe_source("ssd.pytorch state dict", source),
    )


def load_ssd_pytorch_vgg16_reducedfc(model, source):
    """``vgg16_reducedfc.pth`` (ssd.pytorch's pretrained backbone) -> VGG layers of an ssd_vgg16* model."""
    return assign_state_dict(
        model, load_torch_state_dict(source), vgg_mapping(""),
        skip_layers=(r"^l2norm$", r"^extra\d+_", r"^loc_\d+$", r"^conf_\d+$"),
        where=describe_source("ssd.pytorch vgg16_reducedfc state dict", source),
    )
