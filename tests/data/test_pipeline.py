"""build_ssd_dataset end to end on tiny TFRecord files written here."""
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.data.example import encode_example
from ssd_tf.data.pipeline import build_ssd_dataset, list_files
from ssd_tf.data.preprocess import denormalize_image
from ssd_tf.presets import model_config

CLASS_IDS = [3, 7, 11]  # dataset ids -> contiguous 1, 2, 3
NUM_ANCHORS = 8732


def _record(i, rng, labels=None):
    h, w = int(rng.integers(40, 70)), int(rng.integers(40, 90))
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    n = i % 4  # every 4th image has no boxes
    labels = list(labels if labels is not None else rng.choice(CLASS_IDS, n))
    n = len(labels)
    y0, x0 = rng.uniform(0, 0.5, n), rng.uniform(0, 0.5, n)
    y1, x1 = y0 + rng.uniform(0.2, 0.5, n), x0 + rng.uniform(0.2, 0.5, n)
    crowd, diff = [int(k % 2 == 1) for k in range(n)], [int(k == 2) for k in range(n)]
    rec = encode_example(encoded=tf.io.encode_png(img).numpy(), image_format="png", height=h, width=w,
                         source_id=f"img{i}", filename=f"img{i}.png", xmin=list(x0), ymin=list(y0),
                         xmax=list(x1), ymax=list(y1), labels=labels, texts=[f"c{c}" for c in labels],
                         is_crowd=crowd, area=[1.0] * n, difficult=diff, truncated=[0] * n)
    truth = {"size": (h, w), "boxes": np.stack([y0, x0, y1, x1], 1).astype(np.float32).reshape(-1, 4),
             "classes": [CLASS_IDS.index(c) + 1 if c in CLASS_IDS else -1 for c in labels], "crowd": crowd, "difficult": diff}
    return rec, truth


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two shards of 6 records each; returns (dir, {source_id: truth})."""
    d = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    truths = {}
    for shard in range(2):
        with tf.io.TFRecordWriter(str(d / f"toy-{shard:05d}-of-00002.tfrecord")) as writer:
            for j in range(6):
                i = shard * 6 + j
                rec, truths[f"img{i}"] = _record(i, rng)
                writer.write(rec)
    return d, truths


def _eval_items(ds):
    out = {}
    for images, labels in ds:
        assert images.shape[1:] == (300, 300, 3)
        for k in range(images.shape[0]):
            out[labels["source_id"][k].numpy().decode()] = {key: v[k].numpy() for key, v in labels.items()}
    return out


def test_train_batch_shapes_dtypes_and_targets(records):
    d, truths = records
    ds = build_ssd_dataset(str(d / "toy-*"), model=model_config("ssd_vgg16"), batch_size=4, is_training=True,
                           class_ids=CLASS_IDS, max_boxes=5, shuffle_buffer=8, seed=3)
    images, labels = next(iter(ds))
    assert images.shape == (4, 300, 300, 3) and images.dtype == tf.float32
    expected = {"boxes": ((4, 5, 4), tf.float32), "classes": ((4, 5), tf.int32), "num_boxes": ((4,), tf.int32),
                "box_targets": ((4, NUM_ANCHORS, 4), tf.float32), "class_targets": ((4, NUM_ANCHORS), tf.int32),
                "num_positives": ((4,), tf.int32)}
    assert set(labels) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert labels[key].shape == shape and labels[key].dtype == dtype, key
    n = labels["num_boxes"].numpy()
    classes, boxes = labels["classes"].numpy(), labels["boxes"].numpy()
    for k in range(4):
        assert set(classes[k, :n[k]]) <= {1, 2, 3} and np.all(classes[k, n[k]:] == 0)  # contiguous + padding
        assert np.all(boxes[k, n[k]:] == 0) and np.all((boxes >= 0) & (boxes <= 1))
        ct = labels["class_targets"].numpy()[k]
        assert (ct > 0).sum() == labels["num_positives"].numpy()[k]
        assert set(ct[ct > 0]) <= set(classes[k, :n[k]])
        assert (labels["num_positives"].numpy()[k] > 0) == (n[k] > 0)  # every gt gets at least its best anchor
    # VGG normalisation: RGB 0..255 minus the mean
    raw = denormalize_image(images, model_config("ssd_vgg16").normalization).numpy()
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3


def test_same_seed_same_batches_and_no_box_images_kept(records):
    d, _ = records
    kwargs = dict(model=model_config("ssd_resnet34"), batch_size=3, is_training=True, class_ids=CLASS_IDS, max_boxes=4,
                  shuffle_buffer=4, seed=5, encode_targets=False)  # 12 records: batches of 3
    a = list(build_ssd_dataset(str(d / "toy-*"), **kwargs).take(3))
    b = list(build_ssd_dataset(str(d / "toy-*"), **kwargs).take(3))
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia.numpy(), ib.numpy())
        np.testing.assert_array_equal(la["boxes"].numpy(), lb["boxes"].numpy())
    assert "box_targets" not in a[0][1]
    assert any((lab["num_boxes"].numpy() == 0).any() for _, lab in a), "images without boxes must be kept"


def test_eval_fields_preserved(records):
    d, truths = records
    ds = build_ssd_dataset(str(d / "toy-*"), model=model_config("ssd_resnet34"), batch_size=5, is_training=False,
                           class_ids=CLASS_IDS, max_boxes=6, cache=True)  # second pass reads the cache
    sizes = [int(images.shape[0]) for images, _ in ds]
    assert sizes == [5, 5, 2]  # one pass, short last batch
    items = _eval_items(ds)
    assert set(items) == set(truths)
    for sid, t in truths.items():
        got, n = items[sid], len(t["classes"])
        assert got["num_boxes"] == n
        np.testing.assert_array_equal(got["image_info"][0], t["size"])
        np.testing.assert_allclose(got["image_info"][2], 300.0 / np.asarray(t["size"]), rtol=1e-6)
        np.testing.assert_allclose(got["boxes"][:n], t["boxes"], atol=1e-6)
        np.testing.assert_array_equal(got["classes"][:n], t["classes"])
        np.testing.assert_array_equal(got["is_crowd"][:n], np.array(t["crowd"], bool))
        np.testing.assert_array_equal(got["difficult"][:n], np.array(t["difficult"], bool))
        assert got["boxes"].shape == (6, 4) and not got["is_crowd"][n:].any() and not got["classes"][n:].any()


def test_eval_image_is_resized_and_normalised(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (50, 80, 3)).astype(np.uint8)
    rec = encode_example(encoded=tf.io.encode_png(img).numpy(), image_format="png", height=50, width=80,
                         source_id="a", filename="a.png")
    with tf.io.TFRecordWriter(str(tmp_path / "one.tfrecord")) as w:
        w.write(rec)
    # The references' constants, written out: MLPerf / torchvision ImageNet (RGB / 255, mean, std) and
    # torchvision ssd300_vgg16 / ssd.pytorch (RGB 0..255 minus (123, 117, 104)).
    resized = tf.image.resize(tf.cast(img, tf.float32), (300, 300)).numpy()
    expected = {
        "ssd_resnet34": (resized / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        "ssd_vgg16": resized - np.array([123.0, 117.0, 104.0]),
    }
    for preset, want in expected.items():
        ds = build_ssd_dataset(str(tmp_path / "one.tfrecord"), model=model_config(preset), batch_size=1,
                               is_training=False, class_ids=CLASS_IDS)
        images, labels = next(iter(ds))
        np.testing.assert_allclose(images[0].numpy(), want, atol=1e-4)
        # a known pixel, by hand: (r, g, b) at (0, 0) of the resized image
        r, g, b = resized[0, 0]
        first = ((r / 255 - 0.485) / 0.229) if preset == "ssd_resnet34" else r - 123.0
        assert images[0, 0, 0, 0].numpy() == pytest.approx(first, abs=1e-4)
        assert labels["num_boxes"].numpy()[0] == 0


@pytest.mark.parametrize("single_file", [False, True])
def test_input_context_shards_without_overlap(records, single_file):
    d, truths = records
    pattern = str(d / ("toy-00000-of-00002.tfrecord" if single_file else "toy-*"))
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid)
        ds = build_ssd_dataset(pattern, model=model_config("ssd_vgg16"), batch_size=4, is_training=False, class_ids=CLASS_IDS,
                               input_context=ctx)
        seen.append(set(_eval_items(ds)))
    expected = {f"img{i}" for i in range(6)} if single_file else set(truths)
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == expected


def test_no_matching_file_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="missing-"):
        build_ssd_dataset(pattern, model=model_config("ssd_vgg16"), batch_size=2, is_training=True, class_ids=CLASS_IDS)
    with pytest.raises(FileNotFoundError):
        list_files("")


def test_unknown_class_id_is_an_error_naming_the_record(tmp_path):
    rec, _ = _record(1, np.random.default_rng(2), labels=[3, 99])
    with tf.io.TFRecordWriter(str(tmp_path / "bad.tfrecord")) as w:
        w.write(rec)
    ds = build_ssd_dataset(str(tmp_path / "bad.tfrecord"), model=model_config("ssd_vgg16"), batch_size=1, is_training=False,
                           class_ids=CLASS_IDS)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)img1.*99"):
        next(iter(ds))


def test_argument_validation(records):
    d, _ = records
    with pytest.raises(ValueError, match="SSDModelConfig"):
        build_ssd_dataset(str(d / "toy-*"), model="yolo", batch_size=2, is_training=True, class_ids=CLASS_IDS)
    with pytest.raises(ValueError, match="class_ids"):
        build_ssd_dataset(str(d / "toy-*"), model=model_config("ssd_vgg16"), batch_size=2, is_training=True, class_ids=[1, 1])
    with pytest.raises(ValueError, match="augmentation"):
        build_ssd_dataset(str(d / "toy-*"), model=model_config("ssd_vgg16"), batch_size=2, is_training=True,
                          class_ids=CLASS_IDS, augmentation="heavy")


def test_more_boxes_than_max_boxes_keeps_the_first_ones(tmp_path):
    rng = np.random.default_rng(4)
    rec, truth = _record(0, rng, labels=[3, 7, 11, 3, 7, 11, 3])  # 7 boxes
    with tf.io.TFRecordWriter(str(tmp_path / "many.tfrecord")) as w:
        w.write(rec)
    for is_training in (False, True):
        ds = build_ssd_dataset(str(tmp_path / "many.tfrecord"), model=model_config("ssd_vgg16"), batch_size=1,
                               is_training=is_training, class_ids=CLASS_IDS, max_boxes=4, augmentation=None,
                               shuffle_buffer=1, seed=0)
        _, labels = next(iter(ds))
        assert labels["num_boxes"].numpy().tolist() == [4] and labels["boxes"].shape == (1, 4, 4)
        np.testing.assert_allclose(labels["boxes"].numpy()[0], np.clip(truth["boxes"][:4], 0, 1), atol=1e-6)
        np.testing.assert_array_equal(labels["classes"].numpy()[0], truth["classes"][:4])
        if is_training:  # targets are matched against the kept boxes only
            assert set(labels["class_targets"].numpy()[0]) - {0} <= set(truth["classes"][:4])
