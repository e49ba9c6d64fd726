"""A tiny model trained by the runtime's own loop (``loop.Trainer`` with a small task), shared by the strategy
tests and their subprocesses."""
import json
import os
import tempfile

import numpy as np
import tensorflow as tf
import keras

from ssd_tf.training import loop
from ssd_tf.training.optimizer import MomentumSGD
from ssd_tf.training.schedules import WarmupMultiStep

GLOBAL_BATCH = 8
NUM_EXAMPLES = 64


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(NUM_EXAMPLES, 5)).astype(np.float32)
    y = rng.normal(size=(NUM_EXAMPLES, 2)).astype(np.float32)
    return x, y


def initial_weights():
    rng = np.random.default_rng(2)
    return [rng.normal(size=s).astype(np.float32) * 0.5 for s in [(5, 6), (6,), (6, 2), (2,)]]


class TinyTask:
    """The task protocol the Trainer drives, on a 5 -> 6 -> 2 MLP regression."""

    loss_names = ("total_loss",)
    global_batch_size = GLOBAL_BATCH

    def build_model(self):
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                                  keras.layers.Dense(2)])
        model.set_weights(initial_weights())
        return model

    def build_train_dataset(self, ctx, start_step):
        x, y = data()
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH) if ctx is not None else GLOBAL_BATCH
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if ctx is not None:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)  # per worker: every n-th example
        return ds.repeat().batch(per_replica, drop_remainder=True).skip(start_step)

    def compute_losses(self, model, xb, yb):
        # Mean over this replica's batch; the Trainer divides by the number of replicas before summing them.
        return {"total_loss": tf.reduce_mean(tf.reduce_sum(tf.square(model(xb, training=True) - yb), axis=1))}


def train(strategy, steps=3, model_dir=None):
    """`steps` updates at GLOBAL_BATCH through loop.Trainer; returns the trainable weights (numpy) and the
    per-step losses (from the chief's train_log.jsonl; [] on other workers)."""
    model_dir = model_dir or tempfile.mkdtemp(prefix="tiny_train_")
    schedule = WarmupMultiStep(0.1, boundaries=[2], gamma=0.1, warmup_steps=2, warmup_start_factor=0.5)
    options = loop.LoopOptions(total_steps=steps, steps_per_loop=1, log_every_steps=1, checkpoint_every_steps=0)
    trainer = loop.Trainer(
        TinyTask(), strategy, model_dir,
        lambda: MomentumSGD(schedule, momentum=0.9, weight_decay=5e-4, exclude_from_weight_decay=["bias"]),
        options, log_fn=lambda *a: None)
    trainer.train()
    log = os.path.join(model_dir, "summaries", "train_log.jsonl")
    losses = []
    if trainer.is_chief and os.path.exists(log):
        with open(log) as f:
            losses = [r["total_loss"] for r in map(json.loads, f) if r.get("kind") == "train"]
    return [v.numpy() for v in trainer.model.trainable_variables], losses
