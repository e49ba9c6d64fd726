import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_anchors, match_boxes, threshold_match

XY_TO_YX = [1, 0, 3, 2]
SETTINGS = [  # (high, low, low-quality matches)
    (0.7, 0.3, True),  # RPN
    (0.5, 0.5, False),  # box head
    (0.7, 0.3, False),
    (0.5, 0.4, True),
]


def _boxes(rng, n, size=200.0, dup=0):
    y0, x0 = rng.uniform(0, size, (2, n))
    h, w = rng.uniform(4, 80, (2, n))
    boxes = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
    if dup:  # exact duplicates give exact IoU ties
        boxes[-dup:] = boxes[:dup]
    return boxes


def _padded_case(rng, counts, max_gt=6, num_anchors=300):
    """Anchors with duplicates, and per-image gts padded with junk rows (which must never match)."""
    anchors = _boxes(rng, num_anchors, dup=40)
    gts = np.stack([_boxes(rng, max_gt, dup=2) for _ in counts])
    for i, n in enumerate(counts):  # gts that sit exactly on an anchor, and junk padding
        if n:
            gts[i, 0] = anchors[7]
        gts[i, n:] = anchors[:max_gt - n]
    return gts, np.asarray(counts, np.int32), anchors


def test_hand_computed_low_quality_ties():
    # One gt, three anchors: IoU 0.4, 0.4 (tie at the gt's max), 0.1.
    quality = np.array([[[0.4, 0.4, 0.1]]], np.float32)
    assert threshold_match(quality, [1], 0.7, 0.3).numpy().tolist() == [[-2, -2, -1]]
    assert threshold_match(quality, [1], 0.7, 0.3, allow_low_quality_matches=True).numpy().tolist() == [[0, 0, -1]]
    # Anchor 1 is gt 0's best (0.5) but overlaps gt 1 more (0.6): it comes back as gt 1, torchvision's rule.
    quality = np.array([[[0.2, 0.5, 0.1], [0.1, 0.6, 0.9]]], np.float32)
    got = threshold_match(quality, [2], 0.7, 0.3, allow_low_quality_matches=True).numpy()
    assert got.tolist() == [[-1, 1, 1]]
    # Padding row 1 is ignored: anchor 2 is no longer matched, anchor 1 goes to gt 0.
    got = threshold_match(quality, [1], 0.7, 0.3, allow_low_quality_matches=True).numpy()
    assert got.tolist() == [[-1, 0, -1]]


def test_thresholds_and_strict():
    quality = np.array([[[0.3, 0.29, 0.5, 0.7, 0.69]]], np.float32)
    assert threshold_match(quality, [1], 0.7, 0.3).numpy().tolist() == [[-2, -1, -2, 0, -2]]
    assert threshold_match(quality, [1], 0.7, 0.3, strict=True).numpy().tolist() == [[-1, -1, -2, -2, -2]]
    assert threshold_match(quality, [1], 0.5).numpy().tolist() == [[-1, -1, 0, 0, 0]]


def test_empty_gts_give_background():
    rng = np.random.default_rng(0)
    gts, _, anchors = _padded_case(rng, [0, 0])
    for lq in (False, True):
        got = match_boxes(gts, [0, 0], anchors, 0.7, 0.3, allow_low_quality_matches=lq).numpy()
        assert (got == BELOW_LOW_THRESHOLD).all()
    got = match_boxes(np.zeros((2, 0, 4), np.float32), [0, 0], anchors, 0.7, 0.3, True).numpy()
    assert got.shape == (2, 300) and (got == BELOW_LOW_THRESHOLD).all()


def test_per_image_anchors_and_xla():
    rng = np.random.default_rng(1)
    gts, counts, _ = _padded_case(rng, [3, 5])
    proposals = np.stack([_boxes(rng, 120, dup=10), _boxes(rng, 120, dup=10)])  # [B, R, 4]
    expected = np.stack([match_boxes(gts[i:i + 1], counts[i:i + 1], proposals[i], 0.5).numpy()[0]
                         for i in range(2)])
    np.testing.assert_array_equal(match_boxes(gts, counts, proposals, 0.5).numpy(), expected)
    f = tf.function(lambda g, n, a: match_boxes(g, n, a, 0.7, 0.3, True), jit_compile=True)
    np.testing.assert_array_equal(f(gts, counts, proposals).numpy(),
                                  match_boxes(gts, counts, proposals, 0.7, 0.3, True).numpy())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strict", [False, True])
def test_ssd_rule_is_one_setting_bit_identical(seed, strict):
    rng = np.random.default_rng(seed)
    gts, counts, anchors = _padded_case(rng, [4, 0, 6, 1], num_anchors=500)
    gts[0, 1] = gts[0, 0]  # two gts on the same anchor: the higher row wins
    gts[2, 3] = [5, 5, 5, 5]  # a zero-area gt: not forced
    ours = match_boxes(gts, counts, anchors, 0.5, 0.5, force_best_anchor=True, strict=strict).numpy()
    ref = match_anchors(gts, counts, anchors, 0.5, strict_threshold=strict).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_argument_errors():
    q = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="low_threshold"):
        threshold_match(q, [1], 0.3, 0.7)
    with pytest.raises(ValueError, match="quality must be"):
        threshold_match(q[0], [1], 0.5)
    with pytest.raises(ValueError, match="exclusive"):
        threshold_match(q, [1], 0.5, allow_low_quality_matches=True, force_best_anchor=True)
    with pytest.raises(ValueError, match="num_gt"):
        threshold_match(q, [1, 1], 0.5)
    with pytest.raises(ValueError, match="gt_boxes"):
        match_boxes(np.zeros((2, 4), np.float32), [1], np.zeros((3, 4), np.float32), 0.5)
    with pytest.raises(ValueError, match="disagree on B"):
        match_boxes(np.zeros((2, 1, 4), np.float32), [1, 1], np.zeros((3, 5, 4), np.float32), 0.5)


@pytest.mark.torch
@pytest.mark.parametrize("high,low,low_quality", SETTINGS)
@pytest.mark.parametrize("seed", range(3))
def test_equal_to_torchvision_matcher(high, low, low_quality, seed):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    tv = Matcher(high, low, allow_low_quality_matches=low_quality)
    rng = np.random.default_rng(seed)

    # Quantised random qualities: many ties over gts (argmax) and over anchors (low-quality ties).
    counts = [5, 1, 8]
    quality = (rng.integers(0, 11, (3, 8, 400)) / 10).astype(np.float32)
    ours = threshold_match(quality, counts, high, low, low_quality).numpy()
    for i, n in enumerate(counts):
        ref = tv(torch.from_numpy(quality[i, :n].copy())).numpy()
        np.testing.assert_array_equal(ours[i], ref, err_msg=f"quantised image {i}")

    # Boxes with duplicate anchors and gts, IoU computed by each side.
    gts, counts, anchors = _padded_case(rng, [3, 6, 0])
    ours = match_boxes(gts, counts, anchors, high, low, low_quality).numpy()
    t_anchors = torch.from_numpy(anchors[:, XY_TO_YX])
    for i, n in enumerate(counts):
        if n == 0:  # torchvision's RPN / RoI heads assign background to images without boxes
            assert (ours[i] == BELOW_LOW_THRESHOLD).all()
            continue
        ref = tv(box_iou(torch.from_numpy(gts[i, :n][:, XY_TO_YX]), t_anchors)).numpy()
        np.testing.assert_array_equal(ours[i], ref, err_msg=f"boxes image {i}")
        assert (ours[i] == BETWEEN_THRESHOLDS).any() == (low < high and (ref == -2).any())
