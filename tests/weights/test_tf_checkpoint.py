"""load_resnet34_from_tf_checkpoint on a checkpoint written here with the TPU variable names (SaveV2)."""
import numpy as np
import pytest
import tensorflow as tf

import ssd_tf
from ssd_tf.weights.common import WeightImportError
from ssd_tf.weights.tf_checkpoint import load_resnet34_from_tf_checkpoint, tpu_resnet34_variable_map


def _write_checkpoint(prefix, tensors):
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def test_tpu_names_follow_projection_first_order():
    mapping = tpu_resnet34_variable_map()
    assert mapping["conv1"] == ["conv2d/kernel"]
    assert mapping["bn1"][3] == "batch_normalization/moving_variance"
    assert mapping["layer1_2_conv2"] == ["conv2d_6/kernel"]
    assert mapping["layer2_0_downsample_conv"] == ["conv2d_7/kernel"]
    assert mapping["layer2_0_conv1"] == ["conv2d_8/kernel"]
    assert mapping["layer3_0_downsample_conv"] == ["conv2d_16/kernel"]
    assert mapping["layer3_5_conv2"] == ["conv2d_28/kernel"]
    assert mapping["layer3_5_bn2"][0] == "batch_normalization_28/gamma"


def test_load_resnet34_from_tf_checkpoint(tmp_path):
    model = ssd_tf.build_model("ssd_resnet34", num_classes=3)
    rng = np.random.default_rng(0)
    tensors = {}
    for layer_name, names in tpu_resnet34_variable_map().items():
        for name, w in zip(names, model.get_layer(layer_name).weights):
            tensors[name] = rng.normal(size=tuple(w.shape)).astype("float32")
    tensors["conv2d_29/kernel"] = np.zeros((3, 3, 256, 512), "float32")  # layer4: not part of the SSD backbone
    tensors["global_step"] = np.array(28152, np.int64)
    head_before = model.get_layer("conf_0").kernel.numpy().copy()
    prefix = str(tmp_path / "model.ckpt-28152")
    _write_checkpoint(prefix, tensors)
    report = load_resnet34_from_tf_checkpoint(model, prefix)
    assert report["assigned_tensors"] == 29 + 29 * 4
    assert report["unused_variables"] == ["conv2d_29/kernel", "global_step"]
    np.testing.assert_array_equal(model.get_layer("layer2_0_downsample_conv").kernel.numpy(), tensors["conv2d_7/kernel"])
    np.testing.assert_array_equal(
        model.get_layer("layer3_4_bn1").moving_mean.numpy(), tensors["batch_normalization_25/moving_mean"]
    )
    np.testing.assert_array_equal(model.get_layer("conf_0").kernel.numpy(), head_before)

    del tensors["batch_normalization_3/beta"]
    tensors["conv2d_5/kernel"] = tensors["conv2d_5/kernel"][:, :, :, :32]
    bad = str(tmp_path / "bad.ckpt")
    _write_checkpoint(bad, tensors)
    with pytest.raises(WeightImportError) as err:
        load_resnet34_from_tf_checkpoint(model, bad)
    assert "missing variable 'batch_normalization_3/beta'" in str(err.value)
    assert "'conv2d_5/kernel' (3, 3, 64, 32) vs layer1_2_conv1/kernel (3, 3, 64, 64)" in str(err.value)
