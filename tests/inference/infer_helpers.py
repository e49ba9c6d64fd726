"""Helpers of the inference tests: a model directory made without training (the tiny SSD preset, channels
x0.125, its initial weights saved as a training checkpoint, the tiny records' label map: dataset ids 4 and 9),
and ssd_main.py in a subprocess."""
import pathlib
import subprocess
import sys

from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES

ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_model_dir(directory: pathlib.Path, pattern: str, step: int = 1, seed: int = 0) -> pathlib.Path:
    import keras
    import tensorflow as tf

    from ssd_tf import config as config_lib
    from ssd_tf import presets, run
    from ssd_tf.tasks import build_task

    cfg = presets.preset("ssd_resnet34")
    cfg.model.width_multiplier = 0.125
    cfg.override("data", training_file_pattern=pattern, validation_file_pattern=pattern, class_ids=CLASS_IDS,
                 class_names=CLASS_NAMES, num_train_images=len(SIZES))
    cfg.override("eval", eval_batch_size=2)
    cfg.override("runtime", model_dir=str(directory))
    run.resolve_data(cfg, "train_and_eval")
    config_lib.save(cfg, str(directory))
    keras.utils.set_random_seed(seed)
    model = build_task(cfg).build_model()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory / "checkpoints"), 3)
    manager.save(checkpoint_number=step)
    return directory


def ssd_main(*args, timeout=300):
    """Runs ssd_main.py; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "ssd_main.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
