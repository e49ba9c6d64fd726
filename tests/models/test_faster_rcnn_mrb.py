"""Faster R-CNN with maskrcnn-benchmark's conventions (preset ``faster_rcnn_r101_fpn``), and the switch between
them and torchvision's: every difference is a config value, and each value changes only what REFERENCE_SPECS §5
says it changes.

Tiny models (width 1/8, depth 50 unless the test is about depth, 64 x 96 inputs, small RPN/RoI budgets). Expected
numbers are written out here: the cell anchors from REFERENCE_SPECS §3.2's table, the "+1" cases by hand.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import keras
from ssd_tf import presets
from ssd_tf.model_configs.common import Normalization
from ssd_tf.models import faster_rcnn as frcnn
from ssd_tf.models.faster_rcnn import LOSS_NAMES, build_faster_rcnn
from ssd_tf.ops import box_coder
from ssd_tf.ops.grid_anchors import fpn_feature_sizes
from ssd_tf.ops.roi_align import roi_levels

NUM_CLASSES = 4
# REFERENCE_SPECS §3.2, cell anchors [x1, y1, x2, y2] per level, ratio order (0.5, 1, 2).
MRB_TABLE = {
    4: [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]],
    8: [[-40, -20, 47, 27], [-28, -28, 35, 35], [-20, -44, 27, 51]],
    16: [[-84, -40, 99, 55], [-56, -56, 71, 71], [-36, -80, 51, 95]],
    32: [[-164, -72, 195, 103], [-112, -112, 143, 143], [-76, -168, 107, 199]],
    64: [[-332, -152, 395, 215], [-224, -224, 287, 287], [-148, -328, 211, 391]],
}
TV_TABLE = {
    4: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    8: [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]],
    16: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    32: [[-181, -91, 181, 91], [-128, -128, 128, 128], [-91, -181, 91, 181]],
    64: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
}
STRIDES = (4, 8, 16, 32, 64)


def _mrb(**overrides):
    """The maskrcnn-benchmark preset's model config, made tiny."""
    cfg = presets.model_config("faster_rcnn_r101_fpn", num_classes=NUM_CLASSES, width_multiplier=0.125)
    cfg = dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, depth=50),
        rpn=dataclasses.replace(cfg.rpn, pre_nms_top_n_train=300, post_nms_top_n_train=200, pre_nms_top_n_test=200,
                                post_nms_top_n_test=100),
        roi=dataclasses.replace(cfg.roi, batch_size_per_image=64))
    return _replace(cfg, **overrides)


def _replace(cfg, **overrides):
    """dataclasses.replace with dotted names (``rpn__straddle_threshold=None``)."""
    for key, value in overrides.items():
        if "__" in key:
            part, field = key.split("__")
            cfg = dataclasses.replace(cfg, **{part: dataclasses.replace(getattr(cfg, part), **{field: value})})
        else:
            cfg = dataclasses.replace(cfg, **{key: value})
    return cfg


def _twin(cfg, reference):
    """A model of ``cfg`` with ``reference``'s weights (same architecture)."""
    model = build_faster_rcnn(cfg)
    model.set_weights(reference.get_weights())
    return model


@pytest.fixture(scope="module")
def mrb_model():
    keras.utils.set_random_seed(0)
    return build_faster_rcnn(_mrb())


def _images(shape=(2, 64, 96), seed=0):
    return np.random.default_rng(seed).normal(size=shape + (3,)).astype("float32")


def _targets():
    boxes = np.zeros((2, 3, 4), "float32")
    boxes[0, 0] = [8, 10, 40, 50]
    boxes[0, 1] = [20, 40, 60, 90]
    boxes[1, 0] = [0, 0, 30, 95]
    classes = np.zeros((2, 3), "int32")
    classes[0, :2] = [1, 3]
    classes[1, 0] = 2
    return boxes, classes, np.array([2, 1], "int32")


def _level_anchors(model, height=64, width=96):
    """The model's anchors through its own anchor path, split per level: [h, w, A, 4] yxyx."""
    sizes = fpn_feature_sizes((height, width))
    images = tf.zeros([1, height, width, 3])
    features = [tf.zeros([1, h, w, 8]) for h, w in sizes]
    anchors, counts = model.anchors(images, features)
    return [a.reshape(h, w, -1, 4) for a, (h, w) in zip(np.split(anchors.numpy(), np.cumsum(counts)[:-1]), sizes)]


def test_anchors_equal_the_reference_table(mrb_model):
    for level, (stride, anchors) in enumerate(zip(STRIDES, _level_anchors(mrb_model))):
        expected = np.array(MRB_TABLE[stride], np.float32)[:, [1, 0, 3, 2]]  # xyxy -> yxyx
        np.testing.assert_array_equal(anchors[0, 0], expected, err_msg=f"P{level + 2}")
        # every cell is the cell anchor shifted by (row, column) x the fixed stride
        h, w = anchors.shape[:2]
        shifts = np.stack(np.meshgrid(np.arange(h) * stride, np.arange(w) * stride, indexing="ij"), -1)  # [h, w, 2]
        np.testing.assert_array_equal(anchors, expected[None, None] + np.tile(shifts, 2)[:, :, None, :])
    # torchvision's column of the same table, from the torchvision-convention model (the switch: anchors.style)
    tv = build_faster_rcnn(_mrb(anchors__style="torchvision"))
    for stride, anchors in zip(STRIDES, _level_anchors(tv, 128, 192)):
        np.testing.assert_array_equal(anchors[0, 0], np.array(TV_TABLE[stride], np.float32)[:, [1, 0, 3, 2]])


def test_box_coder_plus_one_hand_cases_and_round_trip(mrb_model):
    cfg = mrb_model.cfg
    plus_one = mrb_model.plus_one
    assert plus_one and cfg.pixel_offset == 1.0
    anchor = tf.constant([[0.0, 0.0, 15.0, 15.0]])  # 16 x 16 pixels, centre (8, 8)
    box = tf.constant([[2.0, 4.0, 17.0, 11.0]])  # h 16, w 8, centre (10, 8)
    codes = box_coder.encode(box, anchor, cfg.rpn.box_coder_weights, plus_one=plus_one).numpy()
    np.testing.assert_allclose(codes, [[2 / 16, 0.0, 0.0, np.log(0.5)]], atol=1e-7)
    roi_codes = box_coder.encode(box, anchor, cfg.roi.box_coder_weights, plus_one=plus_one).numpy()
    np.testing.assert_allclose(roi_codes, [[10 * 2 / 16, 0.0, 0.0, 5 * np.log(0.5)]], atol=1e-6)
    # torchvision's convention on the same boxes: h 15 / 15, w 7 / 15, centres 9.5 / 7.5 and 7.5 / 7.5
    tv = box_coder.encode(box, anchor, cfg.rpn.box_coder_weights, plus_one=False).numpy()
    np.testing.assert_allclose(tv, [[2 / 15, 0.0, 0.0, np.log(7 / 15)]], atol=1e-7)
    # round trips, both conventions, random boxes and anchors
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(1, 80, (50, 2))], 1).astype("float32")
    lo = rng.uniform(0, 100, (50, 2))
    anchors = np.concatenate([lo, lo + rng.uniform(1, 80, (50, 2))], 1).astype("float32")
    for weights in (cfg.rpn.box_coder_weights, cfg.roi.box_coder_weights):
        for p1 in (True, False):
            codes = box_coder.encode(boxes, anchors, weights, plus_one=p1)
            back = box_coder.decode(codes, anchors, weights, wh_clip=cfg.bbox_xform_clip, plus_one=p1).numpy()
            np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_detection_decode_and_clip_follow_the_pixel_convention(mrb_model):
    """model.postprocess on a hand-made box-head output: one proposal, class 1 sure, its height doubled."""
    proposals = tf.constant([[[10.0, 20.0, 29.0, 59.0]]])  # h 20 (+1) / 19, w 40 / 39
    logits = tf.constant([[[-10.0, 10.0, -10.0, -10.0]]])
    deltas = np.zeros((1, 1, NUM_CLASSES, 4), "float32")
    deltas[0, 0, 1, 2] = 5.0 * np.log(2.0)  # th: weights (10, 10, 5, 5)
    deltas = tf.constant(deltas)
    valid = tf.constant([[True]])
    shape = tf.constant([[64, 96]])
    mrb = mrb_model.postprocess(logits, deltas, proposals, valid, shape)
    # +1: centre 10 + 20 / 2 = 20, h 40 -> [0, 20, 20 + 20 - 1, 59]
    np.testing.assert_allclose(mrb["detection_boxes"][0, 0].numpy(), [0.0, 20.0, 39.0, 59.0], atol=1e-5)
    tv_model = _twin(_mrb(pixel_offset=0.0), mrb_model)
    tv = tv_model.postprocess(logits, deltas, proposals, valid, shape)
    # continuous: centre 19.5, h 38 -> [0.5, 20, 38.5, 59]
    np.testing.assert_allclose(tv["detection_boxes"][0, 0].numpy(), [0.5, 20.0, 38.5, 59.0], atol=1e-5)
    # clipping: a box past the bottom-right corner ends at size - 1 (+1) or at size (torchvision)
    far = tf.constant([[[40.0, 70.0, 63.0, 95.0]]])
    wide = np.zeros((1, 1, NUM_CLASSES, 4), "float32")
    wide[0, 0, 1, 2:] = 5.0 * np.log(3.0)
    mrb = mrb_model.postprocess(logits, tf.constant(wide), far, valid, shape)["detection_boxes"][0, 0].numpy()
    tv = tv_model.postprocess(logits, tf.constant(wide), far, valid, shape)["detection_boxes"][0, 0].numpy()
    assert mrb[2] == 63.0 and mrb[3] == 95.0 and tv[2] == 64.0 and tv[3] == 96.0


def test_roi_level_mapping_uses_plus_one_areas(mrb_model):
    # side 223 (+1: 224) -> level 4; continuous sqrt(area) 223 < 224 -> level 3
    # side 111 (+1: 112 = 224 / 2, eps inside the log) -> 3; continuous 111 -> 2
    # side 447 (+1: 448) -> 5; continuous -> 4
    rois = tf.constant([[0.0, 0.0, 223.0, 223.0], [5.0, 5.0, 116.0, 116.0], [0.0, 0.0, 447.0, 447.0],
                        [0.0, 0.0, 1.0, 1.0]])
    kwargs = dict(canonical_size=224.0, canonical_level=4)
    assert roi_levels(rois, plus_one=mrb_model.plus_one, **kwargs).numpy().tolist() == [4, 3, 5, 2]
    assert roi_levels(rois, plus_one=False, **kwargs).numpy().tolist() == [3, 2, 4, 2]
    # through the model: P_l filled with l, so the pooled values read back the level each RoI was pooled from
    channels = mrb_model.fpn_channels
    features = [tf.fill([1, 256 // 2 ** l, 256 // 2 ** l, channels], float(l)) for l in range(2, 7)]
    model_rois = tf.constant([[[0.0, 0.0, 223.0, 223.0], [5.0, 5.0, 116.0, 116.0]]])
    for model, expected in ((mrb_model, [4, 3]), (_twin(_mrb(pixel_offset=0.0), mrb_model), [3, 2])):
        pooled = []

        def spy(feats, boxes, **kwargs):
            out = real(feats, boxes, **kwargs)
            pooled.append(out.numpy())
            return out

        real = frcnn.multilevel_roi_align
        frcnn.multilevel_roi_align = spy
        try:
            model.box_head_outputs(features, model_rois)
        finally:
            frcnn.multilevel_roi_align = real
        np.testing.assert_array_equal(pooled[0].reshape(2, -1).min(axis=1), expected)
        np.testing.assert_array_equal(pooled[0].reshape(2, -1).max(axis=1), expected)


def test_straddle_threshold_ignores_anchors_crossing_the_border(mrb_model):
    images = _images(seed=1)
    boxes, classes, num = _targets()
    shape = np.array([[64, 96], [48, 80]])  # the second image is padded
    _, samples = mrb_model.compute_losses(images, shape, boxes, classes, num, tf.constant([1, 2]),
                                          return_samples=True)
    anchors = _all_anchors(mrb_model)
    for i in range(2):
        picked = anchors[samples["rpn_indices"][i].numpy()[samples["rpn_valid"][i].numpy()]]
        h, w = shape[i]
        assert len(picked) > 0
        assert (picked[:, :2] >= 0).all() and (picked[:, 2] < h).all() and (picked[:, 3] < w).all(), i
    # torchvision's rule (no threshold) samples anchors that cross the border
    tv = _twin(_mrb(rpn__straddle_threshold=None), mrb_model)
    _, samples = tv.compute_losses(images, shape, boxes, classes, num, tf.constant([1, 2]), return_samples=True)
    picked = anchors[samples["rpn_indices"][0].numpy()[samples["rpn_valid"][0].numpy()]]
    assert ((picked[:, :2] < 0).any(axis=1) | (picked[:, 2] >= 64) | (picked[:, 3] >= 96)).any()


def _all_anchors(model, height=64, width=96):
    return np.concatenate([a.reshape(-1, 4) for a in _level_anchors(model, height, width)])


def test_training_proposals_are_the_top_n_of_the_device_batch(mrb_model):
    images = _images(seed=2)
    _, objectness, deltas = mrb_model.dense_forward(images)
    anchors, counts = mrb_model.anchors(images, mrb_model.dense_forward(images)[0])
    shape = tf.constant([[64, 96], [64, 96]])
    n = mrb_model.cfg.rpn.post_nms_top_n_train  # 200 for the batch of 2
    boxes, scores, valid = mrb_model.propose(objectness, deltas, anchors, counts, shape, training=True)
    assert int(tf.reduce_sum(tf.cast(valid, tf.int32))) == n
    per_image = _twin(_mrb(rpn__post_nms_per_batch=False), mrb_model)
    _, all_scores, all_valid = per_image.propose(objectness, deltas, anchors, counts, shape, training=True)
    union = np.sort(all_scores.numpy()[all_valid.numpy()])[::-1]
    np.testing.assert_array_equal(np.sort(scores.numpy()[valid.numpy()])[::-1], union[:n])
    assert all_valid.numpy().sum() > n  # per image: up to 200 each
    # evaluation: the test top-n per image (100 each), whatever the batch
    _, _, test_valid = mrb_model.propose(objectness, deltas, anchors, counts, shape, training=False)
    assert test_valid.numpy().sum(axis=1).tolist() == [100, 100]


def test_roi_box_loss_beta_is_one(mrb_model):
    images = _images(seed=3)
    boxes, classes, num = _targets()
    losses, samples = mrb_model.compute_losses(images, None, boxes, classes, num, tf.constant([4, 5]),
                                               return_samples=True)
    assert mrb_model.cfg.roi.box_loss_beta == 1.0 and mrb_model.cfg.rpn.box_loss_beta == pytest.approx(1 / 9)
    tv = _twin(_mrb(roi__box_loss_beta=1.0 / 9.0), mrb_model)
    other = tv.compute_losses(images, None, boxes, classes, num, tf.constant([4, 5]), sampled=samples)
    for name in LOSS_NAMES:
        if name == "roi_box_loss":
            assert other[name].numpy() != losses[name].numpy()
        else:
            np.testing.assert_allclose(other[name].numpy(), losses[name].numpy(), rtol=1e-6, err_msg=name)


def test_pixel_convention_reaches_every_op(mrb_model, monkeypatch):
    """Each op the model calls receives plus_one from model.pixel_offset (spies on the module's imports)."""
    seen = {}

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen.setdefault(name, set()).add(bool(kwargs.get("plus_one", False)))
            return real(*args, **kwargs)
        return wrapped

    for name in ("match_boxes", "rpn_proposals", "rcnn_detections", "multilevel_roi_align"):
        monkeypatch.setattr(frcnn, name, spy(name, getattr(frcnn, name)))
    monkeypatch.setattr(frcnn.box_coder, "encode", spy("encode", box_coder.encode))
    images = _images(seed=4)
    boxes, classes, num = _targets()
    for model, expected in ((mrb_model, True), (_twin(_mrb(pixel_offset=0.0), mrb_model), False)):
        seen.clear()
        model(images)
        model.compute_losses(images, None, boxes, classes, num, tf.constant([1, 1]))
        assert seen == {k: {expected} for k in ("match_boxes", "rpn_proposals", "rcnn_detections",
                                                 "multilevel_roi_align", "encode")}, seen


def test_each_convention_changes_only_its_own_part(mrb_model):
    """Same weights, same input, one config value switched to torchvision's at a time (REFERENCE_SPECS §5)."""
    images = _images(seed=5)
    boxes, classes, num = _targets()
    _, obj, dlt = mrb_model.dense_forward(images)
    anchors = _all_anchors(mrb_model)
    dets = mrb_model(images)
    losses, samples = mrb_model.compute_losses(images, None, boxes, classes, num, tf.constant([2, 3]),
                                               return_samples=True)

    def same_dense(model):
        _, o, d = model.dense_forward(images)
        return np.array_equal(o.numpy(), obj.numpy()) and np.array_equal(d.numpy(), dlt.numpy())

    def same_dets(model):
        out = model(images)
        return all(np.array_equal(out[k].numpy(), dets[k].numpy()) for k in dets)

    # backbone: the MSRA bottleneck changes the features, and so everything after them
    msra = _twin(_mrb(backbone=dataclasses.replace(mrb_model.cfg.backbone, stride_in_1x1=False)), mrb_model)
    assert not same_dense(msra) and np.array_equal(_all_anchors(msra), anchors)
    # anchors: the dense part is the same, the anchors (and so proposals and detections) differ
    tv_anchors = _twin(_mrb(anchors__style="torchvision"), mrb_model)
    assert same_dense(tv_anchors) and not np.array_equal(_all_anchors(tv_anchors), anchors)
    assert not same_dets(tv_anchors)
    # "+1" pixels: dense part and anchors the same; decoding / clipping / NMS / levels change the detections
    continuous = _twin(_mrb(pixel_offset=0.0), mrb_model)
    assert same_dense(continuous) and np.array_equal(_all_anchors(continuous), anchors)
    assert not same_dets(continuous)
    # training-only switches leave inference alone
    for overrides in ({"rpn__straddle_threshold": None}, {"rpn__post_nms_per_batch": False},
                      {"roi__box_loss_beta": 1.0 / 9.0}):
        assert same_dets(_twin(_mrb(**overrides), mrb_model)), overrides
    # the RPN's border rule changes only the RPN losses on the same sampled RoIs
    straddle = _twin(_mrb(rpn__straddle_threshold=None), mrb_model)
    other = straddle.compute_losses(images, None, boxes, classes, num, tf.constant([2, 3]),
                                    sampled={"roi_boxes": samples["roi_boxes"], "roi_valid": samples["roi_valid"]})
    assert other["rpn_objectness_loss"].numpy() != losses["rpn_objectness_loss"].numpy()
    for name in ("roi_classification_loss", "roi_box_loss"):
        np.testing.assert_allclose(other[name].numpy(), losses[name].numpy(), rtol=1e-6, err_msg=name)


def test_normalisation_is_the_parsers_bgr_255_mean_only():
    from ssd_tf.data.preprocess import normalize_image

    mrb = presets.model_config("faster_rcnn_r101_fpn").normalization
    pixel = tf.constant([[[10.0, 20.0, 30.0]]])  # RGB
    np.testing.assert_allclose(normalize_image(pixel, mrb).numpy()[0, 0],
                               [30 - 102.9801, 20 - 115.9465, 10 - 122.7717], rtol=1e-6)
    tv = presets.model_config("faster_rcnn_r50_fpn").normalization
    np.testing.assert_allclose(normalize_image(pixel, tv).numpy()[0, 0],
                               (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                               rtol=1e-5)


# Every field in which the maskrcnn-benchmark preset differs from torchvision's at the same depth, with
# torchvision's value (REFERENCE_SPECS §5); nothing else may differ.
CONVENTIONS = {
    "backbone.stride_in_1x1": False,
    "normalization": Normalization(),
    "resize_rounding": "torchvision",
    "anchors.style": "torchvision",
    "pixel_offset": 0.0,
    "rpn.straddle_threshold": None,
    "rpn.post_nms_per_batch": False,
    "rpn.min_size": 1e-3,
    "postprocess.min_size": 1e-2,
    "roi.box_loss_beta": 1.0 / 9.0,
    "num_classes": 91,
}
RECIPE = {"train_steps": 0, "num_epochs": 26.0, "lr_boundaries": [16 / 26, 22 / 26], "steps_reference_batch": 0,
          "warmup_steps": 1000, "warmup_start_factor": 1e-3, "bias_lr_factor": 1.0, "bias_weight_decay": None}


def test_the_conventions_are_exactly_these_config_values():
    from ssd_tf import config as config_lib

    mrb, tv = presets.preset("faster_rcnn_r101_fpn"), presets.preset("faster_rcnn_r50_fpn")
    for path, value in CONVENTIONS.items():
        config_lib.set_value(mrb, f"model.{path}", value)
    for path, value in RECIPE.items():
        config_lib.set_value(mrb, f"train.{path}", value)
    config_lib.set_value(tv, "model.backbone.depth", 101)
    mrb.model.name = tv.model.name
    assert config_lib.validate(mrb) == config_lib.validate(tv)
    # and the preset's values are maskrcnn-benchmark's
    m, t = presets.preset("faster_rcnn_r101_fpn").model, presets.preset("faster_rcnn_r101_fpn").train
    assert (m.backbone.depth, m.backbone.stride_in_1x1, m.backbone.frozen_bn_epsilon, m.backbone.trainable_layers) \
        == (101, True, 0.0, 3)
    assert m.normalization == Normalization(scale=1.0, mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0),
                                            channel_order="bgr")
    assert (m.min_size, m.max_size, m.resize_rounding, m.anchors.style, m.pixel_offset) == \
        (800, 1333, "truncate", "detectron", 1.0)
    assert (m.rpn.straddle_threshold, m.rpn.post_nms_per_batch, m.rpn.post_nms_top_n_train,
            m.rpn.post_nms_top_n_test, m.roi.box_loss_beta, m.num_classes) == (0.0, True, 2000, 1000, 1.0, 81)
    assert (t.base_learning_rate, t.lr_reference_batch, t.bias_lr_factor, t.bias_weight_decay, t.weight_decay,
            t.momentum, t.warmup_steps, t.warmup_start_factor, t.lr_boundaries, t.train_steps,
            t.steps_reference_batch) == (0.02, 16, 2.0, 0.0, 1e-4, 0.9, 500, 1 / 3, [60000, 80000], 90000, 16)


def test_r101_msra_model_builds_and_stem_and_res2_are_frozen():
    cfg = presets.model_config("faster_rcnn_r101_fpn", num_classes=NUM_CLASSES, width_multiplier=0.125)
    model = build_faster_rcnn(cfg)
    trainable = {w.path.split("/")[-2] for w in model.trainable_weights}
    assert not any(n == "conv1" or n.startswith("layer1_") for n in trainable)
    assert {"layer2_0_conv1", "layer3_22_conv3", "layer4_2_conv2"} <= trainable
    # stride on the 1x1: layer2_0's first conv halves the resolution
    assert model.backbone.get_layer("layer2_0_conv1").strides == (2, 2)
    assert model.backbone.get_layer("layer2_0_conv2").strides == (1, 1)
    out = model(_images((1, 64, 64)))
    assert out["detection_boxes"].shape == (1, 100, 4)
