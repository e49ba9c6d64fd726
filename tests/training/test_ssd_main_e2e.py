"""ssd_main.py end to end on a tiny shapes TFRecord set: train_and_eval, eval of a given checkpoint, resume."""
import json
import pathlib

import pytest

from tiny_data import run_python, shapes_tfrecords

ROOT = pathlib.Path(__file__).resolve().parents[2]
COCO_KEYS = ["COCO/AP", "COCO/AP50", "COCO/AP75", "COCO/APs", "COCO/APm", "COCO/APl", "COCO/ARmax1",
             "COCO/ARmax10", "COCO/ARmax100", "COCO/ARs", "COCO/ARm", "COCO/ARl"]


_py = run_python


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    return shapes_tfrecords(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=8, seed=3)


def _common(d, model_dir):
    return ["ssd_main.py", "--model=ssd_resnet34", f"--training_file_pattern={d}/tf/train-*.tfrecord",
            f"--validation_file_pattern={d}/tf/val-*.tfrecord", f"--model_dir={model_dir}",
            "--width_multiplier=0.125", "--train_batch_size=2", "--eval_batch_size=4", "--steps_per_loop=2",
            "--log_every_steps=2", "--checkpoint_every_steps=2"]


@pytest.mark.slow
def test_train_and_eval_then_eval_then_resume(tiny_records, tmp_path):
    d, model_dir = tiny_records, tmp_path / "model"
    out = _py(*_common(d, model_dir), "--mode=train_and_eval", "--train_steps=4",
              f"--val_json_file={d}/shapes/annotations/instances_val.json")
    assert "parameters" in out and "Config: " in out
    assert "step 4/4" in out and "images/s" in out
    assert "Eval results at step 4" in out
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert set(COCO_KEYS) <= set(results) and results["step"] == 4
    assert all(-1.0 <= results[k] <= 1.0 for k in COCO_KEYS) and results["num_images"] == 8
    assert set(results["per_class_AP"]) == {"circle", "square", "triangle", "cross"}
    cfg = json.loads((model_dir / "config.json").read_text())
    assert (cfg["model"]["family"], cfg["model"]["name"], cfg["model"]["num_classes"]) == ("ssd", "ssd_resnet34", 5)
    assert cfg["model"]["width_multiplier"] == 0.125 and cfg["model"]["matching"]["strict"] is True

    # eval mode reads config.json back; ground truth built from the TFRecords (no --val_json_file)
    out = _py("ssd_main.py", "--mode=eval", f"--model_dir={model_dir}",
              f"--validation_file_pattern={d}/tf/val-*.tfrecord", "--eval_all_checkpoints")
    assert "Eval results at step 2" in out and "Eval results at step 4" in out
    evaluated = json.loads((model_dir / "eval_results.json").read_text())
    # same checkpoint, same data: the same numbers whichever ground-truth source
    assert evaluated["COCO/AP"] == pytest.approx(results["COCO/AP"], abs=1e-9)

    # one batch only: scored against those 4 images, and not remembered for the next evaluation
    _py("ssd_main.py", "--mode=eval", f"--model_dir={model_dir}", f"--validation_file_pattern={d}/tf/val-*.tfrecord",
        "--eval_steps=1")
    assert json.loads((model_dir / "eval_results.json").read_text())["num_images"] == 4
    _py("ssd_main.py", "--mode=eval", f"--model_dir={model_dir}", f"--validation_file_pattern={d}/tf/val-*.tfrecord")
    assert json.loads((model_dir / "eval_results.json").read_text())["num_images"] == 8

    # VOC07 metric on the same checkpoint: per-class AP under the right names
    _py("ssd_main.py", "--mode=eval", f"--model_dir={model_dir}", f"--validation_file_pattern={d}/tf/val-*.tfrecord",
        "--eval_metric=voc07")
    voc = json.loads((model_dir / "eval_results.json").read_text())
    assert {f"VOC/AP/{n}" for n in ("circle", "square", "triangle", "cross")} <= set(voc) and "VOC/mAP" in voc

    # resume: a longer run continues from step 4
    out = _py(*_common(d, model_dir), "--mode=train", "--train_steps=6")
    assert "Restored" in out and "ckpt-4" in out and "step 6/6" in out and "step 2/6" not in out


@pytest.mark.slow
def test_rerun_of_train_and_eval_finishes_an_interrupted_final_evaluation(tiny_records, tmp_path):
    """A train_and_eval killed during its final evaluation left the last checkpoint unevaluated (here: trained
    with --mode=train); the same train_and_eval command then evaluates it instead of saying nothing to do."""
    d, model_dir = tiny_records, tmp_path / "model"
    _py(*_common(d, model_dir), "--mode=train", "--train_steps=2")
    assert not (model_dir / "eval_results.json").exists()
    out = _py(*_common(d, model_dir), "--mode=train_and_eval", "--train_steps=2")
    assert "Nothing to train" in out and "ckpt-2 was never evaluated; evaluating it" in out
    assert json.loads((model_dir / "eval_results.json").read_text())["step"] == 2
    out = _py(*_common(d, model_dir), "--mode=train_and_eval", "--train_steps=2")
    assert "never evaluated" not in out  # done once, not again
