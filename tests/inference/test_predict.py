"""--mode=predict: inputs, the task's own preprocessing, pictures of every kind, skipped files, usage errors."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from infer_helpers import ssd_main
from ssd_tf.inference.predict import list_inputs, output_names


# ------------------------------------------------------------------------------------------------- no TensorFlow
def test_list_inputs_file_glob_comma_list_and_directory(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.bmp").write_bytes(b"x")
    # a directory: its files with an image extension, sorted
    assert list_inputs(str(tmp_path)) == [str(tmp_path / n) for n in ("a.PNG", "b.jpg", "d.jpeg")]
    # a glob takes what it matches, images or not (a non-image is then named and skipped)
    assert list_inputs(str(tmp_path / "*.txt")) == [str(tmp_path / "c.txt")]
    # comma list of a file, a glob and a directory; duplicates once
    got = list_inputs(f"{tmp_path / 'b.jpg'},{tmp_path / '*.jpg'},{tmp_path / 'sub'}")
    assert got == [str(tmp_path / "b.jpg"), str(tmp_path / "sub" / "e.bmp")]
    assert list_inputs(str(tmp_path / "nothing-*.jpg")) == []


def test_output_names_are_unique_and_never_overwrite_an_input(tmp_path):
    inputs = [str(tmp_path / "x" / "a.jpg"), str(tmp_path / "y" / "a.png"), str(tmp_path / "a.jpg")]
    names = output_names(inputs, str(tmp_path))
    assert names[0] == str(tmp_path / "a.jpg") or names[0] == str(tmp_path / "a_2.jpg")
    assert len(set(names)) == 3 and str(tmp_path / "a.jpg") not in names  # tmp_path/a.jpg is an input


# ------------------------------------------------------------------------------------------------- in process
def test_predict_preprocesses_through_the_task_parser_like_evaluation(tiny_model):
    """The inference graph gives, on a picture's pixels, the detections the evaluation path gives on the same
    picture read from its TFRecord (decoder -> eval parser -> predict_fn): one preprocessing for both."""
    import tensorflow as tf

    from ssd_tf import config as config_lib
    from ssd_tf.inference.predict import image_detections, load_detector

    model_dir, pattern = tiny_model
    cfg = config_lib.load(str(model_dir))
    task, detector = load_detector(cfg, str(model_dir / "checkpoints" / "ckpt-1"), log=lambda *_: None)
    assert detector.batched and detector.input_shape == (300, 300, 3)
    predict = task.predict_fn(detector.model)
    from ssd_tf.data.decoder import decode_example

    for serialized in tf.data.TFRecordDataset(pattern).take(2):
        pixels = decode_example(serialized)["image"]
        images, labels = next(iter(task.build_eval_dataset().take(1)))
        break
    # the evaluation path on the first record
    dets = {k: v.numpy() for k, v in predict(images[:1], labels["image_info"][:1]).items()}
    n = int(dets["num_detections"][0])
    h, w = pixels.shape[:2]
    out = {k: v.numpy() for k, v in detector.detect_uint8(pixels[None]).items()}
    boxes, classes, scores = image_detections(out, 0, h, w)
    assert n > 0 and len(scores) == n
    np.testing.assert_allclose(boxes, dets["boxes"][0, :n], atol=1e-3)
    np.testing.assert_allclose(scores, dets["scores"][0, :n], atol=1e-5)
    assert classes.tolist() == [cfg.data.class_ids[c - 1] for c in dets["classes"][0, :n]]


def test_batched_and_one_by_one_graphs_agree(tiny_model):
    """Pictures of different sizes in one batch; the per-picture path (for parsers without a static output
    shape) gives the same detections as the batched one."""
    import tensorflow as tf

    from ssd_tf import config as config_lib
    from ssd_tf.inference.module import DetectorModule
    from ssd_tf.inference.predict import load_detector

    model_dir, _ = tiny_model
    cfg = config_lib.load(str(model_dir))
    task, batched = load_detector(cfg, str(model_dir / "checkpoints" / "ckpt-1"), log=lambda *_: None)
    single = DetectorModule(task, batched.model, cfg.data.class_ids, batched=False)
    rng = np.random.default_rng(1)
    encoded = tf.constant([tf.io.encode_png(rng.integers(0, 255, shape, np.uint8)).numpy()
                           for shape in ((40, 70, 3), (120, 90, 3), (300, 300, 3))])
    a = {k: v.numpy() for k, v in batched.detect_encoded(encoded).items()}
    b = {k: v.numpy() for k, v in single.detect_encoded(encoded).items()}
    assert a["detection_boxes"].shape == (3, cfg.model.postprocess.max_detections, 4)
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    for i in range(3):
        n = int(a["num_detections"][i])
        np.testing.assert_allclose(np.sort(a["detection_scores"][i, :n]), np.sort(b["detection_scores"][i, :n]),
                                   atol=1e-5)
    assert set(np.unique(a["detection_classes"])) <= {0, 4, 9}  # dataset ids, 0 in padding rows
    assert np.all((a["detection_boxes"] >= 0) & (a["detection_boxes"] <= 1))


# ------------------------------------------------------------------------------------------------- the CLI
def _pictures(directory):
    """Every kind of picture predict must handle, plus two files that are not pictures."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(directory / "tiny.jpg")
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), np.uint8)).save(directory / "large.png")
    Image.fromarray(rng.integers(0, 255, (90, 120), np.uint8), "L").save(directory / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), np.uint8)).convert("CMYK").save(directory / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), np.uint8), "RGBA").save(directory / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (50, 70), np.uint16)).save(directory / "deep16.png")
    (directory / "notes.jpg").write_text("not a picture")
    (directory / "empty.png").write_bytes(b"")
    return {"tiny.jpg": (30, 40), "large.png": (1500, 2000), "gray.jpg": (90, 120), "cmyk.jpg": (80, 60),
            "alpha.png": (64, 64), "deep16.png": (50, 70)}


def test_predict_cli_every_kind_of_picture_and_skips(tiny_model, tmp_path):
    model_dir, _ = tiny_model
    sizes = _pictures(tmp_path / "in")
    out = tmp_path / "out"
    r = ssd_main("--mode=predict", f"--model_dir={model_dir}", f"--input_pattern={tmp_path / 'in'}",
                 f"--output_dir={out}", "--score_threshold=0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    # the two bad files are named, one line each, and counted at the end
    for bad in ("notes.jpg", "empty.png"):
        assert sum(f"skipped {tmp_path / 'in' / bad}: not a readable image" in line
                   for line in r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert "Skipped 2 file(s)" in r.stdout and "Predicted 6 image(s)" in r.stdout
    assert "img/s" in r.stderr or "s/img" in r.stderr  # the progress bar's rate

    dets = json.loads((out / "detections.json").read_text())
    by_file = {}
    for d in dets:
        by_file.setdefault(d["file_name"], []).append(d)
        assert set(d) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        assert (d["category_id"], d["category_name"]) in {(4, "a"), (9, "b")}  # dataset ids and names
        assert d["score"] >= 0.2
    assert {p.split("/")[-1] for p in by_file} <= set(sizes)
    for name, (h, w) in sizes.items():
        picture = Image.open(out / (name.rsplit(".", 1)[0] + ".jpg"))
        # the annotated copy: the original (enlarged when small, aspect kept) in colour
        assert picture.mode == "RGB" and abs(picture.width / picture.height - w / h) < 0.05
        assert min(picture.size) >= min(h, w, 320) - 1
        for d in by_file.get(str(tmp_path / "in" / name), []):
            x, y, bw, bh = d["bbox"]  # original-image pixels
            assert -0.01 <= x and -0.01 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
    assert not (out / "notes.jpg").exists() and not (out / "empty.jpg").exists()
    ids = {d["image_id"] for d in dets}
    assert ids <= set(range(1, 7))


def test_predict_cli_nothing_readable_exits_1(tiny_model, tmp_path):
    model_dir, _ = tiny_model
    (tmp_path / "a.jpg").write_text("no")
    r = ssd_main("--mode=predict", f"--model_dir={model_dir}", f"--input_pattern={tmp_path / 'a.jpg'}",
                 f"--output_dir={tmp_path / 'out'}")
    assert r.returncode == 1 and "no picture could be read" in r.stderr
    assert f"skipped {tmp_path / 'a.jpg'}" in r.stderr


def _usage_error(r, seconds, *phrases):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, r.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert seconds < 20


@pytest.mark.parametrize("case", ["no_input", "no_output", "no_match", "output_not_creatable", "best_missing",
                                  "checkpoint_missing", "not_trained", "export_no_dir", "export_dir_not_model"])
def test_usage_errors_exit_2_with_one_line(tiny_model, tmp_path, case):
    model_dir, _ = tiny_model
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(picture)
    (tmp_path / "file").write_text("x")
    base = ["--mode=predict", f"--model_dir={model_dir}"]
    args, phrases = {
        "no_input": (base + [f"--output_dir={tmp_path}/o"], ["--input_pattern"]),
        "no_output": (base + [f"--input_pattern={picture}"], ["--output_dir"]),
        "no_match": (base + [f"--input_pattern={tmp_path}/nope-*.jpg", f"--output_dir={tmp_path}/o"],
                     ["--input_pattern=", "matches no file"]),
        "output_not_creatable": (base + [f"--input_pattern={picture}", f"--output_dir={tmp_path}/file/o"],
                                 ["--output_dir=", "cannot be created"]),
        "best_missing": (base + [f"--input_pattern={picture}", f"--output_dir={tmp_path}/o", "--checkpoint=best"],
                         ["--checkpoint=best", "no best checkpoint", "--best_metric"]),
        "checkpoint_missing": (base + [f"--input_pattern={picture}", f"--output_dir={tmp_path}/o",
                                       f"--checkpoint={tmp_path}/ckpt-7"], ["no such checkpoint"]),
        "not_trained": (["--mode=predict", f"--model_dir={tmp_path}/empty", f"--input_pattern={picture}",
                         f"--output_dir={tmp_path}/o"], ["has no config.json"]),
        "export_no_dir": (["--mode=export", f"--model_dir={model_dir}"], ["--export_dir"]),
        "export_dir_not_model": (["--mode=export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}"],
                                 ["not a SavedModel"]),
    }[case]
    t0 = time.perf_counter()
    r = ssd_main(*args, timeout=60)
    _usage_error(r, time.perf_counter() - t0, *phrases)
