"""Detection export: yxyx pixels + contiguous classes -> COCO results; accumulator; round trip to AP = 1."""
import json

import numpy as np
import pytest

from ssd_tf.evaluation.coco import evaluate_coco
from ssd_tf.evaluation.export import CocoDetectionAccumulator, detections_to_coco, write_coco_results

FIXTURE_GT = "coco_val2014_eval_fixture/tests/test_coco_eval/gts/sampled_gts_bbox_area.json"


def _one_image():
    boxes = np.zeros((1, 3, 4), np.float32)
    boxes[0, 0] = [10, 40, 50, 120]  # yxyx pixels -> x 40, y 10, w 80, h 40
    boxes[0, 1] = [0, 0, 100, 200]
    boxes[0, 2] = [30, 30, 90, 90]  # padding
    scores = np.array([[0.123456789, 0.5, 0.9]], np.float32)
    classes = np.array([[2, 1, 0]])
    return boxes, scores, classes, np.array([2]), np.array([b"17"])


def test_values_ids_and_padding():
    dets = detections_to_coco(*_one_image(), class_ids=[5, 7])
    assert len(dets) == 2  # the padding row (beyond num_detections) is dropped
    assert dets[0] == {"image_id": 17, "category_id": 7, "bbox": [40.0, 10.0, 80.0, 40.0], "score": 0.123457}
    assert dets[1] == {"image_id": 17, "category_id": 5, "bbox": [0.0, 0.0, 200.0, 100.0], "score": 0.5}
    assert all(type(v) in (int, float) for d in dets for v in (d["image_id"], d["category_id"], d["score"]))
    json.dumps(dets)  # plain Python types only
    # maskrcnn-benchmark's inclusive-pixel export: w = x2 - x1 + 1
    plus_one = detections_to_coco(*_one_image(), class_ids=[5, 7], pixel_offset=1.0)
    assert plus_one[0]["bbox"] == [40.0, 10.0, 81.0, 41.0]


def test_image_id_map_and_errors():
    boxes, scores, classes, nd, _ = _one_image()
    dets = detections_to_coco(boxes, scores, classes, nd, np.array(["a.jpg"]), [5, 7],
                              image_id_map={"a.jpg": 3})
    assert {d["image_id"] for d in dets} == {3}
    with pytest.raises(ValueError, match="'a.jpg' is not an integer"):
        detections_to_coco(boxes, scores, classes, nd, np.array(["a.jpg"]), [5, 7])
    with pytest.raises(ValueError, match="'b.jpg' is not in image_id_map"):
        detections_to_coco(boxes, scores, classes, nd, np.array(["b.jpg"]), [5, 7], {"a.jpg": 3})
    with pytest.raises(ValueError, match="class 2, outside the contiguous range 1..1"):
        detections_to_coco(boxes, scores, classes, nd, np.array([1]), [5])
    with pytest.raises(ValueError, match=r"scores must have shape \(1, 3\) to match boxes \(1, 3, 4\), got \(1, 2\)"):
        detections_to_coco(boxes, scores[:, :2], classes, nd, np.array([1]), [5, 7])
    with pytest.raises(ValueError, match=r"num_detections\[0\] = 4 is outside \[0, 3\]"):
        detections_to_coco(boxes, scores, classes, np.array([4]), np.array([1]), [5, 7])


def test_accumulator_matches_one_shot_and_handles_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 10, 6
    yx = rng.uniform(0, 250, (n, k, 2))
    boxes = np.concatenate([yx, yx + 150], -1)
    scores, classes = rng.uniform(size=(n, k)), rng.integers(1, 4, (n, k))
    nd, sids = rng.integers(0, k + 1, n), np.arange(100, 100 + n)
    expected = detections_to_coco(boxes, scores, classes, nd, sids, [1, 3, 9])
    acc = CocoDetectionAccumulator([1, 3, 9])
    for start in range(0, n, 4):
        sl = slice(start, start + 4)
        acc.add_batch(boxes[sl], scores[sl], classes[sl], nd[sl], sids[sl])
    assert acc.results() == expected and len(acc) == len(expected) == int(nd.sum()) and acc.num_images == n
    assert acc.image_ids() == set(range(100, 100 + n))
    with pytest.raises(ValueError, match="image id 100 .* already added"):
        acc.add_batch(boxes[:1], scores[:1], classes[:1], nd[:1], sids[:1])
    skipping = CocoDetectionAccumulator([1, 3, 9], on_duplicate="skip")
    skipping.add_batch(boxes, scores, classes, nd, sids)
    skipping.add_batch(boxes[:3], scores[:3], classes[:3], nd[:3], sids[:3])  # repeated padding
    assert skipping.results() == expected and skipping.num_duplicates_skipped == 3
    path = acc.write(tmp_path / "out" / "dets.json")
    assert json.loads(open(path).read()) == expected
    assert CocoDetectionAccumulator([1]).results() == []


def _fixture_as_batch(gt):
    """COCO gt -> padded model-style outputs (yxyx pixels, contiguous classes, score 1)."""
    class_ids = sorted(c["id"] for c in gt["categories"])
    contiguous = {cid: i + 1 for i, cid in enumerate(class_ids)}
    anns = {img["id"]: [] for img in gt["images"]}
    for a in gt["annotations"]:
        anns[a["image_id"]].append(a)
    n, k = len(gt["images"]), max(len(v) for v in anns.values()) + 3
    boxes = np.full((n, k, 4), 0.25, np.float32)  # padding rows are junk on purpose
    classes = np.zeros((n, k), np.int32)
    scores = np.full((n, k), 0.7, np.float32)
    nd = np.zeros(n, np.int32)
    for i, img in enumerate(gt["images"]):
        for j, a in enumerate(anns[img["id"]]):
            x, y, bw, bh = a["bbox"]
            boxes[i, j] = [y, x, y + bh, x + bw]
            classes[i, j], scores[i, j] = contiguous[a["category_id"]], 1.0
        nd[i] = len(anns[img["id"]])
    sources = np.array([str(img["id"]).encode() for img in gt["images"]])
    return (boxes, scores, classes, nd, sources), class_ids


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_round_trip_gt_as_detections_gives_ap_one(shared_data, tmp_path, backend):
    gt = json.loads((shared_data / FIXTURE_GT).read_text())
    arrays, class_ids = _fixture_as_batch(gt)
    path = write_coco_results(detections_to_coco(*arrays, class_ids=class_ids), tmp_path / "dets.json")
    result = evaluate_coco(gt, str(path), backend=backend, verbose=False)
    for key in ("COCO/AP", "COCO/AP50", "COCO/AP75", "COCO/APs", "COCO/APm", "COCO/APl", "COCO/ARmax100"):
        assert result[key] == pytest.approx(1.0, abs=1e-12), key
    per_class = np.array(list(result["per_class_AP"].values()))
    assert np.all((np.abs(per_class - 1.0) < 1e-12) | (per_class == -1.0))
