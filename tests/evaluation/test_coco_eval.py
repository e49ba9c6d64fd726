"""COCO evaluation: golden numbers of the val2014 fixture, both backends, gt from TFRecords, CLI."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from ssd_tf.data import example as ex
from ssd_tf.evaluation.coco import STAT_KEYS, coco_gt_from_tfrecords, evaluate_coco, main

BACKENDS = ("faster", "pycocotools")
FIXTURE = "coco_val2014_eval_fixture/tests/test_coco_eval"
# Upstream (rafaelpadilla/review_object_detection_metrics tests/test_eval_coco.py), in STAT_KEYS order.
EXPECTED = (0.503647, 0.696973, 0.571667, 0.593252, 0.557991, 0.489363,
            0.386813, 0.593680, 0.595353, 0.654764, 0.603130, 0.553744)


@pytest.fixture(scope="module")
def fixture_paths(shared_data):
    root = shared_data / FIXTURE
    return {"gt": root / "gts" / "sampled_gts_bbox_area.json",
            "dets": root / "dets" / "sampled_bbox_results.json",
            "cocoapi": root / "cocoapi_results.json"}


@pytest.fixture(scope="module")
def fixture_data(fixture_paths):
    gt = json.loads(fixture_paths["gt"].read_text())
    dets = json.loads(fixture_paths["dets"].read_text())["annotations"]
    return gt, dets


def _stats(result):
    return np.array([result[k] for k in STAT_KEYS])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixture_matches_upstream_expected(fixture_paths, backend, capsys):
    result = evaluate_coco(fixture_paths["gt"], fixture_paths["dets"], backend=backend)
    assert set(STAT_KEYS) <= set(result) and all(isinstance(result[k], float) for k in STAT_KEYS)
    np.testing.assert_allclose(_stats(result), EXPECTED, rtol=0, atol=1e-6)
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert len(lines) == 12
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.504"
    assert lines[11] == " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.554"


def test_backends_agree_on_cocoapi_results(fixture_paths):
    fast = evaluate_coco(fixture_paths["gt"], fixture_paths["cocoapi"], backend="faster", verbose=False)
    ref = evaluate_coco(fixture_paths["gt"], fixture_paths["cocoapi"], backend="pycocotools", verbose=False)
    np.testing.assert_allclose(_stats(fast), _stats(ref), rtol=0, atol=1e-10)
    assert fast["per_class_AP"].keys() == ref["per_class_AP"].keys()
    np.testing.assert_allclose(list(fast["per_class_AP"].values()), list(ref["per_class_AP"].values()), atol=1e-10)
    assert 0.4 < fast["COCO/AP"] < 0.6  # the fake detections of cocoapi's demo score ~0.5


def test_per_class_ap_averages_to_ap_and_marks_classes_without_gt(fixture_data):
    gt, dets = fixture_data
    result = evaluate_coco(gt, dets, verbose=False)
    per_class = result["per_class_AP"]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    with_gt = {names[a["category_id"]] for a in gt["annotations"]}
    assert len(per_class) == 80
    assert {n for n, ap in per_class.items() if ap == -1.0} == set(names.values()) - with_gt
    assert with_gt != set(names.values())  # the 100 images do not cover all 80 classes
    valid = [ap for ap in per_class.values() if ap >= 0]
    assert len(valid) == len(with_gt)
    assert np.mean(valid) == pytest.approx(result["COCO/AP"], abs=1e-12)


def test_gt_as_dict_or_coco_object_without_mutating_inputs(fixture_paths, fixture_data):
    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO

    gt, dets = fixture_data
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    expected = _stats(evaluate_coco(fixture_paths["gt"], dets, verbose=False))
    # Each backend is given the other's COCO object too.
    for gt_input, backend in ((gt, "pycocotools"), (FasterCOCO(copy.deepcopy(gt)), "faster"),
                              (COCO(str(fixture_paths["gt"])), "faster")):
        got = _stats(evaluate_coco(gt_input, dets, backend=backend, verbose=False))
        np.testing.assert_allclose(got, expected, atol=1e-12)
    assert dets == dets_before
    assert gt["images"] == gt_before["images"] and gt["categories"] == gt_before["categories"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_give_zeros(fixture_data, backend):
    gt, _ = fixture_data
    result = evaluate_coco(gt, [], backend=backend, verbose=False)
    assert _stats(result).tolist() == [0.0] * 12
    assert set(result["per_class_AP"].values()) == {0.0, -1.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_image_id_is_named(fixture_data, backend):
    gt, dets = fixture_data
    bad = dets[:5] + [dict(dets[0], image_id=987654321)]
    with pytest.raises(ValueError, match="image_id=987654321"):
        evaluate_coco(gt, bad, backend=backend, verbose=False)


def test_unknown_category_and_bad_arguments(fixture_data):
    gt, dets = fixture_data
    with pytest.raises(ValueError, match="category_id=0"):
        evaluate_coco(gt, [dict(dets[0], category_id=0)], verbose=False)
    with pytest.raises(ValueError, match="backend"):
        evaluate_coco(gt, dets, backend="cocoapi")
    with pytest.raises(ValueError, match="no \\['annotations'\\]"):
        evaluate_coco({"images": [], "categories": []}, dets)


def test_cli_prints_summary_and_last_line_json(fixture_paths, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--gt", str(fixture_paths["gt"]), "--detections", str(fixture_paths["dets"]),
                 "--backend", "pycocotools", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    last = json.loads(lines[-1])
    assert list(last) == list(STAT_KEYS)
    np.testing.assert_allclose([last[k] for k in STAT_KEYS], EXPECTED, atol=1e-6)
    assert len(lines) == 13
    saved = json.loads(out.read_text())
    assert saved["COCO/AP"] == last["COCO/AP"] and len(saved["per_class_AP"]) == 80


def test_cli_as_module(fixture_paths):
    proc = subprocess.run(
        [sys.executable, "-m", "ssd_tf.evaluation.coco", "--gt", str(fixture_paths["gt"]),
         "--detections", str(fixture_paths["dets"])], capture_output=True, text=True, timeout=120, check=True)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["COCO/AP"] == pytest.approx(EXPECTED[0], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Ground truth from TFRecords
# ---------------------------------------------------------------------------------------------------------------
def _write_records(gt, prefix, num_shards, source_id=lambda img: str(img["id"]), with_area=True):
    """COCO gt dict -> TFRecord shards in the package's contract (no pixels: the decoder makes a blank image)."""
    import tensorflow as tf

    by_image = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    paths = [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, img in enumerate(gt["images"]):
        h, w = img["height"], img["width"]
        anns = by_image[img["id"]]
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        features = ex.example_features(
            encoded=b"", image_format="jpeg", height=h, width=w, source_id=source_id(img),
            filename=img["file_name"], xmin=(boxes[:, 0] / w).tolist(), ymin=(boxes[:, 1] / h).tolist(),
            xmax=((boxes[:, 0] + boxes[:, 2]) / w).tolist(), ymax=((boxes[:, 1] + boxes[:, 3]) / h).tolist(),
            labels=[a["category_id"] for a in anns], texts=[names[a["category_id"]] for a in anns],
            is_crowd=[a["iscrowd"] for a in anns], area=[a["area"] for a in anns],
            difficult=[0] * len(anns), truncated=[0] * len(anns))
        if not with_area:
            del features[ex.AREA]  # as written by tools that do not store areas
        writers[i % num_shards].write(ex.encode_features(features))
    for wr in writers:
        wr.close()
    return paths


@pytest.fixture(scope="module")
def fixture_records(fixture_data, tmp_path_factory):
    gt, _ = fixture_data
    prefix = str(tmp_path_factory.mktemp("coco_records") / "val")
    paths = _write_records(gt, prefix, num_shards=2)
    label_map = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
    with open(prefix + ".meta.json", "w") as f:
        json.dump({"label_map": label_map, "num_images": len(gt["images"])}, f)
    return prefix, paths


def test_gt_from_tfrecords_reproduces_fixture(fixture_data, fixture_records):
    gt, dets = fixture_data
    prefix, _ = fixture_records
    rebuilt = coco_gt_from_tfrecords(prefix + "-*-of-*.tfrecord")  # categories from the sidecar
    assert len(rebuilt["images"]) == 100 and len(rebuilt["annotations"]) == 830
    assert rebuilt["categories"] == [{"id": c["id"], "name": c["name"], "supercategory": ""}
                                     for c in gt["categories"]]
    assert {img["id"] for img in rebuilt["images"]} == {img["id"] for img in gt["images"]}
    assert rebuilt["source_id_to_image_id"]["42"] == 42
    orig = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in gt["annotations"]}
    ours = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in rebuilt["annotations"]}
    assert len(orig & ours) > 800  # float32 storage + 1e-4 px rounding gives back COCO's 2-decimal boxes
    for backend in BACKENDS:
        result = evaluate_coco(rebuilt, dets, backend=backend, verbose=False)
        np.testing.assert_allclose(_stats(result), EXPECTED, rtol=0, atol=1e-6)


def test_gt_from_tfrecords_sequential_ids_and_area_fallback(fixture_data, tmp_path):
    gt, _ = fixture_data
    small = {"images": gt["images"][:3], "categories": gt["categories"],
             "annotations": [a for a in gt["annotations"] if a["image_id"] in {i["id"] for i in gt["images"][:3]}]}
    _write_records(small, str(tmp_path / "val"), 1, source_id=lambda img: img["file_name"], with_area=False)
    rebuilt = coco_gt_from_tfrecords(str(tmp_path / "val-*"), label_map={1: "person", 18: "dog"} | {
        c["id"]: c["name"] for c in gt["categories"]})
    assert [img["id"] for img in rebuilt["images"]] == [1, 2, 3]
    assert rebuilt["source_id_to_image_id"] == {img["file_name"]: i + 1 for i, img in enumerate(small["images"])}
    for ann in rebuilt["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["area"] == pytest.approx(w * h, rel=1e-5)  # no image/object/area -> box area
    with pytest.raises(ValueError, match="not in the label map"):
        coco_gt_from_tfrecords(str(tmp_path / "val-*"), label_map={1: "person"})
    with pytest.raises(FileNotFoundError):
        coco_gt_from_tfrecords(str(tmp_path / "nothing-*"))


def test_gt_from_other_tools_records(shared_data):
    """CVAT's TF OD API export (no pixels, empty source_ids) matches its own COCO export of the same GT."""
    root = shared_data / "voc2012_sample/data/database/gts"
    rebuilt = coco_gt_from_tfrecords(str(root / "tfrecord_format/default.tfrecord"))
    coco = json.loads((root / "coco_format_v1/instances_default.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {c["id"]: c["name"] for c in rebuilt["categories"]} == {
        cid: names[cid] for cid in {a["category_id"] for a in coco["annotations"]}}  # names from class/text
    file_of = {img["id"]: img["file_name"] for img in coco["images"]}
    ours_file = {img["id"]: img["file_name"] for img in rebuilt["images"]}
    key = lambda a, files: (files[a["image_id"]], a["category_id"], tuple(np.round(a["bbox"], 2)))  # noqa: E731
    assert sorted(key(a, ours_file) for a in rebuilt["annotations"]) == sorted(
        key(a, file_of) for a in coco["annotations"])
