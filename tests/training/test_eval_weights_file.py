"""Evaluating a Keras weights file (e.g. a converted maskrcnn-benchmark checkpoint) with ``--mode=eval
--checkpoint=FILE.weights.h5``: the config comes from --model (and overrides) when the model directory holds no
config.json, the weights are loaded into the built model, and eval_results.json lands in the (new) directory.
Tiny data and model (the maskrcnn-benchmark preset at width 1/8, depth 50, 96 x 128 inputs)."""
import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from ssd_tf import config as config_lib
from ssd_tf import presets, run
from tiny_data import CLASS_IDS, CLASS_NAMES, write_records

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
OVERRIDES = "model.width_multiplier=0.125,model.backbone.depth=50,model.min_size=96,model.max_size=128"


def _config(pattern, model_dir):
    cfg = presets.preset("faster_rcnn_r101_fpn")
    for path, value in config_lib.parse_overrides(OVERRIDES).items():
        config_lib.set_value(cfg, path, value)
    cfg.override("data", validation_file_pattern=pattern, class_ids=CLASS_IDS, class_names=CLASS_NAMES)
    cfg.override("train", precision="fp32")
    cfg.override("runtime", model_dir=str(model_dir))
    run.resolve_data(cfg, "eval")
    return config_lib.validate(cfg)


def test_eval_of_a_weights_file_in_a_fresh_directory(tmp_path):
    import keras

    pattern = write_records(tmp_path)
    cfg = _config(pattern, tmp_path / "eval")
    assert cfg.model.num_classes == 3  # 2 classes + background, as resolve_data sets it from the label map
    from ssd_tf.models.factory import build_from_config

    keras.utils.set_random_seed(0)
    weights = tmp_path / "converted.weights.h5"
    build_from_config(cfg.model).save_weights(str(weights))
    metrics = run.evaluate(cfg, checkpoint=str(weights))
    assert metrics["num_images"] == 4 and "COCO/AP" in metrics
    saved = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert saved["checkpoint"] == str(weights) and saved["step"] == 0
    # a file of another architecture is a one-line usage error naming it
    other = presets.preset("faster_rcnn_r101_fpn")
    other.model.width_multiplier, other.model.num_classes = 0.25, 3
    other.model.backbone.depth = 50
    wrong = tmp_path / "other.weights.h5"
    build_from_config(other.model).save_weights(str(wrong))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(run.UsageError, match=r"--checkpoint=.*other\.weights\.h5 does not fit a faster_rcnn_r101_fpn"):
            run.evaluate(cfg, checkpoint=str(wrong))
    # only that line: not a hundred Keras warnings about layers keeping their initialisation
    assert not [w for w in caught if "freshly-initialized" in str(w.message)]


def test_ssd_main_builds_the_config_of_a_weights_file_from_the_preset(tmp_path):
    weights = tmp_path / "seed.weights.h5"
    weights.write_bytes(b"")

    def build(*flags):
        code = textwrap.dedent(f"""
            import sys
            sys.argv = ["ssd_main.py", *{list(flags)!r}]
            import ssd_main
            ssd_main.FLAGS(sys.argv)
            cfg = ssd_main.build_config()
            ssd_main.check_inference_flags(cfg)
            assert "tensorflow" not in sys.modules
            print(cfg.to_json())
        """)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)

    out = build("--mode=eval", "--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'new'}",
                f"--checkpoint={weights}", f"--params_override={OVERRIDES}", "--precision=fp32", "--momentum=0.5")
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["model"]["name"] == "faster_rcnn_r101_fpn" and cfg["model"]["pixel_offset"] == 1.0
    assert cfg["model"]["backbone"]["depth"] == 50
    # --precision applies (no saved config says otherwise); other training flags are ignored as in any evaluation
    assert cfg["train"]["precision"] == "fp32" and cfg["train"]["momentum"] == 0.9
    # without a weights file a fresh directory is still an error that says what to do
    out = build("--mode=eval", "--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'new'}")
    assert out.returncode != 0 and "--checkpoint=FILE.weights.h5" in out.stderr
    out = build("--mode=eval", "--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'new'}",
                f"--checkpoint={tmp_path / 'missing.weights.h5'}")
    assert out.returncode != 0 and "no such checkpoint" in out.stderr
