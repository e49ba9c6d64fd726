"""The shared harness (KerasHub's run_task_test style): every preset goes through the task protocol.

For each case: build the model from the preset's config, predict on a batch from the family's own eval parser
(detections in original-image pixels), one training step on a fixed batch from its train parser lowers the loss,
save/restore give identical outputs, the config survives config.json, and predict / export's inference graph
gives the eval path's detections. A new family is one more entry in
CASES (its preset plus the overrides that make it tiny).
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf import config as config_lib
from ssd_tf import presets
from ssd_tf.tasks import build_task
from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES, write_records


@dataclasses.dataclass(frozen=True)
class Case:
    preset: str
    overrides: tuple = ()  # (config path, value) pairs that make the model tiny
    learning_rate: float = 1e-3  # of the one training step (inputs on the 0..255 scale need a smaller one)

    def __str__(self):
        return self.preset


TINY_SSD = (("model.width_multiplier", 0.125),)
CASES = [Case("ssd_resnet34", TINY_SSD), Case("ssd_vgg16", TINY_SSD), Case("ssd_vgg16_voc", TINY_SSD)]
try:  # the Faster R-CNN family joins the harness when its model module is in the checkout
    import ssd_tf.models.faster_rcnn  # noqa: F401
except ImportError:
    pass
else:
    CASES.append(Case("faster_rcnn_r50_fpn", (("model.width_multiplier", 0.125), ("model.min_size", 96),
                                              ("model.max_size", 128), ("model.backbone.trainable_layers", 5))))
    # maskrcnn-benchmark's conventions (depth 50 to stay tiny; the conventions are what this case is about)
    CASES.append(Case("faster_rcnn_r101_fpn", (("model.width_multiplier", 0.125), ("model.min_size", 96),
                                               ("model.max_size", 128), ("model.backbone.depth", 50),
                                               ("model.backbone.trainable_layers", 5)), learning_rate=1e-6))



def _config(case: Case, pattern: str):
    cfg = presets.preset(case.preset)
    for path, value in case.overrides:
        config_lib.set_value(cfg, path, value)
    cfg.override("data", training_file_pattern=pattern, validation_file_pattern=pattern, class_ids=CLASS_IDS,
                 class_names=CLASS_NAMES, num_train_images=len(SIZES), shuffle_buffer=4)
    cfg.override("train", train_batch_size=2, seed=3)
    cfg.override("eval", eval_batch_size=2)
    cfg.model.num_classes = len(CLASS_IDS) + 1
    return config_lib.validate(cfg)


@pytest.fixture(scope="module", params=CASES, ids=str)
def harness(request, tmp_path_factory):
    pattern = write_records(tmp_path_factory.mktemp("records"))
    cfg = _config(request.param, pattern)
    keras.utils.set_random_seed(1)
    task = build_task(cfg, global_batch_size=2)
    task.harness_learning_rate = request.param.learning_rate
    return cfg, task, task.build_model()


def _eval_batch(task):
    return next(iter(task.build_eval_dataset()))


def test_predict_gives_detections_in_original_pixels(harness):
    cfg, task, model = harness
    images, labels = _eval_batch(task)
    dets = {k: v.numpy() for k, v in task.predict_fn(model)(images, labels["image_info"]).items()}
    b = images.shape[0]
    k = dets["boxes"].shape[1]
    assert dets["boxes"].shape == (b, k, 4) and dets["boxes"].dtype == np.float32
    assert dets["scores"].shape == (b, k) and dets["classes"].shape == (b, k) and dets["num_detections"].shape == (b,)
    assert np.isfinite(dets["boxes"]).all() and np.isfinite(dets["scores"]).all()
    original = labels["image_info"].numpy()[:, 0]  # (h, w) per image
    for i in range(b):
        n = int(dets["num_detections"][i])
        assert 0 <= n <= k
        boxes = dets["boxes"][i, :n]
        assert (boxes >= -1e-3).all() and (boxes[:, [0, 2]] <= original[i, 0] + 1e-3).all() \
            and (boxes[:, [1, 3]] <= original[i, 1] + 1e-3).all()
        assert ((dets["classes"][i, :n] >= 1) & (dets["classes"][i, :n] < cfg.model.num_classes)).all()
        assert ((dets["scores"][i, :n] >= 0) & (dets["scores"][i, :n] <= 1)).all()


def test_one_training_step_lowers_the_loss(harness, op_determinism):
    cfg, task, model = harness
    images, labels = next(iter(task.build_train_dataset(None, 0)))
    optimizer = keras.optimizers.SGD(learning_rate=task.harness_learning_rate, momentum=0.0)
    moving = [w.numpy() for w in model.non_trainable_weights]

    def loss():
        return float(task.compute_losses(model, images, labels)["total_loss"])

    before = loss()
    with tf.GradientTape() as tape:
        losses = task.compute_losses(model, images, labels)
    assert set(task.loss_names) <= set(losses)
    grads = tape.gradient(losses["total_loss"], model.trainable_variables)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    after = loss()
    for w, v in zip(model.non_trainable_weights, moving):  # only the step's trainable change counts
        w.assign(v)
    assert np.isfinite(before) and after < before, (before, after)


def test_save_and_restore_give_identical_outputs(harness, tmp_path):
    cfg, task, model = harness
    images, labels = _eval_batch(task)
    path = tmp_path / "weights.weights.h5"
    model.save_weights(path)
    keras.utils.set_random_seed(2)  # the fresh model starts from other random weights
    fresh = task.build_model()
    predict = task.predict_fn(model)
    expected = predict(images, labels["image_info"])
    fresh.load_weights(path)
    restored = task.predict_fn(fresh)(images, labels["image_info"])
    for key in expected:
        np.testing.assert_array_equal(expected[key].numpy(), restored[key].numpy(), err_msg=key)


def test_config_round_trip_rebuilds_the_same_model(harness, tmp_path):
    cfg, task, model = harness
    config_lib.save(cfg, str(tmp_path))
    loaded = config_lib.load(str(tmp_path))
    assert loaded == cfg and loaded.to_json() == cfg.to_json()
    keras.utils.set_random_seed(1)
    again = build_task(loaded).build_model()
    assert again.count_params() == model.count_params()
    assert [w.shape for w in again.weights] == [w.shape for w in model.weights]


def test_inference_graph_gives_the_eval_path_detections(harness):
    """predict / export's in-graph detector (ssd_tf/inference/module.py: the picture through the family's eval
    parser, detect, original pixels, dataset ids) agrees with predict_fn on the eval dataset's batch."""
    from ssd_tf.data.decoder import decode_example
    from ssd_tf.inference.module import DetectorModule

    cfg, task, model = harness
    images, labels = _eval_batch(task)
    dets = {k: v.numpy() for k, v in task.predict_fn(model)(images[:1], labels["image_info"][:1]).items()}
    pixels = decode_example(next(iter(tf.data.TFRecordDataset(cfg.data.validation_file_pattern))))["image"]
    out = {k: v.numpy() for k, v in DetectorModule(task, model, cfg.data.class_ids).detect_uint8(pixels[None]).items()}
    n = int(dets["num_detections"][0])
    h, w = pixels.shape[:2]
    assert int(out["num_detections"][0]) == n
    np.testing.assert_allclose(out["detection_boxes"][0, :n] * [h, w, h, w], dets["boxes"][0, :n], atol=1e-2)
    np.testing.assert_allclose(out["detection_scores"][0, :n], dets["scores"][0, :n], atol=1e-5)
    assert out["detection_classes"][0, :n].tolist() == [CLASS_IDS[c - 1] for c in dets["classes"][0, :n]]
