"""maskrcnn-benchmark's training recipe as the faster_rcnn_r101_fpn preset configures it: learning rate per 16 images,
biases at 2x the learning rate and without weight decay (train.bias_lr_factor / train.bias_weight_decay, honoured by
run.make_optimizer_fn through MomentumSGD's per-variable options), warmup 500 iterations from 1/3, x0.1 at 60k and
80k of 90k iterations counted at a global batch of 16 (train.steps_reference_batch) and rescaled to the run's."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ssd_tf import config as config_lib
from ssd_tf import presets, run

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("global_batch,steps,bounds", [(16, 90000, [60000, 80000]), (2, 720000, [480000, 640000]),
                                                       (4, 360000, [240000, 320000]), (32, 45000, [30000, 40000])])
def test_iterations_and_drops_rescale_with_the_global_batch(global_batch, steps, bounds):
    cfg = presets.preset("faster_rcnn_r101_fpn")
    assert run.total_steps(cfg, global_batch) == steps
    assert run.lr_boundary_steps(cfg, global_batch, steps) == bounds
    schedule = run.make_schedule(cfg, global_batch, steps)
    assert schedule.boundaries == bounds and schedule.warmup_steps == 500  # the warmup is not rescaled
    lr = 0.02 * global_batch / 16
    for step, expected in ((0, lr / 3), (250, lr * (1 / 3 + 2 / 3 * 0.5)), (500, lr), (bounds[0] - 1, lr),
                           (bounds[0], lr * 0.1), (bounds[1], lr * 0.01), (steps - 1, lr * 0.01)):
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
    # the same number of images whatever the batch
    assert steps * global_batch == 90000 * 16


def test_steps_are_taken_as_given_without_a_reference_batch():
    """The other presets' step counts (e.g. ssd_vgg16_voc's 120k iterations, drops at 80k / 100k) are not
    rescaled: steps_reference_batch is 0 there."""
    cfg = presets.preset("ssd_vgg16_voc")
    assert cfg.train.steps_reference_batch == 0
    assert run.total_steps(cfg, 8) == 120000 and run.lr_boundary_steps(cfg, 8, 120000) == [80000, 100000]
    cfg.train.steps_reference_batch = 32
    assert run.total_steps(cfg, 8) == 480000 and run.lr_boundary_steps(cfg, 8, 480000) == [320000, 400000]
    # fractions stay fractions of the (rescaled) length
    cfg.train.lr_boundaries = [0.5]
    assert run.lr_boundary_steps(cfg, 8, 480000) == [240000]
    # epochs are images already: not rescaled
    tv = presets.preset("faster_rcnn_r50_fpn")
    tv.data.num_train_images = 1600
    assert run.total_steps(tv, 16) == 26 * 100


def test_biases_get_twice_the_learning_rate_and_no_weight_decay():
    import keras
    import tensorflow as tf

    cfg = presets.preset("faster_rcnn_r101_fpn")
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    outputs = keras.layers.Dense(3, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    optimizer = run.make_optimizer_fn(cfg, 0.01)()
    optimizer.build(model.trainable_variables)
    rules = {v.path: (optimizer.variable_lr_multiplier(v), optimizer.variable_uses_weight_decay(v))
             for v in model.trainable_variables}
    assert rules == {"conv/kernel": (1.0, True), "conv/bias": (2.0, False), "dense/kernel": (1.0, True),
                     "dense/bias": (2.0, False)}
    # one update, by hand: w <- w - lr * m * (g + wd * w) with classic momentum's first step b = g + wd * w
    before = [v.numpy().copy() for v in model.trainable_variables]
    grads = [tf.ones_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for v, w in zip(model.trainable_variables, before):
        mult, decays = rules[v.path]
        expected = w - 0.01 * mult * (1.0 + (1e-4 * w if decays else 0.0))
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, atol=1e-9, err_msg=v.path)
    # torchvision's recipe: every variable alike
    tv = run.make_optimizer_fn(presets.preset("faster_rcnn_r50_fpn"), 0.01)()
    tv.build(model.trainable_variables)
    assert {(tv.variable_lr_multiplier(v), tv.variable_uses_weight_decay(v)) for v in model.trainable_variables} \
        == {(1.0, True)}


def test_bias_weight_decay_values():
    train = presets.preset("faster_rcnn_r50_fpn").train
    for ok in (None, 0.0, train.weight_decay):
        config_lib.set_value(presets.preset("faster_rcnn_r50_fpn"), "train.bias_weight_decay", ok)
    cfg = presets.preset("faster_rcnn_r50_fpn")
    config_lib.set_value(cfg, "train.bias_weight_decay", 5e-5)
    with pytest.raises(config_lib.ConfigError, match="bias_weight_decay must be 0"):
        config_lib.validate(cfg)


def _effective_config(*flags):
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["ssd_main.py", *{list(flags)!r}]
        import ssd_main
        ssd_main.FLAGS(sys.argv)
        cfg = ssd_main.build_config()
        print(cfg.to_json())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def test_recipe_flags_and_a_users_steps(tmp_path):
    cfg, _ = _effective_config("--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'a'}",
                               "--bias_lr_factor=1.5", "--bias_weight_decay=0", "--steps_reference_batch=8")
    assert (cfg["train"]["bias_lr_factor"], cfg["train"]["bias_weight_decay"],
            cfg["train"]["steps_reference_batch"]) == (1.5, 0.0, 8)
    # --train_steps given by the user: taken as given (a note says how to rescale it)
    cfg, err = _effective_config("--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'b'}", "--train_steps=50")
    assert cfg["train"]["train_steps"] == 50 and cfg["train"]["steps_reference_batch"] == 0
    assert "--steps_reference_batch=16" in err
    cfg, _ = _effective_config("--model=faster_rcnn_r101_fpn", f"--model_dir={tmp_path / 'c'}", "--train_steps=50",
                               "--steps_reference_batch=16")
    assert cfg["train"]["steps_reference_batch"] == 16
