"""SSD300 model structure: parameter counts from REFERENCE_SPECS, layout, padding, L2Norm, factory errors."""
import subprocess
import sys

import numpy as np
import pytest

import keras
import ssd_tf
from ssd_tf.models.layers import L2Normalization

# REFERENCE_SPECS §1.12 and §2.9. Counted: every weight except BatchNorm moving_mean / moving_variance, i.e.
# exactly PyTorch's model.parameters(): conv kernels + biases, BN gamma/beta, the L2Norm scale.
EXPECTED_PARAMS = [
    ("ssd_vgg16", 91, 35_641_826),
    ("ssd_resnet34", 81, 19_972_534),
    ("ssd_vgg16_voc", 21, 26_285_486),
    ("ssd_vgg16", 81, 34_305_206),
]


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _is_bn_moving_stat(w):
    return w.path.endswith("moving_mean") or w.path.endswith("moving_variance")


@pytest.mark.parametrize("name,num_classes,expected", EXPECTED_PARAMS)
def test_parameter_count_matches_reference(name, num_classes, expected):
    model = ssd_tf.build_model(name, num_classes=num_classes)
    counted = [w for w in model.weights if not _is_bn_moving_stat(w)]
    assert _count(counted) == expected
    # Everything counted is trainable by default; the only non-trainable weights are BN moving statistics.
    assert _count(model.trainable_weights) == expected
    assert all(_is_bn_moving_stat(w) for w in model.non_trainable_weights)
    assert model.output_shape == [(None, 8732, 4), (None, 8732, num_classes)]


def test_resnet34_backbone_part_counts():
    model = ssd_tf.build_model("ssd_resnet34")
    by_prefix = {"backbone": 0, "extra": 0, "head": 0}
    for w in model.weights:
        if _is_bn_moving_stat(w):
            continue
        layer = w.path.split("/")[0]
        key = "extra" if layer.startswith("extra") else "head" if layer.startswith(("loc_", "conf_")) else "backbone"
        by_prefix[key] += int(np.prod(w.shape))
    # REFERENCE_SPECS §1.12: backbone 8,170,304; extras 3,574,400; heads 8,227,830.
    assert by_prefix == {"backbone": 8_170_304, "extra": 3_574_400, "head": 8_227_830}


def test_default_num_classes_and_feature_sizes():
    expected_sizes = {
        "ssd_resnet34": ("layer3_5_relu2", 38, 256),
        "ssd_vgg16": ("vgg_conv7_relu", 19, 1024),
    }
    for name, classes in (("ssd_resnet34", 81), ("ssd_vgg16", 91), ("ssd_vgg16_voc", 21)):
        model = ssd_tf.build_model(name)
        assert model.output_shape[1][-1] == classes
        assert model.name == name
    for name, (layer, size, channels) in expected_sizes.items():
        model = ssd_tf.build_model(name, num_classes=3)
        assert model.get_layer(layer).output.shape[1:] == (size, size, channels)
    model = ssd_tf.build_model("ssd_vgg16", num_classes=3)
    assert model.get_layer("vgg_pool3").output.shape[1:3] == (38, 38)  # ceil-mode pool 75 -> 38
    assert model.get_layer("vgg_conv4_3_relu").output.shape[1:] == (38, 38, 512)


def test_stride2_ops_use_symmetric_zero_padding():
    """Every stride-2 op with k > 1 is a 'valid' op fed by a symmetric ZeroPadding2D (PyTorch padding)."""
    for name in ("ssd_resnet34", "ssd_vgg16"):
        model = ssd_tf.build_model(name, num_classes=3)
        checked = 0
        for layer in model.layers:
            if not isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D)):
                continue
            strides = layer.strides
            kernel = layer.kernel_size if isinstance(layer, keras.layers.Conv2D) else layer.pool_size
            if tuple(strides) == (1, 1) or tuple(kernel) == (1, 1):
                continue
            if name == "ssd_vgg16" and layer.name.startswith("vgg_pool"):
                continue  # 2x2/2 pools: 'same' equals PyTorch (ceil mode at pool3, exact after ReLU)
            assert layer.padding == "valid", layer.name
            producer = layer._inbound_nodes[0].parent_nodes[0].operation
            assert isinstance(producer, keras.layers.ZeroPadding2D), layer.name
            pad = kernel[0] // 2
            assert tuple(map(tuple, producer.padding)) == ((pad, pad), (pad, pad)), layer.name
            checked += 1
        assert checked == {"ssd_resnet34": 6, "ssd_vgg16": 2}[name]  # R34: conv1, maxpool, layer2 conv1, 3 extras


def test_resnet34_batchnorm_matches_pytorch_settings():
    model = ssd_tf.build_model("ssd_resnet34")
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 2 * (3 + 4 + 6) + 2  # stem + two per block + two projections
    assert all(l.epsilon == 1e-5 and l.momentum == 0.9 for l in bns)
    # layer3 keeps stride 1 but has a projection because 128 != 256 channels.
    assert model.get_layer("layer3_0_downsample_conv").strides == (1, 1)
    assert model.get_layer("layer3_0_conv1").strides == (1, 1)
    assert model.get_layer("layer2_0_conv1").strides == (2, 2)


def test_l2norm_semantics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 5)).astype("float32")
    x[0, 0, 0] = 0.0  # zero vector: divided by epsilon, stays 0
    layer = L2Normalization(name="l2")
    y = np.asarray(layer(x))
    norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(y, x / norm * 20.0, rtol=1e-5, atol=1e-6)
    assert y[0, 0, 0].tolist() == [0.0] * 5
    assert layer.scale.shape == (5,)
    restored = L2Normalization.from_config(layer.get_config())
    assert restored.scale_init == 20.0 and restored.epsilon == 1e-12


def test_vgg_trainable_backbone_stages_freezes_early_stages():
    model = ssd_tf.build_model("ssd_vgg16", num_classes=3, trainable_backbone_stages=4)
    frozen = {l.name for l in model.layers if l.weights and not l.trainable}
    assert frozen == {"vgg_conv1_1", "vgg_conv1_2"}
    with pytest.raises(ValueError, match="trainable_backbone_stages"):
        ssd_tf.build_model("ssd_vgg16", num_classes=3, trainable_backbone_stages=6)


def test_factory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset 'ssd_mobilenet'"):
        ssd_tf.build_model("ssd_mobilenet")
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['depth'\]"):
        ssd_tf.build_model("ssd_resnet34", depth=50)
    with pytest.raises(ValueError, match="width_multiplier must be > 0"):
        ssd_tf.build_model("ssd_resnet34", width_multiplier=0)
    with pytest.raises(ValueError, match="num_classes"):
        ssd_tf.build_model("ssd_resnet34", num_classes=1)
    with pytest.raises(ValueError, match="image_size"):
        ssd_tf.build_model("ssd_resnet34", image_size=512)


def test_import_ssd_tf_is_light():
    code = "import sys, ssd_tf; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
