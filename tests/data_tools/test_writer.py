"""data_tools.writer: TF-compatible shards, determinism, image/box checks, sidecar, resume after SIGKILL."""
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data_tools import writer
from data_tools.records import ConversionError, ImageRecord, ObjectAnnotation, SkipReport

REPO = pathlib.Path(__file__).resolve().parents[2]


def _image(path, w=40, h=30, mode="RGB", fmt="JPEG", seed=0, **save):
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    img.save(path, fmt, **save)
    return str(path)


def _obj(x0, y0, x1, y1, label=1, **kw):
    return ObjectAnnotation(x0, y0, x1, y1, label=label, text={1: "cat", 2: "dog"}.get(label, "?"), **kw)


def _convert(records, prefix, strict=False, num_shards=2, num_processes=1, progress=False, **kw):
    return writer.convert(records, output_prefix=str(prefix), num_shards=num_shards, num_processes=num_processes,
                          label_map={1: "cat", 2: "dog"}, skips=SkipReport(strict=strict), source={"test": True},
                          progress=progress, **kw)


def _examples(prefix, num_shards=2):
    tf = pytest.importorskip("tensorflow")
    out = []
    for k in range(num_shards):
        for raw in tf.data.TFRecordDataset(writer.shard_path(str(prefix), k, num_shards)):
            out.append(tf.train.Example.FromString(raw.numpy()))
    return out


def _feat(example, key):
    f = example.features.feature[key]
    return list(getattr(f, f.WhichOneof("kind")).value)


def test_shards_are_read_by_tensorflow_and_decode(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from ssd_tf.data.decoder import decode_example

    recs = [ImageRecord(_image(tmp_path / f"{i}.jpg", seed=i), str(i), f"{i}.jpg", 30, 40,
                        [_obj(4, 3, 20, 15, 1), _obj(10.5, 2.25, 39.5, 29, 2, is_crowd=True, area=77.0)],
                        where=f"img {i}") for i in range(5)]
    recs.append(ImageRecord(_image(tmp_path / "empty.jpg"), "empty", "empty.jpg", 30, 40, []))
    meta = _convert(recs, tmp_path / "out" / "train")
    assert meta["num_images"] == 6 and meta["num_objects"] == 10 and meta["images_without_objects"] == 1
    assert meta["objects_per_class"] == {"cat": 5, "dog": 5} and meta["skipped"] == []
    assert [s["file"] for s in meta["shards"]] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert json.loads((tmp_path / "out" / "train.meta.json").read_text()) == meta
    examples = _examples(tmp_path / "out" / "train")
    # image i -> shard i % 2, in order
    assert [_feat(e, "image/source_id")[0] for e in examples] == [b"0", b"2", b"4", b"1", b"3", b"empty"]
    e = examples[0]
    assert _feat(e, "image/encoded")[0] == (tmp_path / "0.jpg").read_bytes()  # stored as is
    assert _feat(e, "image/format") == [b"jpeg"]
    np.testing.assert_allclose(_feat(e, "image/object/bbox/xmin"), np.float32([4 / 40, 10.5 / 40]))
    np.testing.assert_allclose(_feat(e, "image/object/bbox/ymax"), np.float32([15 / 30, 29 / 30]))
    assert _feat(e, "image/object/class/label") == [1, 2] and _feat(e, "image/object/is_crowd") == [0, 1]
    np.testing.assert_allclose(_feat(e, "image/object/area"), [16 * 12, 77.0])
    # the pure-Python encoding is TF's deterministic serialization
    assert e.SerializeToString(deterministic=True) == list(writer.read_records(
        writer.shard_path(str(tmp_path / "out" / "train"), 0, 2)))[0]
    d = decode_example(tf.constant(examples[-1].SerializeToString()))
    assert d["image"].shape == (30, 40, 3) and d["boxes"].shape == (0, 4)
    want = np.asarray(Image.open(tmp_path / "empty.jpg").convert("RGB")).astype(int)
    assert np.abs(d["image"].numpy().astype(int) - want).mean() < 2.0  # IDCTs of TF and PIL differ slightly


def test_same_bytes_for_1_and_2_processes(tmp_path):
    recs = [ImageRecord(_image(tmp_path / f"{i}.jpg", seed=i), str(i), f"{i}.jpg", 30, 40, [_obj(1, 1, 9, 9)])
            for i in range(9)]
    recs[4].objects.append(_obj(5, 5, 5, 9))  # a skip, so the sidecar's skip order is exercised too
    _convert(recs, tmp_path / "a" / "x", num_shards=4, num_processes=1)
    _convert(recs, tmp_path / "b" / "x", num_shards=4, num_processes=2)
    for name in [f"x-{k:05d}-of-00004.tfrecord" for k in range(4)] + ["x.meta.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not (tmp_path / "a" / ".x.convert").exists()  # work dir removed when done


def test_bad_images_and_boxes_are_skipped_with_reasons(tmp_path):
    good = _image(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image")
    (tmp_path / "trailing.jpg").write_bytes(data + b"appended after EOI")  # valid: kept
    recs = [
        ImageRecord(good, "ok", "good.jpg", 30, 40, [
            _obj(0, 0, 0, 10, where="zero"), _obj(10, 10, 5, 20, where="negative"),
            _obj(50, 5, 60, 10, where="outside"), _obj(-5, -5, 10, 45, where="clipped"),
            _obj(float("nan"), 0, 5, 5, where="nan"), _obj(1, 1, 5, 5, label=7, where="unknown label"),
            _obj(40, 0, 45, 30, where="touching right edge"), _obj(2, 2, 8, 8, where="fine")]),
        ImageRecord(str(tmp_path / "trunc.jpg"), "trunc", "trunc.jpg", 30, 40, [_obj(1, 1, 5, 5)], where="rec trunc"),
        ImageRecord(str(tmp_path / "garbage.jpg"), "garbage", "garbage.jpg", None, None, []),
        ImageRecord(str(tmp_path / "missing.jpg"), "missing", "missing.jpg", 30, 40, []),
        ImageRecord(good, "wrong size", "good.jpg", 31, 40, [_obj(1, 1, 5, 5)]),
        ImageRecord(str(tmp_path / "trailing.jpg"), "trailing", "trailing.jpg", None, None, []),
    ]
    meta = _convert(recs, tmp_path / "out" / "x")
    reasons = {e["where"]: e["reason"] for e in meta["skipped"]}
    assert "zero-size box" in reasons["zero"] and "negative box size" in reasons["negative"]
    assert "no area inside the 40x30" in reasons["outside"] and "non-finite" in reasons["nan"]
    assert "unknown category id 7" in reasons["unknown label"]
    assert "touching right edge" in reasons and "after clipping" in reasons["touching right edge"]
    assert "no end-of-image marker" in reasons["rec trunc"] and "truncated" in reasons["rec trunc"]
    assert any("garbage.jpg" in r and "not" in r.lower() or "unsupported" in r for r in reasons.values())
    assert any("missing image file" in r and "missing.jpg" in r for r in reasons.values())
    assert any("image is 30x40 (HxW) but the annotation says 31x40" in r for r in reasons.values())
    assert meta["skipped_counts"] == {"box": 6, "image": 4}
    assert meta["num_images"] == 2 and meta["num_objects"] == 2 and meta["clipped_boxes"] == 1
    examples = {_feat(e, "image/source_id")[0]: e for e in _examples(tmp_path / "out" / "x")}
    np.testing.assert_allclose(_feat(examples[b"ok"], "image/object/bbox/ymax"), [1.0, 8 / 30])  # clipped
    np.testing.assert_allclose(_feat(examples[b"ok"], "image/object/area"), [10 * 30, 36])  # clipped area
    assert _feat(examples[b"trailing"], "image/object/bbox/xmin") == []  # no objects: kept, empty lists


@pytest.mark.parametrize("case", ["missing", "box", "truncated"])
def test_strict_turns_skips_into_errors_naming_the_file(tmp_path, case, capsys):
    good = _image(tmp_path / "good.jpg")
    recs = [ImageRecord(good, str(i), "good.jpg", 30, 40, [_obj(1, 1, 5, 5)], where=f"ann.json image {i}")
            for i in range(4)]
    if case == "missing":
        recs[3].image_path = str(tmp_path / "nope.jpg")
    elif case == "box":
        recs[3].objects.append(_obj(3, 3, 3, 9, where="ann.json annotation 17"))
    else:
        (tmp_path / "t.jpg").write_bytes(pathlib.Path(good).read_bytes()[:300])
        recs[3].image_path = str(tmp_path / "t.jpg")
    with pytest.raises(ConversionError) as err:
        _convert(recs, tmp_path / "out" / "x", strict=True, num_shards=4)
    msg = str(err.value)
    assert {"missing": "nope.jpg", "box": "annotation 17", "truncated": "t.jpg"}[case] in msg
    # "truncated" fails in shard 3 after shards 0-2 are written: none of them has a final name
    assert list((tmp_path / "out").glob("x-*-of-*.tfrecord")) == []
    assert not list((tmp_path / "out").rglob("*.incomplete"))
    if case == "truncated":  # the image fixed, a rerun reuses the three finished shards
        (tmp_path / "t.jpg").write_bytes(pathlib.Path(good).read_bytes())
        capsys.readouterr()
        meta = _convert(recs, tmp_path / "out" / "x", strict=True, num_shards=4, progress=True)
        assert "reusing 3 finished shard" in capsys.readouterr().err and meta["num_images"] == 4


def test_duplicate_source_ids_and_bad_arguments(tmp_path):
    good = _image(tmp_path / "good.jpg")
    recs = [ImageRecord(good, "7", "good.jpg", 30, 40, [], where="a.json image 1"),
            ImageRecord(good, "7", "good.jpg", 30, 40, [], where="a.json image 2")]
    with pytest.raises(ConversionError, match="duplicate source id '7'.*a.json image 1"):
        _convert(recs, tmp_path / "x")
    with pytest.raises(ValueError, match="num_shards"):
        _convert(recs[:1], tmp_path / "x", num_shards=0)
    with pytest.raises(ValueError, match="verify_images"):
        _convert(recs[:1], tmp_path / "x", verify_images="sometimes")


def test_formats_and_verify_full(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from ssd_tf.data.decoder import decode_example

    paths = {
        "gray": _image(tmp_path / "g.jpg", mode="L"),
        "cmyk": _image(tmp_path / "c.jpg", mode="CMYK", quality=95),
        "png": _image(tmp_path / "p.png", mode="RGBA", fmt="PNG"),
        "bmp": _image(tmp_path / "b.bmp", fmt="BMP"),
        "gif": _image(tmp_path / "a.gif", mode="P", fmt="GIF"),
        "tiff": _image(tmp_path / "t.tiff", fmt="TIFF"),
    }
    recs = [ImageRecord(p, k, os.path.basename(p), 30, 40, [_obj(1, 1, 5, 5)]) for k, p in paths.items()]
    meta = _convert(recs, tmp_path / "out" / "x", num_shards=1)
    assert meta["image_formats"] == {"jpeg": 2, "png": 4} and meta["reencoded_images"] == 3
    for e in _examples(tmp_path / "out" / "x", 1):
        key = _feat(e, "image/source_id")[0].decode()
        encoded = _feat(e, "image/encoded")[0]
        if key in ("gray", "cmyk", "png"):
            assert encoded == pathlib.Path(paths[key]).read_bytes()  # stored as is
        d = decode_example(tf.constant(e.SerializeToString()))
        assert d["image"].shape == (30, 40, 3) and d["image"].dtype == tf.uint8
        want = np.asarray(Image.open(paths[key]).convert("RGB")).astype(int)
        assert np.abs(d["image"].numpy().astype(int) - want).mean() < 2.0, key

    # a complete-looking JPEG (ends with EOI) whose scan header is garbage: only --verify_images=full sees it
    data = pathlib.Path(paths["gray"]).read_bytes()
    sos = data.index(b"\xff\xda")
    (tmp_path / "bad.jpg").write_bytes(data[: sos + 4] + b"\x09" * 8 + data[sos + 12:])
    recs = [ImageRecord(str(tmp_path / "bad.jpg"), "bad", "bad.jpg", 30, 40, []),
            ImageRecord(paths["gray"], "good", "g.jpg", 30, 40, [])]
    assert _convert(recs, tmp_path / "h" / "x", num_shards=1)["num_images"] == 2
    meta = _convert(recs, tmp_path / "f" / "x", num_shards=1, verify_images="full")
    assert meta["num_images"] == 1 and "full verification" in meta["skipped"][0]["reason"]


def test_converters_do_not_import_tensorflow():
    code = ("import sys, data_tools.writer, data_tools.create_coco_tfrecord, ssd_tf.data.example;"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def _coco_job(tmp_path, n=24):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images, anns = [], []
    for i in range(n):
        _image(img_dir / f"{i}.jpg", w=16, h=12, seed=i)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 12, "width": 16})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 2, 5.5, 6], "area": 9, "iscrowd": 0})
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": 1, "name": "cat"}]}))
    return img_dir, ann_file


def _cli(img_dir, ann_file, prefix, num_processes=1):
    return [sys.executable, str(REPO / "data_tools" / "create_coco_tfrecord.py"), f"--image_dir={img_dir}",
            f"--object_annotations_file={ann_file}", f"--output_file_prefix={prefix}", "--num_shards=4",
            f"--num_processes={num_processes}"]


def test_interrupted_run_resumes_to_identical_output(tmp_path):
    from data_tools.create_coco_tfrecord import convert_coco

    img_dir, ann_file = _coco_job(tmp_path)
    convert_coco(image_dir=str(img_dir), object_annotations_file=str(ann_file),
                 output_file_prefix=str(tmp_path / "ref" / "x"), num_shards=4, num_processes=2, progress=False)
    ref = {p.name: p.read_bytes() for p in (tmp_path / "ref").iterdir()}

    out = tmp_path / "out"
    work = out / ".x.convert"
    finished = work / "x-00000-of-00004.tfrecord"
    env = dict(os.environ, **{writer.DELAY_ENV: "0.1"})  # 6 images per shard: ~0.6 s per shard
    proc = subprocess.Popen(_cli(img_dir, ann_file, out / "x"), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (work / "x-00000-of-00004.tfrecord.done.json").exists():
        # final names appear only when the whole job is done
        assert not [p for p in out.iterdir() if p.name.startswith("x")] if out.exists() else True
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("x")) == []  # no sidecar, no final shard
    assert finished.read_bytes() == ref[finished.name]
    assert list(work.glob("*.incomplete"))  # the shard in progress stayed temporary
    mtime = finished.stat().st_mtime_ns

    rerun = subprocess.run(_cli(img_dir, ann_file, out / "x", num_processes=2), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reusing 1 finished shard" in rerun.stderr
    assert (out / finished.name).stat().st_mtime_ns == mtime  # moved into place, not rewritten
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == ref
    assert not work.exists()


def test_rerun_rewrites_a_damaged_finished_shard(tmp_path, monkeypatch, capsys):
    img_dir, ann_file = _coco_job(tmp_path, n=8)
    from data_tools.create_coco_tfrecord import convert_coco

    kw = dict(image_dir=str(img_dir), object_annotations_file=str(ann_file), num_shards=2, num_processes=1)
    convert_coco(output_file_prefix=str(tmp_path / "ref" / "x"), progress=False, **kw)
    # a run that dies after both shards are finished, before the sidecar: done-markers stay behind
    with monkeypatch.context() as m:
        m.setattr(writer.job, "build_sidecar", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            convert_coco(output_file_prefix=str(tmp_path / "out" / "x"), progress=False, **kw)
    assert len(list((tmp_path / "out" / ".x.convert").glob("*.done.json"))) == 2
    assert not (tmp_path / "out" / "x.meta.json").exists()
    assert not list((tmp_path / "out").glob("x-*.tfrecord"))  # nothing published by a failed run
    damaged = tmp_path / "out" / ".x.convert" / "x-00000-of-00002.tfrecord"
    b = bytearray(damaged.read_bytes())
    b[200] ^= 0xFF  # one flipped bit inside the image bytes of the first record
    damaged.write_bytes(bytes(b))
    with pytest.raises(ConversionError, match="CRC mismatch"):
        writer.scan_shard(str(damaged))
    capsys.readouterr()
    convert_coco(output_file_prefix=str(tmp_path / "out" / "x"), progress=True, **kw)
    assert "reusing 1 finished shard" in capsys.readouterr().err  # shard 1 reused, shard 0 rewritten
    for name in ("x-00000-of-00002.tfrecord", "x-00001-of-00002.tfrecord", "x.meta.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_run_killed_between_publishing_shards_and_the_sidecar_resumes(tmp_path, monkeypatch, capsys):
    """Shards already moved to their final names by a run that died before writing its sidecar are checked
    against their done-markers and reused (not rewritten)."""
    img_dir, ann_file = _coco_job(tmp_path, n=8)
    from data_tools.create_coco_tfrecord import convert_coco

    kw = dict(image_dir=str(img_dir), object_annotations_file=str(ann_file), num_shards=2, num_processes=1)
    convert_coco(output_file_prefix=str(tmp_path / "ref" / "x"), progress=False, **kw)
    with monkeypatch.context() as m:
        m.setattr(writer.job, "_write_sidecar", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            convert_coco(output_file_prefix=str(tmp_path / "out" / "x"), progress=False, **kw)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".x.convert", "x-00000-of-00002.tfrecord", "x-00001-of-00002.tfrecord"]
    capsys.readouterr()
    convert_coco(output_file_prefix=str(tmp_path / "out" / "x"), progress=True, **kw)
    assert "reusing 2 finished shard" in capsys.readouterr().err
    for name in ("x-00000-of-00002.tfrecord", "x-00001-of-00002.tfrecord", "x.meta.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert not (tmp_path / "out" / ".x.convert").exists()


def test_reconverting_with_another_shard_count_removes_the_old_shards(tmp_path, capsys):
    recs = [ImageRecord(_image(tmp_path / f"{i}.jpg", seed=i), str(i), f"{i}.jpg", 30, 40, [_obj(1, 1, 9, 9)])
            for i in range(6)]
    out = tmp_path / "out"
    _convert(recs, out / "x", num_shards=4)
    _convert(recs, out / "xy", num_shards=1)  # another prefix that starts alike: left alone
    (out / "x-extra-00000-of-00001.tfrecord").write_bytes(b"not ours")
    capsys.readouterr()
    meta = _convert(recs, out / "x", num_shards=2)
    err = capsys.readouterr().err
    assert "removed 4 stale shard(s) of an earlier run with --num_shards=4" in err
    shards = sorted(p.name for p in out.glob("x-*.tfrecord"))
    assert shards == ["x-00000-of-00002.tfrecord", "x-00001-of-00002.tfrecord", "x-extra-00000-of-00001.tfrecord"]
    assert [s["file"] for s in meta["shards"]] == shards[:2]  # the sidecar lists exactly the shards written
    assert sum(s["num_records"] for s in meta["shards"]) == meta["num_images"] == 6
    assert (out / "xy-00000-of-00001.tfrecord").exists() and (out / "xy.meta.json").exists()


def test_nothing_to_convert_is_an_error(tmp_path):
    with pytest.raises(ConversionError, match="no images to convert"):
        _convert([], tmp_path / "out" / "x")
    recs = [ImageRecord(str(tmp_path / "gone" / f"{i}.jpg"), str(i), f"{i}.jpg", 30, 40, []) for i in range(3)]
    with pytest.raises(ConversionError, match=r"none of the 3 image files exists .*gone/0\.jpg.*image directory"):
        _convert(recs, tmp_path / "out" / "x")
    for i in range(3):
        (tmp_path / f"{i}.txt").write_bytes(b"not an image")
    recs = [ImageRecord(str(tmp_path / f"{i}.txt"), str(i), f"{i}.txt", 30, 40, []) for i in range(3)]
    with pytest.raises(ConversionError, match=r"no image could be used: all 3 were skipped \(the first: .*0\.txt"):
        _convert(recs, tmp_path / "out" / "x")
    assert not list((tmp_path / "out").glob("x*"))


def test_output_prefix_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    recs = [ImageRecord(_image(tmp_path / "a.jpg"), "a", "a.jpg", 30, 40, [])]
    with pytest.raises(ValueError, match=r"output_prefix .*file/sub/x: cannot create the output directory: "
                                         r".*file is not a directory"):
        _convert(recs, tmp_path / "file" / "sub" / "x")
    with pytest.raises(ValueError, match="ends with a directory separator"):
        _convert(recs, str(tmp_path / "out") + "/")


# ------------------------------------------------------------------------------------- interruptions

def _children(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _start_slow_run(tmp_path, num_processes=2, new_session=False):
    img_dir, ann_file = _coco_job(tmp_path)
    from data_tools.create_coco_tfrecord import convert_coco

    convert_coco(image_dir=str(img_dir), object_annotations_file=str(ann_file),
                 output_file_prefix=str(tmp_path / "ref" / "x"), num_shards=4, num_processes=2, progress=False)
    env = dict(os.environ, **{writer.DELAY_ENV: "0.1"})  # 6 images per shard: ~0.6 s per shard
    proc = subprocess.Popen(_cli(img_dir, ann_file, tmp_path / "out" / "x", num_processes=num_processes), env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)
    return img_dir, ann_file, proc


def _wait_for(proc, path_glob, deadline_s=60):
    deadline = time.time() + deadline_s
    while not list(path_glob()):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.01)


def test_killed_worker_fails_fast_and_a_rerun_completes_identically(tmp_path):
    """A worker SIGKILLed mid-run (as the out-of-memory killer does): the converter exits non-zero within
    seconds naming what happened, publishes nothing, and a rerun reuses the finished shards."""
    img_dir, ann_file, proc = _start_slow_run(tmp_path)
    work = tmp_path / "out" / ".x.convert"
    _wait_for(proc, lambda: work.glob("*.done.json") if work.exists() else [])
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    t = time.time()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert time.time() - t < 10 and proc.returncode == 1, err  # a bound against hanging, not a timing
    assert f"worker process {workers[0]}" in err and "killed by SIGKILL" in err and "out-of-memory" in err
    assert "rerun the same command" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith("x")]
    assert not list(work.glob("*.incomplete"))
    time.sleep(0.2)
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]  # the other worker stopped too

    rerun = subprocess.run(_cli(img_dir, ann_file, tmp_path / "out" / "x", num_processes=2), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reusing" in rerun.stderr
    ref = {p.name: p.read_bytes() for p in (tmp_path / "ref").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")} == ref


@pytest.mark.parametrize("num_processes,target", [(1, "parent"), (2, "parent"), (2, "process group")])
def test_sigint_stops_the_converter_promptly(tmp_path, num_processes, target):
    """SIGINT to the converter alone, or to its whole process group as Ctrl-C in a terminal sends it."""
    _, _, proc = _start_slow_run(tmp_path, num_processes=num_processes, new_session=target == "process group")
    work = tmp_path / "out" / ".x.convert"
    _wait_for(proc, lambda: work.glob("*.incomplete") if work.exists() else [])
    workers = _children(proc.pid)
    if target == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    t = time.time()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert time.time() - t < 10 and proc.returncode == 130, err  # a bound against hanging, not a timing
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith("x")]
    assert not list(work.glob("*.incomplete"))
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
