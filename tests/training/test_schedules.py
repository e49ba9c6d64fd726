"""LR schedules against their closed forms (float64 in numpy) at the steps where they change shape."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.training.schedules import WarmupCosine, WarmupMultiStep, scale_lr


def cosine_ref(s, base, total, warmup, alpha, f0):
    if s < warmup:
        return base * (f0 + (1 - f0) * s / warmup)
    p = min((s - warmup) / (total - warmup), 1.0)
    return base * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * p)))


def multistep_ref(s, base, boundaries, gamma, warmup, f0):
    warm = 1.0 if warmup == 0 else f0 + (1 - f0) * min(s / warmup, 1.0)
    return base * warm * gamma ** sum(1 for b in boundaries if s >= b)


COSINE_CASES = [
    dict(base_lr=0.16, total_steps=1000, warmup_steps=100, alpha=0.01, warmup_start_factor=0.0),
    dict(base_lr=0.096, total_steps=500, warmup_steps=0, alpha=0.0, warmup_start_factor=0.0),
    dict(base_lr=0.02, total_steps=90, warmup_steps=30, alpha=0.1, warmup_start_factor=1 / 3),
]


@pytest.mark.parametrize("kw", COSINE_CASES)
def test_warmup_cosine_closed_form(kw):
    sched = WarmupCosine(**kw)
    total, warmup = kw["total_steps"], kw["warmup_steps"]
    steps = sorted({0, 1, warmup // 2, max(warmup - 1, 0), warmup, warmup + 1, (warmup + total) // 2,
                    total - 1, total, total + 1, 3 * total} | set(range(0, 2 * total, 7)))
    got = np.array([float(sched(tf.constant(s, tf.int64))) for s in steps])
    want = np.array([cosine_ref(s, kw["base_lr"], total, warmup, kw["alpha"], kw["warmup_start_factor"])
                     for s in steps])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # Landmarks written out: start, warmup end = peak, end = alpha * base, constant afterwards.
    assert float(sched(0)) == pytest.approx(kw["base_lr"] * (kw["warmup_start_factor"] if warmup else 1.0), abs=1e-8)
    assert float(sched(warmup)) == pytest.approx(kw["base_lr"], abs=1e-8)
    assert float(sched(total)) == pytest.approx(kw["base_lr"] * kw["alpha"], abs=1e-8)
    assert float(sched(10 * total)) == pytest.approx(kw["base_lr"] * kw["alpha"], abs=1e-8)


def test_warmup_cosine_midpoint_is_half_way():
    sched = WarmupCosine(1.0, total_steps=300, warmup_steps=100, alpha=0.0)
    assert float(sched(200)) == pytest.approx(0.5, abs=1e-7)
    assert float(sched(50)) == pytest.approx(0.5, abs=1e-7)


MULTISTEP_CASES = [
    # MLPerf REF at global batch 1024: lr 0.08, warmup 300 from 0, drops at 160k*32/1024 and 200k*32/1024.
    dict(base_lr=0.08, boundaries=[5000, 6250], gamma=0.1, warmup_steps=300, warmup_start_factor=0.0),
    # maskrcnn-benchmark 1x: warmup 500 from 1/3, drops at 60k, 80k.
    dict(base_lr=0.02, boundaries=[60000, 80000], gamma=0.1, warmup_steps=500, warmup_start_factor=1 / 3),
    # ssd.pytorch VOC: no warmup.
    dict(base_lr=1e-3, boundaries=[80000, 100000], gamma=0.1, warmup_steps=0, warmup_start_factor=0.0),
    # A boundary inside the warmup: factors multiply.
    dict(base_lr=0.5, boundaries=[5, 20], gamma=0.5, warmup_steps=10, warmup_start_factor=0.001),
]


@pytest.mark.parametrize("kw", MULTISTEP_CASES)
def test_warmup_multistep_closed_form(kw):
    sched = WarmupMultiStep(**kw)
    b, w = kw["boundaries"], kw["warmup_steps"]
    steps = sorted({0, 1, w // 2, max(w - 1, 0), w, w + 1, 2 * b[-1]}
                   | {x for bb in b for x in (bb - 1, bb, bb + 1)}
                   | set(range(0, b[-1] + 50, max(1, b[-1] // 97))))
    got = np.array([float(sched(tf.constant(s, tf.int64))) for s in steps])
    want = np.array([multistep_ref(s, kw["base_lr"], b, kw["gamma"], w, kw["warmup_start_factor"]) for s in steps])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # The drop happens exactly at the boundary step.
    before, at = float(sched(b[-1] - 1)), float(sched(b[-1]))
    assert at == pytest.approx(before * kw["gamma"], rel=1e-6)


@pytest.mark.torch
def test_a_repeated_boundary_drops_twice_as_torch_multisteplr_does():
    """Fractional boundaries of a short run can round to one step (the Faster R-CNN recipe's 16/26 and 22/26 of
    one step are both 1); torch's MultiStepLR counts a repeated milestone once per repeat."""
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.02)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 3, 5], gamma=0.1)
    ours = WarmupMultiStep(0.02, [3, 3, 5], gamma=0.1)
    for step in range(8):
        assert float(ours(step)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6), step
        opt.step()
        ref.step()


def test_a_one_step_run_of_every_preset_has_a_schedule():
    from ssd_tf import presets, run

    for name in presets.PRESETS:
        cfg = presets.preset(name)
        cfg.data.num_train_images = 8
        for steps in (1, 2, 3):
            cfg.train.train_steps = steps
            schedule = run.make_schedule(cfg, cfg.train.train_batch_size, run.total_steps(cfg, cfg.train.train_batch_size))
            assert np.isfinite(float(schedule(0))) and float(schedule(steps - 1)) >= 0, (name, steps)


def test_schedules_accept_int32_float_python_and_variable_steps():
    sched = WarmupMultiStep(0.1, [10], warmup_steps=4)
    for step in (3, 3.0, tf.constant(3, tf.int32), tf.constant(3.0), tf.Variable(3, dtype=tf.int64)):
        assert float(sched(step)) == pytest.approx(0.075, abs=1e-8)


def test_schedules_trace_under_xla():
    cos = WarmupCosine(0.1, total_steps=100, warmup_steps=10, alpha=0.01)
    ms = WarmupMultiStep(0.1, [50, 80], warmup_steps=10)

    @tf.function(jit_compile=True)
    def both(step):
        return cos(step), ms(step)

    for s in (0, 5, 10, 50, 99, 150):
        c, m = both(tf.constant(s, tf.int64))
        assert float(c) == pytest.approx(cosine_ref(s, 0.1, 100, 10, 0.01, 0.0), abs=1e-7)
        assert float(m) == pytest.approx(multistep_ref(s, 0.1, [50, 80], 0.1, 10, 0.0), abs=1e-7)


@pytest.mark.parametrize("sched", [
    WarmupCosine(0.16, total_steps=1000, warmup_steps=100, alpha=0.01, warmup_start_factor=0.1),
    WarmupMultiStep(0.02, [60, 80], gamma=0.2, warmup_steps=5, warmup_start_factor=1 / 3),
])
def test_schedules_serialise_round_trip(sched):
    config = keras.optimizers.schedules.serialize(sched)
    again = keras.optimizers.schedules.deserialize(config)
    assert type(again) is type(sched)
    assert again.get_config() == sched.get_config()
    for s in (0, 3, 61, 90, 2000):
        assert float(again(s)) == float(sched(s))
    # Also through an optimizer's config (what a saved model directory would hold).
    opt = keras.optimizers.SGD(learning_rate=sched)
    opt2 = keras.optimizers.SGD.from_config(opt.get_config())
    assert float(opt2.learning_rate) == float(sched(0))


def test_schedule_argument_validation():
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="alpha"):
        WarmupCosine(0.1, total_steps=10, alpha=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=-1)
    with pytest.raises(ValueError, match="non-decreasing"):
        WarmupMultiStep(0.1, [10, 9])
    with pytest.raises(ValueError, match=r"boundaries\[1\]"):
        WarmupMultiStep(0.1, [10, 2.5])
    with pytest.raises(ValueError, match="gamma"):
        WarmupMultiStep(0.1, [10], gamma=0.0)
    with pytest.raises(ValueError, match="warmup_start_factor"):
        WarmupMultiStep(0.1, [10], warmup_start_factor=-0.1)


def test_scale_lr_linear_rule():
    assert scale_lr(2.5e-3, 32, 1024) == pytest.approx(0.08)
    assert scale_lr(3e-3, 32, 1024) == pytest.approx(0.096)
    assert scale_lr(2.5e-3, 32, 2048) == pytest.approx(0.16)
    assert scale_lr(0.02, 16, 16) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="global_batch"):
        scale_lr(0.1, 32, 0)
    with pytest.raises(ValueError, match="n_images"):
        scale_lr(0.1, 0, 32)
