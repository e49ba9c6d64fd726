"""Importing maskrcnn-benchmark checkpoints and Detectron ImageNet backbones (python -m ssd_tf.weights.convert
--source maskrcnn_benchmark | detectron_resnet50 | detectron_resnet101).

The reference layouts are written out here, not taken from the importer: maskrcnn-benchmark's state-dict names from
its module tree (REFERENCE_SPECS §3.10) with PyTorch's tensor layouts (OIHW convs, [out, in] linears, fc6 over a
C x 7 x 7 flattening, box deltas (dx, dy, dw, dh)), its cell-anchor buffers from §3.2's table, and Detectron's Caffe2
blob names (res2 = our layer1, branch2a/b/c, branch1, _bn_s/_bn_b affine channels). Models are tiny (width 1/8,
depth 50, 4 classes); the expected outputs come from our own model, exported to the reference layout and imported
back, so the round trip must be exact.
"""
import pickle

import numpy as np
import pytest
import tensorflow as tf

import keras
import ssd_tf
from ssd_tf.models.backbones.resnet_fpn import FrozenBatchNorm
from ssd_tf.weights import convert
from ssd_tf.weights.common import WeightImportError
from ssd_tf.weights.maskrcnn_benchmark import load_detectron_resnet, load_maskrcnn_benchmark, load_numpy_pickle

NUM_CLASSES = 4
TINY = {"width_multiplier": 0.125}
OVERRIDES = ["--params_override", "model.backbone.depth=50,model.width_multiplier=0.125"]
BLOCKS = (3, 4, 6, 3)  # ResNet-50
BN = ("weight", "bias", "running_mean", "running_var")
SWAP = [1, 0, 3, 2]  # (dy, dx, dh, dw) <-> (dx, dy, dw, dh)
# REFERENCE_SPECS §3.2: maskrcnn-benchmark's cell anchors (xyxy, ratios 0.5, 1, 2) of P2..P6
CELL_ANCHORS = [
    [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]],
    [[-40, -20, 47, 27], [-28, -28, 35, 35], [-20, -44, 27, 51]],
    [[-84, -40, 99, 55], [-56, -56, 71, 71], [-36, -80, 51, 95]],
    [[-164, -72, 195, 103], [-112, -112, 143, 143], [-76, -168, 107, 199]],
    [[-332, -152, 395, 215], [-224, -224, 287, 287], [-148, -328, 211, 391]],
]


def _model(seed, **options):
    keras.utils.set_random_seed(seed)
    from ssd_tf.model_configs.faster_rcnn import ResNetBackbone

    backbone = ResNetBackbone(depth=50, stride_in_1x1=True, frozen_bn_epsilon=options.pop("epsilon", 0.0))
    return ssd_tf.build_model("faster_rcnn_r101_fpn", num_classes=NUM_CLASSES, backbone=backbone, **TINY, **options)


def _layer(model, name):
    return next(layer for layer in model._flatten_layers() if layer.name == name)


def _randomise_frozen_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, FrozenBatchNorm):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.0, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 1.5, n)])


# --- our weights in maskrcnn-benchmark's layout (written out from its module tree) -----------------------------
def _oihw(kernel):
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _swap_groups(values, axis):
    n = values.shape[axis] // 4
    index = np.array([4 * g + SWAP[k] for g in range(n) for k in range(4)])
    return np.take(values, index, axis=axis)


def maskrcnn_benchmark_state(model):
    """Our model's weights as maskrcnn-benchmark's GeneralizedRCNN state dict (numpy)."""
    def w(name):
        return [v.numpy() for v in _layer(model, name).weights]

    state = {"backbone.body.stem.conv1.weight": _oihw(w("conv1")[0])}
    state.update({f"backbone.body.stem.bn1.{k}": v for k, v in zip(BN, w("bn1"))})
    for stage, blocks in enumerate(BLOCKS, start=1):
        for b in range(blocks):
            theirs = f"backbone.body.layer{stage}.{b}"
            for i in (1, 2, 3):
                state[f"{theirs}.conv{i}.weight"] = _oihw(w(f"layer{stage}_{b}_conv{i}")[0])
                state.update({f"{theirs}.bn{i}.{k}": v for k, v in zip(BN, w(f"layer{stage}_{b}_bn{i}"))})
            if b == 0:
                state[f"{theirs}.downsample.0.weight"] = _oihw(w(f"layer{stage}_0_downsample_conv")[0])
                state.update({f"{theirs}.downsample.1.{k}": v for k, v in zip(BN, w(f"layer{stage}_0_downsample_bn"))})
    for i in range(1, 5):  # fpn_inner1 / fpn_layer1 read C2 (our index 0)
        for kind in ("inner", "layer"):
            kernel, bias = w(f"fpn_{kind}{i - 1}")
            state[f"backbone.fpn.fpn_{kind}{i}.weight"], state[f"backbone.fpn.fpn_{kind}{i}.bias"] = _oihw(kernel), bias
    kernel, bias = w("rpn_conv")
    state["rpn.head.conv.weight"], state["rpn.head.conv.bias"] = _oihw(kernel), bias
    kernel, bias = w("rpn_cls_logits")
    state["rpn.head.cls_logits.weight"], state["rpn.head.cls_logits.bias"] = _oihw(kernel), bias
    kernel, bias = w("rpn_bbox_pred")
    state["rpn.head.bbox_pred.weight"] = _swap_groups(_oihw(kernel), 0)
    state["rpn.head.bbox_pred.bias"] = _swap_groups(bias, 0)
    for level, anchors in enumerate(CELL_ANCHORS):
        state[f"rpn.anchor_generator.cell_anchors.{level}"] = np.array(anchors, np.float32)
    head = model.box_head
    kernel, bias = w("fc6")  # ours [7*7*C, out] over an NHWC flattening; theirs [out, C*7*7]
    p, c = head.pooled_size, head.channels
    state["roi_heads.box.feature_extractor.fc6.weight"] = kernel.reshape(p, p, c, -1).transpose(3, 2, 0, 1).reshape(
        kernel.shape[1], -1)
    state["roi_heads.box.feature_extractor.fc6.bias"] = bias
    kernel, bias = w("fc7")
    state["roi_heads.box.feature_extractor.fc7.weight"], state["roi_heads.box.feature_extractor.fc7.bias"] = \
        kernel.T, bias
    kernel, bias = w("cls_score")
    state["roi_heads.box.predictor.cls_score.weight"], state["roi_heads.box.predictor.cls_score.bias"] = kernel.T, bias
    kernel, bias = w("bbox_pred")
    state["roi_heads.box.predictor.bbox_pred.weight"] = _swap_groups(kernel.T, 0)
    state["roi_heads.box.predictor.bbox_pred.bias"] = _swap_groups(bias, 0)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


@pytest.fixture(scope="module")
def source_model():
    model = _model(0)
    _randomise_frozen_bn(model)
    return model


def _images(seed=0):
    return np.random.default_rng(seed).normal(0, 30, (2, 64, 96, 3)).astype("float32")


def _outputs(model, images):
    features, objectness, deltas = model.dense_forward(images)
    out = {"objectness": objectness.numpy(), "deltas": deltas.numpy(),
           **{f"P{i + 2}": f.numpy() for i, f in enumerate(features)}}
    out.update({k: v.numpy() for k, v in model(images).items()})
    boxes = np.array([[[8, 10, 40, 50], [20, 40, 60, 90]], [[0, 0, 30, 95], [0, 0, 0, 0]]], "float32")
    losses = model.compute_losses(images, None, boxes, np.array([[1, 3], [2, 0]]), np.array([2, 1]), [3, 4])
    out.update({k: v.numpy() for k, v in losses.items()})
    return out


def test_round_trip_through_the_maskrcnn_benchmark_layout_is_exact(source_model):
    state = maskrcnn_benchmark_state(source_model)
    # stem 1 + 4, 16 blocks x 15, 4 projections x 5, FPN 16, RPN 6 + 5 anchor buffers, box head 8
    assert len(state) == 5 + 16 * 15 + 4 * 5 + 16 + 6 + 5 + 8
    target = _model(7)
    images = _images()
    before = _outputs(target, images)
    report = load_maskrcnn_benchmark(target, {"model": {f"module.{k}": v for k, v in state.items()},
                                              "iteration": 90000})
    assert report["checked_cell_anchors"] == 5 and report["assigned_tensors"] == len(state) - 5
    expected, got = _outputs(source_model, images), _outputs(target, images)
    worst = max(float(np.abs(expected[k] - got[k]).max()) for k in expected)
    print(f"\nmaskrcnn-benchmark layout round trip: max |diff| over {len(expected)} outputs = {worst}")
    assert worst == 0.0
    assert any(not np.array_equal(before[k], got[k]) for k in before)  # the import did change the model


def test_convert_cli_reads_a_maskrcnn_benchmark_pth(source_model, tmp_path, capsys):
    torch = pytest.importorskip("torch")  # torch alone imports fine after TF
    state = maskrcnn_benchmark_state(source_model)
    checkpoint = {"model": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}, "iteration": 90000,
                  "scheduler": {"last_epoch": 90000, "milestones": [60000, 80000], "warmup_method": "linear"}}
    pth, out = tmp_path / "e2e_faster_rcnn_R_50_FPN_1x.pth", tmp_path / "mrb.weights.h5"
    torch.save(checkpoint, pth)
    assert convert.main(["--source", "maskrcnn_benchmark", "--input", str(pth), "--output", str(out),
                         "--num_classes", str(NUM_CLASSES), *OVERRIDES]) == 0
    assert '"checked_cell_anchors": 5' in capsys.readouterr().out
    loaded = _model(9, weights=str(out))
    images = _images(1)
    expected, got = source_model(images), loaded(images)
    for key in expected:
        np.testing.assert_array_equal(expected[key].numpy(), got[key].numpy(), err_msg=key)
    # a torchvision-convention model is not a target for these weights
    assert convert.main(["--source", "maskrcnn_benchmark", "--input", str(pth), "--output", str(out),
                         "--model", "faster_rcnn_r50_fpn"]) == 2
    assert "fits models ('faster_rcnn_r101_fpn',) (Faster R-CNN with the MSRA bottleneck" in capsys.readouterr().err


def test_strict_errors_name_the_tensor_and_both_shapes(source_model):
    state = maskrcnn_benchmark_state(source_model)
    target = _model(3)
    before = target.get_weights()
    missing = {k: v for k, v in state.items() if k != "backbone.body.layer3.4.bn2.running_var"}
    with pytest.raises(WeightImportError, match=r"missing tensor 'backbone\.body\.layer3\.4\.bn2\.running_var'"):
        load_maskrcnn_benchmark(target, missing)
    extra = dict(state, **{"roi_heads.mask.feature_extractor.mask_fcn1.weight": np.zeros((2, 2), "float32")})
    with pytest.raises(WeightImportError, match=r"unexpected tensor 'roi_heads\.mask\.feature_extractor\.mask_fcn1\."
                                                r"weight' shape \(2, 2\)"):
        load_maskrcnn_benchmark(target, extra)
    bad = dict(state, **{"backbone.fpn.fpn_inner2.weight": np.zeros((32, 7, 1, 1), "float32")})
    with pytest.raises(WeightImportError, match=r"'backbone\.fpn\.fpn_inner2\.weight' \(32, 7, 1, 1\).*fpn_inner1.*"
                                                r"\(1, 1, 64, 32\)"):
        load_maskrcnn_benchmark(target, bad)
    classes = dict(state, **{"roi_heads.box.predictor.cls_score.weight": np.zeros((81, 128), "float32")})
    with pytest.raises(WeightImportError, match=r"cls_score\.weight' \(81, 128\)"):
        load_maskrcnn_benchmark(target, classes)
    # a checkpoint made with other anchors (torchvision's P2 cell anchors here)
    other = dict(state, **{"rpn.anchor_generator.cell_anchors.0": np.array(
        [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]], np.float32)})
    with pytest.raises(WeightImportError, match=r"rpn\.anchor_generator\.cell_anchors\.0 .* differs from the model's "
                                                r"cell anchors"):
        load_maskrcnn_benchmark(target, other)
    both = dict(state, **{"module.rpn.head.conv.bias": state["rpn.head.conv.bias"]})
    with pytest.raises(WeightImportError, match=r"both 'rpn\.head\.conv\.bias' and 'module\.rpn\.head\.conv\.bias'"):
        load_maskrcnn_benchmark(target, both)
    for a, b in zip(before, target.get_weights()):  # nothing was assigned by the failed imports
        np.testing.assert_array_equal(a, b)


# --- Detectron ImageNet backbones ------------------------------------------------------------------------------
def detectron_blobs(model, seed=0):
    """Random Detectron R-50 blobs shaped for ``model``'s body, and the same weights as {our layer: weights}."""
    rng = np.random.default_rng(seed)
    blobs, ours = {}, {}

    def conv(caffe2, layer):
        kernel = _layer(model, layer).kernel.numpy()
        w = rng.normal(0, np.sqrt(2.0 / np.prod(kernel.shape[:3])), kernel.shape).astype("float32")
        blobs[f"{caffe2}_w"] = _oihw(w)
        ours[layer] = [w]

    def affine(caffe2, layer):
        n = _layer(model, layer).gamma.shape[0]
        s, b = rng.uniform(0.5, 1.0, n).astype("float32"), rng.normal(0, 0.1, n).astype("float32")
        blobs[f"{caffe2}_s"], blobs[f"{caffe2}_b"] = s, b
        ours[layer] = [s, b, np.zeros(n, "float32"), np.ones(n, "float32")]  # y = x * s + b

    conv("conv1", "conv1")
    affine("res_conv1_bn", "bn1")
    for stage, blocks in enumerate(BLOCKS, start=1):
        for b in range(blocks):
            for i, branch in zip((1, 2, 3), "abc"):
                conv(f"res{stage + 1}_{b}_branch2{branch}", f"layer{stage}_{b}_conv{i}")
                affine(f"res{stage + 1}_{b}_branch2{branch}_bn", f"layer{stage}_{b}_bn{i}")
            if b == 0:
                conv(f"res{stage + 1}_0_branch1", f"layer{stage}_0_downsample_conv")
                affine(f"res{stage + 1}_0_branch1_bn", f"layer{stage}_0_downsample_bn")
    blobs["fc1000_w"] = rng.normal(size=(1000, 256)).astype("float32")
    blobs["fc1000_b"] = np.zeros(1000, "float32")
    blobs["res2_0_branch2a_w_momentum"] = np.zeros_like(blobs["res2_0_branch2a_w"])
    return blobs, ours


def test_detectron_pickle_gives_the_backbone_features_of_its_affine_weights(tmp_path, capsys):
    reference = _model(0)
    blobs, ours = detectron_blobs(reference)
    for name, weights in ours.items():
        _layer(reference, name).set_weights(weights)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    out = tmp_path / "r50_backbone.weights.h5"
    assert convert.main(["--source", "detectron_resnet50", "--input", str(path), "--output", str(out),
                         "--num_classes", str(NUM_CLASSES), "--params_override", "model.width_multiplier=0.125"]) == 0
    captured = capsys.readouterr()
    assert "backbone-only source" in captured.err and '"ignored_keys"' in captured.out
    imported = _model(5, weights=str(out))
    images = _images(2)
    expected = _body(reference)(images)
    got = _body(imported)(images)
    worst = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(expected, got))
    print(f"\nDetectron pickle -> ResNet features C2..C5: max |diff| = {worst} (max |C5| "
          f"{float(np.abs(expected[-1].numpy()).max()):.3g})")
    assert worst == 0.0
    # the same affine with a non-zero epsilon (variance 1 - epsilon keeps gamma / sqrt(var + eps) = s)
    eps_model = _model(6, epsilon=1e-3)
    report = load_detectron_resnet(eps_model, str(path))
    assert report["ignored_keys"] == ["fc1000_b", "fc1000_w", "res2_0_branch2a_w_momentum"]
    for a, b in zip(expected, _body(eps_model)(images)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-4 * float(np.abs(a.numpy()).max()))
    # the FPN and the heads are not in the file: they keep their initialisation
    assert set(report["skipped_layers"]) >= {"fpn_inner0", "fpn_layer3", "rpn_conv", "fc6", "bbox_pred"}
    # protocols 4 and 5 (numpy's newer array pickling) and a bare dict without "blobs" read the same
    for protocol in (4, 5):
        with open(path, "wb") as f:
            pickle.dump(blobs, f, protocol=protocol)
        loaded = load_numpy_pickle(path)
        assert all(np.array_equal(loaded[k], v) for k, v in blobs.items())
    # strict: a missing blob is named
    partial = {k: v for k, v in blobs.items() if k != "res4_5_branch2c_bn_b"}
    with pytest.raises(WeightImportError, match=r"missing tensor 'res4_5_branch2c_bn_b'"):
        load_detectron_resnet(_model(1), partial)
    # a Detectron R-101 does not fit an R-50 model
    r101 = dict(blobs, **{"res4_6_branch2a_w": blobs["res4_5_branch2a_w"]})
    with pytest.raises(WeightImportError, match=r"unexpected tensor 'res4_6_branch2a_w'"):
        load_detectron_resnet(_model(1), r101)


def _body(model):
    """Our ResNet body's outputs C2..C5 (the last block of each stage)."""
    outputs = [model.backbone.get_layer(f"layer{s}_{n - 1}_relu3").output for s, n in enumerate(BLOCKS, start=1)]
    return keras.Model(model.backbone.input, outputs)


class _CreatesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


class _SavesWithNumpy:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return np.save, (self.path, np.zeros(1))


@pytest.mark.parametrize("payload", [_CreatesAFile, _RunsAShellCommand, _SavesWithNumpy])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys, payload):
    marker = tmp_path / "created_by_the_pickle"
    blobs = {"conv1_w": np.zeros((8, 3, 7, 7), "float32"), "res_conv1_bn_s": payload(marker)}
    path = tmp_path / "R-50.pkl"
    for obj in ({"blobs": blobs}, payload(marker)):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        with pytest.raises(WeightImportError, match=r"refused to load .*: a weights pickle may only hold numpy "
                                                    r"arrays, so this file was not read \(nothing in it was run\)"):
            load_numpy_pickle(path)
        assert not marker.exists() and not (tmp_path / "created_by_the_pickle.npy").exists()
    code = convert.main(["--source", "detectron_resnet50", "--input", str(path), "--output",
                         str(tmp_path / "x.weights.h5"), *OVERRIDES])
    assert code == 2 and "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x.weights.h5").exists()
    # bytes in an old-protocol pickle go through _codecs.encode, allowed for latin-1 text only
    with open(path, "wb") as f:
        f.write(b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04.")
    with pytest.raises(WeightImportError, match=r"refused _codecs\.encode\(str, 'rot13'"):
        load_numpy_pickle(path)
