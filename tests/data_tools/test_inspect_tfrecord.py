"""TFRecord inspector: counts, class names (sidecar / class text), rendering, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_tools import inspect_tfrecord as inspect
from data_tools import writer
from data_tools.records import ImageRecord, ObjectAnnotation, SkipReport

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (size WxH, boxes [x0, y0, x1, y1, label]) per image; label 2 = "ring" twice, one image without objects.
IMAGES = [((120, 80), [(10, 8, 70, 60, 2), (80, 20, 110, 70, 5)]),
          ((120, 80), []),
          ((64, 96), [(4, 10, 40, 90, 2)])]
LABEL_MAP = {2: "ring", 5: "star", 9: "unused"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    records = []
    for i, ((w, h), boxes) in enumerate(IMAGES):
        path = str(tmp / f"im{i}.png")
        Image.new("RGB", (w, h), (128, 128, 128)).save(path)
        objs = [ObjectAnnotation(xmin=b[0], ymin=b[1], xmax=b[2], ymax=b[3], label=b[4], text=LABEL_MAP[b[4]] + "_t",
                                 difficult=(j == 1)) for j, b in enumerate(boxes)]
        records.append(ImageRecord(image_path=path, source_id=f"im{i}", filename=f"im{i}.png", height=h, width=w,
                                   objects=objs))
    prefix = str(tmp / "out" / "set")
    writer.convert(records, output_prefix=prefix, num_shards=2, num_processes=1, label_map=LABEL_MAP,
                   skips=SkipReport(), source={"format": "test"}, progress=False)
    return tmp, prefix


def test_counts_and_names_from_the_sidecar(shards):
    _, prefix = shards
    stats = inspect.inspect_records(prefix + "-*.tfrecord")
    assert stats["files"] == 2 and stats["num_images"] == 3 and stats["num_objects"] == 3
    assert stats["images_without_objects"] == 1 and stats["difficult_objects"] == 1 and stats["crowd_objects"] == 0
    assert stats["objects_per_class"] == {"ring": 2, "star": 1} and stats["class_names_from"] == "sidecar"
    assert (stats["min_height"], stats["max_height"], stats["min_width"], stats["max_width"]) == (80, 96, 64, 120)
    assert stats["image_sizes"] == {"80x120": 2, "96x64": 1}
    text = inspect.format_text(stats)
    assert "images without objects: 1" in text and "ring" in text and "80x120" in text


def test_names_from_class_text_without_sidecar(shards, tmp_path):
    _, prefix = shards
    import shutil

    for f in os.listdir(os.path.dirname(prefix)):
        if f.endswith(".tfrecord"):
            shutil.copy(os.path.join(os.path.dirname(prefix), f), tmp_path / f)
    stats = inspect.inspect_records(str(tmp_path / "*.tfrecord"))
    assert stats["objects_per_class"] == {"ring_t": 2, "star_t": 1} and stats["class_names_from"] == "class/text"
    with pytest.raises(FileNotFoundError, match="matches no file"):
        inspect.inspect_records(str(tmp_path / "nothing-*.tfrecord"))


def _is_lime(pixels):
    pixels = np.asarray(pixels, np.int16)
    return (pixels[..., 1] > 180) & (pixels[..., 0] < 90) & (pixels[..., 2] < 90)


def test_render_draws_boxes_where_the_objects_are(shards, tmp_path):
    _, prefix = shards
    paths = inspect.render_examples(prefix + "-00000-of-00002.tfrecord", 5, str(tmp_path / "viz"))
    assert [os.path.basename(p) for p in paths] == ["0000_im0.png", "0001_im2.png"]  # shard 0 holds images 0, 2
    png = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert png.shape == (80, 120, 3)
    # box (10, 8, 70, 60): its bottom edge and right edge are lime, the image centre of the box is not
    assert _is_lime(png[59:62, 20:60]).any(axis=0).all()
    assert _is_lime(png[30:55, 68:72]).any(axis=1).all()
    assert not _is_lime(png[30:50, 30:50]).any()
    # the image without boxes nowhere lime; shard 1 holds it
    (empty,) = inspect.render_examples(prefix + "-00001-of-00002.tfrecord", 1, str(tmp_path / "viz1"))
    assert not _is_lime(np.asarray(Image.open(empty).convert("RGB"))).any()


def test_cli_json_and_render(shards, tmp_path):
    _, prefix = shards
    proc = subprocess.run([sys.executable, os.path.join(REPO, "data_tools", "inspect_tfrecord.py"),
                           f"--input_pattern={prefix}-*.tfrecord", "--json", "--render=1", f"--output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["num_images"] == 3 and stats["objects_per_class"] == {"ring": 2, "star": 1}
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 1


def _corrupt_in_the_middle(path):
    """A JPEG whose header is fine and which ends with EOI, with a bogus marker in the middle of its scan:
    it passes the converter's default header check, PIL and tf.io.decode_image reject it."""
    rgb = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path, "JPEG")
    data = open(path, "rb").read()
    mid = (data.index(b"\xff\xda") + len(data)) // 2
    with open(path, "wb") as f:
        f.write(data[:mid] + b"\xff\xc4\x00\x03\x00" + data[mid + 5:])
    return str(path)


@pytest.fixture(scope="module")
def corrupt_shard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corrupt")
    records = []
    for i in range(3):
        path = str(tmp / f"im{i}.jpg")
        if i == 1:
            _corrupt_in_the_middle(path)
        else:
            Image.new("RGB", (80, 60), (100, 100, 100)).save(path)
        records.append(ImageRecord(image_path=path, source_id=f"im{i}", filename=f"im{i}.jpg", height=60, width=80,
                                   objects=[]))
    prefix = str(tmp / "out" / "c")
    meta = writer.convert(records, output_prefix=prefix, num_shards=1, num_processes=1, label_map=LABEL_MAP,
                          skips=SkipReport(), source={"format": "test"}, progress=False)
    assert meta["num_images"] == 3  # the header check lets it through
    return tmp, prefix


def test_render_names_a_record_whose_image_does_not_decode(corrupt_shard, tmp_path):
    _, prefix = corrupt_shard
    problems = []
    paths = inspect.render_examples(prefix + "-*.tfrecord", 3, str(tmp_path / "viz"), on_error=problems.append)
    assert [os.path.basename(p) for p in paths] == ["0000_im0.png", "0002_im2.png"]  # the others still drawn
    (msg,) = problems
    assert "c-00000-of-00001.tfrecord record 1" in msg and "source_id 'im1'" in msg and "'im1.jpg'" in msg
    assert "does not decode" in msg and "function_node" not in msg


def test_cli_render_with_a_corrupt_image_fails_naming_the_record(corrupt_shard, tmp_path):
    _, prefix = corrupt_shard
    proc = subprocess.run([sys.executable, "-m", "data_tools.inspect_tfrecord", f"--input_pattern={prefix}-*.tfrecord",
                           "--render=3", f"--output_dir={tmp_path}"], capture_output=True, text=True, timeout=180,
                          cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "record 1 (source_id 'im1'" in proc.stderr and "1 record(s) whose image does not decode" in proc.stderr
    assert "images:                 3" in proc.stdout  # the counts are still printed
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == ["0000_im0.png", "0002_im2.png"]


def test_a_damaged_shard_is_an_error_naming_file_and_record(shards, tmp_path):
    _, prefix = shards
    data = open(prefix + "-00000-of-00002.tfrecord", "rb").read()
    (tmp_path / "d-00000-of-00001.tfrecord").write_bytes(data[:-10])  # the second record truncated
    with pytest.raises(inspect.DamagedRecords, match=r"d-00000-of-00001\.tfrecord record 1: cannot be read"):
        inspect.inspect_records(str(tmp_path / "d-*.tfrecord"))
