"""Importing torchvision Faster R-CNN / ResNet state dicts (no torch needed: the state dicts are numpy dicts).

The expected torchvision keys and shapes are written out here from the module tree of torchvision's
``FasterRCNN(resnet_fpn_backbone(...))`` (REFERENCE_SPECS §3.10), not taken from the importer's mapping. The
models are 1/8 wide (the importer reads every shape from the model); the real torchvision state dicts are
imported in the parity tests.
"""
import numpy as np
import pytest

import keras
from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig, ResNetBackbone
from ssd_tf.models.faster_rcnn import build_faster_rcnn
from ssd_tf.weights import convert
from ssd_tf.weights.common import WeightImportError
from ssd_tf.weights.torchvision_frcnn import fc6_kernel, load_torchvision_fasterrcnn, load_torchvision_resnet

WIDTH = 0.125
NUM_CLASSES = 5
BN = ("weight", "bias", "running_mean", "running_var")


def c(channels):
    return max(8, int(round(channels * WIDTH)))


def torchvision_resnet_shapes(blocks, prefix=""):
    """(key, OIHW shape) of a torchvision ResNet body with Bottleneck blocks (stride irrelevant to shapes)."""
    out = [(f"{prefix}conv1.weight", (c(64), 3, 7, 7))] + [(f"{prefix}bn1.{t}", (c(64),)) for t in BN]
    in_ch = c(64)
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        width = c(planes)
        for b in range(n):
            p = f"{prefix}layer{stage}.{b}"
            out += [(f"{p}.conv1.weight", (width, in_ch, 1, 1))] + [(f"{p}.bn1.{t}", (width,)) for t in BN]
            out += [(f"{p}.conv2.weight", (width, width, 3, 3))] + [(f"{p}.bn2.{t}", (width,)) for t in BN]
            out += [(f"{p}.conv3.weight", (4 * width, width, 1, 1))] + [(f"{p}.bn3.{t}", (4 * width,)) for t in BN]
            if b == 0:
                out += [(f"{p}.downsample.0.weight", (4 * width, in_ch, 1, 1))]
                out += [(f"{p}.downsample.1.{t}", (4 * width,)) for t in BN]
            in_ch = 4 * width
    return out


def torchvision_fasterrcnn_shapes(blocks=(3, 4, 6, 3), old_names=False):
    out = torchvision_resnet_shapes(blocks, "backbone.body.")
    fpn, sub = c(256), "" if old_names else ".0"
    for i, in_ch in enumerate(c(w) * 4 for w in (64, 128, 256, 512)):
        out += [(f"backbone.fpn.inner_blocks.{i}{sub}.weight", (fpn, in_ch, 1, 1)),
                (f"backbone.fpn.inner_blocks.{i}{sub}.bias", (fpn,)),
                (f"backbone.fpn.layer_blocks.{i}{sub}.weight", (fpn, fpn, 3, 3)),
                (f"backbone.fpn.layer_blocks.{i}{sub}.bias", (fpn,))]
    conv = "rpn.head.conv" if old_names else "rpn.head.conv.0.0"
    out += [(f"{conv}.weight", (fpn, fpn, 3, 3)), (f"{conv}.bias", (fpn,)),
            ("rpn.head.cls_logits.weight", (3, fpn, 1, 1)), ("rpn.head.cls_logits.bias", (3,)),
            ("rpn.head.bbox_pred.weight", (12, fpn, 1, 1)), ("rpn.head.bbox_pred.bias", (12,))]
    rep = c(1024)
    out += [("roi_heads.box_head.fc6.weight", (rep, fpn * 7 * 7)), ("roi_heads.box_head.fc6.bias", (rep,)),
            ("roi_heads.box_head.fc7.weight", (rep, rep)), ("roi_heads.box_head.fc7.bias", (rep,)),
            ("roi_heads.box_predictor.cls_score.weight", (NUM_CLASSES, rep)),
            ("roi_heads.box_predictor.cls_score.bias", (NUM_CLASSES,)),
            ("roi_heads.box_predictor.bbox_pred.weight", (4 * NUM_CLASSES, rep)),
            ("roi_heads.box_predictor.bbox_pred.bias", (4 * NUM_CLASSES,))]
    return out


def random_state(shapes, seed=0):
    rng = np.random.default_rng(seed)
    state = {key: rng.normal(size=shape).astype("float32") for key, shape in shapes}
    for key in state:
        if key.endswith("running_var"):
            state[key] = np.abs(state[key]) + 0.5
    return state


def _model(depth=50):
    keras.utils.set_random_seed(0)
    return build_faster_rcnn(FasterRCNNModelConfig(num_classes=NUM_CLASSES, width_multiplier=WIDTH,
                                                   backbone=ResNetBackbone(depth=depth)))


@pytest.fixture(scope="module")
def model():
    return _model()


def _weights(model, name):
    layer = next(l for l in model._flatten_layers() if l.name == name)
    return [w.numpy() for w in layer.weights]


def test_full_state_dict_lands_where_torchvision_keeps_it(model):
    shapes = torchvision_fasterrcnn_shapes()
    # stem 1 + 4, 16 blocks x (3 convs + 3 x 4 BN), 4 projections x (1 + 4), FPN 16, RPN 6, box head 8
    assert len(shapes) == 5 + 16 * 15 + 4 * 5 + 16 + 6 + 8 == 295
    state = random_state(shapes)
    report = load_torchvision_fasterrcnn(model, state)
    assert report["renamed_old_keys"] == 0 and report["skipped_layers"] == [] and report["ignored_keys"] == []
    assert report["assigned_tensors"] == len(state)

    np.testing.assert_array_equal(_weights(model, "conv1")[0],
                                  state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))
    bn = _weights(model, "layer3_5_bn2")
    for ours, key in zip(bn, BN):
        np.testing.assert_array_equal(ours, state[f"backbone.body.layer3.5.bn2.{key}"])
    np.testing.assert_array_equal(_weights(model, "layer4_0_downsample_conv")[0],
                                  state["backbone.body.layer4.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(_weights(model, "fpn_inner2")[1], state["backbone.fpn.inner_blocks.2.0.bias"])
    # RPN deltas: anchor a's (dx, dy, dw, dh) at torchvision channels 4a..4a+3 -> our (dy, dx, dh, dw).
    kernel, bias = _weights(model, "rpn_bbox_pred")
    theirs_w, theirs_b = state["rpn.head.bbox_pred.weight"], state["rpn.head.bbox_pred.bias"]
    for a in range(3):
        for ours_k, their_k in enumerate((1, 0, 3, 2)):
            np.testing.assert_array_equal(bias[4 * a + ours_k], theirs_b[4 * a + their_k])
            np.testing.assert_array_equal(kernel[0, 0, :, 4 * a + ours_k], theirs_w[4 * a + their_k, :, 0, 0])
    # Box predictor: class j's (dx, dy, dw, dh) at columns 4j..4j+3 -> ours (dy, dx, dh, dw).
    kernel, bias = _weights(model, "bbox_pred")
    theirs_w = state["roi_heads.box_predictor.bbox_pred.weight"]
    theirs_b = state["roi_heads.box_predictor.bbox_pred.bias"]
    for j in range(NUM_CLASSES):
        for ours_k, their_k in enumerate((1, 0, 3, 2)):
            np.testing.assert_array_equal(bias[4 * j + ours_k], theirs_b[4 * j + their_k])
            np.testing.assert_array_equal(kernel[:, 4 * j + ours_k], theirs_w[4 * j + their_k])
    np.testing.assert_array_equal(_weights(model, "cls_score")[0], state["roi_heads.box_predictor.cls_score.weight"].T)


def test_old_and_new_key_names_give_the_same_weights():
    new, old = _model(), _model()
    state_new = random_state(torchvision_fasterrcnn_shapes(), seed=1)
    state_old = dict(zip([k for k, _ in torchvision_fasterrcnn_shapes(old_names=True)], state_new.values()))
    assert "rpn.head.conv.weight" in state_old and "backbone.fpn.layer_blocks.3.bias" in state_old
    load_torchvision_fasterrcnn(new, state_new)
    assert load_torchvision_fasterrcnn(old, state_old)["renamed_old_keys"] == 18
    for a, b in zip(new.get_weights(), old.get_weights()):
        np.testing.assert_array_equal(a, b)
    both = dict(state_new, **{"rpn.head.conv.weight": state_new["rpn.head.conv.0.0.weight"]})
    with pytest.raises(WeightImportError, match=r"rpn\.head\.conv\.0\.0\.weight.*rpn\.head\.conv\.weight"):
        load_torchvision_fasterrcnn(new, both)


def test_strict_errors_name_the_tensor_and_both_shapes(model):
    state = random_state(torchvision_fasterrcnn_shapes(old_names=True), seed=2)
    before = model.get_weights()
    missing = {k: v for k, v in state.items() if k != "backbone.body.layer2.1.bn3.running_mean"}
    with pytest.raises(WeightImportError, match=r"missing tensor 'backbone\.body\.layer2\.1\.bn3\.running_mean'"):
        load_torchvision_fasterrcnn(model, missing)
    extra = dict(state, **{"roi_heads.mask_head.weight": np.zeros((3, 3), "float32")})
    with pytest.raises(WeightImportError, match=r"unexpected tensor 'roi_heads\.mask_head\.weight' shape \(3, 3\)"):
        load_torchvision_fasterrcnn(model, extra)
    bad = dict(state, **{"backbone.fpn.inner_blocks.1.weight": np.zeros((c(256), 7, 1, 1), "float32")})
    with pytest.raises(WeightImportError, match=r"'backbone\.fpn\.inner_blocks\.1\.weight' \(32, 7, 1, 1\).*"
                                                r"fpn_inner1.*\(1, 1, 64, 32\)"):
        load_torchvision_fasterrcnn(model, bad)
    classes = dict(state, **{"roi_heads.box_predictor.cls_score.weight": np.zeros((91, c(1024)), "float32")})
    with pytest.raises(WeightImportError, match=r"cls_score\.weight' \(91, 128\)"):
        load_torchvision_fasterrcnn(model, classes)
    # Nothing was assigned by the failed imports.
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_r101_layout_and_depth_mismatch():
    r101 = _model(101)
    load_torchvision_fasterrcnn(r101, random_state(torchvision_fasterrcnn_shapes((3, 4, 23, 3))))
    with pytest.raises(WeightImportError, match=r"unexpected tensor 'backbone\.body\.layer3\.6\.conv1\.weight'"):
        load_torchvision_fasterrcnn(_model(50), random_state(torchvision_fasterrcnn_shapes((3, 4, 23, 3))))


def test_imagenet_resnet_is_a_backbone_only_source(model):
    shapes = torchvision_resnet_shapes((3, 4, 6, 3))
    state = random_state(shapes + [("fc.weight", (1000, c(2048))), ("fc.bias", (1000,))])
    state["bn1.num_batches_tracked"] = np.array(7)
    heads_before = _weights(model, "fc6") + _weights(model, "rpn_conv") + _weights(model, "fpn_layer0")
    report = load_torchvision_resnet(model, state)
    assert report["ignored_keys"] == ["bn1.num_batches_tracked", "fc.bias", "fc.weight"]
    assert set(report["skipped_layers"]) == {f"fpn_{k}{i}" for k in ("inner", "layer") for i in range(4)} | {
        "rpn_conv", "rpn_cls_logits", "rpn_bbox_pred", "fc6", "fc7", "cls_score", "bbox_pred"}
    np.testing.assert_array_equal(_weights(model, "layer1_2_conv3")[0],
                                  state["layer1.2.conv3.weight"].transpose(2, 3, 1, 0))
    heads_after = _weights(model, "fc6") + _weights(model, "rpn_conv") + _weights(model, "fpn_layer0")
    for a, b in zip(heads_before, heads_after):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightImportError, match=r"missing tensor 'layer4\.2\.bn3\.weight'"):
        load_torchvision_resnet(model, {k: v for k, v in state.items() if k != "layer4.2.bn3.weight"})


def test_fc6_reorder_matches_pytorch_flattening_on_a_non_symmetric_case():
    rng = np.random.default_rng(3)
    channels, pool, out = 5, 7, 6
    weight = rng.normal(size=(out, channels * pool * pool))  # PyTorch Linear on a C x 7 x 7 flatten
    pooled_nchw = rng.normal(size=(2, channels, pool, pool))
    pooled_nchw[:, :, 0, :] += 10.0  # rows and columns differ (a y/x swap would show)
    expected = pooled_nchw.reshape(2, -1) @ weight.T
    kernel = fc6_kernel(pool, channels)(weight)
    ours = pooled_nchw.transpose(0, 2, 3, 1).reshape(2, -1) @ kernel  # NHWC flatten
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    # A plain transpose (the wrong reorder) does not give it.
    assert not np.allclose(pooled_nchw.transpose(0, 2, 3, 1).reshape(2, -1) @ weight.T, expected)
    with pytest.raises(WeightImportError, match=r"fc6 weight must be \[out, 5\*7\*7\], got \(6, 10\)"):
        fc6_kernel(pool, channels)(np.zeros((6, 10)))


def test_convert_cli_checks_the_model_family(tmp_path, capsys):
    pth = tmp_path / "x.pth"
    assert convert.main(["--source", "torchvision_resnet101", "--input", str(pth), "--output",
                         str(tmp_path / "y.weights.h5"), "--model", "faster_rcnn_r50_fpn"]) == 2
    assert "fits Faster R-CNN with torchvision's bottleneck (model.backbone.stride_in_1x1=false) at depth 101 (e.g. " \
           "--model faster_rcnn_r50_fpn --params_override model.backbone.depth=101, the default)" \
           in capsys.readouterr().err
    # faster_rcnn_r101_fpn follows maskrcnn-benchmark (MSRA bottleneck): not a target of torchvision's weights
    assert convert.main(["--source", "torchvision_resnet101", "--input", str(pth), "--output",
                         str(tmp_path / "y.weights.h5"), "--model", "faster_rcnn_r101_fpn"]) == 2
    assert "not --model faster_rcnn_r101_fpn" in capsys.readouterr().err
    assert convert.main(["--source", "torchvision_fasterrcnn_resnet50_fpn", "--input", str(pth), "--output",
                         str(tmp_path / "y.weights.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
