"""Every reference tensor lands in the right layer, checked against key tables written out here from the
references' module structure (REFERENCE_SPECS §1.13, §2.10) — not generated from the importers' own mapping
tables, so swapping two same-shaped layers (e.g. VGG conv3_2 / conv3_3) in a mapping fails these tests."""
import numpy as np
import pytest

import ssd_tf
from ssd_tf.weights.mlperf import load_mlperf_ssd_r34
from ssd_tf.weights.ssd_pytorch import load_ssd_pytorch
from ssd_tf.weights.torchvision import load_torchvision_resnet34, load_torchvision_ssd300_vgg16

VGG_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
             "conv4_3", "conv5_1", "conv5_2", "conv5_3", "conv6", "conv7"]
# torchvision ssd300_vgg16: features.{0,2,5,...,21} = conv1_1..conv4_3; extra.0 = [pool4, conv5_1, relu, conv5_2,
# relu, conv5_3, relu, Sequential(pool5, conv6, relu, conv7, relu)]; extra.1..4 = [1x1, relu, 3x3, relu].
TORCHVISION_VGG = {
    **{f"backbone.features.{i}": f"vgg_{c}" for i, c in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21), VGG_CONVS[:10])},
    "backbone.extra.0.1": "vgg_conv5_1", "backbone.extra.0.3": "vgg_conv5_2", "backbone.extra.0.5": "vgg_conv5_3",
    "backbone.extra.0.7.1": "vgg_conv6", "backbone.extra.0.7.3": "vgg_conv7",
    **{f"backbone.extra.{i + 1}.0": f"extra{i}_conv1x1" for i in range(4)},
    **{f"backbone.extra.{i + 1}.2": f"extra{i}_conv3x3" for i in range(4)},
}
# ssd.pytorch: vgg is one flat list (conv, relu, ... pools at 4, 9, 16, 23, 30), extras a flat list of convs.
SSD_PYTORCH_VGG = {
    **{f"vgg.{i}": f"vgg_{c}" for i, c in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33), VGG_CONVS)},
    **{f"extras.{2 * i}": f"extra{i}_conv1x1" for i in range(4)},
    **{f"extras.{2 * i + 1}": f"extra{i}_conv3x3" for i in range(4)},
}
# torchvision resnet34 BasicBlock names; ours are layerX_Y_convZ.
RESNET34_BLOCKS = {1: 3, 2: 4, 3: 6}


def _torch_conv(rng, layer):
    kernel = layer.kernel.numpy()  # HWIO
    return {"weight": rng.normal(size=kernel.transpose(3, 2, 0, 1).shape).astype("float32"),
            **({"bias": rng.normal(size=layer.bias.shape).astype("float32")} if layer.bias is not None else {})}


def _check_convs(model, state, table):
    for key, layer_name in table.items():
        layer = model.get_layer(layer_name)
        np.testing.assert_array_equal(layer.kernel.numpy(), state[f"{key}.weight"].transpose(2, 3, 1, 0),
                                      err_msg=f"{key}.weight -> {layer_name}")
        if f"{key}.bias" in state:
            np.testing.assert_array_equal(layer.bias.numpy(), state[f"{key}.bias"], err_msg=f"{key}.bias")


@pytest.fixture(scope="module")
def vgg():
    return ssd_tf.build_model("ssd_vgg16", num_classes=5, width_multiplier=0.25)


def _vgg_state(model, table, rng, head_prefix):
    state = {}
    for key, layer_name in table.items():
        state.update({f"{key}.{k}": v for k, v in _torch_conv(rng, model.get_layer(layer_name)).items()})
    for i in range(6):
        for kind, ours in (("loc", "loc"), ("conf", "conf")):
            layer = model.get_layer(f"{ours}_{i}")
            prefix = head_prefix(kind, i)
            state.update({f"{prefix}.{k}": v for k, v in _torch_conv(rng, layer).items()})
    return state


def test_torchvision_ssd300_vgg16_keys_land_in_the_right_layers(vgg):
    rng = np.random.default_rng(0)
    head = lambda kind, i: (f"head.regression_head.module_list.{i}" if kind == "loc"  # noqa: E731
                            else f"head.classification_head.module_list.{i}")
    state = _vgg_state(vgg, TORCHVISION_VGG, rng, head)
    state["backbone.scale_weight"] = rng.normal(size=vgg.get_layer("l2norm").scale.shape).astype("float32")
    load_torchvision_ssd300_vgg16(vgg, state)
    _check_convs(vgg, state, TORCHVISION_VGG)
    np.testing.assert_array_equal(vgg.get_layer("l2norm").scale.numpy(), state["backbone.scale_weight"])
    np.testing.assert_array_equal(vgg.get_layer("conf_3").kernel.numpy(),
                                  state["head.classification_head.module_list.3.weight"].transpose(2, 3, 1, 0))


def test_ssd_pytorch_keys_land_in_the_right_layers(vgg):
    rng = np.random.default_rng(1)
    state = _vgg_state(vgg, SSD_PYTORCH_VGG, rng, lambda kind, i: f"{kind}.{i}")
    state["L2Norm.weight"] = rng.normal(size=vgg.get_layer("l2norm").scale.shape).astype("float32")
    load_ssd_pytorch(vgg, state)
    _check_convs(vgg, state, SSD_PYTORCH_VGG)
    np.testing.assert_array_equal(vgg.get_layer("l2norm").scale.numpy(), state["L2Norm.weight"])


def _resnet34_state(model, rng, prefix_of):
    """torchvision resnet34 tensors (conv + BN with running stats) under the names prefix_of(torchvision name)."""
    state, table = {}, {}

    def conv_bn(tv_conv, tv_bn, conv, bn):
        state[f"{prefix_of(tv_conv)}.weight"] = _torch_conv(rng, model.get_layer(conv))["weight"]
        layer = model.get_layer(bn)
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix_of(tv_bn)}.{key}"] = rng.uniform(0.5, 1.5, size=layer.gamma.shape).astype("float32")
        table[conv], table[bn] = prefix_of(tv_conv), prefix_of(tv_bn)

    conv_bn("conv1", "bn1", "conv1", "bn1")
    for stage, blocks in RESNET34_BLOCKS.items():
        for b in range(blocks):
            for c in (1, 2):
                conv_bn(f"layer{stage}.{b}.conv{c}", f"layer{stage}.{b}.bn{c}", f"layer{stage}_{b}_conv{c}",
                        f"layer{stage}_{b}_bn{c}")
            if b == 0 and stage > 1:
                conv_bn(f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1",
                        f"layer{stage}_0_downsample_conv", f"layer{stage}_0_downsample_bn")
    return state, table


def _check_resnet(model, state, table):
    for ours, theirs in table.items():
        layer = model.get_layer(ours)
        if hasattr(layer, "kernel"):
            np.testing.assert_array_equal(layer.kernel.numpy(), state[f"{theirs}.weight"].transpose(2, 3, 1, 0),
                                          err_msg=ours)
        else:
            for ours_w, key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                ("moving_variance", "running_var")):
                np.testing.assert_array_equal(getattr(layer, ours_w).numpy(), state[f"{theirs}.{key}"],
                                              err_msg=f"{ours}.{ours_w}")


def test_torchvision_resnet34_keys_land_in_the_right_layers():
    model = ssd_tf.build_model("ssd_resnet34", num_classes=3, width_multiplier=0.25)
    state, table = _resnet34_state(model, np.random.default_rng(2), lambda name: name)
    load_torchvision_resnet34(model, state)
    _check_resnet(model, state, table)


def test_mlperf_reference_keys_land_in_the_right_layers():
    """MLPerf REF: model.layer1 = [conv1, bn1, relu, maxpool, layer1, layer2], model.layer2 = [layer3] (§1.13)."""
    model = ssd_tf.build_model("ssd_resnet34", num_classes=3, width_multiplier=0.25)

    def mlperf_name(tv):
        head, _, rest = tv.partition(".")
        if tv in ("conv1", "bn1"):
            return {"conv1": "model.layer1.0", "bn1": "model.layer1.1"}[tv]
        return {"layer1": "model.layer1.4", "layer2": "model.layer1.5", "layer3": "model.layer2.0"}[head] + "." + rest

    rng = np.random.default_rng(3)
    state, table = _resnet34_state(model, rng, mlperf_name)
    for i in range(5):  # additional_blocks.i = [1x1, relu, 3x3, relu]
        for j, kind in ((0, "conv1x1"), (2, "conv3x3")):
            state.update({f"additional_blocks.{i}.{j}.{k}": v
                          for k, v in _torch_conv(rng, model.get_layer(f"extra{i}_{kind}")).items()})
    for i in range(6):
        for kind in ("loc", "conf"):
            state.update({f"{kind}.{i}.{k}": v for k, v in _torch_conv(rng, model.get_layer(f"{kind}_{i}")).items()})
    load_mlperf_ssd_r34(model, state)
    _check_resnet(model, state, table)
    np.testing.assert_array_equal(model.get_layer("extra3_conv3x3").kernel.numpy(),
                                  state["additional_blocks.3.2.weight"].transpose(2, 3, 1, 0))
