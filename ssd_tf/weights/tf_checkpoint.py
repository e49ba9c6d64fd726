"""Load the MLPerf TPU ResNet34 backbone from a TF1-style checkpoint (REFERENCE_SPECS §1.13 "TPU variable names").

tf.layers auto-naming in creation order: ``conv2d`` / ``batch_normalization`` for the stem, then per residual
block the 1x1 projection first (when there is one), conv1, conv2, each numbered ``conv2d_k`` with its BN
``batch_normalization_k``. layer1 = conv2d_1..6; layer2 = conv2d_7 (projection), 8, 9, then 10..15;
layer3 = conv2d_16 (projection), 17, 18, then 19..28. Kernels are already HWIO. The names are derived, not
checked against ``model.ckpt-28152``; any missing or mis-shaped variable is an error naming it.
"""
import numpy as np

from ssd_tf.models.backbones.resnet import RESNET34_SSD_STAGES
from ssd_tf.weights.common import WeightImportError

BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _suffix(index):
    return "" if index == 0 else f"_{index}"


def tpu_resnet34_variable_map(prefix=""):
    """``{our_layer_name: [checkpoint variable names in layer.weights order]}`` for the SSD backbone."""
    mapping, index = {}, 0

    def add(conv_layer, bn_layer):
        nonlocal index
        mapping[conv_layer] = [f"{prefix}conv2d{_suffix(index)}/kernel"]
        mapping[bn_layer] = [f"{prefix}batch_normalization{_suffix(index)}/{v}" for v in BN_VARIABLES]
        index += 1

    add("conv1", "bn1")
    for stage, (blocks, _, _) in enumerate(RESNET34_SSD_STAGES, start=1):
        for block in range(blocks):
            name = f"layer{stage}_{block}"
            if block == 0 and stage > 1:
                add(f"{name}_downsample_conv", f"{name}_downsample_bn")
            add(f"{name}_conv1", f"{name}_bn1")
            add(f"{name}_conv2", f"{name}_bn2")
    return mapping


def load_resnet34_from_tf_checkpoint(model, ckpt_path, prefix=""):
    """Assign the TPU ResNet34 checkpoint's conv/BN variables to an ssd_resnet34 model's backbone.

    ``prefix``: scope of the variables inside the checkpoint ("" for model.ckpt-28152, whose variables have no
    ``resnet34/`` scope). Extras and heads are untouched. Returns ``{"assigned_tensors", "unused_variables"}``
    (unused = the checkpoint's other variables: layer4, dense, optimizer slots, global_step).
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt_path))
    available = reader.get_variable_to_shape_map()
    errors, updates, used = [], [], set()
    for layer_name, names in tpu_resnet34_variable_map(prefix).items():
        layer = model.get_layer(layer_name)
        values = []
        for name, target in zip(names, layer.weights):
            if name not in available:
                errors.append(f"missing variable {name!r} in {ckpt_path} (for {target.path}, shape {tuple(target.shape)})")
                continue
            value = np.asarray(reader.get_tensor(name))
            used.add(name)
            if tuple(value.shape) != tuple(target.shape):
                errors.append(f"shape mismatch: {name!r} {tuple(value.shape)} vs {target.path} {tuple(target.shape)}")
                continue
            values.append(value.astype(target.dtype))
        if len(values) == len(layer.weights):
            updates.append((layer, values))
    if errors:
        raise WeightImportError(f"cannot load TF checkpoint {ckpt_path} into {model.name}:\n  " + "\n  ".join(errors))
    for layer, values in updates:
        layer.set_weights(values)
    return {"assigned_tensors": len(used), "unused_variables": sorted(set(available) - used)}
