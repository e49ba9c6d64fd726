"""Parity of ssd_vgg16 with torchvision ssd300_vgg16 through the torchvision importer (seeded random weights).

The torchvision side runs in a subprocess (tests/weights/torch_reference.py; torchvision cannot be imported
after TensorFlow). Raw head outputs are compared on the same normalised input (GeneralizedRCNNTransform
bypassed), in float64 (mapping exact up to rounding) and float32, then the detections of ``ssd_postprocess``
(ssd_vgg16 defaults) on our outputs against torchvision's ``postprocess_detections``.
"""
import numpy as np
import pytest
from ssd_parity_helpers import XY_TO_YX, match_detections, run_reference, torch_available

if not torch_available():
    pytest.skip("torch + torchvision are needed for the parity tests", allow_module_level=True)

import keras  # noqa: E402
import ssd_tf  # noqa: E402
import dataclasses  # noqa: E402

from ssd_tf import presets  # noqa: E402
from ssd_tf.ops.postprocess import ssd_postprocess  # noqa: E402
from ssd_tf.weights.torchvision import load_torchvision_ssd300_vgg16  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
RAW_ATOL = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("tv_vgg16")
    return outdir, run_reference("vgg16", outdir)


def test_ssd300_vgg16_raw_outputs_and_detections_match_torchvision(reference):
    outdir, ref = reference
    path = str(outdir / "ssd300_vgg16.pth")
    images = ref["images"].transpose(0, 2, 3, 1)  # NCHW -> NHWC

    # float64: proves the mapping is exact (differences are rounding only).
    keras.config.set_dtype_policy("float64")
    try:
        model64 = ssd_tf.build_model("ssd_vgg16", num_classes=91)
    finally:
        keras.config.set_dtype_policy("float32")
    load_torchvision_ssd300_vgg16(model64, path)
    boxes64, logits64 = (np.asarray(t) for t in model64(images[:1].astype("float64"), training=False))
    diff64 = (np.abs(boxes64 - ref["bbox_regression64"][..., XY_TO_YX]).max(),
              np.abs(logits64 - ref["cls_logits64"]).max())
    print(f"\nssd_vgg16 raw parity float64: max|box diff| = {diff64[0]:.3g}, max|logit diff| = {diff64[1]:.3g}")
    assert max(diff64) <= 1e-9

    model = ssd_tf.build_model("ssd_vgg16", num_classes=91)
    report = load_torchvision_ssd300_vgg16(model, path)
    assert report["skipped_layers"] == [] and report["ignored_keys"] == []
    boxes, logits = (np.asarray(t) for t in model(images, training=False))
    ref_boxes, ref_logits = ref["bbox_regression"][..., XY_TO_YX], ref["cls_logits"]
    scale = max(np.abs(ref_boxes).max(), np.abs(ref_logits).max())
    box_diff, logit_diff = np.abs(boxes - ref_boxes).max(), np.abs(logits - ref_logits).max()
    print(f"ssd_vgg16 raw parity float32: max|box diff| = {box_diff:.3g}, max|logit diff| = {logit_diff:.3g}, "
          f"max|output| = {scale:.3g}")
    # float32 rounding through 20 layers grows with the output magnitude (~35 here, 0-255 inputs):
    # 1e-4 absolute on outputs of order 1, relative beyond that.
    assert max(box_diff, logit_diff) <= RAW_ATOL * max(1.0, scale)

    # Default boxes equal torchvision's DefaultBoxGenerator output (xyxy pixels -> yxyx normalised).
    anchors = ssd_tf.default_boxes("ssd_vgg16")
    np.testing.assert_allclose(ref["anchors_xyxy"][:, [1, 0, 3, 2]] / 300.0, anchors, atol=1e-6)
    ours = ssd_postprocess(boxes, logits, anchors, **dataclasses.asdict(presets.preset("ssd_vgg16").model.postprocess))
    worst = [match_detections(ours, ref, i) for i in range(len(images))]
    score_diff, box_px = max(w[0] for w in worst), max(w[1] for w in worst)
    print(f"ssd_vgg16 detection parity: max|score diff| = {score_diff:.3g}, max|box diff| = {box_px:.3g} px")
    assert score_diff <= 1e-4 and box_px <= 1e-3 * 300
