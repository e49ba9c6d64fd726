"""--precision=auto decides from the instruction set, never by guessing."""
from ssd_tf.training.precision import cpu_flags, machine_summary, resolve_precision


def test_auto_picks_bf16_only_with_native_bfloat16_instructions():
    assert resolve_precision("auto", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, check_gpu=False)[0] == "bf16"
    assert resolve_precision("auto", {"avx2", "avx512f", "avx512_bf16"}, check_gpu=False)[0] == "bf16"
    precision, why = resolve_precision("auto", {"avx2", "fma"}, check_gpu=False)  # e.g. Zen3
    assert precision == "fp32" and "neither amx_bf16 nor avx512_bf16" in why
    assert resolve_precision("fp16", {"amx_bf16"}, check_gpu=False) == ("fp16", "--precision=fp16 was asked for")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    summary = machine_summary()
    assert {"cpu_model", "avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(summary)


def _bf16_hardware():
    """Why bfloat16 is not native here ('' when it is): the test is skipped, never failed, on such machines."""
    precision, why = resolve_precision("auto", check_gpu=False)
    return "" if precision == "bf16" else why


def _losses_after_steps(precision, weights, steps=6):
    """Loss before and after `steps` plain-SGD steps on one fixed tiny-SSD batch, under `precision`'s Keras policy,
    from the same float32 starting weights."""
    import keras
    import tensorflow as tf

    from ssd_tf import presets
    from ssd_tf.tasks import build_task
    from tiny_data import CLASS_IDS, CLASS_NAMES, SIZES

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy({"bf16": "mixed_bfloat16"}.get(precision, "float32"))
    try:
        cfg = presets.preset("ssd_resnet34")
        cfg.model.width_multiplier = 0.125
        cfg.model.num_classes = len(CLASS_IDS) + 1
        cfg.override("data", training_file_pattern=weights["pattern"], class_ids=CLASS_IDS, class_names=CLASS_NAMES,
                     num_train_images=len(SIZES), shuffle_buffer=1)
        cfg.override("train", train_batch_size=4, seed=3)
        task = build_task(cfg, global_batch_size=4)
        model = task.build_model()
        if "values" in weights:
            model.set_weights(weights["values"])
        else:
            weights["values"] = model.get_weights()
        if "batch" not in weights:
            weights["batch"] = next(iter(task.build_train_dataset(None, 0)))
        images, labels = weights["batch"]
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
        curve = []
        for _ in range(steps + 1):
            with tf.GradientTape() as tape:
                losses = task.compute_losses(model, images, labels)
            assert losses["total_loss"].dtype == tf.float32  # losses stay float32 under the bf16 policy
            curve.append(float(losses["total_loss"]))
            grads = tape.gradient(losses["total_loss"], model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        assert all(v.dtype == "float32" for v in model.trainable_variables)  # variables stay float32
        return curve
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_a_bf16_training_step_lowers_the_loss_like_fp32(tmp_path):
    import pytest

    reason = _bf16_hardware()
    if reason:
        pytest.skip(f"bfloat16 is not native on this machine: {reason}")
    from tiny_data import write_records

    shared = {"pattern": write_records(tmp_path)}
    fp32 = _losses_after_steps("fp32", shared)
    bf16 = _losses_after_steps("bf16", shared)
    assert abs(bf16[0] - fp32[0]) < 0.02 * fp32[0], (fp32[0], bf16[0])  # same weights, same batch: same loss
    assert bf16[-1] < 0.9 * bf16[0] and fp32[-1] < 0.9 * fp32[0], (fp32, bf16)
    drop32, drop16 = fp32[0] - fp32[-1], bf16[0] - bf16[-1]
    assert 0.7 * drop32 < drop16 < 1.3 * drop32, (fp32, bf16)
