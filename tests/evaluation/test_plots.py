"""Evaluation pictures: PR curves are slices of the COCO evaluator's own precision array, AP bars sorted, sample
images with ground truth and detections, TensorBoard images; evaluate_coco's 12 numbers unchanged."""
import glob
import time

import numpy as np
import pytest

from ssd_tf.evaluation import coco, plots

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "unseen"}]


def _gt_and_detections(seed=0):
    """30 images with circles and squares (no 'unseen' ground truth); detections jittered, some missing, some
    false, so the PR curves are not trivial."""
    rng = np.random.default_rng(seed)
    images, annotations, dets = [], [], []
    for image_id in range(1, 31):
        images.append({"id": image_id, "width": 200, "height": 150})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = rng.uniform(0, 100), rng.uniform(0, 80), rng.uniform(20, 90), rng.uniform(20, 60)
            cat = int(rng.choice([1, 3]))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.uniform() < 0.85:
                jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                dets.append({"image_id": image_id, "category_id": cat, "score": float(rng.uniform(0.3, 1.0)),
                             "bbox": list(np.array([x, y, w, h]) + jitter)})
        if rng.uniform() < 0.5:
            dets.append({"image_id": image_id, "category_id": int(rng.choice([1, 3, 7])),
                         "score": float(rng.uniform(0, 0.6)), "bbox": [10.0, 10.0, 30.0, 30.0]})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, dets


@pytest.mark.parametrize("backend", coco.BACKENDS)
def test_evaluate_coco_full_is_evaluate_coco_plus_the_evaluators_own_arrays(backend):
    gt, dets = _gt_and_detections()
    plain = coco.evaluate_coco(gt, dets, backend=backend, verbose=False)
    full, arrays = coco.evaluate_coco_full(gt, dets, backend=backend, verbose=False)
    assert full == plain  # the 12 numbers and per-class AP, unchanged
    assert arrays.precision.shape == (10, 101, 3, 4, 3)
    assert arrays.cat_ids == [1, 3, 7] and arrays.cat_names == ["circle", "square", "unseen"]
    assert arrays.area_labels[0] == "all" and arrays.max_dets[-1] == 100
    np.testing.assert_allclose(arrays.iou_thresholds, np.linspace(0.5, 0.95, 10))
    np.testing.assert_allclose(arrays.recall_thresholds, np.linspace(0, 1, 101))

    # the array is the evaluator's own: pycocotools run directly gives the same numbers
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
    np.testing.assert_allclose(arrays.precision, ev.eval["precision"], atol=1e-9)
    # AP@0.5 of the summary is the mean of the IoU-0.5 slice over classes with ground truth
    p50 = arrays.precision[0, :, :, 0, -1]
    assert np.mean(p50[p50 > -1]) == pytest.approx(plain["COCO/AP50"], abs=1e-9)
    assert np.all(arrays.precision[:, :, 2] == -1)  # 'unseen' has no ground truth


def test_pr_curve_panels_plot_slices_of_the_precision_array():
    gt, dets = _gt_and_detections()
    _, arrays = coco.evaluate_coco_full(gt, dets, verbose=False)
    fig = plots.pr_curves_figure(arrays)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["circle", "square", "unseen"]
    for k, ax in enumerate(panels[:2]):
        assert len(ax.lines) == 2  # IoU 0.5 and 0.75
        for line, t in zip(ax.lines, (0, 5)):  # iouThrs[0] = 0.5, iouThrs[5] = 0.75
            expected = arrays.precision[t, :, k, 0, -1]
            np.testing.assert_array_equal(line.get_xdata(), arrays.recall_thresholds)
            np.testing.assert_array_equal(line.get_ydata(), np.where(expected < 0, np.nan, expected))
        texts = [t.get_text() for t in ax.texts]
        ap50 = arrays.precision[0, :, k, 0, -1]
        assert f"AP50 {np.mean(ap50[ap50 > -1]):.3f}" in texts
    assert not panels[2].lines and "no ground truth" in [t.get_text() for t in panels[2].texts]
    plots._pyplot().close(fig)


def test_ap_bars_are_sorted_with_classes_without_ground_truth_last():
    fig = plots.ap_bars_figure({"a": 0.2, "b": -1.0, "c": 0.7, "d": 0.0}, "AP")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "a", "d", "b"]
    assert [round(b.get_width(), 3) for b in ax.patches] == [0.7, 0.2, 0.0, 0.0]
    plots._pyplot().close(fig)


def test_write_eval_plots_pictures_and_tensorboard_images(tmp_path):
    """A real evaluation of perfect detections on the tiny records: every picture, and the same as TensorBoard
    images at the step."""
    import tensorflow as tf

    from ssd_tf import presets
    from ssd_tf.data.reader import build_dataset
    from ssd_tf.data.ssd_parser import SSDParser
    from ssd_tf.evaluation.runner import evaluate_batches
    from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES, write_records

    pattern = write_records(tmp_path)
    parser = SSDParser(presets.model_config("ssd_resnet34"), max_boxes=5, encode_targets=False)

    def batches():
        for _, labels in build_dataset(pattern, parser, batch_size=2, is_training=False, class_ids=CLASS_IDS):
            labels = {k: v.numpy() for k, v in labels.items()}
            size = labels["image_info"][:, 0]  # original (h, w)
            boxes = labels["boxes"] * np.concatenate([size, size], axis=1)[:, None, :]
            yield {"boxes": boxes, "scores": np.full(labels["classes"].shape, 0.9, np.float32),
                   "classes": labels["classes"], "num_detections": labels["num_boxes"]}, labels

    details = {}
    metrics = evaluate_batches(batches(), metric="coco", class_ids=CLASS_IDS, class_names=CLASS_NAMES,
                               validation_file_pattern=pattern, log=lambda *_: None, details=details)
    assert metrics["COCO/AP"] == pytest.approx(1.0) and len(details["samples"]) == len(SIZES)
    t0 = time.perf_counter()
    paths = plots.write_eval_plots(str(tmp_path / "model"), 12, metrics, details,
                                   label_map=dict(zip(CLASS_IDS, CLASS_NAMES)), validation_file_pattern=pattern,
                                   log=lambda *_: None)
    seconds = time.perf_counter() - t0
    out = tmp_path / "model" / "eval_plots" / "step_12"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ap_per_class.png", "pr_curves.png"] + [f"sample_{i}.jpg" for i in range(len(SIZES))]
    assert sorted(paths) == sorted(str(out / n) for n in names)
    assert seconds < 30  # a few seconds on an idle machine

    from PIL import Image

    sheet = Image.open(out / "sample_0.jpg")
    h, w = SIZES[0]
    assert sheet.width > 2 * max(w, 320 * w // min(h, w))  # ground truth | detections, each enlarged to >= 320

    events = glob.glob(str(tmp_path / "model" / "summaries" / "eval_plots" / "events.out.tfevents.*"))
    assert len(events) == 1
    tags = set()
    for record in tf.data.TFRecordDataset(events):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            assert event.step == 12
            tags.add(value.tag)
    assert {"eval/pr_curves", "eval/ap_per_class", "eval/sample_0"} <= tags
