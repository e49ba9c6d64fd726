"""Shared model harness (KerasHub style): every preset is built, predicts, trains one step, saves and restores.

Full 300x300 input, batch 1 (the models only take 300). The training loss is the package's ``ssd_loss`` when it
is importable, else a stand-in (smooth-L1 on positives + softmax CE) defined here, in the test only.
"""
import numpy as np
import pytest
import tensorflow as tf

import keras
import ssd_tf

PRESETS = ["ssd_resnet34", "ssd_vgg16", "ssd_vgg16_voc"]
NUM_ANCHORS = 8732


def _standin_loss(box_regression, class_logits, box_targets, class_targets):
    positive = tf.cast(class_targets > 0, tf.float32)  # [B,A]
    diff = tf.abs(box_regression - box_targets)
    smooth_l1 = tf.reduce_sum(tf.where(diff < 1.0, 0.5 * diff**2, diff - 0.5), axis=-1)  # [B,A]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_targets, logits=class_logits)
    num_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
    return (tf.reduce_sum(smooth_l1 * positive) + tf.reduce_sum(ce)) / num_pos


def _loss_fn():
    try:
        from ssd_tf.models.ssd_loss import ssd_loss
    except ImportError:
        return _standin_loss
    return lambda *args: ssd_loss(*args)["total_loss"]


def _batch(num_classes, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(1, 300, 300, 3)).astype("float32")
    class_targets = np.zeros((1, NUM_ANCHORS), "int32")
    positives = rng.choice(NUM_ANCHORS, size=20, replace=False)
    class_targets[0, positives] = rng.integers(1, num_classes, size=20)
    box_targets = rng.normal(scale=0.5, size=(1, NUM_ANCHORS, 4)).astype("float32")
    return images, box_targets, class_targets


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    keras.utils.set_random_seed(1)
    return request.param, ssd_tf.build_model(request.param)


def test_predict_shapes_and_dtypes(preset):
    name, model = preset
    num_classes = {"ssd_resnet34": 81, "ssd_vgg16": 91, "ssd_vgg16_voc": 21}[name]
    images, _, _ = _batch(num_classes)
    boxes, logits = model.predict(images, verbose=0)
    assert boxes.shape == (1, NUM_ANCHORS, 4) and logits.shape == (1, NUM_ANCHORS, num_classes)
    assert boxes.dtype == np.float32 and logits.dtype == np.float32
    assert np.isfinite(boxes).all() and np.isfinite(logits).all()


def test_save_and_restore_gives_identical_outputs(preset, tmp_path):
    name, model = preset
    images, _, _ = _batch(model.output_shape[1][-1], seed=1)
    path = tmp_path / f"{name}.weights.h5"
    model.save_weights(path)
    keras.utils.set_random_seed(2)  # the fresh model starts from different random weights
    fresh = ssd_tf.build_model(name)
    before = fresh(images, training=False)[1].numpy()
    fresh.load_weights(path)
    expected = model(images, training=False)
    restored = fresh(images, training=False)
    assert not np.allclose(before, expected[1].numpy())
    for a, b in zip(expected, restored):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_one_training_step_lowers_the_loss(preset):
    name, model = preset
    num_classes = model.output_shape[1][-1]
    images, box_targets, class_targets = _batch(num_classes, seed=3)
    loss_fn = _loss_fn()
    optimizer = keras.optimizers.SGD(learning_rate=1e-4, momentum=0.0)

    def loss_value(training):
        boxes, logits = model(images, training=training)
        return loss_fn(boxes, logits, box_targets, class_targets)

    # BatchNorm in training mode (batch statistics) for both measurements, so they are comparable;
    # the moving statistics are restored so the step only changes trainable weights.
    moving = [w.numpy() for w in model.non_trainable_weights]
    before = float(loss_value(True))
    with tf.GradientTape() as tape:
        loss = loss_value(True)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_weights))
    after = float(loss_value(True))
    for w, v in zip(model.non_trainable_weights, moving):
        w.assign(v)
    assert np.isfinite(before) and after < before, (before, after)
