"""Pictures of an evaluation, written next to ``eval_results.json`` and to TensorBoard (the numbers stay in
``eval_results.json``):

    eval_plots/step_N/pr_curves.png      per-class precision-recall curves at IoU 0.5 and 0.75 (area all, 100
                                         detections): slices of the COCO evaluator's own ``precision`` array
                                         (``coco.CocoArrays``), nothing recomputed
    eval_plots/step_N/ap_per_class.png   per-class AP (COCO AP@[.5:.95] or VOC AP), sorted
    eval_plots/step_N/sample_K.jpg       a few validation images: ground truth | detections (score >= 0.3)
    summaries/eval_plots/                the same pictures as TensorBoard images at step N

Matplotlib with the Agg backend; about a second for a few classes, a few seconds for 80.
"""
from __future__ import annotations

import math
import os

import numpy as np

PR_IOUS = (0.5, 0.75)
SAMPLE_SCORE_THRESHOLD = 0.3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curves_figure(arrays, ious=PR_IOUS):
    """One panel per category: precision against recall at each IoU of ``ious``, from ``arrays.precision``
    (a category without ground truth says so). Returns the matplotlib figure. Kept cheap for 80 classes:
    shared axes, ticks on the outer panels only, AP written as text instead of per-panel legends."""
    plt = _pyplot()
    k = len(arrays.cat_ids)
    cols = max(1, k if k <= 4 else math.ceil(math.sqrt(k * 1.5)))
    rows = max(1, math.ceil(k / cols))
    height = 1.9 * rows + 1.3
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.2 * cols, 6.0), height), squeeze=False, sharex=True,
                             sharey=True, gridspec_kw={"hspace": 0.35, "wspace": 0.08})
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for index, ax in enumerate(axes.flat):
        if index >= k:
            ax.axis("off")
            continue
        lines = []
        for j, iou in enumerate(ious):
            recall, precision = arrays.pr_curve(index, iou)
            if np.all(precision < 0):
                continue
            ap = float(np.mean(precision[precision > -1]))
            ax.plot(recall, np.where(precision < 0, np.nan, precision), color=colors[j % len(colors)],
                    linewidth=1.2)
            lines.append((f"AP{round(iou * 100)} {ap:.3f}", colors[j % len(colors)]))
        ax.set_title(arrays.cat_names[index], fontsize=9, pad=3)
        for j, (text, color) in enumerate(lines):
            ax.text(0.04, 0.06 + 0.12 * j, text, color=color, fontsize=7, transform=ax.transAxes)
        if not lines:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    axes[0, 0].set_xlim(0, 1)
    axes[0, 0].set_ylim(0, 1.02)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    key = ", ".join(f"{colors[j % len(colors)].split(':')[1]} IoU {iou:g}" for j, iou in enumerate(ious))
    fig.suptitle(f"Precision-recall per class\n(COCO evaluator; area all, 100 detections; {key})", fontsize=9,
                 y=1 - 0.08 / height)
    fig.subplots_adjust(left=0.06 if cols > 2 else 0.15, right=0.98, bottom=0.55 / height, top=1 - 0.8 / height)
    return fig


def ap_bars_figure(per_class: dict, title: str):
    """Horizontal bars of ``per_class`` {name: AP} sorted by AP (classes without ground truth, AP -1, listed
    last and marked). Returns the figure."""
    plt = _pyplot()
    items = sorted(per_class.items(), key=lambda kv: (kv[1] < 0, -kv[1]))
    names = [n for n, _ in items]
    values = [max(v, 0.0) for _, v in items]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.22 * max(len(items), 3)))
    y = np.arange(len(items))
    bars = ax.barh(y, values, color=["tab:gray" if v < 0 else "tab:blue" for _, v in items])
    for bar, (_, v) in zip(bars, items):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, "no gt" if v < 0 else f"{v:.3f}",
                va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_ylim(len(items) - 0.5, -0.5)  # best on top, no empty margins
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("AP")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _figure_to_png(fig, path: str) -> None:
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _source_str(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _original_images(validation_file_pattern: str, source_ids: list, max_records: int = 10000) -> dict:
    """{source_id: uint8 [H, W, 3]} of the records with those source ids, read in the evaluation's order."""
    import tensorflow as tf

    from ssd_tf.data import example as ex
    from ssd_tf.data.decoder import decode_example
    from ssd_tf.data.shards import expand_pattern

    files = expand_pattern(validation_file_pattern)
    wanted, found = set(source_ids), {}
    if not files or not wanted:
        return found
    ds = tf.data.Dataset.from_tensor_slices(files)
    # the reader's evaluation order (data/reader.py: interleave, one record per file in turn)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1) \
        if len(files) > 1 else ds.flat_map(tf.data.TFRecordDataset)
    spec = {ex.IMAGE_SOURCE_ID: tf.io.FixedLenFeature((), tf.string, default_value="")}
    for serialized in ds.take(max_records):
        sid = _source_str(tf.io.parse_single_example(serialized, spec)[ex.IMAGE_SOURCE_ID].numpy())
        if sid in wanted and sid not in found:
            found[sid] = decode_example(serialized)["image"].numpy()
            if len(found) == len(wanted):
                break
    return found


def sample_sheets(samples: list, validation_file_pattern: str, label_map: dict,
                  score_threshold: float = SAMPLE_SCORE_THRESHOLD) -> list:
    """[(source_id, PIL image)]: each sample image with its ground truth and its detections side by side."""
    from ssd_tf.inference.draw import draw_detections, side_by_side

    ids = list(label_map)
    lookup = np.asarray([0] + ids, np.int64)  # contiguous -> dataset id
    keys = [_source_str(labels["source_id"]) for _, labels in samples]
    images = _original_images(validation_file_pattern, [k for k in keys if k])
    sheets = []
    for key, (dets, labels) in zip(keys, samples):
        image = images.get(key)
        if image is None:
            continue
        h, w = image.shape[:2]
        g = int(labels["num_boxes"])
        gt_boxes = np.asarray(labels["boxes"][:g], np.float64) * np.array([h, w, h, w])
        gt = draw_detections(image, gt_boxes, lookup[np.asarray(labels["classes"][:g], np.int64)], None, label_map)
        n = int(dets["num_detections"])
        found = draw_detections(image, dets["boxes"][:n], lookup[np.asarray(dets["classes"][:n], np.int64)],
                                dets["scores"][:n], label_map, score_threshold=score_threshold)
        kept = int(np.sum(np.asarray(dets["scores"][:n]) >= score_threshold))
        sheets.append((key, side_by_side(gt, found, (f"ground truth ({g})",
                                                     f"detections, score >= {score_threshold:g} ({kept})"))))
    return sheets


def write_eval_plots(model_dir: str, step: int, metrics: dict, details: dict, *, label_map: dict,
                     validation_file_pattern: str = "", write_summaries: bool = True, log=print) -> list:
    """Writes the pictures of one evaluation (see the module docstring); returns their paths."""
    out_dir = os.path.join(model_dir, "eval_plots", f"step_{int(step)}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    arrays = details.get("coco")
    if arrays is not None:
        path = os.path.join(out_dir, "pr_curves.png")
        _figure_to_png(pr_curves_figure(arrays), path)
        paths.append(path)
    per_class, title = metrics.get("per_class_AP"), "COCO AP@[.5:.95] per class"
    if not isinstance(per_class, dict):
        per_class = {k[len("VOC/AP/"):]: v for k, v in metrics.items() if k.startswith("VOC/AP/")}
        title = "VOC AP per class"
    if per_class:
        path = os.path.join(out_dir, "ap_per_class.png")
        _figure_to_png(ap_bars_figure(per_class, title), path)
        paths.append(path)
    if details.get("samples") and validation_file_pattern:
        for i, (key, sheet) in enumerate(sample_sheets(details["samples"], validation_file_pattern, label_map)):
            path = os.path.join(out_dir, f"sample_{i}.jpg")
            sheet.save(path, quality=90)
            paths.append(path)
    if write_summaries and paths:
        _write_summaries(os.path.join(model_dir, "summaries", "eval_plots"), step, paths)
    log(f"Evaluation pictures: {out_dir} ({', '.join(os.path.basename(p) for p in paths)})")
    return paths


_WRITERS = {}  # one event file per summary directory and process


def _write_summaries(summary_dir: str, step: int, paths: list) -> None:
    import tensorflow as tf
    from PIL import Image

    writer = _WRITERS.get(summary_dir)
    if writer is None:
        writer = _WRITERS[summary_dir] = tf.summary.create_file_writer(summary_dir)
    with writer.as_default(step=int(step)):
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            pixels = np.asarray(Image.open(path).convert("RGB"))[None]
            tf.summary.image(f"eval/{name}", pixels, step=int(step))
    writer.flush()
