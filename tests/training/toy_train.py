"""A tiny non-SSD task run through the generic training runtime (used by the runtime tests as a subprocess).

    python toy_train.py MODEL_DIR TOTAL_STEPS [--nan_at_step N] [--delay S] [--checkpoint_every K]

The data stream is a pure function of the global example index, so a run resumed at step s sees exactly
the batches an uninterrupted run sees from step s on. Final weights go to MODEL_DIR/final_weights.npz.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssd_tf.training import loop  # noqa: E402
from ssd_tf.training.optimizer import MomentumSGD  # noqa: E402
from ssd_tf.training.schedules import WarmupCosine  # noqa: E402

BATCH = 8


class ToyTask:
    loss_names = ("total_loss", "mse", "l1")
    global_batch_size = BATCH

    def __init__(self, nan_at_step: int, delay: float, nan_grad_at_step: int = -1, explode_at_step: int = -1):
        self.nan_at_step = nan_at_step
        self.delay = delay
        self.nan_grad_at_step = nan_grad_at_step
        self.explode_at_step = explode_at_step

    def build_model(self):
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(1)])

    def build_train_dataset(self, input_context, start_step):
        nan_at, delay, explode_at, nan_grad_at = self.nan_at_step, self.delay, self.explode_at_step, self.nan_grad_at_step

        def example(i):
            x = tf.random.stateless_normal([4], seed=tf.stack([i, tf.constant(7, tf.int64)]))
            y = tf.reduce_sum(x * tf.constant([1.0, -2.0, 0.5, 3.0])) + 1.0
            step = i // BATCH + 1  # the optimizer step this example feeds (1-based)
            y = tf.where(tf.equal(step, nan_at), tf.constant(float("nan")), y)
            # A finite but enormous target: the loss (~1e30) stays finite, the update blows the weights up.
            y = tf.where(tf.equal(step, explode_at), tf.constant(1e15), y)
            poison = tf.cast(tf.equal(step, nan_grad_at), tf.float32)
            return x, {"y": tf.reshape(y, [1]), "nan_grad": tf.reshape(poison, [1])}

        ds = tf.data.Dataset.range(start_step * BATCH, 2 ** 62).map(example).batch(BATCH)
        if delay:
            ds = ds.map(lambda x, y: (tf.numpy_function(lambda a: (time.sleep(delay), a)[1], [x], tf.float32), y))
            ds = ds.map(lambda x, y: (tf.ensure_shape(x, [BATCH, 4]), y))
        return ds

    def compute_losses(self, model, x, labels):
        y, poison = labels["y"], labels["nan_grad"]
        pred = _nan_gradient_where(model(x, training=True), poison)
        mse = tf.reduce_mean(tf.square(pred - y))
        return {"total_loss": mse, "mse": mse, "l1": tf.reduce_mean(tf.abs(pred - y))}


@tf.custom_gradient
def _nan_gradient_where(x, flag):
    """Identity whose gradient is NaN where ``flag`` > 0: a finite loss with a non-finite gradient."""
    def grad(dy):
        return tf.where(flag > 0, tf.fill(tf.shape(dy), float("nan")), dy), tf.zeros_like(flag)

    return tf.identity(x), grad


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("total_steps", type=int)
    p.add_argument("--nan_at_step", type=int, default=-1)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--nan_grad_at_step", type=int, default=-1)
    p.add_argument("--explode_at_step", type=int, default=-1)
    p.add_argument("--checkpoint_every", type=int, default=4)
    a = p.parse_args()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    schedule = WarmupCosine(0.05, a.total_steps, 5, alpha=0.01)
    opts = loop.LoopOptions(total_steps=a.total_steps, steps_per_loop=2, log_every_steps=2,
                            checkpoint_every_steps=a.checkpoint_every, keep_checkpoints=3)
    task = ToyTask(a.nan_at_step, a.delay, nan_grad_at_step=a.nan_grad_at_step, explode_at_step=a.explode_at_step)
    trainer = loop.Trainer(task, strategy, a.model_dir,
                           lambda: MomentumSGD(schedule, momentum=0.9, weight_decay=5e-4), opts)
    try:
        trainer.train()
    except loop.TrainingDiverged as e:
        print(f"DIVERGED: {e}", flush=True)
        sys.exit(3)
    except loop.TrainingInterrupted as e:
        print(f"INTERRUPTED: {e}", flush=True)
        sys.exit(128 + e.signum)
    np.savez(os.path.join(a.model_dir, "final_weights.npz"), *[w.numpy() for w in trainer.model.weights])
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
