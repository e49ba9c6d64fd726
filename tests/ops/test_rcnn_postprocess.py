import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops.boxes import iou
from ssd_tf.ops.rcnn_postprocess import DEFAULTS, rcnn_detections

XY_TO_YX = [1, 0, 3, 2]


def _inputs(rng, batch=2, num=1000, classes=91, size=(320, 480)):
    cy, cx = rng.uniform(0, size[0], (batch, num)), rng.uniform(0, size[1], (batch, num))
    h, w = np.exp(rng.uniform(1, 5.5, (2, batch, num)))
    proposals = np.clip(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1), 0, size * 2)
    logits = rng.normal(0, 1, (batch, num, classes))
    logits[..., 1:] += rng.normal(0, 2.5, (batch, num, 1))  # some proposals confident about several classes
    logits[..., 0] -= 2.0
    deltas = rng.normal(0, 1, (batch, num, classes, 4))
    deltas[:, :20, :, 2:] = -12.0  # collapse to < 1e-2 px: dropped
    return proposals.astype(np.float32), logits.astype(np.float32), deltas.astype(np.float32)


def _match_rate(ours, b, ref_boxes, ref_scores, ref_labels):
    n = int(ours["num_detections"][b])
    boxes = ours["detection_boxes"][b, :n].numpy()
    scores = ours["detection_scores"][b, :n].numpy()
    labels = ours["detection_classes"][b, :n].numpy()
    overlap = iou(ref_boxes, boxes).numpy()  # [ref, ours]
    same = (overlap >= 0.999) & (ref_labels[:, None] == labels[None]) & (
        np.abs(ref_scores[:, None] - scores[None]) <= 1e-4)
    return same.any(axis=1).mean(), same.any(axis=0).mean(), n


def test_hand_made():
    # Two proposals, 3 classes (0 = background). Zero deltas decode to the proposal itself.
    proposals = np.array([[[10, 10, 50, 50], [12, 12, 52, 52]]], np.float32)
    logits = np.log(np.array([[[0.1, 0.6, 0.3], [0.5, 0.46, 0.04]]], np.float32))
    deltas = np.zeros((1, 2, 3, 4), np.float32)
    out = rcnn_detections(logits, deltas, proposals, [[100, 100]])
    # Class 1: 0.6 and 0.46 overlap (IoU 0.82) -> one; class 2: 0.3 kept, 0.04 is below 0.05.
    assert int(out["num_detections"][0]) == 2
    np.testing.assert_allclose(out["detection_scores"][0, :2].numpy(), [0.6, 0.3], rtol=1e-5)
    assert out["detection_classes"][0].numpy().tolist()[:3] == [1, 2, 0]
    np.testing.assert_array_equal(out["detection_boxes"][0, :2].numpy(), proposals[0, [0, 0]])
    # Invalid (padded) proposals give nothing; [B, R, 4C] deltas are the same as [B, R, C, 4].
    none = rcnn_detections(logits, deltas.reshape(1, 2, 12), proposals, [[100, 100]],
                           proposal_valid=[[False, False]])
    assert int(none["num_detections"][0]) == 0 and (none["detection_boxes"].numpy() == 0).all()
    capped = rcnn_detections(logits, deltas, proposals, [[100, 100]], max_detections=1)
    assert capped["detection_boxes"].shape == (1, 1, 4) and int(capped["num_detections"][0]) == 1


def test_clip_and_min_size():
    proposals = np.array([[[-20, 10, 50, 150], [30, 30, 30.005, 60]]], np.float32)
    logits = np.log(np.array([[[0.1, 0.9], [0.1, 0.9]]], np.float32))
    out = rcnn_detections(logits, np.zeros((1, 2, 2, 4), np.float32), proposals, [[40, 100]])
    assert int(out["num_detections"][0]) == 1  # the second is 0.005 px tall
    np.testing.assert_array_equal(out["detection_boxes"][0, 0].numpy(), [0, 10, 40, 100])


def test_argument_errors():
    logits = np.zeros((1, 2, 3), np.float32)
    proposals = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="4 \\* 3 columns"):
        rcnn_detections(logits, np.zeros((1, 2, 8), np.float32), proposals, [[8, 8]])
    with pytest.raises(ValueError, match="disagree"):
        rcnn_detections(logits, np.zeros((1, 3, 3, 4), np.float32), proposals, [[8, 8]])
    with pytest.raises(ValueError, match="class_logits"):
        rcnn_detections(logits[0], np.zeros((1, 2, 3, 4), np.float32), proposals, [[8, 8]])
    with pytest.raises(ValueError, match="max_detections"):
        rcnn_detections(logits, np.zeros((1, 2, 3, 4), np.float32), proposals, [[8, 8]], max_detections=0)


@pytest.mark.torch
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_torchvision_postprocess_detections(seed):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.roi_heads import RoIHeads

    rng = np.random.default_rng(seed)
    proposals, logits, deltas = _inputs(rng)
    shapes = [(320, 470), (301, 480)]
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, DEFAULTS["score_threshold"],
                     DEFAULTS["nms_threshold"], DEFAULTS["max_detections"])
    batch, num, classes = logits.shape
    ref_boxes, ref_scores, ref_labels = heads.postprocess_detections(
        torch.from_numpy(logits.reshape(-1, classes)),
        torch.from_numpy(np.ascontiguousarray(deltas[..., XY_TO_YX].reshape(batch * num, classes * 4))),
        [torch.from_numpy(np.ascontiguousarray(p[:, XY_TO_YX])) for p in proposals], shapes)
    ours = rcnn_detections(logits, deltas, proposals, np.array(shapes), **DEFAULTS)
    for b in range(batch):
        ref_found, ours_found, n = _match_rate(ours, b, ref_boxes[b].numpy()[:, XY_TO_YX], ref_scores[b].numpy(),
                                               ref_labels[b].numpy())
        print(f"\nrcnn_detections seed {seed} image {b}: ours {n}, torchvision {len(ref_boxes[b])}, "
              f"torchvision matched {ref_found:.4f}, ours matched {ours_found:.4f}")
        assert n == len(ref_boxes[b]) == DEFAULTS["max_detections"]
        assert ref_found >= 0.98 and ours_found >= 0.98
