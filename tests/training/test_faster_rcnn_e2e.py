"""Faster R-CNN through ssd_main.py end to end on generated shapes: it learns (loss falls, AP above 0), a run
resumed from a checkpoint ends bit-identical to an uninterrupted one, predict gives pictures."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tiny_data import run_python, shapes_tfrecords

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _py(*args, env=None):
    return run_python(*args, env=env, timeout=900)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_tfrecords(tmp_path_factory.mktemp("frcnn_shapes"), num_train=96, num_val=16, seed=4)


def _flags(d, model_dir, steps):
    return ["ssd_main.py", "--model=faster_rcnn_r50_fpn", f"--training_file_pattern={d}/tf/train-*",
            f"--validation_file_pattern={d}/tf/val-*", f"--model_dir={model_dir}", "--width_multiplier=0.25",
            "--min_size=128", "--max_size=128", "--trainable_backbone_layers=5",
            "--params_override=model.backbone.norm=batch", "--train_batch_size=4", f"--train_steps={steps}",
            "--warmup_steps=20", "--steps_per_loop=10", "--log_every_steps=10", "--checkpoint_every_steps=10",
            "--eval_batch_size=8"]


def _losses(model_dir):
    path = pathlib.Path(model_dir) / "summaries" / "train_log.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
def test_faster_rcnn_learns_on_shapes(shapes, tmp_path):
    model_dir = tmp_path / "model"
    out = _py(*_flags(shapes, model_dir, 160), "--mode=train_and_eval")
    assert "faster_rcnn_r50_fpn (faster_rcnn)" in out
    log = _losses(model_dir)
    for key in ("rpn_objectness_loss", "rpn_box_loss", "roi_classification_loss", "roi_box_loss"):
        assert key in log[-1]  # the four parts are logged
    assert log[-1]["total_loss"] < 0.7 * log[0]["total_loss"], [r["total_loss"] for r in log]
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert results["COCO/AP50"] > 0.0 and results["num_images"] == 16
    assert set(results["per_class_AP"]) == {"circle", "square", "triangle", "cross"}


@pytest.mark.slow
def test_faster_rcnn_killed_and_resumed_ends_bit_identical(shapes, tmp_path):
    """kill -9 after the step-10 checkpoint, rerun the same command: the final weights equal an uninterrupted
    run's bit for bit (data position, per-image sampling seeds from the step, op determinism for RoIAlign)."""
    import signal

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _py(*_flags(shapes, straight, 20), "--mode=train", env={"SSD_TF_DUMP_WEIGHTS": str(tmp_path / "a.npz")})
    proc = subprocess.Popen([sys.executable, *_flags(shapes, resumed, 20), "--mode=train"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "Saved checkpoint" in line and "ckpt-10" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    out = _py(*_flags(shapes, resumed, 20), "--mode=train", env={"SSD_TF_DUMP_WEIGHTS": str(tmp_path / "b.npz")})
    assert "Restored" in out and "ckpt-10" in out
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 100
    different = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert not different, different[:10]
