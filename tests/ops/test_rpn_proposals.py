import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import grid_anchors as G
from ssd_tf.ops.boxes import iou
from ssd_tf.ops.nms import batched_class_nms
from ssd_tf.ops.rpn_proposals import TEST_DEFAULTS, TRAIN_DEFAULTS, rpn_proposals

XY_TO_YX = [1, 0, 3, 2]


def _rpn_inputs(rng, padded, batch=2):
    anchors = G.grid_anchors(padded).numpy()
    counts = G.anchors_per_level(G.fpn_feature_sizes(padded))
    objectness = rng.normal(0, 2, (batch, anchors.shape[0])).astype(np.float32)
    deltas = rng.normal(0, 0.5, (batch, anchors.shape[0], 4)).astype(np.float32)
    deltas[:, :50, 2:] = 30.0  # beyond the log(1000/16) clamp
    deltas[:, 50:100, 2:] = -12.0  # shrink to nothing: removed as small
    objectness[:, :100] = 8.0 + np.arange(100) / 64  # ... and make sure they are in the top-n (no exact ties)
    return anchors, counts, objectness, deltas


# ---------------------------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------------------------

def _single_level(anchors_yxyx, logits, image_shape=(100, 100), **kw):
    anchors = np.asarray(anchors_yxyx, np.float32)
    obj = np.asarray(logits, np.float32)[None]
    kw = {**dict(pre_nms_top_n=10, post_nms_top_n=10), **kw}
    return rpn_proposals(obj, np.zeros((1,) + anchors.shape, np.float32), anchors, [image_shape], [len(anchors)], **kw)


def test_clip_small_boxes_and_nms():
    out = _single_level([[-10, -10, 40, 40],  # clipped to [0, 0, 40, 40]
                         [0, 0, 40, 41],  # IoU 0.976 with the first: suppressed
                         [50, 50, 50.0005, 60],  # side < 1e-3: removed
                         [60, 60, 130, 90]],  # clipped at the image's 100 rows
                        [3.0, 2.0, 5.0, 1.0])
    assert int(out["num_proposals"][0]) == 2
    np.testing.assert_array_equal(out["proposals"][0, :2].numpy(), [[0, 0, 40, 40], [60, 60, 100, 90]])
    np.testing.assert_allclose(out["scores"][0, :2].numpy(), 1 / (1 + np.exp([-3.0, -1.0])), rtol=1e-6)
    assert not out["valid"][0, 2:].numpy().any() and (out["proposals"][0, 2:].numpy() == 0).all()


def test_nms_is_per_level():
    anchors = np.array([[0, 0, 40, 40], [0, 0, 40, 40]], np.float32)  # the same box on two levels
    out = rpn_proposals(np.array([[2.0, 1.0]], np.float32), np.zeros((1, 2, 4), np.float32), anchors, [[100, 100]],
                        [1, 1], pre_nms_top_n=5, post_nms_top_n=5)
    assert int(out["num_proposals"][0]) == 2


def test_pre_nms_top_n_is_per_level():
    # Level 0 has the 3 best logits, but only pre_nms_top_n = 1 per level goes on.
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [0, 60, 10, 70]],
                       np.float32)
    out = rpn_proposals(np.array([[5.0, 4.0, 3.0, 1.0, 2.0]], np.float32), np.zeros((1, 5, 4), np.float32), anchors,
                        [[100, 100]], [3, 2], pre_nms_top_n=1, post_nms_top_n=5)
    np.testing.assert_array_equal(out["proposals"][0, :2].numpy(), [[0, 0, 10, 10], [0, 60, 10, 70]])
    assert int(out["num_proposals"][0]) == 2


def test_plus_one_clip_and_post_nms_per_batch():
    rng = np.random.default_rng(0)
    anchors, counts, obj, deltas = _rpn_inputs(rng, (128, 192))
    shapes = np.array([[128, 180], [100, 192]])
    out = rpn_proposals(obj, deltas, anchors, shapes, counts, pre_nms_top_n=300, post_nms_top_n=200,
                        plus_one=True, min_size=0.0)
    boxes, valid = out["proposals"].numpy(), out["valid"].numpy()
    for b in range(2):
        assert boxes[b, valid[b], 2].max() <= shapes[b, 0] - 1 and boxes[b, valid[b], 3].max() <= shapes[b, 1] - 1
    per_image = rpn_proposals(obj, deltas, anchors, shapes, counts, pre_nms_top_n=300, post_nms_top_n=200)
    per_batch = rpn_proposals(obj, deltas, anchors, shapes, counts, pre_nms_top_n=300, post_nms_top_n=200,
                              post_nms_per_batch=True)
    assert per_image["num_proposals"].numpy().tolist() == [200, 200]
    assert int(per_batch["num_proposals"].numpy().sum()) == 200
    # The batch's 200 best scores, and each image keeps a prefix of its own list.
    kept = np.sort(per_batch["scores"].numpy()[per_batch["valid"].numpy()])[::-1]
    best = np.sort(per_image["scores"].numpy().ravel())[::-1][:200]
    np.testing.assert_array_equal(kept, best)
    for b in range(2):
        n = int(per_batch["num_proposals"][b])
        np.testing.assert_array_equal(per_batch["proposals"][b, :n].numpy(), per_image["proposals"][b, :n].numpy())


def test_nms_plus_one():
    # Continuous IoU 0.475 (kept at 0.5), "+1" IoU 0.515 (suppressed).
    boxes = np.array([[[[0, 0, 9, 9]], [[0, 3.2, 9, 12.2]]]], np.float32)  # q = 1
    cont = 9 * 5.8 / (2 * 81 - 9 * 5.8)
    plus = 10 * 6.8 / (2 * 100 - 10 * 6.8)
    assert cont < 0.5 < plus
    scores = np.array([[[0.9], [0.8]]], np.float32)
    assert int(batched_class_nms(boxes, scores, 5, 5, 0.5).num_valid[0]) == 2
    out = batched_class_nms(boxes, scores, 5, 5, 0.5, plus_one=True)
    assert int(out.num_valid[0]) == 1
    np.testing.assert_array_equal(out.boxes[0, 0].numpy(), boxes[0, 0, 0])


def test_argument_errors():
    anchors = np.zeros((4, 4), np.float32)
    obj, deltas = np.zeros((1, 4), np.float32), np.zeros((1, 4, 4), np.float32)
    kw = dict(pre_nms_top_n=2, post_nms_top_n=2)
    with pytest.raises(ValueError, match="sums to 5"):
        rpn_proposals(obj, deltas, anchors, [[8, 8]], [2, 3], **kw)
    with pytest.raises(ValueError, match="objectness must be"):
        rpn_proposals(obj[0], deltas, anchors, [[8, 8]], [4], **kw)
    with pytest.raises(ValueError, match="image_shape"):
        rpn_proposals(obj, deltas, anchors, [8, 8], [4], **kw)
    with pytest.raises(ValueError, match="post_nms_top_n"):
        rpn_proposals(obj, deltas, anchors, [[8, 8]], [4], pre_nms_top_n=2, post_nms_top_n=0)
    with pytest.raises(ValueError, match="float32"):
        batched_class_nms(np.zeros((1, 2, 1, 4)), np.zeros((1, 2, 1)), 1, 1, 0.5)
    with pytest.raises(ValueError, match="q = 3"):
        batched_class_nms(np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 2), np.float32), 1, 1, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("padded,shapes,settings", [
    ((320, 480), [[320, 470], [301, 480]], TEST_DEFAULTS),
    ((320, 480), [[320, 470], [301, 480]], TRAIN_DEFAULTS),
    ((800, 1216), [[800, 1199], [768, 1216]], TEST_DEFAULTS),
], ids=["320x480-test", "320x480-train", "800x1216-test"])
def test_equal_to_torchvision_filter_proposals(padded, shapes, settings):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    rng = np.random.default_rng(1)
    anchors, counts, obj, deltas = _rpn_inputs(rng, padded)
    pre, post = settings["pre_nms_top_n"], settings["post_nms_top_n"]
    rpn = RegionProposalNetwork(AnchorGenerator(), RPNHead(8, 3), 0.7, 0.3, 256, 0.5, dict(training=pre, testing=pre),
                                dict(training=post, testing=post), settings["nms_threshold"],
                                score_thresh=settings["score_threshold"]).eval()
    assert rpn.min_size == settings["min_size"]
    decoded = rpn.box_coder.decode(torch.from_numpy(np.ascontiguousarray(deltas[..., XY_TO_YX].reshape(-1, 4))),
                                   [torch.from_numpy(np.ascontiguousarray(anchors[:, XY_TO_YX]))] * 2).view(2, -1, 4)
    ref_boxes, ref_scores = rpn.filter_proposals(decoded, torch.from_numpy(obj), [tuple(s) for s in shapes],
                                                 list(counts))
    ours = rpn_proposals(obj, deltas, anchors, np.array(shapes), counts, **settings)
    for b in range(2):
        ref = ref_boxes[b].numpy()[:, XY_TO_YX]
        n = int(ours["num_proposals"][b])
        got = ours["proposals"][b, :n].numpy()
        overlap = iou(ref, got).numpy()  # [ref, ours]
        best = overlap.argmax(axis=1)
        found = overlap.max(axis=1) >= 0.999
        score_diff = np.abs(ours["scores"][b].numpy()[best] - ref_scores[b].numpy())[found].max()
        print(f"\nrpn_proposals {padded} post={post} image {b}: ours {n}, torchvision {len(ref)}, "
              f"found {found.mean():.4f}, max|score diff| {score_diff:.2g}")
        assert found.mean() >= 0.99 and abs(n - len(ref)) <= 0.01 * len(ref)
        assert score_diff <= 1e-6
