import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import box_coder
import dataclasses

import ssd_tf
from ssd_tf import presets
from ssd_tf.ops.boxes import clip_boxes
from ssd_tf.ops.postprocess import ssd_postprocess

ANCHORS = ssd_tf.default_boxes("ssd_resnet34")


def _defaults(name):
    return dataclasses.asdict(presets.preset(name).model.postprocess)


def _reference(box_regression, class_logits, score_threshold, iou_threshold, max_candidates_per_class,
               max_detections, wh_clip=None):
    """Class-by-class: threshold, top-k, tf.image.non_max_suppression, then top detections per image."""
    boxes = clip_boxes(box_coder.decode(box_regression, ANCHORS, wh_clip=wh_clip)).numpy()
    scores = tf.nn.softmax(class_logits, axis=-1).numpy()
    results = []
    for b in range(scores.shape[0]):
        dets = []
        for c in range(1, scores.shape[2]):
            idx = np.flatnonzero(scores[b, :, c] > score_threshold)
            idx = idx[np.argsort(-scores[b, idx, c], kind="stable")][:max_candidates_per_class]
            keep = tf.image.non_max_suppression(boxes[b, idx], scores[b, idx, c], len(idx), iou_threshold).numpy()
            dets += [(scores[b, i, c], c, boxes[b, i]) for i in idx[keep]]
        dets.sort(key=lambda d: -d[0])
        results.append(dets[:max_detections])
    return results


@pytest.mark.parametrize("params", [
    _defaults("ssd_resnet34"),
    dict(score_threshold=0.02, iou_threshold=0.45, max_candidates_per_class=40, max_detections=100,
         wh_clip=box_coder.TORCHVISION_WH_CLIP),
])
def test_matches_class_by_class_nms(params):
    rng = np.random.default_rng(3)
    box_regression = tf.constant(rng.normal(0, 1, (2, 8732, 4)).astype(np.float32))
    class_logits = tf.constant(rng.normal(0, 2.5, (2, 8732, 21)).astype(np.float32))
    fn = tf.function(lambda r, l: ssd_postprocess(r, l, ANCHORS, **params))
    out = {k: v.numpy() for k, v in fn(box_regression, class_logits).items()}
    ref = _reference(box_regression, class_logits, **params)
    K = params["max_detections"]
    assert out["boxes"].shape == (2, K, 4) and out["classes"].dtype == np.int32
    for b, dets in enumerate(ref):
        n = len(dets)
        assert out["num_detections"][b] == n and n > 20
        np.testing.assert_allclose(out["scores"][b, :n], [d[0] for d in dets], rtol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :n], [d[1] for d in dets])
        np.testing.assert_allclose(out["boxes"][b, :n], np.stack([d[2] for d in dets]), atol=1e-6)
        assert not out["classes"][b, n:].any() and not out["scores"][b, n:].any()
    assert out["boxes"].min() >= 0.0 and out["boxes"].max() <= 1.0


def test_single_confident_box():
    logits = np.zeros((1, 8732, 5), np.float32)
    logits[..., 0] = 10.0  # background everywhere
    anchor = 1234
    logits[0, anchor] = [0, 0, 0, 12.0, 0]
    codes = np.zeros((1, 8732, 4), np.float32)
    codes[0, anchor] = [0.5, -0.3, 0.4, -0.2]
    fn = tf.function(lambda r, l: ssd_postprocess(r, l, ANCHORS, **_defaults("ssd_vgg16")))
    out = fn(tf.constant(codes), tf.constant(logits))
    assert out["num_detections"].numpy().tolist() == [1]
    assert out["classes"].numpy()[0, 0] == 3
    assert out["scores"].numpy()[0, 0] == pytest.approx(np.exp(12) / (np.exp(12) + 4), rel=1e-5)
    expected = np.clip(box_coder.decode(codes[0, anchor][None], ANCHORS[anchor][None]).numpy()[0], 0, 1)
    np.testing.assert_allclose(out["boxes"].numpy()[0, 0], expected, atol=1e-6)
    assert out["boxes"].shape == (1, 200, 4)


def test_defaults_from_references():
    assert _defaults("ssd_resnet34") == dict(score_threshold=0.05, iou_threshold=0.5,
                                                        max_candidates_per_class=200, max_detections=200,
                                                        wh_clip=None)
    tv = _defaults("ssd_vgg16")
    assert (tv["score_threshold"], tv["iou_threshold"], tv["max_candidates_per_class"], tv["max_detections"]) \
        == (0.01, 0.45, 400, 200)
    assert tv["wh_clip"] == pytest.approx(np.log(1000 / 16))
    voc = _defaults("ssd_vgg16_voc")
    assert (voc["score_threshold"], voc["iou_threshold"], voc["max_candidates_per_class"]) == (0.01, 0.45, 200)


def test_validates_arguments():
    with pytest.raises(ValueError, match="max_detections"):
        ssd_postprocess(tf.zeros([1, 4, 4]), tf.zeros([1, 4, 3]), ANCHORS[:4], score_threshold=0.1,
                        iou_threshold=0.5, max_candidates_per_class=2, max_detections=0)
    with pytest.raises(ValueError, match="score_threshold"):
        ssd_postprocess(tf.zeros([1, 4, 4]), tf.zeros([1, 4, 3]), ANCHORS[:4], score_threshold=-0.1,
                        iou_threshold=0.5, max_candidates_per_class=2, max_detections=1)
