"""Parity of the Faster R-CNN models with torchvision ``FasterRCNN`` (full width, seeded random weights).

The torchvision side runs in a subprocess (torch_frcnn_reference.py: R-50 or R-101 ``resnet_fpn_backbone``,
FrozenBatchNorm2d with random affine terms and perturbed calibrated statistics, epsilon 0, transform the identity
on the input). Its state dict goes through the converter CLI (new key names, or the old ones for one case), and
both sides get the same normalised batch of 2 images. Checked, per case:

* RPN objectness and deltas on every level: max |diff| <= 1e-4 * max(1, max |output|) (float32), plus the float64
  figure (mapping exact up to rounding);
* box head (RoIAlign + TwoMLPHead + predictor) on torchvision's own proposals: logits and deltas, same bound;
* proposals: >= 99 % of torchvision's top-1000 found among ours at IoU >= 0.999 (full and padded batch);
* detections: >= 98 % matched both ways (same label, IoU >= 0.999, |score diff| <= 1e-4) (full and padded batch);
* training losses with torchvision's sampled anchors and RoIs injected: all four within 1e-5 relative.

Every figure is printed (run with ``-s`` to see them).
"""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from ssd_parity_helpers import XY_TO_YX, torch_available

if not torch_available():
    pytest.skip("torch + torchvision are needed for the parity tests", allow_module_level=True)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from ssd_tf.weights import convert  # noqa: E402
from ssd_tf import build_model  # noqa: E402
from ssd_tf.model_configs.faster_rcnn import ResNetBackbone  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
HELPER = pathlib.Path(__file__).with_name("torch_frcnn_reference.py")
# (depth, height, width, key names of the converted file)
CASES = [(50, 128, 192, "new"), (50, 160, 128, "old"), (101, 128, 192, "new")]
# R-101's 33 blocks accumulate more float32 rounding: torchvision's own float32 RPN logits differ from its float64
# ones by up to ~9e-4 here, above 1e-4 * max|output|. Its float32 bound is therefore max(that bound, 2 x
# torchvision's own float32-vs-float64 difference), and the float64 comparison (<= 1e-9) shows that the rest is
# rounding alone. R-50 meets the plain bound.
ROUNDING_LIMITED = {101}
LOSS_NAMES = {"loss_objectness": "rpn_objectness_loss", "loss_rpn_box_reg": "rpn_box_loss",
              "loss_classifier": "roi_classification_loss", "loss_box_reg": "roi_box_loss"}


def _build(depth, dtype=None):
    """The model under test: the torchvision preset at depth 50 / 101 (``faster_rcnn_r101_fpn`` follows
    maskrcnn-benchmark; torchvision's conventions at depth 101 are ``faster_rcnn_r50_fpn`` with depth 101)."""
    options = dict(num_classes=91, backbone=ResNetBackbone(depth=depth))
    if dtype is None:
        return build_model("faster_rcnn_r50_fpn", **options)
    keras.config.set_dtype_policy(dtype)
    try:
        return build_model("faster_rcnn_r50_fpn", **options)
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"r{c[0]}-{c[1]}x{c[2]}-{c[3]}keys")
def case(request, tmp_path_factory):
    depth, height, width, keys = request.param
    outdir = tmp_path_factory.mktemp(f"tv_frcnn_r{depth}_{height}x{width}")
    proc = subprocess.run([sys.executable, str(HELPER), str(depth), str(height), str(width), str(outdir)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{HELPER.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ref = dict(np.load(outdir / "reference.npz"))
    pth = outdir / ("fasterrcnn.pth" if keys == "new" else "fasterrcnn_old_keys.pth")
    weights = outdir / "frcnn.weights.h5"
    code = convert.main(["--source", "torchvision_fasterrcnn_resnet50_fpn", "--input", str(pth), "--output",
                         str(weights), "--model", "faster_rcnn_r50_fpn", "--params_override",
                         f"model.backbone.depth={depth}"])
    assert code == 0
    model = _build(depth)
    model.load_weights(weights)
    cache = {}

    def model64():
        if "model" not in cache:
            cache["model"] = _build(depth, "float64")
            cache["model"].load_weights(weights)
        return cache["model"]

    yield request.param, ref, model, model64
    cache.clear()


def _nhwc(images):
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def _yxyx(xyxy):
    return np.asarray(xyxy)[..., [1, 0, 3, 2]]


def _iou(a, b):
    """IoU matrix of xyxy boxes a [N, 4], b [M, 4] (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _bound(*refs):
    return 1e-4 * max(1.0, max(float(np.abs(r).max()) for r in refs))


def _float32_bound(depth, refs, own_rounding):
    """The issue's bound, or for ROUNDING_LIMITED depths max(bound, 2 x torchvision's own float32 rounding)."""
    bound = _bound(*refs)
    return max(bound, 2.0 * own_rounding) if depth in ROUNDING_LIMITED else bound


def test_rpn_outputs_on_every_level(case):
    (depth, height, width, _), ref, model, model64 = case
    images = _nhwc(ref["images"])
    features, objectness, deltas = model.dense_forward(images)
    _, level_sizes = model.anchors(images, features)
    objectness = np.split(objectness.numpy(), np.cumsum(level_sizes)[:-1], axis=1)
    deltas = np.split(deltas.numpy(), np.cumsum(level_sizes)[:-1], axis=1)
    worst = []
    for level in range(5):
        ref_obj, ref_dlt = ref[f"rpn_obj_{level}"], ref[f"rpn_dlt_{level}"]
        own = max(np.abs(ref_obj - ref[f"rpn_obj_{level}_64"]).max(),
                  np.abs(ref_dlt - ref[f"rpn_dlt_{level}_64"]).max())
        obj_diff = np.abs(objectness[level] - ref_obj).max()
        dlt_diff = np.abs(deltas[level] - ref_dlt[..., XY_TO_YX]).max()
        worst.append((obj_diff, dlt_diff, _bound(ref_obj, ref_dlt), own))
        bound = _float32_bound(depth, (ref_obj, ref_dlt), own)
        assert obj_diff <= bound and dlt_diff <= bound, (level, obj_diff, dlt_diff, bound)
    print(f"\nR{depth} {height}x{width} RPN float32 max|diff| per level P2..P6: objectness "
          + ", ".join(f"{w[0]:.2g}" for w in worst) + "; deltas " + ", ".join(f"{w[1]:.2g}" for w in worst)
          + "; 1e-4 bounds " + ", ".join(f"{w[2]:.2g}" for w in worst)
          + "; torchvision's own float32-vs-float64 " + ", ".join(f"{w[3]:.2g}" for w in worst))

    # float64: the same weights; differences are rounding only.
    _, objectness64, deltas64 = model64().dense_forward(images.astype("float64"))
    ref_obj64 = np.concatenate([ref[f"rpn_obj_{level}_64"] for level in range(5)], axis=1)
    ref_dlt64 = np.concatenate([ref[f"rpn_dlt_{level}_64"] for level in range(5)], axis=1)[..., XY_TO_YX]
    diff64 = max(np.abs(objectness64.numpy() - ref_obj64).max(), np.abs(deltas64.numpy() - ref_dlt64).max())
    print(f"R{depth} {height}x{width} RPN float64 max|diff| (all levels) = {diff64:.2g}")
    assert diff64 <= 1e-9


def test_box_head_on_torchvision_proposals(case):
    (depth, height, width, _), ref, model, model64 = case
    images = _nhwc(ref["images"])
    features = model.dense_forward(images)[0]
    counts = [len(ref[f"proposals_{i}"]) for i in range(2)]
    rois = np.zeros((2, max(counts), 4), "float32")
    for i, n in enumerate(counts):
        rois[i, :n] = _yxyx(ref[f"proposals_{i}"])
    logits, deltas = (t.numpy() for t in model.box_head_outputs(features, tf.constant(rois)))
    features64 = model64().dense_forward(images.astype("float64"))[0]
    logits64, deltas64 = (t.numpy() for t in model64().box_head_outputs(features64, tf.constant(rois, tf.float64)))
    diff64 = max(max(np.abs(logits64[i, :n] - ref[f"logits_{i}_64"]).max(),
                     np.abs(deltas64[i, :n] - ref[f"deltas_{i}_64"].reshape(n, -1, 4)[..., XY_TO_YX]).max())
                 for i, n in enumerate(counts))
    report = []
    for i, n in enumerate(counts):
        ref_logits = ref[f"logits_{i}"]
        ref_deltas = ref[f"deltas_{i}"].reshape(n, -1, 4)[..., XY_TO_YX]
        logit_diff = np.abs(logits[i, :n] - ref_logits).max()
        delta_diff = np.abs(deltas[i, :n] - ref_deltas).max()
        own = max(np.abs(ref_logits - ref[f"logits_{i}_64"]).max(),
                  np.abs(ref[f"deltas_{i}"] - ref[f"deltas_{i}_64"]).max())
        bound = _float32_bound(depth, (ref_logits, ref_deltas), own)
        report.append(f"image {i} ({n} RoIs): logits {logit_diff:.2g}, deltas {delta_diff:.2g} (1e-4 bound "
                      f"{_bound(ref_logits, ref_deltas):.2g}, max|logit| {np.abs(ref_logits).max():.3g}; "
                      f"torchvision's own float32-vs-float64 {own:.2g})")
        assert logit_diff <= bound and delta_diff <= bound, report[-1]
    print(f"\nR{depth} {height}x{width} box head on torchvision proposals, max|diff|: " + "; ".join(report)
          + f"; float64 max|diff| {diff64:.2g}")
    assert diff64 <= 1e-9


def _proposal_recall(ours, ours_valid, ref_boxes):
    """Fraction of the reference proposals (xyxy) matched by one of ours (yxyx) at IoU >= 0.999."""
    mine = _yxyx(np.asarray(ours)[np.asarray(ours_valid)])  # yxyx -> xyxy (the swap is its own inverse)
    if len(ref_boxes) == 0:
        return 1.0
    return float((_iou(ref_boxes, mine).max(axis=1) >= 0.999).mean())


def test_proposals_cover_torchvision_top_1000(case):
    (depth, height, width, _), ref, model, _model64 = case
    lines = []
    for prefix, images, shape in (("", ref["images"], None), ("padded_", ref["padded_images"], ref["padded_sizes"])):
        images = _nhwc(images)
        shape = np.array([[height, width]] * 2) if shape is None else shape
        features, objectness, deltas = model.dense_forward(images)
        anchors, level_sizes = model.anchors(images, features)
        boxes, _, valid = model.propose(objectness, deltas, anchors, level_sizes, tf.constant(shape, tf.int32))
        for i in range(2):
            ref_boxes = ref[f"{prefix}proposals_{i}"]
            recall = _proposal_recall(boxes[i].numpy(), valid[i].numpy(), ref_boxes)
            lines.append(f"{prefix or 'full '}image {i}: {recall:.4f} of {len(ref_boxes)} "
                         f"(ours {int(valid[i].numpy().sum())})")
            assert recall >= 0.99, lines[-1]
    print(f"\nR{depth} {height}x{width} proposals found (IoU >= 0.999): " + "; ".join(lines))


def _match_rate(boxes_a, scores_a, labels_a, boxes_b, scores_b, labels_b):
    """Fraction of detections a (xyxy) having a detection in b with the same label, IoU >= 0.999, |ds| <= 1e-4."""
    if len(boxes_a) == 0:
        return 1.0
    if len(boxes_b) == 0:
        return 0.0
    ok = ((_iou(boxes_a, boxes_b) >= 0.999) & (labels_a[:, None] == labels_b[None, :])
          & (np.abs(scores_a[:, None] - scores_b[None, :]) <= 1e-4))
    return float(ok.any(axis=1).mean())


def test_detections_match_both_ways(case):
    (depth, height, width, _), ref, model, _model64 = case
    lines = []
    for prefix, inputs in (("", _nhwc(ref["images"])),
                           ("padded_", {"images": _nhwc(ref["padded_images"]), "image_shape": ref["padded_sizes"]})):
        out = model(inputs, training=False)
        for i in range(2):
            n = int(out["num_detections"][i])
            ours = (_yxyx(out["detection_boxes"][i, :n].numpy()), out["detection_scores"][i, :n].numpy(),
                    out["detection_classes"][i, :n].numpy())
            theirs = tuple(ref[f"{prefix}det_{k}_{i}"] for k in ("boxes", "scores", "labels"))
            ref_found, ours_found = _match_rate(*theirs, *ours), _match_rate(*ours, *theirs)
            lines.append(f"{prefix or 'full '}image {i}: theirs found {ref_found:.3f} of {len(theirs[0])}, "
                         f"ours found {ours_found:.3f} of {n}")
            assert ref_found >= 0.98 and ours_found >= 0.98, lines[-1]
    print(f"\nR{depth} {height}x{width} detections matched: " + "; ".join(lines))


def test_training_losses_with_torchvision_samples(case):
    (depth, height, width, _), ref, model, _model64 = case
    gt_boxes = np.zeros((2, 4, 4), "float32")
    gt_classes = np.zeros((2, 4), "int32")
    num_gt = np.zeros(2, "int32")
    rpn_indices = np.zeros((2, 256), "int32")
    rpn_valid = np.zeros((2, 256), bool)
    roi_boxes = np.zeros((2, 512, 4), "float32")
    roi_valid = np.zeros((2, 512), bool)
    for i in range(2):
        n = len(ref[f"gt_boxes_{i}"])
        gt_boxes[i, :n], gt_classes[i, :n], num_gt[i] = _yxyx(ref[f"gt_boxes_{i}"]), ref[f"gt_labels_{i}"], n
        sampled = np.flatnonzero(ref[f"rpn_pos_{i}"] | ref[f"rpn_neg_{i}"])
        rpn_indices[i, :len(sampled)], rpn_valid[i, :len(sampled)] = sampled, True
        rois = ref[f"roi_boxes_{i}"]
        roi_boxes[i, :len(rois)], roi_valid[i, :len(rois)] = _yxyx(rois), True
    losses = model.compute_losses(
        _nhwc(ref["images"]), None, gt_boxes, gt_classes, num_gt, tf.constant([0, 0]),
        sampled={"rpn_indices": rpn_indices, "rpn_valid": rpn_valid, "roi_boxes": roi_boxes, "roi_valid": roi_valid})
    lines = []
    for theirs, ours in LOSS_NAMES.items():
        expected, got = float(ref[f"loss_{theirs}"]), float(losses[ours])
        rel = abs(got - expected) / abs(expected)
        lines.append(f"{ours} {got:.7g} vs {expected:.7g} (rel {rel:.2g})")
        assert rel <= 1e-5, lines[-1]
    print(f"\nR{depth} {height}x{width} losses with torchvision's samples: " + "; ".join(lines))
