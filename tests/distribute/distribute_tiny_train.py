"""A tiny model trained with the project's custom-loop pattern, shared by the strategy tests and their subprocesses."""
import numpy as np
import tensorflow as tf
import keras

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


def train(strategy, steps=3):
    """`steps` updates at GLOBAL_BATCH; returns the trainable weights (numpy) and the per-step losses."""
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                                  keras.layers.Dense(2)])
        model.set_weights(initial_weights())
        schedule = WarmupMultiStep(0.1, boundaries=[2], gamma=0.1, warmup_steps=2, warmup_start_factor=0.5)
        optimizer = MomentumSGD(schedule, momentum=0.9, weight_decay=5e-4, exclude_from_weight_decay=["bias"])
        optimizer.build(model.trainable_variables)  # under the scope, before the first step

    x, y = data()

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)  # per worker: every n-th example
        return ds.batch(per_replica, drop_remainder=True)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    dist = iter(strategy.distribute_datasets_from_function(dataset_fn, options))

    @tf.function
    def step(inputs):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_sum(tf.square(model(xb, training=True) - yb), axis=1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        losses = strategy.run(replica_step, args=inputs)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    losses = [float(step(next(dist))) for _ in range(steps)]
    return [v.numpy() for v in model.trainable_variables], losses
