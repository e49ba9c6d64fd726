"""The R-CNN parser on the shared reader: aspect-preserving resize (torchvision's and maskrcnn-benchmark's
rounding), flip, boxes in resized pixels, crowd left out of training, image_info, the fixed canvases (the two
orientation canvases and those fitted to the data), and single-canvas training batches whose stream position is
a function of the step (exact resume)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ssd_tf import config as config_lib
from ssd_tf import presets
from ssd_tf.data.example import encode_example
from ssd_tf.data.rcnn_parser import RCNNParser, fit_canvases, model_canvases, resized_size
from ssd_tf.data.reader import build_dataset, group_choice, groups_before
import tiny_data

CLASS_IDS = [1, 2]
SIZES = [(60, 90), (90, 60), (64, 64), (50, 120), (120, 50), (70, 100), (100, 70), (80, 80), (40, 100), (66, 99),
         (60, 75)]


def _model(**overrides):
    cfg = presets.preset("faster_rcnn_r50_fpn")
    for key, value in {"model.min_size": 64, "model.max_size": 96, **overrides}.items():
        config_lib.set_value(cfg, key, value)
    return config_lib.validate(cfg).model


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("rcnn") / "r-00000-of-00001.tfrecord"
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, (h, wd) in enumerate(SIZES):
            img = rng.integers(0, 255, (h, wd, 3)).astype(np.uint8)
            crowd = [0, 1] if i % 3 == 0 else [0, 0]
            w.write(encode_example(encoded=tf.io.encode_png(img).numpy(), image_format="png", height=h, width=wd,
                                   source_id=str(i + 1), filename=f"{i}.png", xmin=[0.1, 0.5], ymin=[0.2, 0.4],
                                   xmax=[0.4, 0.9], ymax=[0.7, 0.8], labels=[1, 2], texts=["a", "b"],
                                   is_crowd=crowd, area=[1.0, 1.0], difficult=[0, 0], truncated=[0, 0]))
    return str(path)


def test_resize_rules_match_the_references():
    # torchvision: scale = min(800 / short, 1333 / long), size floor(side * scale)
    assert [int(v) for v in resized_size(480, 640, 800, 1333)] == [800, 1066]
    assert [int(v) for v in resized_size(427, 640, 800, 1333)] == [800, 1199]
    assert [int(v) for v in resized_size(300, 1200, 800, 1333)] == [333, 1333]
    assert [int(v) for v in resized_size(333, 500, 800, 1333)] == [800, 1201]  # checked against torchvision 0.29
    # maskrcnn-benchmark Resize.get_size: ints, shorter side 800 unless the longer side would pass 1333
    assert [int(v) for v in resized_size(427, 640, 800, 1333, "truncate")] == [800, 1199]
    assert [int(v) for v in resized_size(300, 1200, 800, 1333, "truncate")] == [333, 1332]
    assert [int(v) for v in resized_size(640, 427, 800, 1333, "truncate")] == [1199, 800]


def test_eval_images_labels_and_image_info(records):
    parser = RCNNParser(_model(), max_boxes=4)
    ds = build_dataset(records, parser, batch_size=3, is_training=False, class_ids=CLASS_IDS)
    seen = {}
    for images, labels in ds:
        shape = tuple(images.shape[1:3])
        assert shape in {(64, 96), (96, 64)}
        for k in range(images.shape[0]):
            info = labels["image_info"][k].numpy()
            seen[labels["source_id"][k].numpy().decode()] = (shape, info, labels["num_boxes"][k].numpy())
    assert len(seen) == len(SIZES)
    for i, (h, w) in enumerate(SIZES):
        shape, info, n = seen[str(i + 1)]
        new = [int(v) for v in resized_size(h, w, 64, 96)]
        assert shape == ((64, 96) if new[0] <= new[1] else (96, 64))
        np.testing.assert_array_equal(info[0], [h, w])
        np.testing.assert_array_equal(info[1], new)
        np.testing.assert_allclose(info[2], np.array(new) / np.array([h, w]), rtol=1e-6)
        assert n == 2  # evaluation keeps crowd boxes (COCO ignore regions)


def test_training_batches_one_orientation_boxes_in_pixels_and_no_crowd(records):
    parser = RCNNParser(_model(**{"model.flip_prob": 0.0}), max_boxes=4)
    ds = build_dataset(records, parser, batch_size=2, is_training=True, class_ids=CLASS_IDS, seed=1,
                       shuffle_buffer=4, drop_crowd=True)
    for images, labels in ds.take(12):
        assert tuple(images.shape[1:]) in {(64, 96, 3), (96, 64, 3)}  # static canvas per batch
        for k in range(2):
            info = labels["image_info"][k].numpy()
            h, w = info[1]
            assert (images.shape[1] == 64) == (h <= w)
            n = int(labels["num_boxes"][k])
            boxes = labels["boxes"][k, :n].numpy()
            original = info[0]
            expected = np.array([[0.2, 0.1, 0.7, 0.4], [0.4, 0.5, 0.8, 0.9]]) * [h, w, h, w]
            crowd = SIZES.index((int(original[0]), int(original[1]))) % 3 == 0  # its second box is a crowd box
            np.testing.assert_allclose(boxes, expected[:n], rtol=1e-5)
            assert n == (1 if crowd else 2)


def test_flip_mirrors_boxes_in_the_resized_frame(records):
    for offset in (0.0, 1.0):
        parser = RCNNParser(_model(**{"model.flip_prob": 1.0, "model.pixel_offset": offset}), max_boxes=4)
        images, labels = next(iter(build_dataset(records, parser, batch_size=1, is_training=True,
                                                 class_ids=CLASS_IDS, seed=2, shuffle_buffer=1)))
        (oh, ow), (h, w), (sy, sx) = labels["image_info"][0, :3].numpy()
        b = labels["boxes"][0, 0].numpy()
        # pixel_offset 1: maskrcnn-benchmark's inclusive boxes, (x + w - 1) * scale, mirrored with W - 1 - x
        ymax, xmax = (0.7 * oh - offset) * sy, (0.4 * ow - offset) * sx
        np.testing.assert_allclose(b, [0.2 * h, w - offset - xmax, ymax, w - offset - 0.1 * w], rtol=1e-5)


def test_inclusive_pixel_boxes_of_maskrcnn_benchmark(records):
    """pixel_offset 1: training boxes as maskrcnn-benchmark's COCO dataset makes them (xywh -> x2 = x + w - 1 in the
    original image, clipped to size - 1, boxes with x2 <= x1 dropped, then scaled); crowd boxes still dropped."""
    model = dataclasses.replace(_model(), pixel_offset=1.0, flip_prob=0.0)
    parser = RCNNParser(model, max_boxes=4)
    normalised = tf.constant([[0.2, 0.1, 0.7, 0.4], [0.0, 0.5, 1.0, 1.0], [0.5, 0.5, 0.5 + 1 / 90, 0.6]])
    pixels, keep = parser._pixel_boxes(normalised, 60, 90, 64, 96)
    s_y, s_x = 64 / 60, 96 / 90
    np.testing.assert_allclose(pixels.numpy()[:2], [[12 * s_y, 9 * s_x, 41 * s_y, 35 * s_x],
                                                    [0.0, 45 * s_x, 59 * s_y, 89 * s_x]], rtol=1e-5)
    assert keep.numpy().tolist() == [True, True, False]  # the last box is under a pixel high: empty once inclusive
    continuous, none = RCNNParser(_model(), max_boxes=4)._pixel_boxes(normalised[:1], 60, 90, 64, 96)
    assert none is None
    np.testing.assert_allclose(continuous.numpy(), [[0.2 * 64, 0.1 * 96, 0.7 * 64, 0.4 * 96]], rtol=1e-5)


@pytest.mark.parametrize("fractions", [[0.7, 0.3], [0.5, 0.3, 0.2], [0.1, 0.6, 0.05, 0.25]])
def test_group_choice_counts_and_resume_skip_are_exact(records, fractions):
    phi = 0.3
    choices = [int(group_choice(k, fractions, phi)) for k in range(400)]
    for k in (0, 1, 7, 50, 400):
        assert groups_before(k, fractions, phi) == [choices[:k].count(g) for g in range(len(fractions))]
    for g, p in enumerate(fractions):  # every group gets its share, within one batch per split level
        assert abs(choices.count(g) - 400 * p) <= len(fractions)
    if len(fractions) == 2:  # group 0 exactly where floor((k + 1) p + phi) > floor(k p + phi)
        p = fractions[0]
        assert choices == [0 if np.floor((k + 1) * p + phi) > np.floor(k * p + phi) else 1 for k in range(400)]


def test_resume_skip_is_exact(records):
    parser = RCNNParser(_model(), max_boxes=4)
    kwargs = dict(batch_size=2, is_training=True, class_ids=CLASS_IDS, seed=3, shuffle_buffer=4)
    full = [(i.numpy(), l["boxes"].numpy()) for i, l in build_dataset(records, parser, **kwargs).take(9)]
    resumed = [(i.numpy(), l["boxes"].numpy())
               for i, l in build_dataset(records, parser, skip_examples=5 * 2, **kwargs).take(4)]
    for (a_img, a_box), (b_img, b_box) in zip(full[5:], resumed):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_box, b_box)


def _brute_force_canvases(sizes, model, per_orientation):
    """Every set of up to ``per_orientation`` cuts per orientation, tried: the pixel count each set leaves."""
    import itertools
    import math

    short, full = (math.ceil(v / 32) * 32 for v in (model.min_size, model.max_size))
    best = {}
    for landscape in (True, False):
        lengths = [math.ceil(max(h, w) / 32) * 32 for h, w in sizes if (h <= w) == landscape]
        values = sorted({v for v in lengths if v < full})
        costs = {}
        for t in range(per_orientation + 1):
            for cuts in itertools.combinations(values, t):
                costs[cuts] = sum(min(c for c in cuts + (full,) if c >= v) for v in lengths)
        best[landscape] = costs
    return best


def test_fitted_canvases_are_the_optimal_cuts():
    """COCO's common sizes at 800 x 1333: the fitted cuts are what trying every cut set finds (no rounding-free
    shortcut in the dynamic programme), and 4:3 pictures (800 x 1066) get an 800 x 1088 canvas."""
    model = _model(**{"model.min_size": 800, "model.max_size": 1333})
    rng = np.random.default_rng(0)
    originals = ([(480, 640)] * 60 + [(640, 480)] * 20 + [(427, 640)] * 25 + [(375, 500)] * 10 + [(640, 427)] * 8
                 + [(360, 640)] * 6 + [(500, 333)] * 4 + [(300, 1200)] * 2
                 + [(int(rng.integers(200, 640)), int(rng.integers(200, 640))) for _ in range(40)])
    sizes = [tuple(int(v) for v in resized_size(h, w, 800, 1333)) for h, w in originals]
    for k in (1, 2, 3):
        fitted = fit_canvases(sizes, model, k, min_saving=0.0)
        brute = _brute_force_canvases(sizes, model, k)
        for landscape in (True, False):
            cuts = tuple(sorted(w if landscape else h for h, w in fitted if (h <= w) == landscape))
            costs = brute[landscape]
            assert len(cuts) == min(k, max(len(c) for c in costs))
            assert costs[cuts] == min(c for s_, c in costs.items() if len(s_) == len(cuts))
    fitted = fit_canvases(sizes, model, 1)
    assert (800, 1088) in fitted and (1088, 800) in fitted
    # a cut that saves under min_saving of the orientation's pixels is not added
    assert fit_canvases([(800, 1333)] * 50 + [(800, 1300)], model, 2) == []


def test_images_go_to_the_smallest_canvas_that_holds_them(records):
    """With extra canvases 64 x 64 (squares and near-squares) and 64 x 80: evaluation pads each image to the
    smallest canvas holding it, training batches hold one canvas each and resume exactly."""
    model = _model(**{"model.canvases": [[64, 64], [64, 80]], "model.flip_prob": 0.0, "model.size_divisibility": 16})
    assert model_canvases(dataclasses.replace(model, size_divisibility=32))[2:] == [(64, 64)]  # 64x80 -> 64x96: known
    parser = RCNNParser(model, max_boxes=4)
    assert parser.canvases == [(64, 96), (96, 64), (64, 64), (64, 80)] == model_canvases(model)

    def expected(h, w):
        nh, nw = (int(v) for v in resized_size(h, w, 64, 96))
        return min(((ch, cw) for ch, cw in parser.canvases if nh <= ch and nw <= cw), key=lambda c: c[0] * c[1])

    seen = set()
    for images, labels in build_dataset(records, parser, batch_size=2, is_training=False, class_ids=CLASS_IDS):
        for k in range(images.shape[0]):
            h, w = (int(v) for v in labels["image_info"][k, 0].numpy())
            assert tuple(images.shape[1:3]) == expected(h, w)
            seen.add(tuple(images.shape[1:3]))
    assert seen == set(parser.canvases)
    kwargs = dict(batch_size=2, is_training=True, class_ids=CLASS_IDS, seed=5, shuffle_buffer=4)
    full = [(i.numpy(), l["image_info"].numpy()) for i, l in build_dataset(records, parser, **kwargs).take(14)]
    for images, info in full:
        for k in range(2):
            assert images.shape[1:3] == expected(*info[k, 0].astype(int))
    assert {f[0].shape[1:3] for f in full} == set(parser.canvases)
    resumed = [i.numpy() for i, _ in build_dataset(records, parser, skip_examples=9 * 2, **kwargs).take(5)]
    for a, b in zip([f[0] for f in full[9:]], resumed):
        np.testing.assert_array_equal(a, b)


def test_a_portrait_picture_that_resizes_square_trains(tmp_path):
    """91 x 90 at min_size 64 resizes to 64 x 64: a square image, so the landscape canvas; its group comes from
    the resized size, the same rule that pads it, so its batch has the shape its stream declares."""
    path = tiny_data.write_records(tmp_path, sizes=[(91, 90)] * 2, name="sq")
    parser = RCNNParser(_model(), max_boxes=4)
    images, labels = next(iter(build_dataset(path, parser, batch_size=2, is_training=True,
                                             class_ids=tiny_data.CLASS_IDS, seed=0, shuffle_buffer=2)))
    assert images.shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(labels["image_info"][0, 1].numpy(), [64, 64])


def test_only_canvases_no_stream_can_stand_in_for_are_unheld():
    parser = RCNNParser(_model(**{"model.canvases": [[64, 64], [64, 80]], "model.size_divisibility": 16}), max_boxes=4)
    assert parser.canvases == [(64, 96), (96, 64), (64, 64), (64, 80)]
    assert parser.unheld_groups([True, True, False, False]) == []  # the orientation canvases hold every image
    assert parser.unheld_groups([False, True, True, True]) == [0]  # 64x96 images are wider than 64x80
    assert parser.unheld_groups([True, False, False, True]) == [1]  # portrait images: nothing holds them


def test_a_canvas_the_sample_missed_is_named_when_its_images_are_left_out(tmp_path, monkeypatch):
    """The streams come from the first GROUP_SAMPLE records: with only landscape pictures among them, a later
    portrait picture has no stream. Training goes on without it, and says so; a sample that read every record
    (the dataset is smaller than GROUP_SAMPLE) has nothing to warn about."""
    from ssd_tf.data import reader

    path = tiny_data.write_records(tmp_path, sizes=[(60, 90), (60, 90), (90, 60)], name="o")
    parser = RCNNParser(_model(), max_boxes=4)

    def first_batches(sample):
        monkeypatch.setattr(reader, "GROUP_SAMPLE", sample)
        lines = []
        ds = build_dataset(path, parser, batch_size=1, is_training=True, class_ids=tiny_data.CLASS_IDS, seed=0,
                           shuffle_buffer=3, log=lines.append)
        return lines, [labels["image_info"][0, 0].numpy().tolist() for _, labels in ds.take(12)]

    lines, sizes = first_batches(2)
    assert lines == ["Training batches by canvas: 64x96 100.0%",
                     "WARNING: none of the first 2 training records needs canvas 96x64: the streams come from those "
                     "records' sizes, so later images that need it are left out of training"]
    assert [90, 60] not in sizes and sizes.count([60, 90]) == 12
    lines, sizes = first_batches(2000)
    assert lines == ["Training batches by canvas: 64x96 66.7%, 96x64 33.3%"]
    assert sizes.count([90, 60]) == 4
