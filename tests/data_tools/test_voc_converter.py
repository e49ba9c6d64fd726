"""VOC XML converter: real datasets (voc2012_sample, BCCD, keras-retinanet pascal) and bad inputs.

Pixel convention under test: VOC numbers are 1-based inclusive, so a record holds
[xmin - 1, ymin - 1, xmax, ymax] / size (see data_tools/create_voc_tfrecord.py).
"""
import glob
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from data_tools import create_voc_tfrecord as voc
from data_tools.records import ConversionError, SkipReport

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOC_SAMPLE = "voc2012_sample/data/database"


def read_examples(prefix):
    """All records of `{prefix}-*.tfrecord` as plain dicts (raw tf.train.Example features)."""
    import tensorflow as tf

    out = []
    for path in sorted(glob.glob(prefix + "-*-of-*.tfrecord")):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            get = lambda k, kind: list(getattr(f[k], kind).value) if k in f else []  # noqa: E731
            out.append({
                "filename": get("image/filename", "bytes_list")[0].decode(),
                "source_id": get("image/source_id", "bytes_list")[0].decode(),
                "height": get("image/height", "int64_list")[0], "width": get("image/width", "int64_list")[0],
                "boxes": np.stack([np.array(get(f"image/object/bbox/{k}", "float_list"), np.float32)
                                   for k in ("xmin", "ymin", "xmax", "ymax")], -1).reshape(-1, 4),
                "labels": get("image/object/class/label", "int64_list"),
                "texts": [t.decode() for t in get("image/object/class/text", "bytes_list")],
                "difficult": get("image/object/difficult", "int64_list"),
                "truncated": get("image/object/truncated", "int64_list"),
                "raw": raw,
            })
    return out


def xml_objects(xml_path):
    """Independent oracle: (name, [xmin, ymin, xmax, ymax] raw floats, difficult, truncated), W, H."""
    root = ET.parse(xml_path).getroot()
    objs = []
    for o in root.findall("object"):
        bb = o.find("bndbox")
        flag = lambda tag: int(float(o.findtext(tag) or 0))  # noqa: E731
        objs.append((o.findtext("name").strip(), [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
                     flag("difficult"), flag("truncated")))
    return objs, int(root.findtext("size/width")), int(root.findtext("size/height"))


def expected_normalised(raw, width, height):
    xmin, ymin, xmax, ymax = raw
    return np.array([(xmin - 1) / width, (ymin - 1) / height, xmax / width, ymax / height], np.float32)


def check_against_xml(examples, xml_for, label_ids, skipped=()):
    """Every XML object (except the `skipped` (stem, index) ones) is in the records, same order."""
    total = 0
    for ex in examples:
        objs, w, h = xml_objects(xml_for(ex["source_id"]))
        assert (ex["width"], ex["height"]) == (w, h), ex["source_id"]
        kept = [o for i, o in enumerate(objs) if (ex["source_id"], i) not in skipped]
        assert ex["texts"] == [o[0] for o in kept], ex["source_id"]
        assert ex["labels"] == [label_ids[o[0]] for o in kept]
        want = np.stack([expected_normalised(o[1], w, h) for o in kept]) if kept else np.zeros((0, 4), np.float32)
        np.testing.assert_array_equal(ex["boxes"], want, err_msg=ex["source_id"])  # float32 exact
        assert ex["difficult"] == [o[2] for o in kept] and ex["truncated"] == [o[3] for o in kept]
        total += len(kept)
    return total


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def voc2012_converted(shared_data, tmp_path_factory):
    base = shared_data / VOC_SAMPLE
    prefix = str(tmp_path_factory.mktemp("voc2012") / "voc")
    meta = voc.convert_voc(output_file_prefix=prefix, annotations_dir=str(base / "gts/pascalvoc_format"),
                           images_dir=str(base / "images"), num_shards=2, num_processes=1, progress=False)
    return base, prefix, meta


def test_voc2012_sample_every_object_matches_the_xml(voc2012_converted):
    base, prefix, meta = voc2012_converted
    assert (meta["num_images"], meta["num_objects"], meta["skipped"]) == (100, 273, [])
    assert meta["objects_per_class"]["person"] == 91 and meta["objects_per_class"]["motorbike"] == 5
    assert [e["name"] for e in meta["label_map"]] == open(base / "voc.names").read().split()
    examples = read_examples(prefix)
    ids = {e["name"]: e["id"] for e in meta["label_map"]}
    n = check_against_xml(examples, lambda s: base / "gts/pascalvoc_format" / f"{s}.xml", ids)
    assert n == 273 and sum(sum(e["difficult"]) for e in examples) == 38
    assert sum(sum(e["truncated"]) for e in examples) == 137


def test_voc2012_sample_agrees_with_its_coco_json_through_the_coco_converter(voc2012_converted, tmp_path):
    """The COCO JSON shipped with the sample has bbox = [xmin, ymin, xmax-xmin, ymax-ymin] from the raw VOC
    numbers: xmax/ymax agree exactly, xmin/ymin are 1 px larger than ours (our -1 for 1-based indices)."""
    from data_tools.create_coco_tfrecord import convert_coco

    base, prefix, _ = voc2012_converted
    coco_prefix = str(tmp_path / "coco")
    meta = convert_coco(image_dir=str(base / "images"), object_annotations_file=str(base / "gts/coco_format_v1/instances_default.json"),
                        output_file_prefix=coco_prefix, num_shards=1, num_processes=1, progress=False)
    assert (meta["num_images"], meta["num_objects"]) == (100, 273)
    ours = {e["filename"]: e for e in read_examples(prefix)}
    theirs = {e["filename"]: e for e in read_examples(coco_prefix)}
    assert ours.keys() == theirs.keys()
    for name, a in ours.items():
        b = theirs[name]
        assert sorted(a["texts"]) == sorted(b["texts"]), name
        size = np.array([a["width"], a["height"]] * 2, np.float64)
        pa = a["boxes"].astype(np.float64) * size  # back to pixels
        pb = b["boxes"].astype(np.float64) * size
        order_a = np.lexsort(pa[:, ::-1].T)
        order_b = np.lexsort((pb - [1, 1, 0, 0])[:, ::-1].T)
        diff = pb[order_b] - pa[order_a]
        np.testing.assert_allclose(diff, np.tile([1.0, 1.0, 0.0, 0.0], (len(diff), 1)), atol=1e-3, err_msg=name)
        assert [a["texts"][i] for i in order_a] == [b["texts"][i] for i in order_b]


def test_cvat_tfrecord_decodes_and_matches_our_conversion(voc2012_converted):
    """default.tfrecord (CVAT export, no image bytes) decodes with decode_example; its boxes are the raw VOC
    numbers / size, so xmax/ymax agree with ours to 1e-6 and xmin/ymin are exactly 1 px (1/W, 1/H) larger."""
    import tensorflow as tf

    from ssd_tf.data.decoder import decode_example

    base, prefix, _ = voc2012_converted
    ours = {e["filename"]: e for e in read_examples(prefix)}
    seen = 0
    for raw in tf.data.TFRecordDataset(str(base / "gts/tfrecord_format/default.tfrecord")):
        d = decode_example(raw)
        name = d["filename"].numpy().decode()
        mine = ours[name]
        h, w = int(d["height"]), int(d["width"])
        assert (h, w) == (mine["height"], mine["width"])
        assert d["image"].shape == (h, w, 3)  # empty image/encoded -> blank image of the stated size
        yxyx = d["boxes"].numpy()
        theirs = yxyx[:, [1, 0, 3, 2]].astype(np.float64) * [w, h, w, h]
        mine_px = mine["boxes"].astype(np.float64) * [w, h, w, h]
        assert len(theirs) == len(mine_px), name
        key = lambda b: np.lexsort(np.round(b[:, [3, 2]], 2).T)  # noqa: E731  (order by xmax, ymax)
        diff = theirs[key(theirs)] - mine_px[key(mine_px)]
        np.testing.assert_allclose(diff, np.tile([1.0, 1.0, 0.0, 0.0], (len(diff), 1)), atol=1e-3, err_msg=name)
        seen += 1
    assert seen == 100


def test_bccd_all_sets_two_zero_size_boxes_skipped(shared_data, tmp_path):
    root = shared_data / "bccd"
    prefix = str(tmp_path / "bccd")
    meta = voc.convert_voc(output_file_prefix=prefix, data_dir=str(root), years="BCCD", set_name="trainval,test",
                           label_map="discover", num_shards=2, num_processes=1, progress=False)
    assert [e["name"] for e in meta["label_map"]] == ["Platelets", "RBC", "WBC"]
    assert meta["num_images"] == 364 and meta["num_objects"] == 4888 - 2
    assert meta["objects_per_class"] == {"Platelets": 361, "RBC": 4155 - 2, "WBC": 372}
    skipped = meta["skipped"]
    assert len(skipped) == 2 and all(s["kind"] == "box" and "zero-size box in the XML" in s["reason"] for s in skipped)
    stems = sorted(os.path.basename(s["where"].split(" object ")[0]) for s in skipped)
    assert stems == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    skipped_ids = set()
    for s in skipped:
        stem, index = s["where"].split(" object ")
        objs, _, _ = xml_objects(stem)
        assert objs[int(index)][1] in ([504, 337, 504, 337], [181, 329, 181, 329])
        skipped_ids.add((os.path.basename(stem)[:-4], int(index)))
    examples = read_examples(prefix)
    ids = {e["name"]: e["id"] for e in meta["label_map"]}
    n = check_against_xml(examples, lambda s: root / "BCCD/Annotations" / f"{s}.xml", ids, skipped_ids)
    assert n == 4886
    # xmax == 640 is the last pixel column: normalised exactly 1.0, not clipped.
    assert meta["clipped_boxes"] == 0 and max(float(e["boxes"][:, 2].max()) for e in examples) == 1.0


def test_keras_retinanet_pascal_layout(shared_data, tmp_path):
    prefix = str(tmp_path / "kr")
    # train.txt and val.txt both list 000001: merged sets take it once.
    meta = voc.convert_voc(output_file_prefix=prefix, data_dir=str(shared_data / "keras_retinanet_test_data"),
                           years=["pascal"], set_name="train,val", num_shards=1, num_processes=1, progress=False)
    assert (meta["num_images"], meta["num_objects"]) == (1, 2)
    (ex,) = read_examples(prefix)
    assert ex["texts"] == ["dog", "person"] and ex["labels"] == [12, 15] and ex["truncated"] == [1, 1]
    np.testing.assert_allclose(ex["boxes"] * [353, 500, 353, 500], [[47, 239, 195, 371], [7, 11, 352, 498]], atol=1e-4)


# ------------------------------------------------------------------------------------------- bad inputs


def _jpeg(path, w=40, h=30):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 150)).save(path, "JPEG")


def _xml(path, filename, objects, w=40, h=30):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><truncated>0</truncated>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
                f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def loose(tmp_path):
    ann, img = tmp_path / "ann", tmp_path / "img"
    _jpeg(str(img / "a.jpg"))
    _xml(str(ann / "a.xml"), "a.jpg", [("cat", (1, 1, 10, 10), 0)])
    return tmp_path, ann, img


def convert(tmp_path, ann, img, **kw):
    kw.setdefault("label_map", "voc")
    return voc.convert_voc(output_file_prefix=str(tmp_path / "out" / "x"), annotations_dir=str(ann),
                           images_dir=str(img), num_shards=1, num_processes=1, progress=False, **kw)


def test_malformed_xml_skips_the_image_or_fails_under_strict(loose):
    tmp_path, ann, img = loose
    _jpeg(str(img / "b.jpg"))
    (ann / "b.xml").write_text("<annotation><filename>b.jpg</filename><object>")
    meta = convert(tmp_path, ann, img)
    assert meta["num_images"] == 1
    (skip,) = meta["skipped"]
    assert skip["kind"] == "image" and skip["where"].endswith("b.xml") and "malformed XML" in skip["reason"]
    with pytest.raises(ConversionError, match=r"b\.xml.*malformed XML"):
        convert(tmp_path, ann, img, strict=True)


def test_entity_expansion_is_refused_as_malformed(loose):
    tmp_path, ann, img = loose
    # The entity expands to a valid file name and the object is valid: only defusedxml stops this file.
    bomb = ann / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "a.jpg">]>'
                    "<annotation><filename>&x;</filename><object><name>cat</name><bndbox><xmin>1</xmin>"
                    "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    assert ET.parse(bomb).getroot().findtext("filename") == "a.jpg"  # the standard parser would convert it
    meta = convert(tmp_path, ann, img)
    assert meta["num_images"] == 1 and meta["num_objects"] == 1  # a.xml only
    (skip,) = meta["skipped"]
    assert skip["kind"] == "image" and skip["where"].endswith("bomb.xml")
    assert skip["reason"].startswith("malformed XML (EntitiesForbidden"), skip["reason"]


@pytest.mark.parametrize("filename", ["../a.jpg", "sub/../../a.jpg", "/etc/passwd", "..\\a.jpg", "C:\\x\\a.jpg"])
def test_filename_escaping_the_image_dir_is_an_error_naming_the_xml(loose, filename):
    tmp_path, ann, img = loose
    _xml(str(ann / "evil.xml"), filename, [("cat", (1, 1, 5, 5), 0)])
    with pytest.raises(ConversionError, match=r"evil\.xml.*<filename>"):
        convert(tmp_path, ann, img)


def test_unknown_class_is_an_error_listing_the_names_or_a_counted_skip(loose):
    tmp_path, ann, img = loose
    _xml(str(ann / "a.xml"), "a.jpg", [("cat", (1, 1, 10, 10), 0), ("unicorn", (2, 2, 8, 8), 0),
                                        ("emu", (2, 2, 8, 8), 0), ("unicorn", (3, 3, 8, 8), 0)])
    with pytest.raises(ConversionError) as err:
        convert(tmp_path, ann, img)
    msg = str(err.value)
    assert "3 objects of 2 classes not in the label map (the 20 VOC classes): 'emu' (1), 'unicorn' (2)" in msg
    assert "a.xml object 1" in msg and "--label_map=discover" in msg and "label map file" in msg
    assert "--skip_unknown_classes" in msg
    assert not (tmp_path / "out").exists()  # nothing written
    meta = convert(tmp_path, ann, img, skip_unknown_classes=True)  # counted skips, as before
    assert meta["num_objects"] == 1 and meta["skipped_counts"] == {"box": 3}
    skip = meta["skipped"][0]
    assert skip["where"].endswith("a.xml object 1") and "'unicorn' is not in the label map" in skip["reason"]
    with pytest.raises(ConversionError, match=r"a\.xml object 1.*unicorn"):
        convert(tmp_path, ann, img, strict=True, skip_unknown_classes=True)
    meta = convert(tmp_path, ann, img, label_map="discover")  # discovered names: sorted
    assert [e["name"] for e in meta["label_map"]] == ["cat", "emu", "unicorn"] and meta["num_objects"] == 4


def test_bccd_with_the_default_voc_label_map_is_an_error(shared_data, tmp_path):
    """BCCD (RBC/WBC/Platelets) with the default 20-class map used to become 364 images without objects and
    exit 0; the README's VOC command line on it now says what to do."""
    cmd = [sys.executable, "-m", "data_tools.create_voc_tfrecord", f"--data_dir={shared_data / 'bccd'}",
           "--year=BCCD", "--set=trainval", f"--output_file_prefix={tmp_path / 'bccd'}", "--num_shards=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "classes not in the label map (the 20 VOC classes): 'Platelets' (" in proc.stderr
    assert "'RBC' (" in proc.stderr and "'WBC' (" in proc.stderr and "--label_map=discover" in proc.stderr
    assert not list(tmp_path.iterdir())
    proc = subprocess.run(cmd + ["--label_map=discover"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "bccd.meta.json").read_text())
    assert [e["name"] for e in meta["label_map"]] == ["Platelets", "RBC", "WBC"] and meta["num_objects"] > 3000


def test_validation_split_reuses_the_training_sidecar_label_map(tmp_path):
    """discover on train, then val with --label_map=train.meta.json: the same ids, although val lacks a class
    (discover on val alone would shift them) and lists its names in another order."""
    for split, objects in (("train", [("dog", (1, 1, 9, 9), 0), ("cat", (2, 2, 9, 9), 0), ("emu", (3, 3, 9, 9), 0)]),
                           ("val", [("emu", (1, 1, 9, 9), 0), ("dog", (2, 2, 9, 9), 0)])):
        _jpeg(str(tmp_path / split / "img" / "a.jpg"))
        _xml(str(tmp_path / split / "ann" / "a.xml"), "a.jpg", objects)
    kw = dict(num_shards=1, num_processes=1, progress=False)
    train = voc.convert_voc(output_file_prefix=str(tmp_path / "out" / "train"), annotations_dir=str(tmp_path / "train" / "ann"),
                            images_dir=str(tmp_path / "train" / "img"), label_map="discover", **kw)
    assert train["label_map"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "emu"}]
    alone = voc.convert_voc(output_file_prefix=str(tmp_path / "alone" / "val"), annotations_dir=str(tmp_path / "val" / "ann"),
                            images_dir=str(tmp_path / "val" / "img"), label_map="discover", **kw)
    assert alone["label_map"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "emu"}]  # the shift the sidecar avoids
    cmd = [sys.executable, "-m", "data_tools.create_voc_tfrecord", f"--annotations_dir={tmp_path / 'val' / 'ann'}",
           f"--images_dir={tmp_path / 'val' / 'img'}", f"--label_map={tmp_path / 'out' / 'train.meta.json'}",
           f"--output_file_prefix={tmp_path / 'out' / 'val'}", "--num_shards=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    val = json.loads((tmp_path / "out" / "val.meta.json").read_text())
    assert val["label_map"] == train["label_map"]
    (ex,) = read_examples(str(tmp_path / "out" / "val"))
    assert ex["texts"] == ["emu", "dog"] and ex["labels"] == [3, 2]


def test_label_map_file_sets_ids(loose):
    tmp_path, ann, img = loose
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    meta = convert(tmp_path, ann, img, label_map=str(tmp_path / "labels.txt"))
    (ex,) = read_examples(str(tmp_path / "out" / "x"))
    assert meta["label_map"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}] and ex["labels"] == [2]


def test_zero_size_and_out_of_image_boxes(loose):
    tmp_path, ann, img = loose
    # 40x30 image. VOC (5,3,2,9) -> [4,2,2,9] inverted (writer); (7,7,7,9): xmin == xmax in the XML, a point
    # (parser); (30,20,55,45) -> clipped to [29,19,40,30]; (5,5,6,6) -> [4,4,6,6], 2x2 px.
    _xml(str(ann / "a.xml"), "a.jpg", [("cat", (5, 3, 2, 9), 0), ("cat", (7, 7, 7, 9), 0),
                                        ("cat", (30, 20, 55, 45), 0), ("cat", (5, 5, 6, 6), 0)])
    meta = convert(tmp_path, ann, img)
    reasons = {s["where"].rsplit(" ", 1)[1]: s["reason"] for s in meta["skipped"]}
    assert len(meta["skipped"]) == 2 and "negative box size" in reasons["0"] and "zero-size" in reasons["1"]
    assert meta["clipped_boxes"] == 1 and meta["num_objects"] == 2
    (ex,) = read_examples(str(tmp_path / "out" / "x"))
    np.testing.assert_allclose(ex["boxes"] * [40, 30, 40, 30], [[29, 19, 40, 30], [4, 4, 6, 6]], atol=1e-4)
    with pytest.raises(ConversionError, match=r"a\.xml object [01]"):
        convert(tmp_path, ann, img, strict=True)


def test_missing_image_and_size_mismatch_skip_the_image(loose):
    tmp_path, ann, img = loose
    _xml(str(ann / "gone.xml"), "gone.jpg", [("cat", (1, 1, 5, 5), 0)])
    _jpeg(str(img / "big.jpg"), w=50, h=30)
    _xml(str(ann / "big.xml"), "big.jpg", [("cat", (1, 1, 5, 5), 0)], w=40, h=30)
    meta = convert(tmp_path, ann, img)
    assert meta["num_images"] == 1
    by_file = {os.path.basename(s["where"]): s["reason"] for s in meta["skipped"]}
    assert "missing image file" in by_file["gone.xml"]
    assert "30x50" in by_file["big.xml"] and "30x40" in by_file["big.xml"]
    with pytest.raises(ConversionError, match="big.xml|gone.xml"):
        convert(tmp_path, ann, img, strict=True)


def test_float_coordinates_and_continuous_convention(loose):
    tmp_path, ann, img = loose
    _xml(str(ann / "a.xml"), "a.jpg", [("cat", ("10.5", "3.0", "20.25", "12.0"), 1)])
    convert(tmp_path, ann, img)
    (ex,) = read_examples(str(tmp_path / "out" / "x"))
    np.testing.assert_allclose(ex["boxes"][0] * [40, 30, 40, 30], [9.5, 2.0, 20.25, 12.0], atol=1e-5)
    assert ex["difficult"] == [1]
    convert(tmp_path, ann, img, pixel_convention="continuous")
    (ex,) = read_examples(str(tmp_path / "out" / "x"))
    np.testing.assert_allclose(ex["boxes"][0] * [40, 30, 40, 30], [10.5, 3.0, 20.25, 12.0], atol=1e-5)


def test_bad_coordinate_text_skips_the_box(loose):
    tmp_path, ann, img = loose
    _xml(str(ann / "a.xml"), "a.jpg", [("cat", ("ten", 1, 5, 5), 0), ("cat", (1, 1, 5, 5), 0)])
    meta = convert(tmp_path, ann, img)
    assert meta["num_objects"] == 1 and "'ten' is not a number" in meta["skipped"][0]["reason"]


def test_image_without_objects_is_kept(loose):
    tmp_path, ann, img = loose
    _xml(str(ann / "a.xml"), "a.jpg", [])
    meta = convert(tmp_path, ann, img)
    assert (meta["num_images"], meta["num_objects"], meta["images_without_objects"]) == (1, 0, 1)


def test_devkit_layout_merges_years_and_refuses_duplicate_ids(tmp_path):
    for year, stem in (("VOC2007", "000001"), ("VOC2012", "2008_000001")):
        _jpeg(str(tmp_path / year / "JPEGImages" / f"{stem}.jpg"))
        _xml(str(tmp_path / year / "Annotations" / f"{stem}.xml"), f"{stem}.jpg", [("dog", (1, 1, 9, 9), 0)])
        os.makedirs(tmp_path / year / "ImageSets" / "Main")
        (tmp_path / year / "ImageSets" / "Main" / "trainval.txt").write_text(f"{stem}\n")
    entries = voc.devkit_entries(str(tmp_path), "VOC2007,VOC2012", "trainval")
    assert [e[2] for e in entries] == ["000001", "2008_000001"]
    (tmp_path / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").write_text("2008_000001\n000001\n")
    _xml(str(tmp_path / "VOC2012" / "Annotations" / "000001.xml"), "000001.jpg", [])
    with pytest.raises(ConversionError, match="appears twice"):
        voc.build_records(voc.devkit_entries(str(tmp_path), "VOC2007,VOC2012", "trainval"), skips=SkipReport())
    with pytest.raises(ConversionError, match="set file not found"):
        voc.devkit_entries(str(tmp_path), "VOC2007", "test")


# ------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("how", ["script", "module", "console"])
def test_cli_entry_points(loose, how, console_script):
    tmp_path, ann, img = loose
    prefix = str(tmp_path / "cli" / how)
    args = [f"--annotations_dir={ann}", f"--images_dir={img}", f"--output_file_prefix={prefix}", "--num_shards=1"]
    env = dict(os.environ, PYTHONPATH=REPO if how == "module" else os.environ.get("PYTHONPATH", ""))
    cmd = {"script": [sys.executable, os.path.join(REPO, "data_tools", "create_voc_tfrecord.py")],
           "module": [sys.executable, "-m", "data_tools.create_voc_tfrecord"]}.get(how)
    if how == "console":  # setup.py's entry point, run as pip's stub runs it
        cmd, env = console_script("create_voc_tfrecord")
    proc = subprocess.run(cmd + args, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.load(open(prefix + ".meta.json"))["num_objects"] == 1
    _xml(str(ann / "evil.xml"), "../x.jpg", [])
    proc = subprocess.run(cmd + args, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and "evil.xml" in proc.stderr
    os.remove(ann / "evil.xml")


def test_cvat_voc_export_with_float_coordinates_matches_the_original_xml(shared_data):
    """imagenet_format: CVAT's VOC export of the same GT (floats like "174.0", empty <depth>, no <difficult> /
    <truncated>, its own id order in ImageSets/Main/default.txt) parses to the same boxes."""
    base = shared_data / VOC_SAMPLE / "gts"
    images = str(shared_data / VOC_SAMPLE / "images")
    cvat_entries = voc.loose_entries(str(base / "imagenet_format/Annotations"), images,
                                     str(base / "imagenet_format/ImageSets/Main/default.txt"))
    cvat, _ = voc.build_records(cvat_entries, skips=SkipReport(strict=True))
    orig, _ = voc.build_records(voc.loose_entries(str(base / "pascalvoc_format"), images), skips=SkipReport(strict=True))
    assert [r.source_id for r in cvat] != [r.source_id for r in orig]  # different order...
    orig = {r.source_id: r for r in orig}
    assert sorted(orig) == sorted(r.source_id for r in cvat)  # ...same images
    for r in cvat:
        o = orig[r.source_id]
        assert (r.image_path, r.width, r.height) == (o.image_path, o.width, o.height)
        key = lambda a: (a.text, a.xmin, a.ymin, a.xmax, a.ymax)  # noqa: E731
        assert sorted(map(key, r.objects)) == sorted(map(key, o.objects)), r.source_id
        assert not any(a.difficult or a.truncated for a in r.objects)


def test_missing_size_leaves_it_to_the_image(tmp_path):
    ann, img = tmp_path / "ann", tmp_path / "img"
    _jpeg(str(img / "a.jpg"), w=40, h=30)
    os.makedirs(ann)
    (ann / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                               "<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>")
    (record,), _ = voc.build_records(voc.loose_entries(str(ann), str(img)), skips=SkipReport())
    # no <filename>: <id>.jpg; no <size>: None (the writer takes the image's)
    assert (record.image_path, record.height, record.width) == (str(img / "a.jpg"), None, None)
    assert (record.objects[0].xmin, record.objects[0].xmax) == (0.0, 40.0)
