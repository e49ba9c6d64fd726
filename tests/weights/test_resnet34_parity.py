"""Parity of ssd_resnet34 with PyTorch peers (seeded random weights, BN statistics from a calibration pass):

- torchvision's ``SSD`` around resnet34 cut after layer3 (stride 1) + the MLPerf extras, imported through
  ``load_torchvision_ssd_resnet34``: raw head outputs and detections (torchvision ``postprocess_detections`` with
  MLPerf thresholds vs ``ssd_postprocess`` with the ssd_resnet34 defaults, both on torchvision's anchors);
- a module with the MLPerf REF key names and REF ``bbox_view`` output layout (NCHW, coordinate-/class-major,
  (anchor, y, x), x-first), imported through ``load_mlperf_ssd_r34``: our outputs equal REF's after reordering
  anchors with the ops engineer's ``order_permutation`` and coordinates to y-first.
The torch side runs in a subprocess (see torch_reference.py).
"""
import numpy as np
import pytest
from ssd_parity_helpers import XY_TO_YX, match_detections, run_reference, torch_available

if not torch_available():
    pytest.skip("torch + torchvision are needed for the parity tests", allow_module_level=True)

import ssd_tf  # noqa: E402
from ssd_tf.ops.anchors import order_permutation  # noqa: E402
import dataclasses  # noqa: E402

from ssd_tf import presets  # noqa: E402
from ssd_tf.ops.postprocess import ssd_postprocess  # noqa: E402
from ssd_tf.weights.layouts import mlperf_to_package_anchor_order  # noqa: E402
from ssd_tf.weights.mlperf import load_mlperf_ssd_r34  # noqa: E402
from ssd_tf.weights.torchvision import load_torchvision_ssd_resnet34  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
RAW_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("tv_r34")
    return outdir, run_reference("resnet34", outdir)


def _max_diffs(boxes, logits, ref_boxes, ref_logits):
    scale = float(max(np.abs(ref_boxes).max(), np.abs(ref_logits).max()))
    return float(np.abs(boxes - ref_boxes).max()), float(np.abs(logits - ref_logits).max()), scale


def test_ssd_resnet34_matches_torchvision_ssd(reference):
    outdir, ref = reference
    model = ssd_tf.build_model("ssd_resnet34")
    report = load_torchvision_ssd_resnet34(model, str(outdir / "tv_ssd_r34.pth"))
    assert report["skipped_layers"] == []
    assert report["ignored_keys"] and all(k.endswith("num_batches_tracked") for k in report["ignored_keys"])
    images = ref["images"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    boxes, logits = (np.asarray(t) for t in model(images, training=False))
    box_diff, logit_diff, scale = _max_diffs(boxes, logits, ref["bbox_regression"][..., XY_TO_YX], ref["cls_logits"])
    print(f"\nssd_resnet34 (torchvision SSD) raw parity float32: max|box diff| = {box_diff:.3g}, "
          f"max|logit diff| = {logit_diff:.3g}, max|output| = {scale:.3g}")
    assert max(box_diff, logit_diff) <= RAW_ATOL * max(1.0, scale)

    anchors = ref["anchors_xyxy"][:, XY_TO_YX] / 300.0  # torchvision's boxes (w,h clipped only)
    ours = ssd_postprocess(boxes, logits, anchors, **dataclasses.asdict(presets.preset("ssd_resnet34").model.postprocess))
    worst = [match_detections(ours, ref, i) for i in range(len(images))]
    score_diff, box_px = max(w[0] for w in worst), max(w[1] for w in worst)
    print(f"ssd_resnet34 detection parity: max|score diff| = {score_diff:.3g}, max|box diff| = {box_px:.3g} px")
    assert score_diff <= 1e-4 and box_px <= 1e-3 * 300


def test_ssd_resnet34_matches_mlperf_ref_layout(reference):
    outdir, ref = reference
    model = ssd_tf.build_model("ssd_resnet34")
    report = load_mlperf_ssd_r34(model, str(outdir / "mlperf_ref.pth"))
    assert report["skipped_layers"] == [] and report["assigned_tensors"] == len(model.weights)
    perm = order_permutation(presets.preset("ssd_resnet34").model.anchors, "ayx", "yxa")
    np.testing.assert_array_equal(perm, mlperf_to_package_anchor_order())
    # REF locs [N,4,8732] (x,y,w,h; (a,y,x)) -> [N,8732,4] (y,x,h,w; (y,x,a)); confs [N,81,8732] likewise.
    ref_boxes = ref["ref_locs"].transpose(0, 2, 1)[:, perm][..., XY_TO_YX]
    ref_logits = ref["ref_confs"].transpose(0, 2, 1)[:, perm]
    boxes, logits = (np.asarray(t) for t in model(ref["images"].transpose(0, 2, 3, 1), training=False))
    box_diff, logit_diff, scale = _max_diffs(boxes, logits, ref_boxes, ref_logits)
    print(f"\nssd_resnet34 (MLPerf REF layout) raw parity float32: max|box diff| = {box_diff:.3g}, "
          f"max|logit diff| = {logit_diff:.3g}, max|output| = {scale:.3g}")
    assert max(box_diff, logit_diff) <= RAW_ATOL * max(1.0, scale)
