"""Importer for the MLPerf Training v0.6 PyTorch reference SSD-R34 (REFERENCE_SPECS §1.13).

Keys: ``model.layer1.{0,1,4,5}`` (stem conv, stem BN, torchvision layer1, layer2), ``model.layer2.0`` (layer3),
``additional_blocks.{0..4}.{0,2}``, ``loc.i``, ``conf.i``. Its heads are NCHW, box channels coordinate-major
with (x, y, w, h) coordinates and class channels class-major, flattened (anchor, y, x). The importer permutes
the head output channels into ours (anchor-major, (ty, tx, th, tw)); the anchor *order* then differs only by
the reshape, so our (y, x, a) outputs equal REF's outputs reindexed with
``layouts.mlperf_to_package_anchor_order()`` (and our default boxes are generated in (y, x, a) order).
"""
from ssd_tf.weights.common import assign_state_dict, describe_source, load_torch_state_dict
from ssd_tf.weights.layouts import (
    class_major_index,
    coordinate_major_xy_box_index,
    extras_mapping,
    resnet34_backbone_mapping,
    ssd_head_mapping,
)

_STEM = {"conv1": "model.layer1.0", "bn1": "model.layer1.1"}
_STAGES = {"layer1": "model.layer1.4", "layer2": "model.layer1.5", "layer3": "model.layer2.0"}


def _ref_name(torchvision_name):
    """torchvision resnet module name -> REF key prefix (REF wraps resnet34's children in two Sequentials)."""
    if torchvision_name in _STEM:
        return _STEM[torchvision_name]
    stage, rest = torchvision_name.split(".", 1)
    return f"{_STAGES[stage]}.{rest}"


def mlperf_ssd_r34_mapping(num_classes):
    mapping = resnet34_backbone_mapping(_ref_name)
    mapping.update(extras_mapping(5, lambda i, j: f"additional_blocks.{i}.{2 * j}"))
    mapping.update(
        ssd_head_mapping(
            num_classes, lambda i: f"loc.{i}", lambda i: f"conf.{i}", coordinate_major_xy_box_index, class_major_index
        )
    )
    return mapping


def load_mlperf_ssd_r34(model, source):
    """MLPerf REF SSD300-R34 state dict (path or mapping) -> an ssd_resnet34 model."""
    return assign_state_dict(
        model, load_torch_state_dict(source), mlperf_ssd_r34_mapping(model.output_shape[1][-1]),
        where=describe_source("MLPerf REF SSD-R34 state dict", source),
    )
