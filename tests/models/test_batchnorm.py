"""The fused BatchNormalization (ssd_tf.models.layers) is Keras' BatchNormalization computed by TensorFlow's fused
kernel: same outputs, gradients and moving statistics, in float32 and under the bfloat16 policy."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.models.layers import BatchNormalization


def _pair(shape, **kwargs):
    rng = np.random.default_rng(0)
    reference, fused = keras.layers.BatchNormalization(**kwargs), BatchNormalization(**kwargs)
    reference.build(shape)
    fused.build(shape)
    c = shape[-1]
    weights = [rng.uniform(0.5, 1.5, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 1.5, c)]
    weights = [w.astype(np.float32) for w in weights][:len(reference.get_weights())]
    reference.set_weights(weights)
    fused.set_weights(weights)
    return reference, fused


def _run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        weights = tf.random.stateless_normal(tf.shape(y), seed=[5, 6])  # sum(y^2) would have a zero input gradient
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    return y, tape.gradient(loss, [x] + layer.trainable_variables)


@pytest.mark.parametrize("policy, atol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_equals_keras(policy, atol, training):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = tf.random.stateless_normal([4, 9, 7, 16], seed=[1, 2]) * 3.0 + 1.0
        reference, fused = _pair(x.shape, momentum=0.9, epsilon=1e-5)
        (y_ref, g_ref), (y, g) = _run(reference, x, training), _run(fused, x, training)
        assert y.dtype == y_ref.dtype == keras.mixed_precision.global_policy().compute_dtype
        np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(y_ref, tf.float32), atol=atol)
        for a, b in zip(g, g_ref):  # input, gamma, beta
            scale = float(tf.reduce_max(tf.abs(tf.cast(b, tf.float32))))
            np.testing.assert_allclose(tf.cast(a, tf.float32) / scale, tf.cast(b, tf.float32) / scale, atol=atol)
        for a, b in zip(fused.get_weights(), reference.get_weights()):  # moving statistics: the biased variance
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        if training:
            assert not np.allclose(fused.get_weights()[2], _pair(x.shape)[1].get_weights()[2])  # they moved
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_without_scale_or_center_and_synchronized_fallback():
    x = tf.random.stateless_normal([2, 5, 5, 8], seed=[3, 4])
    reference, fused = _pair(x.shape, scale=False, center=False)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-5)
    reference, fused = _pair(x.shape)
    fused.synchronized = True  # Keras' own path (cross-replica statistics)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-6)
