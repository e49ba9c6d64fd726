"""The training runtime: a custom loop (DESIGN.md: Keras `fit` fails under MultiWorkerMirroredStrategy).

Nothing here knows about SSD. A *task* supplies the model, the data and the losses:

    task.loss_names                          ("total_loss", ...); total_loss drives the gradient
    task.build_model() -> keras.Model
    task.build_train_dataset(input_context, start_step) -> tf.data.Dataset of (images, labels) batches
        at the per-replica batch size, infinite, starting `start_step` steps into the data stream
    task.compute_losses(model, images, labels) -> {name: scalar float32}, normalised per replica batch
    task.evaluate(model) -> {metric: value}  (chief only)

`strategy.run` runs inside one `tf.function` that performs `steps_per_loop` steps per call; with
`xla=True` the forward/backward pass is compiled with XLA, the all-reduce and update are not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import tensorflow as tf

from ssd_tf.distribute.strategy import chief_or_temp_dir, is_chief, remove_temp_dir

if TYPE_CHECKING:
    import keras
from ssd_tf.training import progress


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or inf. Checkpoints that hold the diverging weights are moved to
    ``checkpoints/diverged/``, so the latest checkpoint left is one known to be good."""


class TrainingInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped a single-worker run between two loop calls; the state at that step was
    saved first, so rerunning the same command resumes exactly there."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {checkpoint}; rerun the same command "
                         f"to resume from it")


@contextlib.contextmanager
def _stop_signals_deferred(enabled: bool):
    """While training, SIGINT / SIGTERM only set ``state["signum"]`` (checked after each loop call, which TensorFlow
    cannot interrupt anyway); a second one gets the signal's previous handling (stop without a save). Off in multi-worker runs (a save there needs
    every worker at the same step) and outside the main thread."""
    state = {"signum": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["signum"] is not None:  # asked twice: stop now, without a save
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        state["signum"] = signum

    # A signal the process ignores (SIGINT of a background job, a supervisor's choice) stays ignored.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# A checkpoint is only written when every trainable weight is finite and |w| <= this: trained detectors keep
# their weights within a few hundred, and weights this large come from an exploding update whose losses are
# still finite.
MAX_SANE_WEIGHT = 1e6


@dataclasses.dataclass
class LoopOptions:
    total_steps: int
    steps_per_loop: int = 10
    log_every_steps: int = 10
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 5
    eval_every_steps: int = 0  # 0: no evaluation during training
    xla: bool = False
    precision: str = "fp32"


class Trainer:
    """Owns model, optimizer, step counter and checkpoints for one run."""

    def __init__(self, task, strategy: tf.distribute.Strategy, model_dir: str,
                 make_optimizer: Callable[[], "keras.optimizers.Optimizer"], options: LoopOptions,
                 log_fn: Callable[[str], None] = print, init_fn: Optional[Callable] = None):
        self.task = task
        self.strategy = strategy
        self.options = options
        self.log = log_fn
        self.is_chief = is_chief(strategy)
        # Every worker saves (saving has collectives); non-chief workers into a temporary directory.
        self.write_dir = chief_or_temp_dir(model_dir, strategy)
        with strategy.scope():
            self.model = task.build_model()
            self.optimizer = make_optimizer()
            if options.precision == "fp16":
                import keras

                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # A task may read the number of completed steps inside its losses (stateless sampling seeds).
        task.step_counter = self.global_step
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.global_step)
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(self.write_dir, "checkpoints"),
                                                  max_to_keep=options.keep_checkpoints if self.is_chief else 1,
                                                  step_counter=self.global_step)
        # Every worker resumes from the chief's checkpoints (the model directory is shared).
        restored = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        if restored:
            self.checkpoint.restore(restored).expect_partial()
            self.log(f"Restored {restored} (step {int(self.global_step.numpy())})")
        elif init_fn is not None:
            init_fn(self.model)
        self._train_loop = None
        self._max_abs_weight_fn = None

    # ----------------------------------------------------------------------------------------------
    def _build_train_loop(self):
        strategy, task, model, optimizer = self.strategy, self.task, self.model, self.optimizer
        loss_names = tuple(task.loss_names)
        num_replicas = strategy.num_replicas_in_sync
        fp16 = self.options.precision == "fp16"

        def grads_and_losses(images, labels):
            with tf.GradientTape() as tape:
                losses = task.compute_losses(model, images, labels)
                loss = tf.cast(losses["total_loss"], tf.float32) / num_replicas
                if fp16:
                    loss = optimizer.scale_loss(loss)
            grads = tape.gradient(loss, model.trainable_variables)
            return {k: tf.cast(losses[k], tf.float32) for k in loss_names}, grads

        if self.options.xla:
            grads_and_losses = tf.function(grads_and_losses, jit_compile=True)

        def step_fn(images, labels):
            losses, grads = grads_and_losses(images, labels)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            self.global_step.assign_add(1)
            return losses

        from tensorflow.python.framework import config as tf_config

        # tf.timestamp is refused while TensorFlow's op determinism is on (the Faster R-CNN presets turn it on:
        # crop_and_resize's gradient is otherwise nondeterministic on CPU), so the data wait is not measured then.
        measure_wait = not tf_config.is_op_determinism_enabled()

        @tf.function
        def train_loop(iterator, num_steps):
            sums = {k: tf.constant(0.0) for k in loss_names}
            bad = {k: tf.constant(0.0) for k in loss_names}
            bad_step = tf.constant(-1, tf.int64)
            wait = tf.constant(0.0 if measure_wait else float("nan"), tf.float64)
            for _ in tf.range(num_steps):
                if measure_wait:
                    t0 = tf.timestamp()
                    images, labels = next(iterator)
                    wait += tf.timestamp() - t0
                else:
                    images, labels = next(iterator)
                per_replica = strategy.run(step_fn, args=(images, labels))
                losses = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None)
                          for k in loss_names}
                finite = tf.reduce_all([tf.math.is_finite(v) for v in losses.values()])
                first_bad = tf.logical_and(tf.logical_not(finite), bad_step < 0)
                bad_step = tf.where(first_bad, self.global_step.read_value(), bad_step)
                bad = {k: tf.where(first_bad, losses[k], bad[k]) for k in loss_names}
                sums = {k: sums[k] + losses[k] for k in loss_names}
            n = tf.cast(num_steps, tf.float32)
            return {k: sums[k] / n for k in loss_names}, bad_step, bad, wait

        return train_loop

    def current_lr(self) -> float:
        opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        lr = opt.learning_rate
        if callable(lr):
            lr = lr(opt.iterations)
        return float(np.asarray(lr))

    def max_abs_weight(self) -> float:
        """The largest |w| over the trainable weights (inf or nan when one is not finite)."""
        if self._max_abs_weight_fn is None:
            variables = self.model.trainable_variables

            @tf.function
            def largest():
                return tf.reduce_max([tf.reduce_max(tf.abs(tf.cast(v, tf.float32))) for v in variables])

            self._max_abs_weight_fn = largest
        return float(self._max_abs_weight_fn())

    def _diverged(self, reason: str, bad_step: int):
        """Moves aside the checkpoints whose weights are known to diverge — those of step bad_step - 1 or later
        (the loss of step s is computed from the weights saved at step s - 1) — and raises TrainingDiverged
        naming the latest checkpoint left, which the next step's finite loss showed to be good."""
        moved = []
        if self.is_chief:
            bad = [p for p in self.manager.checkpoints if int(p.rsplit("-", 1)[-1]) >= bad_step - 1]
            if bad:
                moved = _move_aside(self.manager, bad)
        good = [p for p in self.manager.checkpoints if int(p.rsplit("-", 1)[-1]) < bad_step - 1]
        latest = good[-1] if good else None
        note = (f" Moved {', '.join(os.path.basename(p) for p in moved)} (whose weights give a non-finite loss) to "
                f"{os.path.join(os.path.dirname(moved[0]), 'diverged')}." if moved else "")
        raise TrainingDiverged(
            f"{reason}; training stopped.{note} The latest good checkpoint is "
            f"{latest or 'none (no checkpoint yet)'}; a rerun resumes from it, so lower the learning rate or check "
            f"the data first (the same data and settings diverge again).")

    def _save(self) -> Optional[str]:
        step = int(self.global_step.numpy())
        if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{step}"):
            return self.manager.latest_checkpoint
        largest = self.max_abs_weight()
        if not math.isfinite(largest):
            self._diverged(f"the weights are not finite after step {step} although the loss was (a non-finite "
                           f"gradient)", step + 1)
        if largest > MAX_SANE_WEIGHT:
            self._diverged(f"the weights exploded at step {step} (max |w| = {largest:.3g} > {MAX_SANE_WEIGHT:g}) "
                           f"although the loss is still finite", step + 1)
        path = self.manager.save(checkpoint_number=step)
        if self.is_chief:
            self.log(f"Saved checkpoint {path}")
        return path

    # ----------------------------------------------------------------------------------------------
    def train(self, evaluate: Optional[Callable[[int], dict]] = None) -> dict:
        """Runs to `total_steps` (resuming where the checkpoint left off). Returns the last losses."""
        opts = self.options
        start = int(self.global_step.numpy())
        if start >= opts.total_steps:
            self.log(f"Nothing to train: step {start} >= total steps {opts.total_steps}")
            return {}
        global_batch = getattr(self.task, "global_batch_size", None)
        logger = progress.ProgressLogger(os.path.join(self.write_dir, "summaries"), opts.total_steps,
                                         global_batch or 0, write_files=self.is_chief)
        dataset_fn = lambda ctx: self.task.build_train_dataset(ctx, start)  # noqa: E731
        dist_ds = self.strategy.distribute_datasets_from_function(dataset_fn)
        iterator = iter(dist_ds)
        if self._train_loop is None:
            self._train_loop = self._build_train_loop()

        step, last_losses, first = start, {}, True
        interval_time = interval_wait = 0.0
        interval_steps = 0
        interval_sums = {}
        single_worker = not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        try:
            with _stop_signals_deferred(single_worker) as stop:
                while step < opts.total_steps:
                    boundaries = [opts.total_steps]
                    for every in (opts.log_every_steps, opts.checkpoint_every_steps, opts.eval_every_steps):
                        if every and every > 0:
                            boundaries.append((step // every + 1) * every)
                    n = min(min(boundaries) - step, opts.steps_per_loop)
                    t0 = time.perf_counter()
                    losses, bad_step, bad, wait = self._train_loop(iterator, tf.constant(n, tf.int32))
                    losses = {k: float(v) for k, v in losses.items()}
                    elapsed = time.perf_counter() - t0
                    if int(bad_step) >= 0 or not all(math.isfinite(v) for v in losses.values()):
                        parts = ", ".join(f"{k}={float(v):.6g}" for k, v in bad.items())
                        self._diverged(f"loss is not finite at step {int(bad_step)} ({parts})", int(bad_step))
                    step += n
                    interval_steps += n
                    interval_time += elapsed
                    interval_wait += float(wait)
                    for k, v in losses.items():
                        interval_sums[k] = interval_sums.get(k, 0.0) + v * n
                    last_losses = losses
                    if step % max(opts.log_every_steps, 1) == 0 or step == opts.total_steps:
                        avg = {k: v / interval_steps for k, v in interval_sums.items()}
                        logger.log_train(step, interval_steps, interval_time, interval_wait, self.current_lr(), avg,
                                         first_interval=first)
                        first = False
                        interval_time = interval_wait = 0.0
                        interval_steps = 0
                        interval_sums = {}
                    if (opts.checkpoint_every_steps and step % opts.checkpoint_every_steps == 0) \
                            or step == opts.total_steps:
                        self._save()
                    if stop["signum"] is not None and step < opts.total_steps:
                        raise TrainingInterrupted(stop["signum"], step, self._save())
                    if evaluate is not None and opts.eval_every_steps and step % opts.eval_every_steps == 0 \
                            and step != opts.total_steps:
                        self._evaluate(evaluate, step, logger)
                if evaluate is not None:
                    self._evaluate(evaluate, step, logger)
        finally:
            logger.close()
            if not self.is_chief:
                remove_temp_dir(self.write_dir, self.strategy)
        return last_losses

    def _evaluate(self, evaluate, step, logger):
        if not self.is_chief:
            return
        metrics = evaluate(step)
        logger.log_eval(step, metrics)
        self.last_eval = metrics


def _move_aside(manager, paths) -> list:
    """Removes ``paths`` from a CheckpointManager's state and moves their files to ``diverged/`` beside them."""
    import glob
    import shutil

    directory = manager.directory
    target = os.path.join(directory, "diverged")
    os.makedirs(target, exist_ok=True)
    for path in paths:
        for f in glob.glob(path + ".*"):
            shutil.move(f, os.path.join(target, os.path.basename(f)))
    kept = [p for p in manager.checkpoints if p not in paths]
    if kept:
        tf.compat.v1.train.update_checkpoint_state(directory, model_checkpoint_path=kept[-1],
                                                   all_model_checkpoint_paths=kept)
    else:
        os.remove(os.path.join(directory, "checkpoint"))
    return list(paths)
