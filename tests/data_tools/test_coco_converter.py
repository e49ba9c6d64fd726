"""create_coco_tfrecord on real COCO-format data (../shared/data) and on broken synthetic input."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_tools import writer
from data_tools.create_coco_tfrecord import convert_coco, parse_coco
from data_tools.records import ConversionError, SkipReport

REPO = pathlib.Path(__file__).resolve().parents[2]


def _records_by_source_id(prefix, num_shards):
    tf = pytest.importorskip("tensorflow")
    out = {}
    for k in range(num_shards):
        for raw in writer.read_records(writer.shard_path(str(prefix), k, num_shards)):
            e = tf.train.Example.FromString(raw)
            f = e.features.feature
            out[f["image/source_id"].bytes_list.value[0].decode()] = {
                k2: list(getattr(v, v.WhichOneof("kind")).value) for k2, v in f.items()}
    return out


def _check_against_source(ann_file, image_dir, prefix, num_shards=2, **kw):
    """Every source annotation is in the records with the same class / box (float32) / crowd / area."""
    meta = convert_coco(image_dir=str(image_dir), object_annotations_file=str(ann_file),
                        output_file_prefix=str(prefix), num_shards=num_shards, num_processes=1, progress=False, **kw)
    src = json.loads(pathlib.Path(ann_file).read_text())
    recs = _records_by_source_id(prefix, num_shards)
    assert meta["label_map"] == [{"id": c["id"], "name": c["name"]} for c in src["categories"]]  # JSON order
    assert len(recs) == meta["num_images"] == len(src["images"])
    sizes = {i["id"]: (i["width"], i["height"]) for i in src["images"]}

    def degenerate(a):  # what the writer must skip: empty after clipping to the image
        (x, y, w, h), (iw, ih) = a["bbox"], sizes[a["image_id"]]
        return w <= 0 or h <= 0 or min(x + w, iw) <= max(x, 0) or min(y + h, ih) <= max(y, 0)

    by_image, skipped = {}, []
    for a in src["annotations"]:
        if degenerate(a):
            skipped.append(a["id"])
        else:
            by_image.setdefault(a["image_id"], []).append(a)
    names = {c["id"]: c["name"] for c in src["categories"]}
    for img in src["images"]:
        r = recs[str(img["id"])]
        assert r["image/encoded"][0] == (pathlib.Path(image_dir) / img["file_name"]).read_bytes()
        assert (r["image/height"], r["image/width"]) == ([img["height"]], [img["width"]])
        anns = by_image.get(img["id"], [])
        assert r["image/object/class/label"] == [a["category_id"] for a in anns]
        assert r["image/object/class/text"] == [names[a["category_id"]].encode() for a in anns]
        assert r["image/object/is_crowd"] == [a["iscrowd"] for a in anns]
        w, h = img["width"], img["height"]
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        want = {"xmin": np.maximum(boxes[:, 0], 0) / w, "ymin": np.maximum(boxes[:, 1], 0) / h,
                "xmax": np.minimum(boxes[:, 0] + boxes[:, 2], w) / w,
                "ymax": np.minimum(boxes[:, 1] + boxes[:, 3], h) / h}
        for key, values in want.items():
            np.testing.assert_array_equal(np.float32(r[f"image/object/bbox/{key}"]), values.astype(np.float32))
        np.testing.assert_array_equal(np.float32(r["image/object/area"]), np.float32([a["area"] for a in anns]))
    assert meta["num_objects"] == len(src["annotations"]) - len(skipped)
    assert [e["where"].split("annotation id ")[1].split(" ")[0] for e in meta["skipped"]] == [str(i) for i in skipped]
    assert meta["images_without_objects"] == sum(1 for i in src["images"] if i["id"] not in by_image)
    counts = {}
    for a in (a for anns in by_image.values() for a in anns):
        counts[names[a["category_id"]]] = counts.get(names[a["category_id"]], 0) + 1
    assert {k: v for k, v in meta["objects_per_class"].items() if v} == counts
    return meta


def test_coco_tiny_both_splits(shared_data, tmp_path):
    root = shared_data / "coco_tiny"
    meta = _check_against_source(root / "annotations" / "instances_val2017.json", root / "val2017", tmp_path / "val")
    assert meta["num_images"] == 80 and meta["num_objects"] == 815 and len(meta["label_map"]) == 80
    meta = _check_against_source(root / "annotations" / "instances_train2017.json", root / "train2017",
                                 tmp_path / "train")
    assert meta["num_objects"] == 705


def test_keras_retinanet_coco_part(shared_data, tmp_path):
    root = shared_data / "keras_retinanet_test_data" / "coco"
    for split, n in (("train2017", 4), ("val2017", 19)):
        meta = _check_against_source(root / "annotations" / f"instances_{split}.json", root / "images" / split,
                                     tmp_path / split, num_shards=1)
        assert meta["num_objects"] == n


def test_panoptic_detection_format_json(shared_data, tmp_path):
    # panoptic_coco_detection_format.json is the instance-style file a user converts (133 categories,
    # RLE segmentations, stuff segments as boxes); panoptic_examples.json is panoptic PNG format.
    root = shared_data / "coco_panoptic_sample" / "sample_data"
    meta = _check_against_source(root / "panoptic_coco_detection_format.json", root / "input_images", tmp_path / "p")
    assert len(meta["label_map"]) == 133 and meta["num_objects"] == 50
    meta = convert_coco(image_dir=str(root / "input_images"), progress=False, num_shards=1,
                        object_annotations_file=str(root / "panoptic_coco_detection_format.json"),
                        output_file_prefix=str(tmp_path / "nocrowd"), skip_crowd=True)
    assert meta["num_objects"] == 47 and meta["source"]["crowd_boxes_dropped"] == 3


def test_voc2012_sample_coco_jsons(shared_data, tmp_path):
    gts = shared_data / "voc2012_sample" / "data" / "database" / "gts"
    images = shared_data / "voc2012_sample" / "data" / "database" / "images"
    meta = _check_against_source(gts / "coco_format_v1" / "instances_default.json", images, tmp_path / "v1")
    assert meta["num_images"] == 100 and meta["num_objects"] == 273
    assert [c["name"] for c in meta["label_map"][:3]] == ["person", "cat", "boat"]  # file order, not alphabetical
    v2 = gts / "coco_format_v2" / "instances_v2.json"
    with pytest.raises(ConversionError, match=r"instances_v2.json: images\[0\].*20180000001.*--allow_large_ids"):
        parse_coco(str(v2), str(images), skips=SkipReport())
    meta = _check_against_source(v2, images, tmp_path / "v2", allow_large_ids=True)
    assert meta["num_objects"] == 273


def _write(tmp_path, data, name="ann.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def _coco(images=None, annotations=None, categories=None):
    return {"images": images if images is not None else [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
            "annotations": annotations if annotations is not None else [],
            "categories": categories if categories is not None else [{"id": 1, "name": "cat"}]}


def _ann(i, **kw):
    return dict({"id": i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}, **kw)


@pytest.mark.parametrize("data,match", [
    ('{"images": [', r"malformed JSON at line 1 column 13"),
    ("[1, 2]", r"top level must be a JSON object"),
    (_coco(images=[{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]),
     r"images\[1\]: duplicate image id 1 \(first at images\[0\]\)"),
    (_coco(images=[{"id": 2**31, "file_name": "a.jpg"}]), r"images\[0\]: id 2147483648 is beyond 2147483647"),
    (_coco(images=[{"id": "7", "file_name": "a.jpg"}]), r"images\[0\]: id must be a non-negative integer"),
    (_coco(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]), r"duplicate category id 1"),
    (_coco(annotations=[_ann(5, bbox=[1, 2, 3])]), r"annotation id 5 \(annotations\[0\]\): 'bbox' must be 4 numbers"),
    (_coco(images=[{"id": 1, "file_name": "a.jpg", "height": 0, "width": 4}]), r"'height' must be a positive"),
])
def test_malformed_coco_is_an_error_naming_file_and_object(tmp_path, data, match):
    path = _write(tmp_path, data)
    with pytest.raises(ConversionError, match=match) as err:
        parse_coco(path, str(tmp_path), skips=SkipReport())
    assert "ann.json" in str(err.value)


def test_unknown_ids_are_skipped_and_strict_raises(tmp_path):
    path = _write(tmp_path, _coco(annotations=[_ann(1), _ann(2, category_id=9), _ann(3, image_id=4),
                                               _ann(4, iscrowd=1)]))
    skips = SkipReport()
    records, label_map, info = parse_coco(path, str(tmp_path), skips=skips)
    assert [e["reason"] for e in skips.entries] == ["unknown category_id 9 (not in 'categories')",
                                                    "unknown image_id 4 (not in 'images')"]
    assert "annotation id 2 (annotations[1])" in skips.entries[0]["where"]
    assert [o.is_crowd for o in records[0].objects] == [False, True]
    with pytest.raises(ConversionError, match="annotation id 2.*unknown category_id 9"):
        parse_coco(path, str(tmp_path), skips=SkipReport(strict=True))


def test_wrong_image_dir_or_no_images_is_an_error_naming_it(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "imgs" / "a.jpg")
    ann = _write(tmp_path, _coco(annotations=[_ann(1)]))
    kw = dict(object_annotations_file=ann, num_shards=1, num_processes=1, progress=False)
    with pytest.raises(ConversionError, match=r"--image_dir .*nowhere: not a directory"):
        convert_coco(image_dir=str(tmp_path / "nowhere"), output_file_prefix=str(tmp_path / "o1" / "x"), **kw)
    with pytest.raises(ConversionError, match=r"none of the 1 image files exists \(the first: .*elsewhere/a\.jpg\)"):
        convert_coco(image_dir=str(tmp_path / "elsewhere"), output_file_prefix=str(tmp_path / "o2" / "x"), **kw)
    empty = _write(tmp_path, _coco(images=[], annotations=[]), name="empty.json")
    with pytest.raises(ConversionError, match=r"empty\.json: 'images' is empty: no image to convert"):
        convert_coco(image_dir=str(tmp_path / "imgs"), output_file_prefix=str(tmp_path / "o3" / "x"),
                     **dict(kw, object_annotations_file=empty))
    assert not list(tmp_path.glob("o*/x*"))
    r = subprocess.run([sys.executable, "-m", "data_tools.create_coco_tfrecord", f"--image_dir={tmp_path / 'elsewhere'}",
                        f"--object_annotations_file={ann}", f"--output_file_prefix={tmp_path / 'o4' / 'x'}"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1 and "none of the 1 image files exists" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name,what", [("../a.jpg", "escapes"), ("sub/../../a.jpg", "escapes"),
                                       ("/etc/passwd", "is an absolute path"), ("..\\a.jpg", "escapes"),
                                       ("C:\\x\\a.jpg", "is an absolute path")])
def test_file_name_escaping_the_image_dir_is_an_error(tmp_path, name, what):
    path = _write(tmp_path, _coco(images=[{"id": 1, "file_name": "a.jpg"}, {"id": 7, "file_name": name}]))
    with pytest.raises(ConversionError) as err:
        parse_coco(path, str(tmp_path / "imgs"), skips=SkipReport())
    assert str(err.value).startswith(f"{path}: images[1] (id 7): file_name {name!r} {what}")
    assert "--image_dir" in str(err.value)


def test_cli_script_module_and_console_script(tmp_path, console_script):
    from PIL import Image

    Image.new("RGB", (10, 10), (9, 9, 9)).save(tmp_path / "a.jpg")
    ann = _write(tmp_path, _coco(annotations=[_ann(1), _ann(2, bbox=[4, 4, 0, 3])]))
    flags = [f"--image_dir={tmp_path}", f"--object_annotations_file={ann}", "--num_shards=2", "--num_processes=2"]
    console, env = console_script("create_coco_tfrecord")  # setup.py's entry point, run as pip's stub runs it
    runs = {
        "script": [sys.executable, str(REPO / "data_tools" / "create_coco_tfrecord.py")],
        "module": [sys.executable, "-m", "data_tools.create_coco_tfrecord"],
        "console": console,
    }
    outputs = {}
    for name, cmd in runs.items():
        r = subprocess.run(cmd + flags + [f"--output_file_prefix={tmp_path / name / 'x'}"], capture_output=True,
                           text=True, cwd=REPO if name == "module" else tmp_path, timeout=120,
                           env=env if name == "console" else None)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "wrote 1 images, 1 objects in 2 shards; skipped {'box': 1}" in r.stderr
        outputs[name] = [(tmp_path / name / f"x-{k:05d}-of-00002.tfrecord").read_bytes() for k in range(2)]
    assert outputs["script"] == outputs["module"] == outputs["console"]
    r = subprocess.run(runs["script"] + flags + ["--strict", f"--output_file_prefix={tmp_path / 's' / 'x'}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "annotation id 2" in r.stderr and "zero-size box" in r.stderr


def _records_as_tuples(records):
    return [(r.image_path, r.source_id, r.filename, r.height, r.width, r.where,
             [(float(o.xmin), float(o.ymin), float(o.xmax), float(o.ymax), o.label, o.text, o.is_crowd,
               None if o.area is None else float(o.area), o.where) for o in r.objects]) for r in records]


def test_fast_decoder_and_stdlib_fallback_agree(tmp_path, monkeypatch):
    """msgspec (fields we use only) and json.loads give the same records and skips, whatever the JSON holds."""
    from data_tools import create_coco_tfrecord as cc

    anns = [_ann(1, segmentation=[[1.5, 2, 3, 4, 5, 6]]), _ann("a7", iscrowd=1.0, area=None),
            _ann(None, bbox=[0.25, 1e-3, 2**40, 7], segmentation={"counts": "x},{y", "size": [10, 10]}),
            _ann(4, category_id=9), _ann(5, image_id=3), _ann(6, image_id=2, caption="]}, {\"id\": 1}")]
    anns[1].pop("area")
    images = [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10, "license": 3},
              {"id": 2, "file_name": "b.jpg"}]
    path = _write(tmp_path, _coco(images=images, annotations=anns, categories=[{"id": 1, "name": "cat"}]))
    fast_skips = SkipReport()
    fast, label_map, info = parse_coco(path, "imgs", skips=fast_skips)
    assert type(fast).__name__ == "CocoRecords" and len(fast) == 2
    monkeypatch.setattr(cc, "_DECODER", None)  # no .decode: AttributeError is no MsgspecError, so patch _load
    monkeypatch.setattr(cc, "msgspec", None)
    slow_skips = SkipReport()
    slow, label_map2, info2 = parse_coco(path, "imgs", skips=slow_skips)
    assert _records_as_tuples(fast) == _records_as_tuples(slow) and len(fast[0].objects) == 3
    assert (label_map, info) == (label_map2, info2) and fast_skips.entries == slow_skips.entries
    assert [o.where.split(" (")[0].rsplit(" ", 1)[1] for o in fast[0].objects] == ["1", "a7", "None"]
    assert fast[0].objects[1].is_crowd is True and fast[0].objects[1].area is None
    assert fast[0].objects[2].xmax == 0.25 + 2**40 and fast[1].height is None and fast[1:][0].filename == "b.jpg"


def test_input_msgspec_rejects_falls_back_to_json(tmp_path):
    """NaN / out-of-range numbers (json.loads reads them), a non-object annotation: same result or message as
    before; skips found before the fallback are not reported twice."""
    text = json.dumps(_coco(annotations=[_ann(1, category_id=5), _ann(2)]))
    out_of_range = text.replace('"bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}]', '"bbox": [1, 1e400, 3, 3]}]')
    nan = text.replace('"annotations"', '"info": NaN, "annotations"')
    assert "1e400" in out_of_range and "NaN" in nan
    for variant in (out_of_range, nan):  # msgspec rejects one annotation / the whole file
        skips = SkipReport()
        records, _, _ = parse_coco(_write(tmp_path, variant), str(tmp_path), skips=skips)
        assert [e["reason"] for e in skips.entries] == ["unknown category_id 5 (not in 'categories')"]
        assert records[0].objects[0].ymin == (float("inf") if variant is out_of_range else 1)
    path = _write(tmp_path, _coco(annotations=[_ann(1), 7]))
    with pytest.raises(ConversionError, match=r"ann.json: annotations\[1\]: expected an object"):
        parse_coco(path, str(tmp_path), skips=SkipReport())
    path = _write(tmp_path, '{"images": [], "categories": []}\n\n  ,')
    with pytest.raises(ConversionError, match=r"ann.json: malformed JSON at line 3 column 3: Extra data"):
        parse_coco(path, str(tmp_path), skips=SkipReport())


def test_writer_takes_coco_records_lazily_and_lists_alike(tmp_path):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (10, 10), (i * 40, 9, 9)).save(tmp_path / f"{i}.jpg")
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": 10, "width": 10} for i in range(5)]
    path = _write(tmp_path, _coco(images=images, annotations=[_ann(i + 1, image_id=i % 5 + 1) for i in range(9)]))
    records, label_map, info = parse_coco(path, str(tmp_path), skips=SkipReport())
    metas = {}
    for kind, recs in (("lazy", records), ("list", list(records)), ("generator", (r for r in records))):
        metas[kind] = writer.convert(recs, output_prefix=str(tmp_path / kind / "x"), num_shards=2, num_processes=2,
                                     label_map=label_map, skips=SkipReport(), source=info, progress=False)
    files = [f"x-0000{k}-of-00002.tfrecord" for k in range(2)] + ["x.meta.json"]
    for kind in ("list", "generator"):
        assert metas[kind] == metas["lazy"]
        for name in files:
            assert (tmp_path / kind / name).read_bytes() == (tmp_path / "lazy" / name).read_bytes()
    assert metas["lazy"]["num_objects"] == 9


@pytest.mark.parametrize("chunk", [48, 1 << 20])  # 48 bytes: every element spans windows
@pytest.mark.parametrize("indent", [None, 3])
@pytest.mark.parametrize("order", ["images,annotations,categories", "categories,annotations,images",
                                   "annotations,images,categories"])
def test_streaming_decoder_matches_whole_file_decode(tmp_path, monkeypatch, chunk, indent, order):
    """coco_stream (a ~1 MB window of the file) gives the same records and skips as decoding the whole
    file, with `},` / `}]` inside strings and nested objects, any key order, pretty-printed or not."""
    from data_tools import coco_stream
    from data_tools import create_coco_tfrecord as cc

    tricky = 'a "}, {\\"id\\": 5}]" b \\\\"}]'
    anns = [_ann(1, segmentation=[[1.5, 2, 3, 4, 5, 6]], caption=tricky),
            _ann(2, image_id=2, iscrowd=1, segmentation={"counts": "x},{y}]", "size": [10, 10]}),
            _ann(3, category_id=7, bbox=[1e-3, 2.5e2, 3, 4]), _ann(4, image_id=9),
            _ann(5, image_id=3, extra=[{"a": {"b": []}}, {}], area=None)]
    parts = {"images": [{"id": 1, "file_name": "},{x}].jpg", "height": 10, "width": 10},
                        {"id": 2, "file_name": "é.jpg", "note": {"k": "}]"}}, {"id": 3, "file_name": "c.jpg"}],
             "annotations": anns, "categories": [{"id": 7, "name": "}, x"}, {"id": 1, "name": "cat"}]}
    data = {"info": {"description": "}, {", "v": [1, {"x": "]"}]}, "type": "instances", "empty": [], "n": None}
    data.update((k, parts[k]) for k in order.split(","))
    data["licenses"] = [{"id": 1, "name": "}]"}]
    path = _write(tmp_path, json.dumps(data, indent=indent, ensure_ascii=False))

    streamed = []
    real = coco_stream.stream_coco
    monkeypatch.setattr(coco_stream, "CHUNK", chunk)
    monkeypatch.setattr(coco_stream, "_TAIL", chunk // 4)
    monkeypatch.setattr(coco_stream, "stream_coco", lambda *a: streamed.append(1) or real(*a))
    results = []
    for mode in ("stream", "whole", "stdlib"):
        if mode == "whole":
            monkeypatch.setattr(coco_stream, "stream_coco", lambda *a: (_ for _ in ()).throw(coco_stream.Unsupported()))
        if mode == "stdlib":
            monkeypatch.setattr(cc, "msgspec", None)
        skips = SkipReport()
        records, label_map, _ = parse_coco(path, "imgs", skips=skips)
        results.append((_records_as_tuples(records), label_map, skips.entries))
    assert streamed and results[0] == results[1] == results[2]
    assert [len(r[6]) for r in results[0][0]] == [2, 1, 1] and len(results[0][2]) == 1
    # and it really streamed: the parse did not fall back to the whole file
    monkeypatch.setattr(cc, "msgspec", __import__("msgspec"))
    images, categories, annotations = real(path, cc._Img, cc._Cat, cc._Ann)
    assert [i.file_name for i in images][0] == "},{x}].jpg" and [c.name for c in categories][0] == "}, x"
    assert [a.id for batch in annotations() for a in batch] == [1, 2, 3, 4, 5]
