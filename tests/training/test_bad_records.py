"""A record that breaks the input pipeline stops training with one line naming it (file, index, source_id)."""
import io
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _jpeg(rng, h=64, w=80):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(path, images, labels):
    import tensorflow as tf

    from ssd_tf.data.example import encode_example

    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, (data, label) in enumerate(zip(images, labels)):
            writer.write(encode_example(encoded=data, image_format="jpeg", height=64, width=80, source_id=f"img{i}",
                                        filename=f"{i}.jpg", xmin=[0.1], ymin=[0.1], xmax=[0.6], ymax=[0.7],
                                        labels=[label], texts=["x"], is_crowd=[0], area=[1.0], difficult=[0],
                                        truncated=[0]))


def _train(tmp_path, pattern, labels_file):
    return subprocess.run([sys.executable, "ssd_main.py", "--mode=train", f"--model_dir={tmp_path}/m",
                           f"--training_file_pattern={pattern}", f"--label_map={labels_file}", "--train_steps=4",
                           "--num_train_images=6", "--train_batch_size=2", "--width_multiplier=0.125",
                           "--shuffle_buffer=1", "--augmentation=none", "--steps_per_loop=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_an_image_corrupt_in_the_middle_is_named(tmp_path):
    rng = np.random.default_rng(0)
    images = [_jpeg(rng) for _ in range(6)]
    images[3] = images[3][:len(images[3]) // 2]  # passes a header check, fails to decode
    _write(tmp_path / "train-00000-of-00001.tfrecord", images, [1] * 6)
    (tmp_path / "labels.txt").write_text("thing\n")
    r = _train(tmp_path, f"{tmp_path}/train-*", tmp_path / "labels.txt")
    assert r.returncode == 2, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "record 3 of" in error[0] and "train-00000-of-00001.tfrecord" in error[0] and "'img3'" in error[0]


def test_a_class_id_outside_the_label_map_is_named(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "train-00000-of-00001.tfrecord", [_jpeg(rng) for _ in range(6)], [1, 1, 7, 1, 1, 1])
    (tmp_path / "labels.txt").write_text("thing\n")
    r = _train(tmp_path, f"{tmp_path}/train-*", tmp_path / "labels.txt")
    assert r.returncode == 2, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "img2" in error[0] and "class ids not in class_ids" in error[0]
