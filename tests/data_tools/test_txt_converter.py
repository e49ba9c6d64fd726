"""Text-line (keras-yolo style) and keras-retinanet CSV converter, label map files."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_tools import create_txt_tfrecord as txt
from data_tools import label_map as label_map_lib
from data_tools.records import ConversionError, SkipReport

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_examples(prefix):
    import tensorflow as tf

    from ssd_tf.data.decoder import decode_example

    out = []
    for path in sorted(glob.glob(prefix + "-*-of-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(path):
            d = decode_example(raw)
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append({"source_id": d["source_id"].numpy().decode(), "filename": d["filename"].numpy().decode(),
                        "h": int(d["height"]), "w": int(d["width"]), "yxyx": d["boxes"].numpy(),
                        "classes": d["classes"].numpy().tolist(),
                        "texts": [t.decode() for t in f["image/object/class/text"].bytes_list.value]})
    return out


@pytest.fixture
def data(tmp_path):
    img = tmp_path / "img"
    os.makedirs(img / "sub")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(img / "a.jpg")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(img / "sub" / "b.png")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    return tmp_path, img


def write(tmp_path, text):
    path = tmp_path / "train.txt"
    path.write_text(text)
    return str(path)


def convert(tmp_path, img, anno, **kw):
    return txt.convert_txt(anno_path=anno, image_dir=str(img), label_map=kw.pop("label_map", str(tmp_path / "classes.txt")),
                           output_file_prefix=str(tmp_path / "out" / "t"), num_shards=1, num_processes=1,
                           progress=False, **kw)


def test_lines_format_boxes_classes_and_empty_images(data):
    tmp_path, img = data
    anno = write(tmp_path, "# comment\na.jpg 1,2,30,40,0 10.5,0,64,48,2\n\nsub/b.png\n")
    meta = convert(tmp_path, img, anno)
    assert meta["label_map"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    assert (meta["num_images"], meta["num_objects"], meta["images_without_objects"]) == (2, 2, 1)
    a, b = read_examples(str(tmp_path / "out" / "t"))
    assert (a["source_id"], a["filename"], a["h"], a["w"]) == ("a", "a.jpg", 48, 64)
    assert a["classes"] == [1, 3] and a["texts"] == ["cat", "bird"]  # index k -> id k + 1
    np.testing.assert_allclose(a["yxyx"] * [48, 64, 48, 64], [[2, 1, 40, 30], [0, 10.5, 48, 64]], atol=1e-4)
    assert (b["source_id"], b["filename"], b["yxyx"].shape) == ("sub/b", "b.png", (0, 4))


@pytest.mark.parametrize("line,match", [
    ("a.jpg 1,2,3,4", r"train\.txt line 2 box 0: expected x1,y1,x2,y2,class"),
    ("a.jpg 1,2,x,4,0", r"train\.txt line 2 box 0: coordinate 'x'"),
    ("a.jpg 1,2,3,4,cat", r"train\.txt line 2 box 0: class 'cat' is not an integer"),
    ("../a.jpg 1,2,3,4,0", r"train\.txt line 2: image path '\.\./a\.jpg' escapes"),
    ("/abs/a.jpg", r"train\.txt line 2: image path '/abs/a\.jpg' is absolute"),
    ("img/a.jpg,1,2,3,4,cat", r"train\.txt line 2: .*--format=csv"),
])
def test_syntax_errors_name_file_and_line(data, line, match):
    tmp_path, img = data
    anno = write(tmp_path, f"sub/b.png\n{line}\n")
    with pytest.raises(ConversionError, match=match):
        convert(tmp_path, img, anno)


def test_duplicate_image_line_is_an_error(data):
    tmp_path, img = data
    with pytest.raises(ConversionError, match=r"line 3: image 'a.jpg' already listed on line 1"):
        convert(tmp_path, img, write(tmp_path, "a.jpg\nsub/b.png\na.jpg 1,1,2,2,0\n"))


def test_class_out_of_range_skips_or_fails_strict(data):
    tmp_path, img = data
    anno = write(tmp_path, "a.jpg 1,2,30,40,3 1,2,30,40,1\n")
    meta = convert(tmp_path, img, anno)
    assert meta["num_objects"] == 1
    (skip,) = meta["skipped"]
    assert skip["where"].endswith("train.txt line 1 box 0") and "class index 3" in skip["reason"]
    with pytest.raises(ConversionError, match=r"line 1 box 0: class index 3"):
        convert(tmp_path, img, anno, strict=True)


def test_missing_image_degenerate_and_clipped_boxes(data):
    tmp_path, img = data
    anno = write(tmp_path, "a.jpg 5,5,5,9,0 50,40,80,60,1 -3,-2,10,10,0\nnope.jpg 1,1,3,3,0\n")
    meta = convert(tmp_path, img, anno)
    assert (meta["num_images"], meta["num_objects"], meta["clipped_boxes"]) == (1, 2, 2)
    reasons = sorted(s["reason"] for s in meta["skipped"])
    assert len(reasons) == 2 and "missing image" in reasons[0] and "zero-size" in reasons[1]
    (a,) = read_examples(str(tmp_path / "out" / "t"))
    np.testing.assert_allclose(a["yxyx"] * [48, 64, 48, 64], [[40, 50, 48, 64], [0, 0, 10, 10]], atol=1e-4)


def test_json_and_pbtxt_label_maps(data):
    tmp_path, img = data
    (tmp_path / "lm.json").write_text(json.dumps([{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]))
    meta = convert(tmp_path, img, write(tmp_path, "a.jpg 1,2,30,40,1\n"), label_map=str(tmp_path / "lm.json"))
    assert meta["objects_per_class_id"] == {"7": 0, "3": 1}
    (tmp_path / "lm.pbtxt").write_text("item {\n id: 1\n name: 'cat'\n}\nitem { name: \"dog\" id: 5 }\n")
    assert label_map_lib.read_label_map(str(tmp_path / "lm.pbtxt")) == {1: "cat", 5: "dog"}
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ConversionError, match=r"dup\.txt line 3: duplicate class 'cat'"):
        label_map_lib.read_label_map(str(tmp_path / "dup.txt"))
    (tmp_path / "bad.json").write_text('{"1": "cat",}')
    with pytest.raises(ConversionError, match=r"bad\.json line 1: invalid JSON"):
        label_map_lib.read_label_map(str(tmp_path / "bad.json"))


def test_voc_sample_label_files(shared_data):
    names = label_map_lib.read_label_map(str(shared_data / "voc2012_sample/data/database/voc.names"))
    assert list(names.values()) == list(label_map_lib.VOC_CLASSES)
    cvat = label_map_lib.read_label_map(str(shared_data / "voc2012_sample/data/database/gts/tfrecord_format/label_map.pbtxt"))
    assert len(cvat) == 20 and cvat[1] == "person" and set(cvat.values()) == set(label_map_lib.VOC_CLASSES)
    cvat_txt = label_map_lib.read_label_map(str(shared_data / "voc2012_sample/data/database/gts/imagenet_format/labelmap.txt"))
    assert cvat_txt == cvat  # same order and ids as the CVAT pbtxt: person=1, cat=2, ...


def test_keras_retinanet_csv(shared_data, tmp_path):
    """csv/annotations.csv: one row 'images/000001.jpg,47,239,194,370,person', classes.csv 'person,0'.
    (The numbers are the VOC dog box minus 1 on all four sides, labelled person, as upstream ships them.)"""
    base = shared_data / "keras_retinanet_test_data" / "csv"
    meta = txt.convert_txt(anno_path=str(base / "annotations.csv"), image_dir=str(base),
                           label_map=str(base / "classes.csv"), fmt="csv", output_file_prefix=str(tmp_path / "kr"),
                           num_shards=1, num_processes=1, progress=False)
    assert meta["label_map"] == [{"id": 1, "name": "person"}] and (meta["num_images"], meta["num_objects"]) == (1, 1)
    (a,) = read_examples(str(tmp_path / "kr"))
    assert (a["h"], a["w"], a["classes"], a["source_id"]) == (500, 353, [1], "images/000001")
    np.testing.assert_allclose(a["yxyx"] * [500, 353, 500, 353], [[239, 47, 370, 194]], atol=1e-4)


def test_csv_empty_rows_and_unknown_names(data):
    tmp_path, img = data
    (tmp_path / "classes.csv").write_text("cat,0\ndog,1\n")
    (tmp_path / "a.csv").write_text("a.jpg,1,2,30,40,dog\nsub/b.png,,,,,\na.jpg,3,3,9,9,emu\n")
    skips = SkipReport()
    records, lm = txt.build_records(str(tmp_path / "a.csv"), str(img), str(tmp_path / "classes.csv"), skips=skips,
                                    fmt="csv")
    assert lm == {1: "cat", 2: "dog"} and [len(r.objects) for r in records] == [1, 0]
    assert records[0].objects[0].label == 2 and "'emu'" in skips.entries[0]["reason"]
    assert skips.entries[0]["where"].endswith("a.csv line 3")


@pytest.mark.parametrize("how", ["script", "module", "console"])
def test_cli(data, how, console_script):
    tmp_path, img = data
    anno = write(tmp_path, "a.jpg 1,2,30,40,0\n")
    cmd = {"script": [sys.executable, os.path.join(REPO, "data_tools", "create_txt_tfrecord.py")],
           "module": [sys.executable, "-m", "data_tools.create_txt_tfrecord"]}.get(how)
    args = [f"--anno_path={anno}", f"--image_dir={img}", f"--label_map={tmp_path / 'classes.txt'}",
            f"--output_file_prefix={tmp_path / 'cli'}", "--num_shards=1"]
    env = dict(os.environ, PYTHONPATH=REPO)
    if how == "console":  # setup.py's entry point, run as pip's stub runs it
        cmd, env = console_script("create_txt_tfrecord")
    proc = subprocess.run(cmd + args, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(tmp_path / "cli.meta.json"))["num_objects"] == 1
    write(tmp_path, "a.jpg 1,2,30,40,9\n")
    proc = subprocess.run(cmd + args + ["--strict"], cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 1 and "train.txt line 1 box 0" in proc.stderr


@pytest.mark.parametrize("fmt", ["lines", "csv"])
def test_validation_split_reuses_the_training_sidecar_label_map(data, fmt):
    """--label_map=train.meta.json: val gets train's ids. csv: val's own class file orders the names
    differently (and lacks one), which would shift the ids; lines: the class index k means train's k-th class."""
    tmp_path, img = data
    if fmt == "csv":
        (tmp_path / "train_classes.csv").write_text("cat,0\ndog,1\nbird,2\n")
        (tmp_path / "val_classes.csv").write_text("bird,0\ndog,1\n")
        (tmp_path / "train.csv").write_text("a.jpg,1,2,30,40,dog\nsub/b.png,1,1,9,9,bird\n")
        (tmp_path / "val.csv").write_text("sub/b.png,1,1,9,9,bird\na.jpg,1,2,30,40,dog\n")
        train_map, train_anno, val_anno = tmp_path / "train_classes.csv", tmp_path / "train.csv", tmp_path / "val.csv"
    else:
        train_map, train_anno = tmp_path / "classes.txt", write(tmp_path, "a.jpg 1,2,30,40,1\nsub/b.png 1,1,9,9,2\n")
        (tmp_path / "val.txt").write_text("sub/b.png 1,1,9,9,2\na.jpg 1,2,30,40,1\n")
        val_anno = tmp_path / "val.txt"
    train = txt.convert_txt(anno_path=str(train_anno), image_dir=str(img), label_map=str(train_map), fmt=fmt,
                            output_file_prefix=str(tmp_path / "out" / "train"), num_shards=1, num_processes=1,
                            progress=False)
    assert [e["name"] for e in train["label_map"]] == ["cat", "dog", "bird"]
    if fmt == "csv":  # what the val class file alone would give: other ids
        _, own = txt.build_records(str(val_anno), str(img), str(tmp_path / "val_classes.csv"), skips=SkipReport(),
                                   fmt="csv")
        assert own == {1: "bird", 2: "dog"}
    proc = subprocess.run([sys.executable, "-m", "data_tools.create_txt_tfrecord", f"--anno_path={val_anno}",
                           f"--image_dir={img}", f"--label_map={tmp_path / 'out' / 'train.meta.json'}",
                           f"--format={fmt}", f"--output_file_prefix={tmp_path / 'out' / 'val'}", "--num_shards=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    val = json.loads((tmp_path / "out" / "val.meta.json").read_text())
    assert val["label_map"] == train["label_map"]
    got = {e["source_id"]: (e["classes"], e["texts"]) for e in read_examples(str(tmp_path / "out" / "val"))}
    assert got == {"sub/b": ([3], ["bird"]), "a": ([2], ["dog"])}
