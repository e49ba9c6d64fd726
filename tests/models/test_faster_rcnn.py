"""Faster R-CNN models: parameter counts, trainable layers, predict, losses, one training step, save/restore.

Tiny models (width 1/8, a few classes, small inputs and RPN/RoI budgets) except for the parameter counts, which
build the full-width models without running them. Models are built through ``_build`` so that the construction
can move to ``ssd_tf.build_model`` once the presets route there.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import keras
from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig, ResNetBackbone, RPNConfig, RoIHeadConfig
from ssd_tf.models.faster_rcnn import LOSS_NAMES, build_faster_rcnn

NUM_CLASSES = 4
TINY_RPN = RPNConfig(pre_nms_top_n_train=300, post_nms_top_n_train=200, pre_nms_top_n_test=200,
                     post_nms_top_n_test=100)
TINY_ROI = RoIHeadConfig(batch_size_per_image=64)


def _config(**overrides):
    base = dict(num_classes=NUM_CLASSES, width_multiplier=0.125, rpn=TINY_RPN, roi=TINY_ROI)
    base.update(overrides)
    return FasterRCNNModelConfig(**base)


def _build(cfg=None, **kwargs):
    return build_faster_rcnn(cfg or _config(), **kwargs)


def _images(shape=(2, 64, 96), seed=0):
    return np.random.default_rng(seed).normal(size=shape + (3,)).astype("float32")


def _targets():
    """Image 0: two boxes; image 1: none (padding rows only)."""
    boxes = np.zeros((2, 3, 4), "float32")
    boxes[0, 0] = [8, 10, 40, 50]
    boxes[0, 1] = [20, 40, 60, 90]
    classes = np.zeros((2, 3), "int32")
    classes[0, :2] = [1, 3]
    return boxes, classes, np.array([2, 0], "int32")


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return _build()


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("depth,num_classes,expected", [
    (50, 91, 41_755_286), (50, 81, 41_704_036), (101, 81, 60_643_940), (101, 91, 60_695_190)])
def test_parameter_counts_match_torchvision(depth, num_classes, expected):
    cfg = FasterRCNNModelConfig(num_classes=num_classes, backbone=ResNetBackbone(depth=depth, trainable_layers=5))
    model = _build(cfg)
    assert _trainable_count(model) == expected
    # Frozen BN holds 4 non-trainable vectors per BN layer and nothing else is frozen at trainable_layers=5.
    assert all("batch_norm" in type(layer).__name__.lower() or "frozen" in type(layer).__name__.lower()
               for layer in model._flatten_layers() if layer.non_trainable_weights and not layer.trainable_weights
               and not list(layer._flatten_layers(include_self=False)))


def test_trainable_layers_follow_torchvision():
    order = ["layer4", "layer3", "layer2", "layer1", "conv1"]
    for k in range(6):
        model = _build(_config(backbone=ResNetBackbone(trainable_layers=k)))
        names = {w.path.split("/")[-2] for w in model.trainable_weights}
        for i, stage in enumerate(order):
            stage_trains = any(n == "conv1" if stage == "conv1" else n.startswith(stage + "_") for n in names)
            assert stage_trains == (i < k), (k, stage)
        assert {"fpn_inner0", "fpn_layer3", "rpn_conv", "fc6", "bbox_pred"} <= names
        assert not any("bn" in n for n in names)


def test_predict_outputs(tiny_model):
    images = _images()
    out = tiny_model(images, training=False)
    k = tiny_model.cfg.postprocess.max_detections
    assert out["detection_boxes"].shape == (2, k, 4) and out["detection_boxes"].dtype == tf.float32
    assert out["detection_scores"].shape == (2, k) and out["detection_classes"].dtype == tf.int32
    num = out["num_detections"].numpy()
    assert out["num_detections"].shape == (2,) and (num > 0).all() and (num <= k).all()
    scores, classes = out["detection_scores"].numpy(), out["detection_classes"].numpy()
    boxes = out["detection_boxes"].numpy()
    for i in range(2):
        n = num[i]
        assert (scores[i, :n] > 0.05).all() and (np.diff(scores[i, :n]) <= 0).all() and (scores[i, n:] == 0).all()
        assert ((classes[i, :n] >= 1) & (classes[i, :n] < NUM_CLASSES)).all() and (classes[i, n:] == 0).all()
        assert (boxes[i, :n, 2:] >= boxes[i, :n, :2]).all()
        assert (boxes[i, :n] >= 0).all() and (boxes[i, :n, 0::2] <= 64).all() and (boxes[i, :n, 1::2] <= 96).all()

    # A padded batch: the second image is 40 x 60 inside the 64 x 96 input; its boxes stay inside it.
    padded = images.copy()
    padded[1, 40:] = 0.0
    padded[1, :, 60:] = 0.0
    out = tiny_model({"images": padded, "image_shape": np.array([[64, 96], [40, 60]])}, training=False)
    n = int(out["num_detections"][1])
    boxes = out["detection_boxes"][1, :n].numpy()
    assert (boxes[:, 0::2] <= 40).all() and (boxes[:, 1::2] <= 60).all()
    keyword = tiny_model(padded, image_shape=np.array([[64, 96], [40, 60]]), training=False)
    np.testing.assert_array_equal(keyword["detection_boxes"].numpy(), out["detection_boxes"].numpy())
    # model.predict goes through the same call.
    predicted = tiny_model.predict(images, verbose=0)
    np.testing.assert_allclose(predicted["detection_scores"], tiny_model(images)["detection_scores"], atol=1e-5)


def test_input_checks(tiny_model):
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_model(_images((1, 64, 90)))
    with pytest.raises(TypeError, match="FasterRCNNModelConfig"):
        build_faster_rcnn({"num_classes": 3})


def test_losses_are_seeded_and_an_image_without_boxes_has_zero_box_losses(tiny_model):
    images = _images(seed=1)
    boxes, classes, num = _targets()
    a = tiny_model.compute_losses(images, None, boxes, classes, num, tf.constant([3, 4]))
    b = tiny_model.compute_losses(images, None, boxes, classes, num, tf.constant([3, 4]))
    c = tiny_model.compute_losses(images, None, boxes, classes, num, tf.constant([5, 6]))
    for name in LOSS_NAMES:
        assert a[name].dtype == tf.float32 and np.isfinite(a[name].numpy()), name
        assert a[name].numpy() == b[name].numpy(), name
    assert a["rpn_box_loss"] > 0 and a["roi_box_loss"] > 0
    assert any(a[n].numpy() != c[n].numpy() for n in LOSS_NAMES)
    np.testing.assert_allclose(a["total_loss"], sum(a[n] for n in LOSS_NAMES), rtol=1e-6)

    empty = tiny_model.compute_losses(images, None, boxes, classes, np.array([0, 0]), tf.constant([3, 4]))
    assert empty["rpn_box_loss"].numpy() == 0.0 and empty["roi_box_loss"].numpy() == 0.0
    assert np.isfinite(empty["rpn_objectness_loss"]) and empty["rpn_objectness_loss"] > 0
    assert np.isfinite(empty["roi_classification_loss"]) and empty["roi_classification_loss"] > 0


def test_one_training_step_lowers_the_loss(op_determinism):
    keras.utils.set_random_seed(1)
    model = _build()
    images = _images(seed=2)
    boxes, classes, num = _targets()
    optimizer = keras.optimizers.SGD(learning_rate=1e-3)
    frozen_before = [w.numpy() for w in model.non_trainable_weights]

    @tf.function
    def step(seed):
        with tf.GradientTape() as tape:
            losses, samples = model.compute_losses(images, None, boxes, classes, num, seed, return_samples=True)
        grads = tape.gradient(losses["total_loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses, samples, grads

    first, samples, grads = step(tf.constant([7, 8]))
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert all(np.isfinite(first[n].numpy()) for n in LOSS_NAMES)
    # The same batch on the same sampled anchors and RoIs (the proposals move with the RPN, so a fresh draw
    # would compare different samples).
    after = model.compute_losses(images, None, boxes, classes, num, tf.constant([7, 8]), sampled=samples)
    assert after["total_loss"] < first["total_loss"], (first, after)
    # Frozen BN and the frozen stages (conv1, layer1 at the default trainable_layers=3) did not move.
    for before, w in zip(frozen_before, model.non_trainable_weights):
        np.testing.assert_array_equal(before, w.numpy())
    assert not any(v.path.split("/")[-2] in ("conv1", "layer1_0_conv1") for v in model.trainable_variables)


def test_save_and_restore_give_identical_outputs(tiny_model, tmp_path):
    images = _images(seed=3)
    path = tmp_path / "frcnn.weights.h5"
    tiny_model.save_weights(path)
    keras.utils.set_random_seed(5)
    fresh = _build()
    before = fresh(images)["detection_scores"].numpy()
    fresh.load_weights(path)
    expected, restored = tiny_model(images), fresh(images)
    assert not np.array_equal(before, expected["detection_scores"].numpy())
    for key in expected:
        np.testing.assert_array_equal(expected[key].numpy(), restored[key].numpy())


def test_config_round_trip(tiny_model):
    import json

    from ssd_tf.models.faster_rcnn import FasterRCNN, config_from_dict

    config = json.loads(json.dumps(tiny_model.get_config()))
    assert config_from_dict(config["cfg"]) == tiny_model.cfg
    clone = FasterRCNN.from_config(config)
    assert [w.shape for w in clone.weights] == [w.shape for w in tiny_model.weights]


def test_mixed_precision_keeps_outputs_and_losses_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _build()
    finally:
        keras.config.set_dtype_policy("float32")
    images = _images(seed=4)
    out = model(images)
    assert out["detection_boxes"].dtype == tf.float32 and out["detection_scores"].dtype == tf.float32
    features, objectness, deltas = model.dense_forward(images)
    assert features[0].dtype == tf.bfloat16 and objectness.dtype == tf.float32 and deltas.dtype == tf.float32
    boxes, classes, num = _targets()
    losses = model.compute_losses(images, None, boxes, classes, num, tf.constant([1, 1]))
    assert all(losses[n].dtype == tf.float32 and np.isfinite(losses[n].numpy()) for n in LOSS_NAMES)


def test_xla_dense_part_matches_eager(tiny_model):
    images = _images(seed=5)
    xla = _build(jit_compile=True)
    xla.set_weights(tiny_model.get_weights())
    _, obj, dlt = tiny_model.dense_forward(images)
    _, obj_x, dlt_x = xla.dense_forward(images)
    np.testing.assert_allclose(obj_x, obj, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dlt_x, dlt, atol=1e-4, rtol=1e-4)


def test_config_values_reach_the_model():
    cfg = _config()
    cfg = dataclasses.replace(cfg, postprocess=dataclasses.replace(cfg.postprocess, max_detections=7,
                                                                    score_threshold=0.0))
    out = _build(cfg)(_images((1, 64, 64)))
    assert out["detection_boxes"].shape == (1, 7, 4) and int(out["num_detections"][0]) == 7
