"""Importer mappings and strictness on synthetic state dicts (numpy arrays, no torch needed)."""
import numpy as np
import pytest

import ssd_tf
from ssd_tf.weights.common import WeightImportError
from ssd_tf.weights.layouts import (
    anchor_major_xy_box_index,
    class_major_index,
    coordinate_major_xy_box_index,
    mlperf_to_package_anchor_order,
)
from ssd_tf.weights.mlperf import load_mlperf_ssd_r34, mlperf_ssd_r34_mapping
from ssd_tf.weights.ssd_pytorch import load_ssd_pytorch, load_ssd_pytorch_vgg16_reducedfc, ssd_pytorch_mapping
from ssd_tf.weights.torchvision import load_torchvision_resnet34, load_torchvision_ssd300_vgg16, ssd300_vgg16_mapping


def synthetic_state(model, mapping, seed=0):
    """A PyTorch-layout state dict (OIHW kernels) with random values for every key of ``mapping``."""
    rng = np.random.default_rng(seed)
    state = {}
    for layer_name, entries in mapping.items():
        for (key, _), w in zip(entries, model.get_layer(layer_name).weights):
            shape = tuple(w.shape)
            if len(shape) == 4:
                shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
            state[key] = rng.normal(size=shape).astype("float32")
    return state


@pytest.fixture(scope="module")
def vgg():
    return ssd_tf.build_model("ssd_vgg16", num_classes=5)


def test_torchvision_vgg_import_transposes_and_permutes(vgg):
    state = synthetic_state(vgg, ssd300_vgg16_mapping(5))
    assert "backbone.extra.0.7.1.weight" in state and state["backbone.extra.0.7.1.weight"].shape == (1024, 512, 3, 3)
    report = load_torchvision_ssd300_vgg16(vgg, state)
    assert report["assigned_tensors"] == len(vgg.weights)
    np.testing.assert_array_equal(
        vgg.get_layer("vgg_conv4_3").kernel.numpy(), state["backbone.features.21.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(vgg.get_layer("l2norm").scale.numpy(), state["backbone.scale_weight"])
    # Box head: our channel a*4+k is their a*4+(1,0,3,2)[k]; class head unchanged.
    loc = state["head.regression_head.module_list.0.weight"]  # [16,512,3,3]
    ours = vgg.get_layer("loc_0").kernel.numpy()
    for a in range(4):
        for k, theirs in enumerate((1, 0, 3, 2)):
            np.testing.assert_array_equal(ours[..., a * 4 + k], loc[a * 4 + theirs].transpose(1, 2, 0))
    np.testing.assert_array_equal(
        vgg.get_layer("loc_2").bias.numpy(), state["head.regression_head.module_list.2.bias"][anchor_major_xy_box_index(6)]
    )
    np.testing.assert_array_equal(
        vgg.get_layer("conf_5").bias.numpy(), state["head.classification_head.module_list.5.bias"]
    )


def test_missing_unexpected_and_misshaped_tensors_are_named(vgg):
    state = synthetic_state(vgg, ssd300_vgg16_mapping(5))
    before = vgg.get_layer("vgg_conv1_1").kernel.numpy().copy()
    del state["backbone.extra.2.0.bias"]
    state["backbone.features.0.weight"] = state["backbone.features.0.weight"][:, :, :2]  # [64,3,2,3]
    state["head.extra_thing"] = np.zeros(3, "float32")
    with pytest.raises(WeightImportError) as err:
        load_torchvision_ssd300_vgg16(vgg, state)
    msg = str(err.value)
    assert "missing tensor 'backbone.extra.2.0.bias'" in msg
    assert "'backbone.features.0.weight' (64, 3, 2, 3)" in msg and "(3, 3, 3, 64)" in msg
    assert "unexpected tensor 'head.extra_thing'" in msg
    np.testing.assert_array_equal(vgg.get_layer("vgg_conv1_1").kernel.numpy(), before)  # all-or-nothing


def test_wrong_class_count_is_a_shape_error(vgg):
    state = synthetic_state(ssd_tf.build_model("ssd_vgg16_voc"), ssd300_vgg16_mapping(21))
    with pytest.raises(WeightImportError, match="head.classification_head.module_list.0.weight"):
        load_torchvision_ssd300_vgg16(vgg, state)


def test_ssd_pytorch_full_and_reducedfc(vgg):
    state = synthetic_state(vgg, ssd_pytorch_mapping(5), seed=1)
    assert {"vgg.33.weight", "L2Norm.weight", "extras.7.bias", "conf.5.weight"} <= set(state)
    load_ssd_pytorch(vgg, state)
    np.testing.assert_array_equal(vgg.get_layer("vgg_conv6").kernel.numpy(), state["vgg.31.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(vgg.get_layer("extra1_conv3x3").bias.numpy(), state["extras.3.bias"])

    backbone = {k[len("vgg."):]: v * 2 for k, v in state.items() if k.startswith("vgg.")}  # keys "0.weight", ...
    heads_before = vgg.get_layer("conf_0").kernel.numpy().copy()
    report = load_ssd_pytorch_vgg16_reducedfc(vgg, backbone)
    assert "l2norm" in report["skipped_layers"] and "loc_0" in report["skipped_layers"]
    np.testing.assert_array_equal(vgg.get_layer("vgg_conv7").bias.numpy(), backbone["33.bias"])
    np.testing.assert_array_equal(vgg.get_layer("conf_0").kernel.numpy(), heads_before)


def test_torchvision_resnet34_is_backbone_only_and_explicit():
    model = ssd_tf.build_model("ssd_resnet34", num_classes=3)
    from ssd_tf.weights.layouts import resnet34_backbone_mapping

    state = synthetic_state(model, resnet34_backbone_mapping(lambda n: n), seed=2)
    state["layer4.0.conv1.weight"] = np.zeros((512, 256, 3, 3), "float32")
    state["fc.weight"] = np.zeros((1000, 512), "float32")
    state["bn1.num_batches_tracked"] = np.array(7)
    report = load_torchvision_resnet34(model, state)
    assert report["ignored_keys"] == ["bn1.num_batches_tracked", "fc.weight", "layer4.0.conv1.weight"]
    assert "extra0_conv1x1" in report["skipped_layers"] and "conf_5" in report["skipped_layers"]
    bn = model.get_layer("layer3_0_downsample_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["layer3.0.downsample.1.running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), state["layer3.0.downsample.1.weight"])
    state["layer5.0.conv1.weight"] = np.zeros((1,), "float32")
    with pytest.raises(WeightImportError, match="unexpected tensor 'layer5.0.conv1.weight'"):
        load_torchvision_resnet34(model, state)


def test_mlperf_ref_keys_and_head_permutation():
    model = ssd_tf.build_model("ssd_resnet34", num_classes=3)
    state = synthetic_state(model, mlperf_ssd_r34_mapping(3), seed=3)
    assert {"model.layer1.0.weight", "model.layer1.5.0.downsample.0.weight", "model.layer2.0.5.bn2.running_var",
            "additional_blocks.4.2.weight", "loc.5.bias"} <= set(state)
    load_mlperf_ssd_r34(model, state)
    # Box channel coord*A + a with coords (x,y,w,h) -> a*4 + (y,x,h,w); class channel c*A + a -> a*C + c.
    assert coordinate_major_xy_box_index(4).tolist() == [4, 0, 12, 8, 5, 1, 13, 9, 6, 2, 14, 10, 7, 3, 15, 11]
    assert class_major_index(2, 3).tolist() == [0, 2, 4, 1, 3, 5]
    np.testing.assert_array_equal(model.get_layer("loc_1").bias.numpy(), state["loc.1.bias"][coordinate_major_xy_box_index(6)])
    np.testing.assert_array_equal(model.get_layer("conf_4").bias.numpy(), state["conf.4.bias"][class_major_index(4, 3)])
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), state["model.layer1.0.weight"].transpose(2, 3, 1, 0))


def test_mlperf_anchor_order_permutation_small_level():
    perm = mlperf_to_package_anchor_order(feature_sizes=(2,), anchors_per_cell=(3,))
    # theirs: index a*4 + y*2 + x; ours visits (y, x, a).
    assert perm.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert sorted(mlperf_to_package_anchor_order().tolist()) == list(range(8732))
