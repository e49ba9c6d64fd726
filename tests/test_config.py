"""Config trees: presets as complete values, config.json round trips (and version-1 files), dotted overrides,
config files, and ssd_main's flags -> config (run without TensorFlow)."""
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from ssd_tf import config as config_lib
from ssd_tf import presets

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", presets.PRESETS)
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = presets.preset(name)
    assert cfg.model.name == name and cfg.version == config_lib.VERSION
    config_lib.save(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["family"] == cfg.family and "postprocess" in saved["model"]  # the whole tree is saved
    assert config_lib.load(str(tmp_path)) == cfg


def test_version_1_config_json_still_loads(tmp_path):
    """A model directory written before presets became values: name-only model section, thresholds under eval,
    loss normalisation and the backbone checkpoint under train, augmentation under data."""
    v1 = {
        "model": {"name": "ssd_vgg16", "num_classes": 5, "width_multiplier": 0.25},
        "data": {"training_file_pattern": "t-*", "validation_file_pattern": "v-*", "val_json_file": "",
                 "label_map": "", "class_ids": [1, 2, 3, 4], "class_names": ["a", "b", "c", "d"],
                 "num_train_images": 40, "max_boxes": 100, "shuffle_buffer": 64, "augmentation": "none"},
        "train": {"train_batch_size": 4, "num_epochs": 0.0, "train_steps": 8, "base_learning_rate": 0.01,
                  "lr_reference_batch": 4, "lr_schedule": "multistep", "warmup_epochs": 0.0, "warmup_steps": 0,
                  "warmup_start_factor": 0.001, "cosine_alpha": 0.01, "lr_boundaries": [0.5], "lr_gamma": 0.1,
                  "momentum": 0.9, "weight_decay": 0.0005, "weight_decay_mode": "coupled",
                  "exclude_bn_bias_from_weight_decay": False, "loss_normalization": "per_image", "precision": "fp32",
                  "xla": False, "steps_per_loop": 2, "log_every_steps": 2, "checkpoint_every_steps": 4,
                  "keep_checkpoints": 5, "seed": 0, "resnet_checkpoint": "/w/backbone.weights.h5"},
        "eval": {"eval_batch_size": 4, "eval_every_epochs": 0.0, "eval_backend": "faster", "eval_metric": "coco",
                 "eval_steps": 0, "score_threshold": 0.2, "nms_iou_threshold": None, "max_candidates_per_class": None,
                 "max_detections": 50},
        "runtime": {"model_dir": "/m", "strategy": "auto", "num_devices": 0, "sync_batchnorm": False},
    }
    (tmp_path / "config.json").write_text(json.dumps(v1))
    cfg = config_lib.load(str(tmp_path))
    m = cfg.model
    assert (m.family, m.name, m.num_classes, m.width_multiplier) == ("ssd", "ssd_vgg16", 5, 0.25)
    assert m.loss_normalization == "per_image" and m.augmentation is None
    assert (m.postprocess.score_threshold, m.postprocess.iou_threshold, m.postprocess.max_detections) == (0.2, 0.45, 50)
    assert m.anchors.clip == "wh" and m.postprocess.max_candidates_per_class == 400  # the preset's values
    assert cfg.train.backbone_checkpoint == "/w/backbone.weights.h5" and cfg.train.train_steps == 8
    assert cfg.data.class_names == ["a", "b", "c", "d"] and cfg.data.shuffle_buffer == 64


def test_a_saved_config_without_a_field_added_later_loads_as_it_trained(tmp_path):
    """A Faster R-CNN model directory from before fitted canvases (no model.canvases / auto_canvases in its
    config.json) trained on the two orientation canvases: resumed, it keeps them (auto_canvases 0), so its
    data order stays the one it started with; a file that has the fields keeps its values."""
    cfg = presets.preset("faster_rcnn_r50_fpn")
    config_lib.save(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["auto_canvases"] == 2
    assert config_lib.load(str(tmp_path)).model.auto_canvases == 2
    for key in ("canvases", "auto_canvases"):
        del saved["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = config_lib.load(str(tmp_path))
    assert (old.model.canvases, old.model.auto_canvases) == ((), 0)
    assert old == dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, auto_canvases=0))


def test_unknown_fields_and_bad_values_are_named():
    cfg = presets.preset("ssd_resnet34")
    with pytest.raises(config_lib.ConfigError, match="no config field model.rpn.nms_threshold of a ssd model"):
        config_lib.set_value(cfg, "model.rpn.nms_threshold", 0.5)
    with pytest.raises(config_lib.ConfigError, match="model.postprocess.max_detections: expected an integer"):
        config_lib.set_value(cfg, "model.postprocess.max_detections", 1.5)
    with pytest.raises(config_lib.ConfigError, match="model.anchors.clip: AnchorSpec: clip must be"):
        config_lib.set_value(cfg, "model.anchors.clip", "none")
    bad = cfg.to_dict()
    bad["train"]["learning_rate"] = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"train: unknown field\(s\) \['learning_rate'\]"):
        config_lib.from_dict(bad)
    with pytest.raises(config_lib.ConfigError, match="model.family must be one of"):
        config_lib.model_from_dict({"family": "yolo"})
    with pytest.raises(config_lib.ConfigError, match="cannot be changed"):
        config_lib.set_value(cfg, "model.family", "faster_rcnn")
    config_lib.set_value(cfg, "train.lr_boundaries", [0.9, 0.5])
    with pytest.raises(config_lib.ConfigError, match=r"lr_boundaries must be in increasing order, got \[0.9, 0.5\]"):
        config_lib.validate(cfg)
    for fine in ([0.5, 0.5], [0.6, 0.8], [0.9, 100, 200]):  # a repeat drops twice; fractions and steps don't compare
        config_lib.set_value(cfg, "train.lr_boundaries", fine)
        config_lib.validate(cfg)


def test_frozen_parts_are_replaced_and_validated():
    cfg = presets.preset("ssd_resnet34")
    before = presets.preset("ssd_resnet34").model.anchors
    config_lib.set_value(cfg, "model.anchors.clip", "wh")
    assert cfg.model.anchors.clip == "wh" and before.clip == "all"
    config_lib.merge(cfg, {"model": {"augmentation": {"flip_prob": 0.25}, "postprocess": {"max_detections": 7}}})
    assert cfg.model.augmentation.flip_prob == 0.25 and cfg.model.augmentation.crop == "mlperf"
    assert cfg.model.postprocess.max_detections == 7
    cfg.model.width_multiplier = -1.0  # set by attribute: validate() catches it
    with pytest.raises(config_lib.ConfigError, match="width_multiplier must be > 0"):
        config_lib.validate(cfg)


def _effective_config(*flags, cwd=REPO):
    """ssd_main's flags -> config, as the CLI builds it, printed as JSON (no TensorFlow is imported)."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["ssd_main.py", *{list(flags)!r}]
        import ssd_main
        ssd_main.FLAGS(sys.argv)
        cfg = ssd_main.build_config()
        assert "tensorflow" not in sys.modules
        print(cfg.to_json())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_config_file_json_and_yaml_then_flags_override(tmp_path):
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent("""
        model:
          name: ssd_vgg16
          postprocess: {score_threshold: 0.3}
        train:
          momentum: 0.8
          lr_boundaries: [0.5, 0.75]
    """))
    cfg = _effective_config(f"--config_file={tmp_path / 'recipe.yaml'}", f"--model_dir={tmp_path / 'm'}",
                            "--momentum=0.7")
    assert cfg["model"]["name"] == "ssd_vgg16" and cfg["model"]["anchors"]["clip"] == "wh"
    assert cfg["model"]["postprocess"]["score_threshold"] == 0.3
    assert cfg["train"]["momentum"] == 0.7 and cfg["train"]["lr_boundaries"] == [0.5, 0.75]
    # a saved config.json is a complete starting point too
    saved = presets.preset("ssd_resnet34")
    saved.model.width_multiplier = 0.5
    (tmp_path / "full.json").write_text(saved.to_json())
    cfg = _effective_config(f"--config_file={tmp_path / 'full.json'}", f"--model_dir={tmp_path / 'm2'}",
                            "--score_threshold=0.4")
    expected = saved.to_dict()
    expected["model"]["postprocess"]["score_threshold"] = 0.4
    expected["runtime"]["model_dir"] = str(tmp_path / "m2")
    assert cfg == expected


def _main(*flags):
    return subprocess.run([sys.executable, "ssd_main.py", *flags], capture_output=True, text=True, cwd=REPO)


def test_config_and_flag_mistakes_are_one_line_usage_errors(tmp_path):
    (tmp_path / "bad.json").write_text('{"train": {"momentun": 0.8}}')
    cases = [
        ([f"--config_file={tmp_path / 'bad.json'}"], "bad.json: no config field train.momentun"),
        ([f"--config_file={tmp_path / 'missing.yaml'}"], "does not exist"),
        (["--lr_boundaries=abc"], "--lr_boundaries=abc: expected numbers"),
        (["--model=faster_rcnn_r50_fpn", "--loss_normalization=per_batch"],
         "--loss_normalization=per_batch: no config field model.loss_normalization of a faster_rcnn model"),
        (["--width_multiplier=0"], "--width_multiplier=0.0: must be > 0"),
        (["--train_batch_size=0"], "--train_batch_size=0: must be positive"),
        (["--steps_per_loop=0"], "--steps_per_loop=0: must be positive"),
        (["stray_argument"], "unexpected argument(s) 'stray_argument'"),
    ]
    for flags, message in cases:
        out = _main(f"--model_dir={tmp_path / 'm'}", "--training_file_pattern=x", *flags)
        assert out.returncode == 2, (flags, out.stderr)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, (flags, out.stderr)


def test_changing_the_architecture_of_a_trained_model_directory_is_refused(tmp_path):
    cfg = presets.preset("ssd_resnet34")
    cfg.model.width_multiplier = 0.25
    config_lib.save(cfg, str(tmp_path))
    out = _main(f"--model_dir={tmp_path}", "--width_multiplier=0.5", "--training_file_pattern=x", "--mode=train")
    assert out.returncode == 2
    assert "width_multiplier: saved 0.25, now 0.5" in out.stderr and "Traceback" not in out.stderr
    # a post-processing change is fine on an existing model directory (it reaches the file check)
    out = _main(f"--model_dir={tmp_path}", "--score_threshold=0.5", "--training_file_pattern=x", "--mode=train")
    assert out.returncode == 2 and "--training_file_pattern=x matches no file" in out.stderr


def test_a_users_epochs_win_over_a_presets_steps(tmp_path):
    """ssd_vgg16's recipe counts 60,000 iterations; --num_epochs must not be silently ignored."""
    preset = presets.preset("ssd_vgg16").train
    assert preset.train_steps == 60000 and preset.warmup_steps == 1000
    cfg = _effective_config("--model=ssd_vgg16", f"--model_dir={tmp_path / 'a'}", "--num_epochs=3",
                            "--warmup_epochs=0.5")
    assert cfg["train"]["num_epochs"] == 3 and cfg["train"]["train_steps"] == 0
    assert cfg["train"]["warmup_epochs"] == 0.5 and cfg["train"]["warmup_steps"] == -1
    out = _main("--model=ssd_vgg16", f"--model_dir={tmp_path / 'b'}", "--num_epochs=3", "--train_steps=7",
                "--training_file_pattern=x")
    assert "note: --train_steps=7 and --num_epochs=3.0 both given; the training length follows --train_steps" \
        in out.stderr
