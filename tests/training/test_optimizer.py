"""MomentumSGD against a numpy reference of the recurrence, against torch.optim.SGD, and its Keras plumbing."""
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.training.optimizer import MomentumSGD
from ssd_tf.training.schedules import WarmupMultiStep

STEPS = 20
# Warmup over 5 steps from 0.1x, then x0.1 drops at steps 12 and 16: the LR changes all through the run.
SCHEDULE = WarmupMultiStep(0.05, boundaries=[12, 16], gamma=0.1, warmup_steps=5, warmup_start_factor=0.1)
LRS = [float(SCHEDULE(s)) for s in range(STEPS)]  # float32 values, the ones the optimizer sees

RNG = np.random.default_rng(0)
X = RNG.normal(size=(STEPS, 8, 4))   # one batch of 8 per step
T = RNG.normal(size=(STEPS, 8, 3))
W0 = RNG.normal(size=(4, 3))
B0 = RNG.normal(size=(3,))


def linear_grads(w, b, x, t):
    """Gradients of mean((x @ w + b - t) ** 2) for w [4,3], b [3]."""
    dy = 2.0 * (x @ w + b - t) / t.size  # [8,3]
    return x.T @ dy, dy.sum(axis=0)


def numpy_reference(lrs, momentum=0.9, wd=5e-4, nesterov=False, mode="coupled", decay_bias=True, bias_lr=1.0):
    """The recurrence of PyTorch SGD / TF1 MomentumOptimizer written out in float64."""
    params = {"kernel": W0.copy(), "bias": B0.copy()}
    bufs = {k: np.zeros_like(v) for k, v in params.items()}
    for step, lr in enumerate(lrs):
        grads = dict(zip(("kernel", "bias"), linear_grads(params["kernel"], params["bias"], X[step], T[step])))
        for name in ("kernel", "bias"):
            w, g = params[name], grads[name]
            wd_v = wd if (name == "kernel" or decay_bias) else 0.0
            lr_v = lr * (bias_lr if name == "bias" else 1.0)
            if mode == "coupled":
                g = g + wd_v * w
            bufs[name] = momentum * bufs[name] + g
            d = g + momentum * bufs[name] if nesterov else bufs[name]
            if mode == "decoupled":
                d = d + wd_v * w
            params[name] = w - lr_v * d
    return params


def make_model(dtype="float64"):
    model = keras.Sequential([keras.Input((4,), dtype=dtype), keras.layers.Dense(3, dtype=dtype, name="fc")],
                             name="net")
    model.layers[0].kernel.assign(W0)
    model.layers[0].bias.assign(B0)
    return model


def train_keras(optimizer, steps=STEPS, dtype="float64", jit_compile=False, model=None, start=0):
    model = model or make_model(dtype)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step_fn(x, t):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - t))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for s in range(start, start + steps):
        step_fn(tf.constant(X[s], dtype), tf.constant(T[s], dtype))
    return model, {"kernel": model.layers[0].kernel.numpy(), "bias": model.layers[0].bias.numpy()}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_matches_numpy_recurrence_through_lr_changes(nesterov, mode):
    opt = MomentumSGD(SCHEDULE, momentum=0.9, nesterov=nesterov, weight_decay=5e-4, weight_decay_mode=mode)
    _, got = train_keras(opt)
    want = numpy_reference(LRS, nesterov=nesterov, mode=mode)
    assert max_diff(got, want) < 1e-12
    # The weights moved a lot, so equality is not trivial, and the modes really differ.
    assert float(np.max(np.abs(got["kernel"] - W0))) > 1e-2
    other = numpy_reference(LRS, nesterov=nesterov, mode="decoupled" if mode == "coupled" else "coupled")
    assert max_diff(got, other) > 1e-7


def test_differs_from_keras_sgd_when_lr_changes():
    """Keras SGD keeps lr inside the buffer: it must disagree with the reference once the LR changes."""
    _, ours = train_keras(MomentumSGD(SCHEDULE, momentum=0.9))
    _, keras_sgd = train_keras(keras.optimizers.SGD(SCHEDULE, momentum=0.9))
    assert max_diff(ours, numpy_reference(LRS, wd=0.0)) < 1e-12
    assert max_diff(ours, keras_sgd) > 1e-6


def test_float32_and_xla_match_reference():
    opt = MomentumSGD(SCHEDULE, momentum=0.9, weight_decay=5e-4)
    _, got = train_keras(opt, dtype="float32", jit_compile=True)
    want = numpy_reference(LRS)
    assert max_diff(got, want) < 1e-5
    assert int(opt.iterations.numpy()) == STEPS


def test_plain_sgd_without_momentum_has_no_slots():
    opt = MomentumSGD(SCHEDULE, momentum=0.0, weight_decay=5e-4)
    _, got = train_keras(opt)
    assert opt.momentums == []
    assert max_diff(got, numpy_reference(LRS, momentum=0.0)) < 1e-12


def test_bias_excluded_and_bias_lr_multiplier():
    """maskrcnn-benchmark groups: biases get lr x2 and no weight decay."""
    opt = MomentumSGD(SCHEDULE, momentum=0.9, weight_decay=5e-4, exclude_from_weight_decay=[r"/bias$"],
                      lr_multipliers={r"/bias$": 2.0})
    _, got = train_keras(opt)
    want = numpy_reference(LRS, decay_bias=False, bias_lr=2.0)
    assert max_diff(got, want) < 1e-12
    assert max_diff(got, numpy_reference(LRS)) > 1e-6


def decay_only_step(optimizer, model, lr):
    """One step with zero gradients: only weight decay moves the variables."""
    variables = model.trainable_variables
    optimizer.build(variables)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    return {v.path: v.numpy() for v in variables}


def conv_bn_model():
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(2, name="head"),
    ], name="net")


@pytest.mark.parametrize("how", ["flag", "patterns", "predicate"])
def test_exclusion_rules_leave_bias_and_bn_undecayed(how):
    kwargs = {
        "flag": dict(exclude_bn_and_bias=True),
        "patterns": dict(exclude_from_weight_decay=["bias", "gamma", "beta"]),
        "predicate": dict(exclude_from_weight_decay=lambda v: len(v.shape) == 1),
    }[how]
    model = conv_bn_model()
    for v in model.trainable_variables:  # non-zero everywhere so decay is visible
        v.assign(tf.fill(v.shape, 0.5))
    before = {v.path: v.numpy() for v in model.trainable_variables}
    opt = MomentumSGD(0.1, momentum=0.9, weight_decay=0.01, **kwargs)
    after = decay_only_step(opt, model, 0.1)
    decayed = {p for p in after if not np.array_equal(after[p], before[p])}
    assert decayed == {"net/conv/kernel", "net/head/kernel"}
    for p in decayed:  # b = wd * w; w <- w - lr * b
        np.testing.assert_allclose(after[p], before[p] * (1 - 0.1 * 0.01), rtol=1e-7)


def test_no_exclusion_decays_everything_like_the_references():
    model = conv_bn_model()
    opt = MomentumSGD(0.1, momentum=0.9, weight_decay=0.01)
    for v in model.trainable_variables:
        v.assign(tf.fill(v.shape, 0.5))
    after = decay_only_step(opt, model, 0.1)
    assert len(after) == 6
    for value in after.values():
        np.testing.assert_allclose(value, 0.5 * (1 - 0.1 * 0.01), rtol=1e-7)


def test_base_class_weight_decay_is_not_double_applied():
    opt = MomentumSGD(0.1, momentum=0.9, weight_decay=0.01, weight_decay_mode="decoupled")
    assert opt.weight_decay is None  # Keras's own decoupled decay stays off
    model = make_model("float32")
    kernel0 = model.layers[0].kernel.numpy()
    after = decay_only_step(opt, model, 0.1)
    np.testing.assert_allclose(after["net/fc/kernel"], kernel0 * (1 - 0.1 * 0.01), rtol=1e-6)


@pytest.mark.parametrize("build_before_restore", [True, False])
def test_checkpoint_round_trip_resumes_exactly(tmp_path, build_before_restore):
    full_opt = MomentumSGD(SCHEDULE, momentum=0.9, weight_decay=5e-4)
    _, full = train_keras(full_opt, steps=10)

    opt = MomentumSGD(SCHEDULE, momentum=0.9, weight_decay=5e-4)
    model, _ = train_keras(opt, steps=6)
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))

    model2 = make_model()
    model2.layers[0].kernel.assign(np.zeros((4, 3)))
    opt2 = MomentumSGD(SCHEDULE, momentum=0.9, weight_decay=5e-4)
    if build_before_restore:
        opt2.build(model2.trainable_variables)
    status = tf.train.Checkpoint(model=model2, optimizer=opt2).restore(path)
    if build_before_restore:
        status.assert_consumed()
    assert int(opt2.iterations.numpy()) == 6
    _, resumed = train_keras(opt2, steps=4, model=model2, start=6)  # builds (deferred slots restored) if needed
    status.assert_consumed()
    assert max_diff(resumed, full) == 0.0


def test_config_round_trip_with_schedule():
    opt = MomentumSGD(SCHEDULE, momentum=0.8, nesterov=True, weight_decay=1e-4, weight_decay_mode="decoupled",
                      exclude_from_weight_decay=["bias"], lr_multipliers={"bias$": 2.0}, global_clipnorm=10.0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, MomentumSGD)
    config = again.get_config()
    for key, value in dict(momentum=0.8, nesterov=True, weight_decay=1e-4, weight_decay_mode="decoupled",
                           exclude_from_weight_decay=["bias"], lr_multipliers={"bias$": 2.0},
                           global_clipnorm=10.0).items():
        assert config[key] == value, key
    assert isinstance(again._learning_rate, WarmupMultiStep)


def test_argument_validation():
    with pytest.raises(ValueError, match="momentum"):
        MomentumSGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        MomentumSGD(0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay_mode"):
        MomentumSGD(0.1, weight_decay_mode="l2")
    with pytest.raises(ValueError, match="weight_decay"):
        MomentumSGD(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="lr_multipliers"):
        MomentumSGD(0.1, lr_multipliers=[2.0])
    with pytest.raises(ValueError, match="exclude_from_weight_decay"):
        MomentumSGD(0.1, exclude_from_weight_decay=[3])


TORCH_SCRIPT = r"""
import json, sys
import numpy as np
import torch
a = json.load(sys.stdin)
out = {}
for dtype_name in ("float64", "float32"):
    dtype = getattr(torch, dtype_name)
    for nesterov in (False, True):
        lin = torch.nn.Linear(4, 3).to(dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.array(a["w0"]).T, dtype=torch.float64))
            lin.bias.copy_(torch.tensor(a["b0"], dtype=torch.float64))
        opt = torch.optim.SGD(lin.parameters(), lr=a["lrs"][0], momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
        for step, lr in enumerate(a["lrs"]):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            x = torch.tensor(a["x"][step], dtype=torch.float64).to(dtype)
            t = torch.tensor(a["t"][step], dtype=torch.float64).to(dtype)
            torch.mean((lin(x) - t) ** 2).backward()
            opt.step()
        out[f"{dtype_name}-{nesterov}"] = {"kernel": lin.weight.detach().double().numpy().T.tolist(),
                                           "bias": lin.bias.detach().double().numpy().tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def torch_results():
    """torch.optim.SGD runs in a fresh interpreter: torch's triton import segfaults once TensorFlow is loaded."""
    pytest.importorskip("torch")
    args = dict(w0=W0.tolist(), b0=B0.tolist(), x=X.tolist(), t=T.tolist(), lrs=LRS)
    proc = subprocess.run([sys.executable, "-c", TORCH_SCRIPT], input=json.dumps(args), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {key: {k: np.array(v, np.float64) for k, v in run.items()} for key, run in out.items()}


@pytest.mark.torch
@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_torch_sgd(nesterov, torch_results):
    _, ours64 = train_keras(MomentumSGD(SCHEDULE, momentum=0.9, nesterov=nesterov, weight_decay=5e-4))
    _, ours32 = train_keras(MomentumSGD(SCHEDULE, momentum=0.9, nesterov=nesterov, weight_decay=5e-4),
                            dtype="float32")
    diff64 = max_diff(ours64, torch_results[f"float64-{nesterov}"])
    diff32 = max_diff(ours32, torch_results[f"float32-{nesterov}"])
    print(f"torch parity nesterov={nesterov}: float64 max diff {diff64:.3g}, float32 max diff {diff32:.3g}")
    assert diff64 < 1e-12
    assert diff32 < 1e-5
