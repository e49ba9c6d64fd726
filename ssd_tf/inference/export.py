"""``--mode=export``: a SavedModel that needs only TensorFlow (loading it does not import this package).

    python ssd_main.py --mode=export --model_dir=D --export_dir=S [--checkpoint=best] [--score_threshold=...]

Signatures (``module.py``'s ``DetectorModule``; pre- and post-processing inside the graph):

    serving_default(images: string [B])              encoded JPEG / PNG / GIF / BMP pictures of any sizes
    serving_uint8(images: uint8 [B, H, W, 3])        RGB pixels
    -> detection_boxes float32 [B, K, 4] ([ymin, xmin, ymax, xmax] normalised to the original picture, as the
       TF Object Detection API's exporter), detection_scores float32 [B, K], detection_classes int64 [B, K]
       (the dataset's category ids), num_detections int32 [B]

Assets: ``label_map.json`` ([{"id", "name"}] in dataset order) and ``config.json`` (the model directory's
config as exported). Post-processing uses the model's config (``--score_threshold`` etc. override it).
The SavedModel is written beside ``S`` first and moved into place when complete; an existing ``S`` is replaced
only when it is empty or a SavedModel.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time


@dataclasses.dataclass
class ExportArgs:
    export_dir: str
    checkpoint: str


def check_args(cfg, export_dir, checkpoint) -> ExportArgs:
    """The export flags -> ExportArgs; a ValueError (the CLI's exit 2) naming what to fix. No TensorFlow."""
    from ssd_tf.training.checkpoints import resolve_checkpoint

    if not export_dir:
        raise ValueError("--mode=export needs --export_dir (where the SavedModel goes)")
    if os.path.exists(export_dir):
        if not os.path.isdir(export_dir):
            raise ValueError(f"--export_dir={export_dir} is a file")
        if os.listdir(export_dir) and not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
            raise ValueError(f"--export_dir={export_dir} is a non-empty directory that is not a SavedModel; "
                             f"choose a new or empty directory")
    parent = os.path.dirname(os.path.abspath(export_dir))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--export_dir={export_dir} cannot be created: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--export_dir={export_dir}: {parent} is not writable")
    return ExportArgs(export_dir=export_dir, checkpoint=resolve_checkpoint(cfg.runtime.model_dir, checkpoint))


def export_saved_model(cfg, args: ExportArgs, log=print) -> str:
    """Writes the SavedModel (see the module docstring); returns its directory."""
    import tensorflow as tf

    from ssd_tf.inference.predict import load_detector

    t0 = time.perf_counter()
    _, detector = load_detector(cfg, args.checkpoint, log=log)
    parent = os.path.dirname(os.path.abspath(args.export_dir))
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        assets = os.path.join(staging, "_assets_src")
        os.makedirs(assets)
        with open(os.path.join(assets, "label_map.json"), "w") as f:
            json.dump([{"id": int(i), "name": n} for i, n in zip(cfg.data.class_ids, cfg.data.class_names)], f,
                      indent=1)
        with open(os.path.join(assets, "config.json"), "w") as f:
            f.write(cfg.to_json())
        detector.label_map_file = tf.saved_model.Asset(os.path.join(assets, "label_map.json"))
        detector.config_file = tf.saved_model.Asset(os.path.join(assets, "config.json"))
        target = os.path.join(staging, "saved_model")
        signatures = {"serving_default": detector.detect_encoded.get_concrete_function(),
                      "serving_uint8": detector.detect_uint8.get_concrete_function()}
        tf.saved_model.save(detector, target, signatures=signatures)
        if os.path.isdir(args.export_dir):
            shutil.rmtree(args.export_dir)
        os.replace(target, args.export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"Exported {cfg.model.name} ({args.checkpoint}) to {args.export_dir} in {time.perf_counter() - t0:.1f} s: "
        f"signatures serving_default (encoded pictures) and serving_uint8 (uint8 [B,H,W,3]); assets/label_map.json")
    return args.export_dir
