"""Wrong flags fail in seconds, before TensorFlow is even imported, with a message saying what to change."""
import json
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _main(*args, timeout=60):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "ssd_main.py"), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return r, time.perf_counter() - t0


@pytest.fixture
def records(tmp_path):
    """Two empty shard files and the converter's sidecar with 3 classes."""
    for i in range(2):
        (tmp_path / f"train-{i:05d}-of-00002.tfrecord").write_bytes(b"")
    meta = {"label_map": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 5, "name": "cross"}],
            "num_images": 10}
    (tmp_path / "train.meta.json").write_text(json.dumps(meta))
    return tmp_path


def _assert_fails(r, seconds, *phrases):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for p in phrases:
        assert p in r.stderr, r.stderr
    assert seconds < 20


def test_no_file_matches_the_pattern(tmp_path):
    r, s = _main("--mode=train", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/nope-*.tfrecord",
                 "--train_steps=1")
    _assert_fails(r, s, "--training_file_pattern=", "matches no file")


def test_class_count_disagreeing_with_label_map(records):
    r, s = _main("--mode=train", f"--model_dir={records}/m", f"--training_file_pattern={records}/train-*",
                 "--num_classes=81", "--train_steps=1")
    _assert_fails(r, s, "--num_classes=81 disagrees with the label map", "3 classes + background = 4")


def test_unknown_preset(records):
    r, s = _main("--mode=train", "--model=ssd_mobilenet", f"--model_dir={records}/m",
                 f"--training_file_pattern={records}/train-*", "--train_steps=1")
    _assert_fails(r, s, "unknown preset 'ssd_mobilenet'", "ssd_resnet34")


def test_checkpoint_from_another_model(records):
    model_dir = records / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model": {"name": "ssd_vgg16", "num_classes": 4}}))
    r, s = _main("--mode=train", "--model=ssd_resnet34", f"--model_dir={model_dir}",
                 f"--training_file_pattern={records}/train-*", "--train_steps=1")
    _assert_fails(r, s, "holds checkpoints of a ssd_vgg16 model", "--model=ssd_resnet34")


def test_eval_with_nothing_to_evaluate(records):
    r, s = _main("--mode=eval", f"--model_dir={records}/empty", f"--validation_file_pattern={records}/train-*")
    _assert_fails(r, s, "has no config.json", "train first")


def test_train_and_eval_without_validation_data(records):
    r, s = _main("--mode=train_and_eval", f"--model_dir={records}/m", f"--training_file_pattern={records}/train-*",
                 "--train_steps=1")
    _assert_fails(r, s, "needs --validation_file_pattern")


def test_missing_label_map_file(records):
    r, s = _main("--mode=train", f"--model_dir={records}/m", f"--training_file_pattern={records}/train-*",
                 f"--label_map={records}/labels.txt", "--train_steps=1")
    _assert_fails(r, s, "labels.txt")


def test_bad_rank_table(records):
    table = records / "rank_table.json"
    table.write_text("{not json")
    r, s = _main("--mode=train", f"--model_dir={records}/m", f"--training_file_pattern={records}/train-*",
                 "--train_steps=1", f"--rank_table_file={table}", "--rank_id=0")
    _assert_fails(r, s, "rank_table.json")


def test_model_dir_that_cannot_be_created(records):
    blocker = records / "a_file"
    blocker.write_text("x")
    r, s = _main("--mode=train", f"--model_dir={blocker}/m", f"--training_file_pattern={records}/train-*",
                 "--train_steps=1")
    _assert_fails(r, s, f"--model_dir={blocker}/m cannot be created", "is a file, not a directory")


def test_no_training_images(tmp_path):
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    r, s = _main("--mode=train", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/train-*",
                 "--train_steps=1", f"--label_map={tmp_path}/labels.txt")
    _assert_fails(r, s, "labels.txt")  # no sidecar and no label map: that is said first
    (tmp_path / "labels.txt").write_text("circle\nsquare\n")
    r, s = _main("--mode=train", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/train-*",
                 "--train_steps=1", f"--label_map={tmp_path}/labels.txt")
    _assert_fails(r, s, "file(s) are empty (no records); nothing to train on")
    (tmp_path / "train.meta.json").write_text(json.dumps({"label_map": [{"id": 1, "name": "circle"}],
                                                          "num_images": 0}))
    r, s = _main("--mode=train", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/train-*",
                 "--train_steps=1")
    _assert_fails(r, s, "counts 0 images; nothing to train on")


def _sidecar(directory, prefix, shards, names=("circle", "square"), records_each=5):
    meta = {"label_map": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
            "num_images": records_each * len(shards),
            "shards": [{"file": f, "num_records": records_each} for f in shards]}
    (directory / f"{prefix}.meta.json").write_text(json.dumps(meta))
    for f in shards:
        (directory / f).write_bytes(b"x")


def test_stale_shards_of_an_earlier_conversion_are_refused(tmp_path):
    _sidecar(tmp_path, "train", ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"])
    (tmp_path / "train-00000-of-00004.tfrecord").write_bytes(b"x")  # left by a 4-shard conversion
    r, s = _main("--mode=train", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/train-*",
                 "--train_steps=1")
    _assert_fails(r, s, "train-00000-of-00004.tfrecord", "does not list as its shards", "--num_shards")


def test_train_and_validation_label_maps_must_agree(tmp_path):
    _sidecar(tmp_path, "train", ["train-00000-of-00001.tfrecord"], names=("circle", "square"))
    _sidecar(tmp_path, "val", ["val-00000-of-00001.tfrecord"], names=("square", "circle"))  # discovered in another order
    r, s = _main("--mode=train_and_eval", f"--model_dir={tmp_path}/m", f"--training_file_pattern={tmp_path}/train-*",
                 f"--validation_file_pattern={tmp_path}/val-*", "--train_steps=1")
    _assert_fails(r, s, "val.meta.json", "differs from", "train.meta.json", "--label_map=TRAIN_PREFIX.meta.json")


def test_records_whose_label_map_differs_from_the_models_are_refused(tmp_path):
    from ssd_tf import config as config_lib
    from ssd_tf import presets

    cfg = presets.preset("ssd_resnet34")
    cfg.data.class_ids, cfg.data.class_names = [1, 2], ["circle", "square"]
    config_lib.save(cfg, str(tmp_path / "m"))
    _sidecar(tmp_path, "val", ["val-00000-of-00001.tfrecord"], names=("circle", "triangle"))
    r, s = _main("--mode=eval", f"--model_dir={tmp_path}/m", f"--validation_file_pattern={tmp_path}/val-*")
    _assert_fails(r, s, "val.meta.json", "{1:circle, 2:triangle}", "config.json", "{1:circle, 2:square}")
