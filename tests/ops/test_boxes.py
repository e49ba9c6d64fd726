import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import boxes as B


def test_conversions_round_trip_numpy_and_tf():
    yxyx = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], np.float32)
    cyxhw = B.yxyx_to_cyxhw(yxyx)
    assert isinstance(cyxhw, np.ndarray)
    np.testing.assert_allclose(cyxhw[0], [0.3, 0.55, 0.4, 0.7], atol=1e-6)
    np.testing.assert_allclose(B.cyxhw_to_yxyx(cyxhw), yxyx, atol=1e-6)
    np.testing.assert_array_equal(B.yxyx_to_xyxy(yxyx)[0], yxyx[0, [1, 0, 3, 2]])
    np.testing.assert_array_equal(B.xyxy_to_yxyx(B.yxyx_to_xyxy(yxyx)), yxyx)
    np.testing.assert_allclose(B.yxyx_to_xywh(yxyx)[0], [0.2, 0.1, 0.7, 0.4], atol=1e-6)
    np.testing.assert_allclose(B.xywh_to_yxyx(B.yxyx_to_xywh(yxyx)), yxyx, atol=1e-6)
    t = B.yxyx_to_cyxhw(tf.constant(yxyx))
    assert isinstance(t, tf.Tensor)
    np.testing.assert_allclose(t.numpy(), cyxhw, atol=1e-6)


def test_clip_and_area():
    boxes = np.array([[-0.1, 0.2, 1.3, 0.5]], np.float32)
    np.testing.assert_allclose(B.clip_boxes(boxes), [[0.0, 0.2, 1.0, 0.5]])
    np.testing.assert_allclose(B.clip_boxes(tf.constant(boxes)).numpy(), [[0.0, 0.2, 1.0, 0.5]])
    np.testing.assert_allclose(B.clip_boxes(np.array([[-5, 3, 700, 20]], np.float32), 480, 640),
                               [[0, 3, 480, 20]])
    np.testing.assert_allclose(B.area(tf.constant([[0, 0, 2, 3], [1, 1, 0, 0]], tf.float32)).numpy(), [6, 0])


def test_iou_values_and_batch():
    a = tf.constant([[0, 0, 1, 1], [0, 0, 2, 2]], tf.float32)
    b = tf.constant([[0, 0, 1, 1], [0.5, 0.5, 1.5, 1.5], [3, 3, 4, 4], [0, 0, 0, 0]], tf.float32)
    got = B.iou(a, b).numpy()
    np.testing.assert_allclose(got, [[1, 0.25 / 1.75, 0, 0], [0.25, 0.25, 0, 0]], atol=1e-6)
    batched = B.iou(tf.stack([a, a * 2]), b[None]).numpy()
    assert batched.shape == (2, 2, 4)
    np.testing.assert_allclose(batched[0], got, atol=1e-6)


def test_shape_errors_name_the_function():
    with pytest.raises(ValueError, match="yxyx_to_cyxhw"):
        B.yxyx_to_cyxhw(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="iou"):
        B.iou(tf.zeros([4]), tf.zeros([2, 4]))
