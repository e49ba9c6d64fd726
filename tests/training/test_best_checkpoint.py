"""The best evaluated checkpoint: direction of a metric, updates only on improvement, crash-safe files, kept
across the rolling deletion of checkpoints/, and used by --checkpoint=best (eval, predict)."""
import json
import pathlib

import numpy as np
import pytest

from ssd_tf.training import checkpoints as ck

# ------------------------------------------------------------------------------------------------- no TensorFlow
@pytest.mark.parametrize("metric,direction", [("COCO/AP", "max"), ("COCO/AP50", "max"), ("COCO/APs", "max"),
                                              ("COCO/ARmax100", "max"), ("VOC/mAP", "max"), ("VOC/AP/cat", "max"),
                                              ("per_class_AP/circle", "max"), ("total_loss", "min")])
def test_direction_of_known_metrics(metric, direction):
    assert ck.metric_direction(metric) == direction
    assert ck.metric_direction(metric, "min") == "min"  # an explicit mode wins


def test_direction_unknown_needs_a_mode():
    with pytest.raises(ValueError, match="--best_metric_mode=max"):
        ck.metric_direction("eval_seconds")
    assert ck.metric_direction("eval_seconds", "min") == "min"


def test_metric_value_top_level_and_nested():
    metrics = {"COCO/AP": 0.4, "per_class_AP": {"circle": 0.7, "a/b": 0.2}, "num_images": 8, "flag": True}
    assert ck.metric_value(metrics, "COCO/AP") == 0.4
    assert ck.metric_value(metrics, "per_class_AP/circle") == 0.7
    assert ck.metric_value(metrics, "per_class_AP/a/b") == 0.2  # a class name with a slash
    assert ck.metric_value(metrics, "COCO/AP75") is None and ck.metric_value(metrics, "flag") is None


def test_check_best_metric_names_the_choices():
    ck.check_best_metric("COCO/AP", "auto", "coco", ["circle"])
    ck.check_best_metric("per_class_AP/circle", "auto", "coco", ["circle"])
    ck.check_best_metric("VOC/mAP", "auto", "voc07", ["cat"])
    with pytest.raises(ValueError, match="COCO/Ap is not a key.*COCO/AP, COCO/AP50"):
        ck.check_best_metric("COCO/Ap", "auto", "coco", ["circle"])
    with pytest.raises(ValueError, match="best_metric_mode"):
        ck.check_best_metric("num_images", "auto", "coco", [])


def _fake_checkpoint(prefix: pathlib.Path):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".index").write_bytes(b"")
    prefix.with_name(prefix.name + ".data-00000-of-00001").write_bytes(b"")


def test_resolve_checkpoint_latest_path_directory_best(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no checkpoint in"):
        ck.resolve_checkpoint(str(tmp_path))
    for step in (3, 6):
        _fake_checkpoint(tmp_path / "checkpoints" / f"ckpt-{step}")
    (tmp_path / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-6"\nall_model_checkpoint_paths: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-6"\n')
    assert ck.resolve_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoints" / "ckpt-6")
    assert ck.resolve_checkpoint(str(tmp_path), str(tmp_path / "checkpoints" / "ckpt-3")).endswith("ckpt-3")
    assert ck.resolve_checkpoint(str(tmp_path), str(tmp_path / "checkpoints")).endswith("ckpt-6")
    with pytest.raises(ck.CheckpointError, match="no such checkpoint"):
        ck.resolve_checkpoint(str(tmp_path), str(tmp_path / "checkpoints" / "ckpt-4"))
    with pytest.raises(ck.CheckpointError, match="no best checkpoint"):
        ck.resolve_checkpoint(str(tmp_path), "best")
    _fake_checkpoint(tmp_path / "best" / "step_3" / "ckpt-3")
    (tmp_path / "best" / "best.json").write_text(json.dumps({"checkpoint": "best/step_3/ckpt-3", "step": 3}))
    assert ck.resolve_checkpoint(str(tmp_path), "best") == str(tmp_path / "best" / "step_3" / "ckpt-3")


# ------------------------------------------------------------------------------------------------- updates
def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    return model


def _restore(model, prefix):
    import tensorflow as tf

    tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    return [w.numpy() for w in model.weights]


def test_update_best_keeps_only_improvements_and_their_weights(tmp_path):
    model, messages = _tiny_model(), []
    weights = {}
    for step, ap in ((2, 0.2), (4, 0.5), (6, 0.3), (8, 0.5)):
        for w in model.weights:
            w.assign(np.full(w.shape, float(step), np.float32))
        weights[step] = [w.numpy() for w in model.weights]
        ck.update_best(str(tmp_path), model, step=step, metrics={"COCO/AP": ap}, metric="COCO/AP",
                       source=f"checkpoints/ckpt-{step}", log=messages.append)
    record = ck.read_best(str(tmp_path))
    assert record["step"] == 4 and record["value"] == 0.5 and record["mode"] == "max"  # 0.5 again is no better
    assert record["checkpoint"] == "best/step_4/ckpt-4" and record["previous"]["step"] == 2
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["best.json", "step_4"]  # step_2 removed
    restored = _restore(_tiny_model(), ck.resolve_checkpoint(str(tmp_path), "best"))
    for got, want in zip(restored, weights[4]):
        np.testing.assert_array_equal(got, want)
    assert sum("Best checkpoint: COCO/AP" in m for m in messages) == 2

    # lower is better for a loss
    ck.update_best(str(tmp_path / "m"), model, step=1, metrics={"total_loss": 3.0}, metric="total_loss")
    ck.update_best(str(tmp_path / "m"), model, step=2, metrics={"total_loss": 2.0}, metric="total_loss")
    assert ck.read_best(str(tmp_path / "m"))["step"] == 2

    # a metric the evaluation did not produce: said, not raised
    assert not ck.update_best(str(tmp_path), model, step=10, metrics={"VOC/mAP": 0.9}, metric="COCO/AP",
                              log=messages.append)
    assert "is not a number in this evaluation's results" in messages[-1]


def test_interrupted_update_leaves_a_usable_best(tmp_path):
    model = _tiny_model()
    ck.update_best(str(tmp_path), model, step=5, metrics={"COCO/AP": 0.4}, metric="COCO/AP", log=lambda *_: None)
    # an update interrupted after writing weights, before replacing best.json (and a half-written json)
    _fake_checkpoint(tmp_path / "best" / "step_9" / "ckpt-9")
    (tmp_path / "best" / "best.json.tmp").write_text('{"checkpo')
    assert ck.resolve_checkpoint(str(tmp_path), "best").endswith("best/step_5/ckpt-5")
    _restore(_tiny_model(), ck.resolve_checkpoint(str(tmp_path), "best"))  # complete weights
    # the next evaluation (not better) removes the leftover; a better one replaces the best
    ck.update_best(str(tmp_path), model, step=10, metrics={"COCO/AP": 0.1}, metric="COCO/AP", log=lambda *_: None)
    assert not (tmp_path / "best" / "step_9").exists() and (tmp_path / "best" / "step_5").exists()
    # the same step evaluated again with a better value: written beside, never over the current best
    ck.update_best(str(tmp_path), model, step=5, metrics={"COCO/AP": 0.6}, metric="COCO/AP", log=lambda *_: None)
    assert ck.read_best(str(tmp_path))["checkpoint"] == "best/step_5_2/ckpt-5"
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.is_dir()) == ["step_5_2"]


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_best_survives_rotation_and_is_used_by_checkpoint_best(tmp_path):
    """train_and_eval evaluating every epoch with --keep_checkpoints=1 and a best metric of which the first
    evaluation is the best (num_images is the same at every evaluation, and only an improvement replaces the
    best): the best weights outlive their training checkpoint, and --checkpoint=best uses them (eval, predict)."""
    from ssd_tf import presets, run
    from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES, write_records

    pattern = write_records(tmp_path)
    model_dir = tmp_path / "model"
    cfg = presets.preset("ssd_resnet34")
    cfg.model.width_multiplier = 0.125
    cfg.override("data", training_file_pattern=pattern, validation_file_pattern=pattern, class_ids=CLASS_IDS,
                 class_names=CLASS_NAMES, num_train_images=len(SIZES), shuffle_buffer=4)
    cfg.override("train", train_batch_size=2, train_steps=4, steps_per_loop=1, log_every_steps=2,
                 checkpoint_every_steps=1, keep_checkpoints=1, base_learning_rate=0.05, lr_reference_batch=2,
                 warmup_epochs=0.0)
    cfg.override("eval", eval_batch_size=2, eval_every_epochs=1.0, best_metric="num_images",
                 best_metric_mode="max")
    cfg.override("runtime", model_dir=str(model_dir))
    run.resolve_data(cfg, "train_and_eval")
    run.train_and_eval(cfg, log=lambda *_: None)

    best = ck.read_best(str(model_dir))
    history = json.loads((model_dir / "eval_results.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4]
    assert best["step"] == 2 and best["metric"] == "num_images" and best["value"] == len(SIZES)
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("*.index")) == ["ckpt-4.index"]  # rotated
    assert (model_dir / best["checkpoint"]).with_suffix(".index").exists() or \
        (model_dir / (best["checkpoint"] + ".index")).exists()
    assert (model_dir / "eval_plots" / "step_2" / "pr_curves.png").exists()

    # --mode=eval --checkpoint=best scores the best weights as they were scored at step 2
    again = run.evaluate(cfg, checkpoint="best", log=lambda *_: None)
    for key in ("COCO/AP", "COCO/AP50", "COCO/ARmax100"):
        assert again[key] == pytest.approx(history[0][key], abs=1e-12)

    # predict with --checkpoint=best loads them (and gives other detections than the latest checkpoint); the CLI
    # resolves --checkpoint through the same predict.check_args (its errors: tests/inference/test_predict.py)
    from PIL import Image

    from ssd_tf.inference import predict

    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)).save(picture)
    cfg.model.postprocess.score_threshold = 0.01
    said = []
    for which in ("best", "latest"):
        args = predict.check_args(cfg, str(picture), str(tmp_path / which), "best" if which == "best" else None)
        predict.predict(cfg, args, log=said.append, progress=False)
    assert any("best/step_2/ckpt-2 (step 2)" in line for line in said)
    assert any("checkpoints/ckpt-4 (step 4)" in line for line in said)
    best_dets, latest_dets = (json.loads((tmp_path / d / "detections.json").read_text()) for d in ("best", "latest"))
    assert best_dets and best_dets != latest_dets
