"""ssd_tf.run from Python: a model directory evaluates with the config it saved, not with today's presets."""
import dataclasses
import warnings

import pytest

from ssd_tf import config as config_lib
from ssd_tf import presets, run
from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES, write_records

STATS = ("COCO/AP", "COCO/AP50", "COCO/AP75", "COCO/ARmax100")


def _tiny_config(pattern, model_dir):
    cfg = presets.preset("ssd_resnet34")
    cfg.model.width_multiplier = 0.125
    cfg.override("data", training_file_pattern=pattern, validation_file_pattern=pattern, class_ids=CLASS_IDS,
                 class_names=CLASS_NAMES, num_train_images=len(SIZES), shuffle_buffer=4)
    cfg.override("train", train_batch_size=2, train_steps=3, steps_per_loop=1, log_every_steps=1,
                 checkpoint_every_steps=3, base_learning_rate=0.01, lr_reference_batch=2, warmup_epochs=0.0,
                 precision="fp32")
    cfg.override("eval", eval_batch_size=2)
    cfg.override("runtime", model_dir=str(model_dir))
    run.resolve_data(cfg, "train_and_eval")
    return cfg


def test_eval_uses_the_saved_config_not_todays_preset(tmp_path, monkeypatch):
    pattern = write_records(tmp_path)
    model_dir = tmp_path / "model"
    trained = run.train_and_eval(_tiny_config(pattern, model_dir))
    assert trained["num_images"] == len(SIZES) and set(STATS) <= set(trained)
    assert trained["COCO/ARmax100"] > 0  # something to lose when post-processing changes

    # Today's preset changes its post-processing (and anchor clipping) after the model was trained.
    original = presets._PRESETS["ssd_resnet34"]

    def changed():
        cfg = original()
        cfg.model.postprocess = dataclasses.replace(cfg.model.postprocess, score_threshold=0.9, max_detections=1)
        cfg.model.anchors = dataclasses.replace(cfg.model.anchors, clip="wh")
        return cfg

    monkeypatch.setitem(presets._PRESETS, "ssd_resnet34", changed)
    saved = config_lib.load(str(model_dir))
    again = run.evaluate(saved)
    for key in STATS:
        assert again[key] == pytest.approx(trained[key], abs=1e-12), key
    # ... while a config built from today's preset scores the same checkpoint differently.
    today = _tiny_config(pattern, model_dir)
    assert today.model.postprocess.score_threshold == 0.9
    different = run.evaluate(today)
    assert any(different[k] != pytest.approx(trained[k], abs=1e-9) for k in STATS)


def test_fine_tuning_from_a_model_with_another_class_count(tmp_path):
    import keras
    import numpy as np

    import ssd_tf

    source = ssd_tf.build_model("ssd_resnet34", num_classes=81, width_multiplier=0.125)
    path = str(tmp_path / "coco.weights.h5")
    source.save_weights(path)
    cfg = presets.preset("ssd_resnet34")
    cfg.model.num_classes, cfg.model.width_multiplier = 3, 0.125
    keras.utils.set_random_seed(5)
    target = ssd_tf.build_model("ssd_resnet34", num_classes=3, width_multiplier=0.125)
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.load_backbone_weights(target, path, cfg, log=lines.append)
    # One accurate line, not Keras's "layers will retain their freshly-initialized weights" for loaded layers.
    assert not [w for w in caught if "freshly-initialized" in str(w.message)]
    assert len(lines) == 1 and "conf_0" in lines[0] and "start from their initialisation" in lines[0]
    for a, b in zip(source.weights, target.weights):
        if not a.path.startswith("conf_"):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    other_width = ssd_tf.build_model("ssd_resnet34", num_classes=3, width_multiplier=0.25)
    with pytest.raises(run.UsageError, match="does not fit this model: .* weight"):
        run.load_backbone_weights(other_width, path, cfg)


def test_a_run_after_a_deterministic_one_in_the_same_process_trains(tmp_path):
    """Op determinism is process-wide (the Faster R-CNN presets turn it on): a later run whose config does not
    ask for it gets it off again, and its train loop (which times the data wait) runs."""
    from tensorflow.python.framework import config as tf_config

    pattern = write_records(tmp_path)
    tf_config.enable_op_determinism()
    try:
        cfg = _tiny_config(pattern, tmp_path / "model")
        assert not cfg.train.deterministic_ops
        run.train(cfg)
        assert not tf_config.is_op_determinism_enabled()
    finally:
        tf_config.disable_op_determinism()
    assert (tmp_path / "model" / "checkpoints").is_dir()


def test_faster_rcnn_refuses_to_train_on_a_cpu_without_op_determinism(tmp_path):
    """RoIAlign's CPU gradient (CropAndResizeGradImage) races without op determinism: training with
    --deterministic_ops=false would go on with wrong gradients, so it is a usage error naming the flag."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: its RoIAlign gradient does not race, so the run is allowed")
    pattern = write_records(tmp_path)
    cfg = presets.preset("faster_rcnn_r50_fpn")
    assert cfg.train.deterministic_ops  # the preset's default trains correctly
    cfg.model.width_multiplier, cfg.model.min_size, cfg.model.max_size = 0.125, 64, 64
    cfg.override("data", training_file_pattern=pattern, class_ids=CLASS_IDS, class_names=CLASS_NAMES,
                 num_train_images=len(SIZES))
    cfg.override("train", train_batch_size=2, train_steps=1, deterministic_ops=False, precision="fp32")
    cfg.override("runtime", model_dir=str(tmp_path / "model"))
    run.resolve_data(cfg, "train")
    with pytest.raises(run.UsageError, match=r"--deterministic_ops=false cannot train faster_rcnn_r50_fpn on a CPU: "
                                             r"RoIAlign's gradient"):
        run.train(cfg)
    assert not (tmp_path / "model" / "checkpoints").exists()  # refused before a step or a checkpoint


def test_faster_rcnn_fits_canvases_to_its_training_images(tmp_path, capsys):
    """A training run fills model.canvases from its images' sizes (4:3 pictures at 64/128 resize to 64 x 85: a
    64 x 96 canvas instead of 64 x 128; squares 64 x 64), records them in config.json, trains and evaluates on every canvas (one
    traced branch each), and a later evaluation from the model directory uses the recorded canvases."""
    sizes = [(48, 64)] * 6 + [(64, 64)] * 2 + [(64, 128), (128, 64)]
    pattern = write_records(tmp_path, sizes=sizes)
    cfg = presets.preset("faster_rcnn_r50_fpn")
    assert cfg.model.canvases == () and cfg.model.auto_canvases == 2
    cfg.model.width_multiplier, cfg.model.min_size, cfg.model.max_size = 0.125, 64, 128
    cfg.override("data", training_file_pattern=pattern, validation_file_pattern=pattern, class_ids=CLASS_IDS,
                 class_names=CLASS_NAMES, num_train_images=len(sizes), shuffle_buffer=4)
    cfg.override("train", train_batch_size=2, train_steps=4, steps_per_loop=1, log_every_steps=1,
                 checkpoint_every_steps=4, precision="fp32")
    cfg.override("eval", eval_batch_size=2)
    cfg.override("runtime", model_dir=str(tmp_path / "model"))
    run.resolve_data(cfg, "train_and_eval")
    trained = run.train_and_eval(cfg)
    out = capsys.readouterr().out
    assert "Canvases fitted to 10 training images: [[64, 64], [64, 96]]" in out
    # The preset's frozen BatchNorm and stem, with no backbone given: the run says they stay random, and how not to.
    assert "WARNING: no --backbone_checkpoint, so 117 frozen weights (such as conv1/kernel, bn1/gamma" in out
    assert "--params_override=model.backbone.norm=batch --trainable_backbone_layers=5" in out
    shares = out.split("Training batches by canvas: ")[1].splitlines()[0]
    assert shares == "64x128 10.0%, 128x64 10.0%, 64x64 20.0%, 64x96 60.0%"
    saved = config_lib.load(str(tmp_path / "model"))
    assert saved.model.canvases == ((64, 64), (64, 96))
    assert trained["num_images"] == len(sizes)
    again = run.evaluate(saved)
    for key in STATS:
        assert again[key] == pytest.approx(trained[key], abs=1e-12), key


def test_only_frozen_weights_without_a_backbone_are_warned_about():
    import ssd_tf

    from ssd_tf.models.factory import build_from_config

    for name, warned in [("ssd_resnet34", False), ("ssd_vgg16", False), ("faster_rcnn_r50_fpn", True)]:
        lines = []
        run._warn_frozen_at_random(presets.preset(name), ssd_tf.build_model(name, width_multiplier=0.125), lines.append)
        assert bool(lines) == warned, (name, lines)
    cfg = presets.preset("faster_rcnn_r50_fpn")
    cfg.model.backbone.norm, cfg.model.backbone.trainable_layers = "batch", 5  # the from-scratch settings
    cfg.model.width_multiplier = 0.125
    lines = []
    run._warn_frozen_at_random(cfg, build_from_config(cfg.model), lines.append)
    assert lines == []


def test_a_val_json_of_other_images_stops_train_and_eval_before_training(tmp_path):
    import json

    pattern = write_records(tmp_path)
    cfg = _tiny_config(pattern, tmp_path / "model")
    other = tmp_path / "instances_other.json"  # a COCO JSON whose images are not the records' (source ids 1..N)
    other.write_text(json.dumps({"images": [{"id": 1000 + i, "height": 8, "width": 8, "file_name": f"{i}.png"}
                                            for i in range(len(SIZES))], "annotations": [],
                                 "categories": [{"id": c, "name": n} for c, n in zip(CLASS_IDS, CLASS_NAMES)]}))
    cfg.data.val_json_file = str(other)
    with pytest.raises(run.UsageError, match=r"of the first \d+ validation records are not images of "
                                             r"--val_json_file=.*instances_other\.json"):
        run.train_and_eval(cfg)
    assert not (tmp_path / "model" / "checkpoints").exists()
    with pytest.raises(run.UsageError, match="instances_other.json"):
        run.evaluate(cfg)


def test_a_second_training_into_the_same_model_dir_stops_at_once(tmp_path):
    """Two trainings into one model directory would interleave their checkpoints: while one trains (holding
    .training.lock), another is a usage error naming the holder; once it ends, however it ends, training resumes."""
    import os

    from ssd_tf.training.checkpoints import ModelDirBusy, training_lock

    pattern = write_records(tmp_path)
    model_dir = tmp_path / "model"
    cfg = _tiny_config(pattern, model_dir)
    with training_lock(str(model_dir)):
        with pytest.raises(ModelDirBusy):
            with training_lock(str(model_dir)):
                pass
        with pytest.raises(run.UsageError, match=rf"{model_dir} is being trained by another process "
                                                 rf"\(pid {os.getpid()} on .*\); wait for it, stop it"):
            run.train(cfg)
        assert not (model_dir / "checkpoints").exists()
    run.train(cfg)
    assert (model_dir / "checkpoints").is_dir()


def test_a_long_evaluation_reports_its_progress(tmp_path, monkeypatch):
    from ssd_tf.tasks.base import Task

    pattern = write_records(tmp_path)
    cfg = _tiny_config(pattern, tmp_path / "model")
    run.train(cfg)
    monkeypatch.setattr(Task, "eval_progress_seconds", 0.0)  # every batch counts as long here
    lines = []
    run.evaluate(cfg, log=lines.append)
    progress = [line for line in lines if line.startswith("Evaluating: ")]
    assert [p.split(" images so far")[0] for p in progress] == [f"Evaluating: {n}" for n in range(2, len(SIZES) + 1, 2)]
    assert all(p.endswith(" images/s)") for p in progress)
