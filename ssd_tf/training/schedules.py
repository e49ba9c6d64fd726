"""Learning-rate schedules of the reference recipes, as serialisable Keras 3 schedules.

Step convention (the same as Keras optimizers, PyTorch `scheduler.step()` after `optimizer.step()`, and
maskrcnn-benchmark's `WarmupMultiStepLR`): the schedule is called with the number of updates already applied,
so the first update uses `schedule(0)`, and a drop "at boundary b" applies to the update with index b onwards.

Both schedules are pure TF ops on float32 with static Python hyperparameters: they trace once inside
`tf.function`, compile under XLA, and accept int32/int64/float steps (tensors, variables or Python numbers).
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

__all__ = ["WarmupCosine", "WarmupMultiStep", "scale_lr"]


def scale_lr(base_lr_per_n_images: float, n_images: int, global_batch: int) -> float:
    """Linear scaling rule: `base_lr_per_n_images * global_batch / n_images`.

    E.g. the MLPerf SSD rule "2.5e-3 per 32 images" at a global batch of 1024 gives 0.08.
    """
    if not base_lr_per_n_images >= 0:
        raise ValueError(f"base_lr_per_n_images must be >= 0, got {base_lr_per_n_images!r}")
    if int(n_images) != n_images or n_images <= 0:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if int(global_batch) != global_batch or global_batch <= 0:
        raise ValueError(f"global_batch must be a positive integer, got {global_batch!r}")
    return float(base_lr_per_n_images) * float(global_batch) / float(n_images)


def _check_nonneg_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_factor(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _warmup_factor(step: tf.Tensor, warmup_steps: int, start_factor: float) -> tf.Tensor:
    """Linear ramp from start_factor at step 0 to 1 at warmup_steps (1 afterwards); float32 scalar."""
    if warmup_steps == 0:
        return tf.constant(1.0, tf.float32)
    progress = tf.minimum(step / float(warmup_steps), 1.0)
    return start_factor + (1.0 - start_factor) * progress


def _as_float_step(step) -> tf.Tensor:
    step = tf.convert_to_tensor(step)
    return tf.maximum(tf.cast(step, tf.float32), 0.0)


@keras.saving.register_keras_serializable(package="ssd_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup then cosine decay.

    lr(s) = base_lr * (f0 + (1 - f0) * s / W)                         for s < W (W = warmup_steps, f0 = start factor)
    lr(s) = base_lr * (alpha + (1 - alpha) * (1 + cos(pi * p)) / 2)  with p = (s - W) / (T - W), for W <= s <= T
    lr(s) = base_lr * alpha                                           for s > T (T = total_steps)
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, alpha: float = 0.0,
                 warmup_start_factor: float = 0.0, name: str = "WarmupCosine"):
        super().__init__()
        if not base_lr >= 0:
            raise ValueError(f"base_lr must be >= 0, got {base_lr!r}")
        self.base_lr = float(base_lr)
        self.total_steps = _check_nonneg_int("total_steps", total_steps)
        self.warmup_steps = _check_nonneg_int("warmup_steps", warmup_steps)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({self.total_steps}) must be greater than warmup_steps ({self.warmup_steps})")
        self.alpha = _check_factor("alpha", alpha)
        self.warmup_start_factor = _check_factor("warmup_start_factor", warmup_start_factor)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name):
            s = _as_float_step(step)
            warm = _warmup_factor(s, self.warmup_steps, self.warmup_start_factor)
            decay_len = float(self.total_steps - self.warmup_steps)
            progress = tf.clip_by_value((s - float(self.warmup_steps)) / decay_len, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            decayed = self.alpha + (1.0 - self.alpha) * cosine
            factor = tf.where(s < float(self.warmup_steps), warm, decayed)
            return self.base_lr * factor

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "alpha": self.alpha, "warmup_start_factor": self.warmup_start_factor, "name": self.name}


@keras.saving.register_keras_serializable(package="ssd_tf")
class WarmupMultiStep(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup times step decay (maskrcnn-benchmark `WarmupMultiStepLR` / MLPerf SSD / torchvision recipes).

    lr(s) = base_lr * warmup(s) * gamma ** (number of boundaries b with b <= s)
    warmup(s) = f0 + (1 - f0) * min(s / warmup_steps, 1)   (1 when warmup_steps == 0)
    """

    def __init__(self, base_lr: float, boundaries, gamma: float = 0.1, warmup_steps: int = 0,
                 warmup_start_factor: float = 0.0, name: str = "WarmupMultiStep"):
        super().__init__()
        if not base_lr >= 0:
            raise ValueError(f"base_lr must be >= 0, got {base_lr!r}")
        self.base_lr = float(base_lr)
        boundaries = [_check_nonneg_int(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        # A repeated boundary drops the rate by gamma once per repeat, as torch's MultiStepLR (and so torchvision's
        # recipes) count milestones; it happens when fractional boundaries of a short run round to one step.
        if any(b1 > b2 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be non-decreasing, got {boundaries}")
        self.boundaries = boundaries
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.warmup_steps = _check_nonneg_int("warmup_steps", warmup_steps)
        self.warmup_start_factor = _check_factor("warmup_start_factor", warmup_start_factor)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name):
            s = _as_float_step(step)
            factor = _warmup_factor(s, self.warmup_steps, self.warmup_start_factor)
            if self.boundaries:
                bounds = tf.constant(self.boundaries, tf.float32)  # [K]
                num_drops = tf.reduce_sum(tf.cast(s >= bounds, tf.float32))
                factor = factor * tf.pow(tf.constant(self.gamma, tf.float32), num_drops)
            return self.base_lr * factor

    def get_config(self):
        return {"base_lr": self.base_lr, "boundaries": list(self.boundaries), "gamma": self.gamma,
                "warmup_steps": self.warmup_steps, "warmup_start_factor": self.warmup_start_factor,
                "name": self.name}
