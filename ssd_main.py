"""Train and evaluate SSD detectors: python ssd_main.py --mode=train|eval|train_and_eval [flags].

Flags become a config (preset + overrides), written to model_dir/config.json when training starts;
`--mode=eval` reads it back. Wrong flags fail before any long work, with a message saying what to change.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys

from absl import app
from absl import flags

from flags import definitions

definitions.define_all()
FLAGS = flags.FLAGS

# flag name -> (config section, field); a flag left at None keeps the preset's value
_OVERRIDES = {
    "data": ["training_file_pattern", "validation_file_pattern", "val_json_file", "label_map", "num_train_images",
             "max_boxes", "shuffle_buffer", "augmentation"],
    "model": ["num_classes", "width_multiplier"],
    "train": ["train_batch_size", "num_epochs", "train_steps", "base_learning_rate", "lr_reference_batch",
              "lr_schedule", "warmup_epochs", "warmup_steps", "cosine_alpha", "lr_boundaries", "lr_gamma", "momentum",
              "weight_decay", "weight_decay_mode", "exclude_bn_bias_from_weight_decay", "loss_normalization",
              "precision", "xla", "steps_per_loop", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "seed", "resnet_checkpoint"],
    "eval": ["eval_batch_size", "eval_every_epochs", "eval_backend", "eval_metric", "eval_steps", "score_threshold",
             "nms_iou_threshold", "max_detections"],
    "runtime": ["model_dir", "strategy", "num_devices", "sync_batchnorm"],
}


class UsageError(ValueError):
    """A flag combination that cannot work; the message says what to change."""


def _flag_overrides() -> dict:
    out = {}
    for section, names in _OVERRIDES.items():
        values = {}
        for name in names:
            value = getattr(FLAGS, name)
            if value is None:
                continue
            if name == "lr_boundaries":
                value = [float(v) for v in value]
            values[name] = value
        out[section] = values
    return out


def build_config():
    from ssd_tf import config as config_lib

    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (checkpoints, config.json and eval results go there)")
    saved = None
    if os.path.exists(os.path.join(FLAGS.model_dir, "config.json")):
        saved = config_lib.load(FLAGS.model_dir)
    if FLAGS.mode == "eval":
        if saved is None:
            raise UsageError(f"--mode=eval: {FLAGS.model_dir} has no config.json, so nothing was trained there; "
                             f"train first or point --model_dir at a trained model")
        cfg = saved
        if FLAGS["model"].present and FLAGS.model != cfg.model.name:
            raise UsageError(f"--model={FLAGS.model} but {FLAGS.model_dir} holds a {cfg.model.name} model")
    else:
        cfg = config_lib.preset(FLAGS.model)
        if saved is not None:
            # Resuming: the saved architecture wins unless a flag contradicts it.
            if saved.model.name != cfg.model.name:
                raise UsageError(f"{FLAGS.model_dir} holds checkpoints of a {saved.model.name} model, not "
                                 f"--model={FLAGS.model}; use another --model_dir or the same --model")
            cfg.model = saved.model
    overrides = _flag_overrides()
    for section, values in overrides.items():
        if FLAGS.mode == "eval" and section in ("train", "model"):
            continue
        if section == "model" and saved is not None and values.get("num_classes") not in (None, saved.model.num_classes):
            raise UsageError(f"--num_classes={values['num_classes']} but the checkpoints in {FLAGS.model_dir} have "
                             f"{saved.model.num_classes} classes")
        cfg.override(section, **values)
    if FLAGS.mode != "eval" and cfg.runtime.sync_batchnorm and cfg.train.xla:
        raise UsageError("--sync_batchnorm cannot be combined with --xla: the BatchNorm all-reduces would sit inside "
                         "the XLA-compiled forward/backward function, which tf.distribute rejects (merge_call in a "
                         "nested tf.function); drop one of the two")
    return cfg


def _match(pattern: str, flag: str) -> list:
    files = sorted(glob.glob(pattern))
    if not files:
        raise UsageError(f"--{flag}={pattern} matches no file")
    return files


def _sidecar_for(files: list) -> dict | None:
    """The first converter sidecar found beside the shards (label map, image count)."""
    from ssd_tf.data.shards import sidecars_for

    for path in sidecars_for(files).values():
        with open(path) as fh:
            return json.load(fh)
    return None


def resolve_data(cfg) -> None:
    """Checks the file patterns and fills class ids / names / num_classes / epoch length."""
    d = cfg.data
    needs_train = FLAGS.mode in ("train", "train_and_eval")
    needs_eval = FLAGS.mode in ("eval", "train_and_eval")
    if needs_train and not d.training_file_pattern:
        raise UsageError("--training_file_pattern is required for --mode=" + FLAGS.mode)
    train_files = _match(d.training_file_pattern, "training_file_pattern") if needs_train else []
    eval_files = []
    if needs_eval:
        if not d.validation_file_pattern:
            raise UsageError(f"--mode={FLAGS.mode} needs --validation_file_pattern (nothing to evaluate)")
        eval_files = _match(d.validation_file_pattern, "validation_file_pattern")
        if d.val_json_file and not os.path.exists(d.val_json_file):
            raise UsageError(f"--val_json_file={d.val_json_file} does not exist")
    sidecar = _sidecar_for(train_files or eval_files)
    if d.label_map:
        from data_tools.label_map import read_label_map

        label_map = read_label_map(d.label_map)  # {id: name} in order
        ids, names = list(label_map.keys()), list(label_map.values())
    elif d.class_ids:
        ids, names = list(d.class_ids), list(d.class_names)
    elif sidecar is not None:
        ids = [int(e["id"]) for e in sidecar["label_map"]]
        names = [e["name"] for e in sidecar["label_map"]]
    else:
        raise UsageError("no label map: pass --label_map, or keep the converter's PREFIX.meta.json beside the shards")
    d.class_ids, d.class_names = ids, names
    expected = len(ids) + 1
    if cfg.model.num_classes and cfg.model.num_classes != expected:
        raise UsageError(f"--num_classes={cfg.model.num_classes} disagrees with the label map "
                         f"({len(ids)} classes + background = {expected}); fix --num_classes or --label_map")
    cfg.model.num_classes = expected
    if needs_train and not d.num_train_images:
        if sidecar is None:
            if not cfg.train.train_steps:
                raise UsageError("epoch length unknown: pass --train_steps or --num_train_images")
        else:
            d.num_train_images = int(sidecar["num_images"])


def total_steps(cfg, global_batch: int) -> int:
    t = cfg.train
    if t.train_steps:
        return int(t.train_steps)
    if not t.num_epochs:
        raise UsageError("pass --num_epochs or --train_steps")
    return max(1, math.ceil(t.num_epochs * cfg.data.num_train_images / global_batch))


def make_schedule(cfg, global_batch: int, steps: int):
    from ssd_tf.training import schedules

    t = cfg.train
    lr = schedules.scale_lr(t.base_learning_rate, t.lr_reference_batch, global_batch)
    steps_per_epoch = max(1, cfg.data.num_train_images // global_batch) if cfg.data.num_train_images else 0
    warmup = t.warmup_steps if t.warmup_steps >= 0 else int(round(t.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(steps - 1, 0))
    if t.lr_schedule == "cosine":
        return schedules.WarmupCosine(lr, steps, warmup, alpha=t.cosine_alpha,
                                      warmup_start_factor=t.warmup_start_factor)
    if t.lr_schedule == "multistep":
        bounds = [int(round(b * steps)) if b < 1 else int(b) for b in t.lr_boundaries]
        return schedules.WarmupMultiStep(lr, bounds, gamma=t.lr_gamma, warmup_steps=warmup,
                                         warmup_start_factor=t.warmup_start_factor)
    return schedules.WarmupMultiStep(lr, [], warmup_steps=warmup, warmup_start_factor=t.warmup_start_factor)


def make_strategy(cfg):
    from ssd_tf.distribute import cluster as cluster_lib
    from ssd_tf.distribute import strategy as strategy_lib

    try:
        cluster = cluster_lib.resolve_cluster(worker_hosts=FLAGS.worker_hosts, task_index=FLAGS.task_index,
                                              rank_table_file=FLAGS.rank_table_file, rank_id=FLAGS.rank_id,
                                              base_port=FLAGS.base_port)
    except cluster_lib.ClusterConfigError as e:  # a bad rank table / TF_CONFIG: say what, no traceback
        raise UsageError(str(e)) from None
    if FLAGS.collective_timeout is not None and FLAGS.collective_timeout <= 0:
        raise UsageError(f"--collective_timeout must be positive seconds, got {FLAGS.collective_timeout}")
    return strategy_lib.make_strategy(cfg.runtime.strategy, num_devices=cfg.runtime.num_devices or None,
                                      cluster=cluster, collective_timeout_seconds=FLAGS.collective_timeout)


def write_eval_results(model_dir: str, step: int, checkpoint: str, metrics: dict) -> None:
    path = os.path.join(model_dir, "eval_results.json")
    record = {"step": step, "checkpoint": checkpoint, **metrics}
    history = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        history = previous.get("history", [])
    history = [h for h in history if h.get("checkpoint") != checkpoint] + [
        {k: v for k, v in record.items() if k != "history"}]
    record["history"] = history
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def run(cfg) -> dict:
    from ssd_tf import config as config_lib
    from ssd_tf.tasks.ssd import SSDTask
    from ssd_tf.training import loop
    from ssd_tf.training.optimizer import MomentumSGD

    import keras

    if cfg.train.precision in ("fp16", "bf16"):
        keras.mixed_precision.set_global_policy("mixed_float16" if cfg.train.precision == "fp16" else "mixed_bfloat16")
    strategy = make_strategy(cfg)  # before any other TF op: multi-worker setup fails once TF has started
    keras.utils.set_random_seed(cfg.train.seed)
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.train.train_batch_size * replicas
    task = SSDTask(cfg, global_batch_size=global_batch)
    model_dir = cfg.runtime.model_dir

    if FLAGS.mode == "eval":
        return run_eval(cfg, task, strategy)

    steps = total_steps(cfg, global_batch)
    schedule = make_schedule(cfg, global_batch, steps)
    t = cfg.train

    def make_optimizer():
        return MomentumSGD(learning_rate=schedule, momentum=t.momentum, weight_decay=t.weight_decay,
                           weight_decay_mode=t.weight_decay_mode,
                           exclude_bn_and_bias=t.exclude_bn_bias_from_weight_decay)

    steps_per_epoch = max(1, cfg.data.num_train_images // global_batch) if cfg.data.num_train_images else 0
    eval_every = int(round(cfg.eval.eval_every_epochs * steps_per_epoch)) if FLAGS.mode == "train_and_eval" else 0
    options = loop.LoopOptions(total_steps=steps, steps_per_loop=t.steps_per_loop, log_every_steps=t.log_every_steps,
                               checkpoint_every_steps=t.checkpoint_every_steps, keep_checkpoints=t.keep_checkpoints,
                               eval_every_steps=eval_every, xla=t.xla, precision=t.precision)
    init_fn = None
    if t.resnet_checkpoint:
        init_fn = lambda model: load_backbone_weights(model, t.resnet_checkpoint)  # noqa: E731
    trainer = loop.Trainer(task, strategy, model_dir, make_optimizer, options, init_fn=init_fn)
    if trainer.is_chief:
        config_lib.save(cfg, model_dir)
        print(f"Model {cfg.model.name}: {trainer.model.count_params():,} parameters; {replicas} replica(s), "
              f"global batch {global_batch}, {steps} steps", flush=True)
        print("Config: " + json.dumps(cfg.to_dict(), sort_keys=True), flush=True)

    evaluate = None
    if FLAGS.mode == "train_and_eval":
        def evaluate(step):
            metrics = task.evaluate(trainer.model)
            write_eval_results(model_dir, step, trainer.manager.latest_checkpoint or "", metrics)
            return metrics

    try:
        trainer.train(evaluate)
    except loop.TrainingDiverged as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    except _collective_errors() as e:
        if not _is_multi_worker(strategy):
            raise
        from ssd_tf.distribute.strategy import worker_index

        import tensorflow as tf

        latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        print(f"ERROR: worker {worker_index(strategy)}: a collective operation with the other workers failed "
              f"({type(e).__name__}: {_collective_reason(e)}). Another worker died, stopped responding, or kept "
              f"this one waiting longer than --collective_timeout. Restart all workers: they resume from "
              f"{latest or 'step 0 (no checkpoint yet)'}.", file=sys.stderr, flush=True)
        raise SystemExit(4)
    _dump_weights(trainer.model, strategy)
    return getattr(trainer, "last_eval", {})


def _collective_errors():
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _collective_reason(error) -> str:
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines() if line.strip()]
    for key in ("timed out", "unhealthy", "aborted by", "Connection", "Socket"):
        for line in lines:
            if key in line:
                return line[:300]
    return lines[-1][:300] if lines else ""


def _dump_weights(model, strategy) -> None:
    """Debug aid (tests of multi-worker runs): SSD_TF_DUMP_WEIGHTS=path.npz, "{rank}" in it -> the worker index;
    every process writes all its model weights (trainable and BN moving statistics) by variable path."""
    path = os.environ.get("SSD_TF_DUMP_WEIGHTS")
    if not path:
        return
    import numpy as np
    from ssd_tf.distribute.strategy import worker_index

    path = path.replace("{rank}", str(worker_index(strategy)))
    np.savez(path, **{w.path: np.asarray(w.numpy()) for w in model.weights})


def load_backbone_weights(model, path: str) -> None:
    """--resnet_checkpoint: a Keras weights file, or a TF checkpoint with the MLPerf ResNet34 names."""
    if path.endswith(".h5"):
        if not os.path.exists(path):
            raise UsageError(f"--resnet_checkpoint={path} does not exist")
        model.load_weights(path, skip_mismatch=False)
        return
    from ssd_tf.weights.tf_checkpoint import load_resnet34_from_tf_checkpoint

    load_resnet34_from_tf_checkpoint(model, path)


def run_eval(cfg, task, strategy) -> dict:
    import tensorflow as tf

    model_dir = cfg.runtime.model_dir
    with strategy.scope():
        model = task.build_model()
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if FLAGS.checkpoint:
        checkpoints = [FLAGS.checkpoint]
    else:
        state = tf.train.get_checkpoint_state(ckpt_dir)
        if state is None or not state.model_checkpoint_path:
            raise UsageError(f"--mode=eval: no checkpoint in {ckpt_dir}; train first or pass --checkpoint")
        checkpoints = list(state.all_model_checkpoint_paths) if FLAGS.eval_all_checkpoints else [
            state.model_checkpoint_path]
    metrics = {}
    for path in checkpoints:
        ckpt = tf.train.Checkpoint(model=model)
        try:
            ckpt.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.NotFoundError) as e:
            raise UsageError(f"checkpoint {path} does not fit a {cfg.model.name} model with "
                             f"{cfg.model.num_classes} classes: {str(e)[:300]}") from None
        step = int(path.rsplit("-", 1)[-1]) if path.rsplit("-", 1)[-1].isdigit() else 0
        metrics = task.evaluate(model)
        print(f"Eval results at step {step} ({path}): " + json.dumps(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float))}), flush=True)
        write_eval_results(model_dir, step, path, metrics)
    return metrics


def main(argv):
    del argv
    try:
        cfg = build_config()
        resolve_data(cfg)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    try:
        run(cfg)
    except UsageError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)


if __name__ == "__main__":
    app.run(main)
