import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_tf.ops import box_coder


def _box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def test_encode_matches_formula_and_anchor_encodes_to_zero():
    anchors = tf.constant([_box(0.5, 0.4, 0.2, 0.1), _box(0.1, 0.1, 0.05, 0.05)], tf.float32)
    boxes = tf.constant([_box(0.52, 0.43, 0.3, 0.05), _box(0.1, 0.1, 0.05, 0.05)], tf.float32)
    codes = box_coder.encode(boxes, anchors).numpy()
    expected = [10 * 0.02 / 0.2, 10 * 0.03 / 0.1, 5 * math.log(0.3 / 0.2), 5 * math.log(0.05 / 0.1)]
    np.testing.assert_allclose(codes[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(box_coder.encode(anchors, anchors).numpy(), 0.0)


def test_decode_wh_clip():
    anchors = tf.constant([_box(0.5, 0.5, 0.1, 0.1)], tf.float32)
    codes = tf.constant([[0.0, 0.0, 50.0, 50.0]], tf.float32)  # dh = dw = 10
    unclipped = box_coder.decode(codes, anchors).numpy()
    clipped = box_coder.decode(codes, anchors, wh_clip=box_coder.TORCHVISION_WH_CLIP).numpy()
    assert unclipped[0, 2] - unclipped[0, 0] == pytest.approx(0.1 * math.exp(10), rel=1e-4)
    assert clipped[0, 2] - clipped[0, 0] == pytest.approx(0.1 * 1000 / 16, rel=1e-4)


def test_batched_and_shape_check():
    anchors = tf.constant([_box(0.5, 0.5, 0.1, 0.1)] * 3, tf.float32)
    boxes = tf.random.uniform([2, 3, 4], 0.0, 1.0)
    assert box_coder.encode(boxes, anchors).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="disagree"):
        box_coder.encode(tf.zeros([2, 5, 4]), anchors)


sizes = st.floats(0.005, 1.0)
centres = st.floats(-0.2, 1.2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(centres, centres, sizes, sizes, centres, centres, sizes, sizes), min_size=1, max_size=8))
def test_round_trip(rows):
    boxes = np.array([_box(*r[:4]) for r in rows], np.float32)
    anchors = np.array([_box(*r[4:]) for r in rows], np.float32)
    codes = box_coder.encode(boxes, anchors)
    back = box_coder.decode(codes, anchors).numpy()
    np.testing.assert_allclose(back, boxes, atol=2e-5, rtol=1e-4)
