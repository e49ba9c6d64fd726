"""The shared evaluation driver: the same numbers from the user's COCO JSON and from ground truth rebuilt out of
the TFRecords, on detections that score well above 0; VOC metrics through ssd_main on a real VOC-layout set."""
import json
import pathlib

import numpy as np
import pytest

from tiny_data import run_python, shapes_tfrecords

ROOT = pathlib.Path(__file__).resolve().parents[2]


_py = run_python


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_tfrecords(tmp_path_factory.mktemp("shapes"), num_train=0, num_val=24, seed=5)


def _jittered_ground_truth_batches(pattern, class_ids):
    """Eval batches of the SSD parser, with the ground truth itself (jittered by up to 3 px, random scores)
    as the detections: AP well above 0 and below 1."""
    from ssd_tf import presets
    from ssd_tf.data.reader import build_dataset
    from ssd_tf.data.ssd_parser import SSDParser

    rng = np.random.default_rng(0)
    ds = build_dataset(pattern, SSDParser(presets.model_config("ssd_resnet34"), max_boxes=20), batch_size=5,
                       is_training=False, class_ids=class_ids)
    for _, labels in ds:
        labels = {k: v.numpy() for k, v in labels.items()}
        hw = labels["image_info"][:, 0]  # original (h, w)
        boxes = labels["boxes"] * np.concatenate([hw, hw], -1)[:, None, :]
        boxes = boxes + rng.uniform(-3, 3, boxes.shape)
        n = labels["num_boxes"]
        yield {"boxes": boxes.astype(np.float32), "scores": rng.uniform(0.3, 1.0, labels["classes"].shape),
               "classes": labels["classes"], "num_detections": n}, labels


def test_json_and_tfrecord_ground_truth_give_the_same_twelve_numbers_and_per_class_ap(shapes):
    from ssd_tf.evaluation.runner import evaluate_batches

    meta = json.loads((shapes / "tf" / "val.meta.json").read_text())
    ids, names = [e["id"] for e in meta["label_map"]], [e["name"] for e in meta["label_map"]]
    pattern = str(shapes / "tf" / "val-*.tfrecord")
    common = dict(metric="coco", class_ids=ids, class_names=names, validation_file_pattern=pattern, log=lambda *a: 0)
    from_json = evaluate_batches(_jittered_ground_truth_batches(pattern, ids),
                                 val_json_file=str(shapes / "shapes/annotations/instances_val.json"), **common)
    from_records = evaluate_batches(_jittered_ground_truth_batches(pattern, ids), **common)
    assert 0.3 < from_json["COCO/AP"] < 1.0 and from_json["num_images"] == 24
    for key in [k for k in from_json if k.startswith("COCO/")]:
        assert from_records[key] == pytest.approx(from_json[key], abs=1e-9), key
    assert from_records["per_class_AP"] == pytest.approx(from_json["per_class_AP"], abs=1e-9)
    assert set(from_json["per_class_AP"]) == set(names)


def test_eval_steps_scores_only_the_evaluated_images(shapes):
    from ssd_tf.evaluation.runner import evaluate_batches

    meta = json.loads((shapes / "tf" / "val.meta.json").read_text())
    ids, names = [e["id"] for e in meta["label_map"]], [e["name"] for e in meta["label_map"]]
    pattern = str(shapes / "tf" / "val-*.tfrecord")
    first_two = list(_jittered_ground_truth_batches(pattern, ids))[:2]  # 10 of the 24 images
    result = evaluate_batches(iter(first_two), metric="coco", class_ids=ids, class_names=names,
                              validation_file_pattern=pattern, log=lambda *a: 0)
    assert result["num_images"] == 10
    assert result["COCO/ARmax100"] > 0.9  # ground truth of the 14 images never looked at is not counted as missed


def test_a_val_json_of_other_images_is_named(shapes, tmp_path):
    from ssd_tf.evaluation.runner import GroundTruthMismatch, check_ground_truth, evaluate_batches

    meta = json.loads((shapes / "tf" / "val.meta.json").read_text())
    ids, names = [e["id"] for e in meta["label_map"]], [e["name"] for e in meta["label_map"]]
    pattern = str(shapes / "tf" / "val-*.tfrecord")
    right = shapes / "shapes/annotations/instances_val.json"
    check_ground_truth(str(right), pattern)
    gt = json.loads(right.read_text())  # the same dataset's images under other ids (e.g. another split's JSON)
    for image in gt["images"]:
        image["id"] += 1000
    for annotation in gt["annotations"]:
        annotation["image_id"] += 1000
    other = tmp_path / "other.json"
    other.write_text(json.dumps(gt))
    with pytest.raises(GroundTruthMismatch, match=r"^12 of the first 12 validation records are not images of "
                                                  r"--val_json_file=.*other\.json \(e\.g\. image id 1\)"):
        check_ground_truth(str(other), pattern)  # (the first shard: 12 of the 24 images)
    with pytest.raises(GroundTruthMismatch, match=r"^24 of the 24 evaluated images are not images of"):
        evaluate_batches(_jittered_ground_truth_batches(pattern, ids), metric="coco", class_ids=ids, class_names=names,
                         val_json_file=str(other), validation_file_pattern=pattern, log=lambda *a: 0)


@pytest.mark.slow
def test_voc07_metric_through_ssd_main_on_bccd(shared_data, tmp_path):
    """VOC metrics on a real VOC-layout dataset through the real ssd_main path (labels 1..K named correctly)."""
    for split in ("train", "val"):
        _py("-m", "data_tools.create_voc_tfrecord", f"--data_dir={shared_data / 'bccd'}", "--year=BCCD",
            f"--set={split}", "--label_map=discover", f"--output_file_prefix={tmp_path}/{split}", "--num_shards=1")
    model_dir = tmp_path / "model"
    _py("ssd_main.py", "--mode=train_and_eval", "--model=ssd_vgg16_voc", f"--model_dir={model_dir}",
        f"--training_file_pattern={tmp_path}/train-*", f"--validation_file_pattern={tmp_path}/val-*",
        "--width_multiplier=0.125", "--train_batch_size=2", "--train_steps=1", "--eval_batch_size=8",
        "--eval_steps=2", "--eval_metric=voc07", "--steps_per_loop=1")
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert {"VOC/AP/RBC", "VOC/AP/WBC", "VOC/AP/Platelets", "VOC/mAP"} <= set(results)
    assert results["num_images"] == 16 and 0.0 <= results["VOC/mAP"] <= 1.0
