"""The runtime every detector family shares, callable from Python:

    from ssd_tf import presets, run
    cfg = presets.preset("ssd_resnet34")
    cfg.override("data", training_file_pattern="train-*.tfrecord", validation_file_pattern="val-*.tfrecord")
    cfg.override("runtime", model_dir="/runs/r34")
    run.resolve_data(cfg, "train_and_eval")      # label map, class count, epoch length (no TensorFlow)
    metrics = run.train_and_eval(cfg)

``train(cfg)``, ``evaluate(cfg)`` and ``train_and_eval(cfg)`` build the family's task (``ssd_tf.tasks``), the
distribution strategy, optimizer and schedule, and run the generic loop (``ssd_tf/training/loop.py``).
Errors a user must fix are ``UsageError`` (``ssd_main.py`` prints them and exits 2); a diverged run raises
``loop.TrainingDiverged`` (exit 3); a failed multi-worker collective raises ``CollectiveFailure`` (exit 4).
This module imports TensorFlow only inside the functions that need it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import traceback
from typing import Optional

from ssd_tf.config import Config


class UsageError(ValueError):
    """A configuration or flag combination that cannot work; the message says what to change."""


class CollectiveFailure(RuntimeError):
    """A multi-worker collective failed (a worker died, stopped responding, or timed out)."""


_print = functools.partial(print, flush=True)


def architecture_differences(saved: Config, cfg: Config) -> list:
    """The architecture fields (``model_config.architecture_fields``) where ``cfg`` differs from ``saved``."""
    from ssd_tf.config import get_value

    if saved.model.family != cfg.model.family:
        return ["family"]
    return [p for p in type(saved.model).architecture_fields
            if get_value(saved.model, p) != get_value(cfg.model, p)]


def check_model_dir(cfg: Config) -> Optional[Config]:
    """The config saved in ``cfg.runtime.model_dir`` (None when there is none); a ``cfg`` whose architecture
    differs from it is a UsageError naming the fields, since its checkpoints could not be restored."""
    from ssd_tf import config as config_lib

    model_dir = cfg.runtime.model_dir
    if not model_dir or not os.path.exists(os.path.join(model_dir, "config.json")):
        return None
    saved = config_lib.load(model_dir)
    diffs = architecture_differences(saved, cfg)
    if diffs:
        from ssd_tf.config import get_value

        parts = ", ".join(f"{p}: saved {get_value(saved.model, p)!r}, now {get_value(cfg.model, p)!r}"
                          if p != "family" else f"family: saved {saved.model.family}, now {cfg.model.family}"
                          for p in diffs)
        raise UsageError(f"{model_dir} holds a {saved.model.name} model whose checkpoints do not fit this "
                         f"configuration ({parts}); use another --model_dir or keep those values")
    return saved


# ----------------------------------------------------------------------------------------------- data (no TF)
def match_files(pattern: str, what: str) -> list:
    from ssd_tf.data.shards import expand_pattern

    files = expand_pattern(pattern)
    if not files:
        raise UsageError(f"{what}={pattern} matches no file")
    return files


def resolve_data(cfg: Config, mode: str, num_classes_given: bool = False) -> None:
    """Checks the file patterns and fills class ids / names, the class count and the epoch length.

    ``num_classes_given``: the user set the class count explicitly (a disagreement with the label map is then
    an error instead of being resolved from the label map)."""
    from ssd_tf.data import label_map as label_map_lib

    d = cfg.data
    needs_train = mode in ("train", "train_and_eval")
    needs_eval = mode in ("eval", "train_and_eval")
    if needs_train and not d.training_file_pattern:
        raise UsageError("--training_file_pattern is required for --mode=" + mode)
    train_files = match_files(d.training_file_pattern, "--training_file_pattern") if needs_train else []
    eval_files = []
    if needs_eval:
        if not d.validation_file_pattern:
            raise UsageError(f"--mode={mode} needs --validation_file_pattern (nothing to evaluate)")
        eval_files = match_files(d.validation_file_pattern, "--validation_file_pattern")
        if d.val_json_file and not os.path.exists(d.val_json_file):
            raise UsageError(f"--val_json_file={d.val_json_file} does not exist")
    try:
        train_map, train_sidecar = label_map_lib.label_map_of_files(train_files)
        eval_map, eval_sidecar = label_map_lib.label_map_of_files(eval_files)
        given = label_map_lib.read_label_map(d.label_map) if d.label_map else None
    except label_map_lib.LabelMapError as e:
        raise UsageError(str(e)) from None
    if given is not None:
        label_map, source = given, f"--label_map={d.label_map}"
    elif d.class_ids:
        label_map, source = dict(zip(d.class_ids, d.class_names)), "the model directory's config.json"
    elif train_map is not None or eval_map is not None:
        label_map, source = (train_map, train_sidecar) if train_map is not None else (eval_map, eval_sidecar)
    else:
        raise UsageError("no label map: pass --label_map, or keep the converter's PREFIX.meta.json beside the shards")
    saved = dict(zip(d.class_ids, d.class_names)) if d.class_ids else None
    for other, where in ((saved, "the model directory's config.json"), (train_map, train_sidecar),
                         (eval_map, eval_sidecar)):
        if other is not None and list(other.items()) != list(label_map.items()):
            raise UsageError(f"the label map of {where} {label_map_lib._describe(other)} differs from {source} "
                             f"{label_map_lib._describe(label_map)}: class ids would mean different classes; convert "
                             f"with one label map (e.g. --label_map=TRAIN_PREFIX.meta.json) or pass --label_map")
    d.class_ids, d.class_names = list(label_map), list(label_map.values())
    expected = len(label_map) + 1
    if num_classes_given and cfg.model.num_classes != expected:
        raise UsageError(f"--num_classes={cfg.model.num_classes} disagrees with the label map "
                         f"({len(label_map)} classes + background = {expected}); fix --num_classes or --label_map")
    cfg.model.num_classes = expected
    for files, pattern_flag in ((train_files, "--training_file_pattern"), (eval_files, "--validation_file_pattern")):
        _check_shard_sets(files, label_map_lib.sidecars_of(files), pattern_flag)
    if needs_train:
        sidecars = label_map_lib.sidecars_of(train_files)
        if sidecars:
            counted = _records_in(train_files, sidecars)
            if counted == 0:
                raise UsageError(f"--training_file_pattern={d.training_file_pattern}: the converter's sidecar "
                                 f"{', '.join(sidecars)} counts 0 images; nothing to train on")
        elif all(_is_empty(f) for f in train_files):
            raise UsageError(f"--training_file_pattern={d.training_file_pattern}: the {len(train_files)} matching "
                             f"file(s) are empty (no records); nothing to train on")
        if not d.num_train_images:
            if not sidecars:
                if not cfg.train.train_steps:
                    raise UsageError("epoch length unknown: pass --train_steps or --num_train_images")
            else:
                d.num_train_images = counted


def _sidecar_shards(sidecar_path: str, sidecar: dict) -> dict:
    """{shard path: records} the converter wrote for one prefix (an older sidecar without the list: {})."""
    directory = os.path.dirname(sidecar_path)
    return {os.path.join(directory, e["file"]): int(e.get("num_records", 0)) for e in sidecar.get("shards", [])}


def _check_shard_sets(files: list, sidecars: dict, flag: str) -> None:
    """Every matched file of a converted prefix must be one of the shards its sidecar lists: a re-conversion
    with another --num_shards would otherwise leave stale shards that the glob trains on twice."""
    from ssd_tf.data.shards import shard_prefix, sidecar_path

    for path, sidecar in sidecars.items():
        listed = _sidecar_shards(path, sidecar)
        if not listed:
            continue
        listed_real = {os.path.realpath(f) for f in listed}
        stale = [f for f in files if sidecar_path(shard_prefix(f)) == path and os.path.realpath(f) not in listed_real]
        if stale:
            raise UsageError(f"{flag} matches {len(stale)} file(s) that {path} does not list as its shards, e.g. "
                             f"{stale[0]} (left by an earlier conversion with another --num_shards?); delete them or "
                             f"narrow the pattern")


def _records_in(files: list, sidecars: dict) -> int:
    """Images in the matched shards, from the sidecars' per-shard counts (whole sidecar counts for older ones)."""
    total = 0
    for path, sidecar in sidecars.items():
        listed = {os.path.realpath(f): n for f, n in _sidecar_shards(path, sidecar).items()}
        if listed:
            total += sum(listed.get(os.path.realpath(f), 0) for f in files)
        else:
            total += int(sidecar.get("num_images", 0))
    return total


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:  # a remote path: the reader will tell
        return False


def check_output_dir(path: str, flag: str) -> None:
    """A directory that exists or can be created (its first existing ancestor is a writable directory)."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}={path} is a file, not a directory")
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}={path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}={path} cannot be created: {parent} is not writable")


# ----------------------------------------------------------------------------------------------- schedule
def steps_per_epoch(cfg: Config, global_batch: int) -> int:
    n = cfg.data.num_train_images
    return max(1, n // global_batch) if n else 0


def rescale_steps(cfg: Config, steps: float, global_batch: int) -> int:
    """A step count of the recipe at the run's global batch: ``steps`` x ``train.steps_reference_batch`` / global
    batch, rounded (the same number of images), or ``steps`` itself when ``steps_reference_batch`` is 0."""
    ref = cfg.train.steps_reference_batch
    if not ref:
        return int(steps)
    return max(1, int(round(steps * ref / global_batch)))


def total_steps(cfg: Config, global_batch: int) -> int:
    """Training length in steps: ``train.train_steps`` (rescaled by ``rescale_steps``) or the epochs' steps."""
    t = cfg.train
    if t.train_steps:
        return rescale_steps(cfg, t.train_steps, global_batch)
    if not t.num_epochs:
        raise UsageError("pass --num_epochs or --train_steps")
    return max(1, math.ceil(t.num_epochs * cfg.data.num_train_images / global_batch))


def lr_boundary_steps(cfg: Config, global_batch: int, steps: int) -> list:
    """``train.lr_boundaries`` in steps: fractions (< 1) of ``steps``, or steps (>= 1) rescaled by
    ``rescale_steps``."""
    return [int(round(b * steps)) if b < 1 else rescale_steps(cfg, b, global_batch) for b in cfg.train.lr_boundaries]


def make_schedule(cfg: Config, global_batch: int, steps: int):
    from ssd_tf.training import schedules

    t = cfg.train
    lr = schedules.scale_lr(t.base_learning_rate, t.lr_reference_batch, global_batch)
    warmup = t.warmup_steps if t.warmup_steps >= 0 else int(round(t.warmup_epochs * steps_per_epoch(cfg, global_batch)))
    warmup = min(warmup, max(steps - 1, 0))
    if t.lr_schedule == "cosine":
        return schedules.WarmupCosine(lr, steps, warmup, alpha=t.cosine_alpha,
                                      warmup_start_factor=t.warmup_start_factor)
    if t.lr_schedule == "multistep":
        bounds = lr_boundary_steps(cfg, global_batch, steps)
        return schedules.WarmupMultiStep(lr, bounds, gamma=t.lr_gamma, warmup_steps=warmup,
                                         warmup_start_factor=t.warmup_start_factor)
    return schedules.WarmupMultiStep(lr, [], warmup_steps=warmup, warmup_start_factor=t.warmup_start_factor)


# A layer's bias variable (Conv2D / Dense ``.../bias``): what train.bias_lr_factor and train.bias_weight_decay
# apply to (maskrcnn-benchmark: every parameter whose name contains "bias").
BIAS_PATTERN = r"(^|/)bias$"


def make_optimizer_fn(cfg: Config, schedule):
    from ssd_tf.training.optimizer import MomentumSGD

    t = cfg.train
    lr_multipliers = {BIAS_PATTERN: float(t.bias_lr_factor)} if t.bias_lr_factor != 1.0 else None
    no_decay = [BIAS_PATTERN] if t.bias_weight_decay == 0.0 and t.weight_decay else None
    return lambda: MomentumSGD(learning_rate=schedule, momentum=t.momentum, weight_decay=t.weight_decay,
                               weight_decay_mode=t.weight_decay_mode,
                               exclude_bn_and_bias=t.exclude_bn_bias_from_weight_decay,
                               exclude_from_weight_decay=no_decay, lr_multipliers=lr_multipliers)


# ----------------------------------------------------------------------------------------------- strategy
def make_strategy(cfg: Config, cluster=None, collective_timeout: Optional[float] = None):
    from ssd_tf.distribute import strategy as strategy_lib

    if collective_timeout is not None and collective_timeout <= 0:
        raise UsageError(f"--collective_timeout must be positive seconds, got {collective_timeout}")
    return strategy_lib.make_strategy(cfg.runtime.strategy, num_devices=cfg.runtime.num_devices or None,
                                      cluster=cluster, collective_timeout_seconds=collective_timeout)


def _set_precision(cfg: Config, log=_print) -> None:
    """The compute precision for this run (``train.precision``; ``auto`` decides from the hardware, see
    ``training/precision.py``), set as Keras' global dtype policy and recorded with its reason in
    ``runtime.precision`` / ``runtime.precision_reason`` (saved in config.json)."""
    import keras

    from ssd_tf.training.precision import resolve_precision

    precision, why = resolve_precision(cfg.train.precision)
    cfg.runtime.precision, cfg.runtime.precision_reason = precision, why
    log(f"Precision: {precision} ({why})")
    policy = {"fp16": "mixed_float16", "bf16": "mixed_bfloat16"}.get(precision, "float32")
    keras.mixed_precision.set_global_policy(policy)


@contextlib.contextmanager
def _keeping_dtype_policy():
    """Restores Keras' global dtype policy afterwards (a run sets it; a Python caller's later models should not
    inherit it)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _set_op_determinism(on: bool) -> None:
    """TensorFlow's op determinism is process-wide: set it to this run's value, so a run in a process that
    earlier ran a Faster R-CNN preset (deterministic) is not left deterministic (which also forbids the
    data-wait timestamps)."""
    from tensorflow.python.framework import config as tf_config

    if on:
        tf_config.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def _setup(cfg: Config, cluster, collective_timeout, log=_print):
    """Precision policy, strategy (before any other TF op: multi-worker setup fails once TF has started), seed,
    task -> (strategy, task, global batch)."""
    import keras

    from ssd_tf.tasks import build_task

    _set_precision(cfg, log)
    _set_op_determinism(cfg.train.deterministic_ops)
    strategy = make_strategy(cfg, cluster, collective_timeout)
    keras.utils.set_random_seed(cfg.train.seed)
    global_batch = cfg.train.train_batch_size * strategy.num_replicas_in_sync
    return strategy, build_task(cfg, global_batch_size=global_batch, log_fn=log), global_batch


def _check_gradient_determinism(cfg: Config, task) -> None:
    """A family whose CPU gradient kernels race without op determinism does not train on a CPU-only machine
    with --deterministic_ops=false: the run would go on with silently wrong gradients."""
    import tensorflow as tf

    reason = task.cpu_gradient_needs_determinism
    if reason and not cfg.train.deterministic_ops and not tf.config.list_physical_devices("GPU"):
        raise UsageError(f"--deterministic_ops=false cannot train {cfg.model.name} on a CPU: {reason}; leave "
                         f"--deterministic_ops on (the preset's default)")


# ----------------------------------------------------------------------------------------------- results
def write_eval_results(model_dir: str, step: int, checkpoint: str, metrics: dict) -> None:
    """``model_dir/eval_results.json``: the latest evaluation and the history of every checkpoint evaluated."""
    os.makedirs(model_dir, exist_ok=True)  # evaluating a weights file: the directory may be new
    path = os.path.join(model_dir, "eval_results.json")
    record = {"step": step, "checkpoint": checkpoint, **metrics}
    history = []
    if os.path.exists(path):
        with open(path) as f:
            history = json.load(f).get("history", [])
    history = [h for h in history if h.get("checkpoint") != checkpoint] + [
        {k: v for k, v in record.items() if k != "history"}]
    record["history"] = history
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


# What every evaluation leaves in the model directory (train_and_eval and evaluate): eval_results.json (the numbers),
# eval_plots/step_N/ and TensorBoard images (evaluation/plots.py) and, with eval.best_metric, the best checkpoint
# (training/checkpoints.py). A failure while drawing is logged and does not stop training: the numbers are written.
def record_evaluation(cfg, task, model, step: int, checkpoint: str, log=_print, plots: bool = True) -> dict:
    """Evaluates ``model`` (weights of ``checkpoint`` at ``step``) with ``task`` and records the results (see the
    comment above); returns the metrics."""
    model_dir = cfg.runtime.model_dir
    details = {}
    metrics = task.evaluate(model, details=details)
    write_eval_results(model_dir, step, checkpoint, metrics)
    if plots:
        try:
            from ssd_tf.evaluation.plots import write_eval_plots

            write_eval_plots(model_dir, step, metrics, details,
                             label_map=dict(zip(cfg.data.class_ids, cfg.data.class_names)),
                             validation_file_pattern=cfg.data.validation_file_pattern, log=log)
        except Exception as e:  # noqa: BLE001 - a picture must not cost a training run
            log(f"WARNING: evaluation pictures not written ({type(e).__name__}: {e})\n"
                + "".join(traceback.format_exc(limit=3)))
    metric = getattr(cfg.eval, "best_metric", "")
    if metric:
        from ssd_tf.training.checkpoints import update_best

        update_best(model_dir, model, step=step, metrics=metrics, metric=metric,
                    mode=getattr(cfg.eval, "best_metric_mode", "auto"), source=checkpoint, log=log)
    return metrics


def _evaluated(model_dir: str, checkpoint: str) -> bool:
    path = os.path.join(model_dir, "eval_results.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        history = json.load(f).get("history", [])
    name = os.path.basename(checkpoint)
    return any(os.path.basename(h.get("checkpoint", "")) == name for h in history)


def load_backbone_weights(model, path: str, cfg: Optional[Config] = None, log=_print) -> None:
    """``train.backbone_checkpoint``: a Keras weights file of the whole model or its backbone (the converter's
    output), or a TF checkpoint with the MLPerf ResNet34 variable names.

    A whole-model file trained with another class count still starts a fine-tuning run: the class-dependent
    layers (``model_config.classifier_layers``) keep their initialisation and a message says so; any other
    layer that does not fit is an error naming it."""
    if not path.endswith(".h5"):
        from ssd_tf.weights.tf_checkpoint import load_resnet34_from_tf_checkpoint

        load_resnet34_from_tf_checkpoint(model, path)
        return
    if not os.path.exists(path):
        raise UsageError(f"--backbone_checkpoint={path} does not exist")
    import re

    import numpy as np

    from ssd_tf.models.factory import load_weights_file

    # Every weight starts as NaN so that the ones the file cannot fill are known exactly afterwards.
    initial = [np.array(w.numpy(), copy=True) for w in model.weights]
    for w, value in zip(model.weights, initial):
        w.assign(np.full_like(value, np.nan))
    try:
        load_weights_file(model, path)  # the NaN check below knows exactly which weights were not filled
        return
    except ValueError as e:
        if "could not be loaded" not in str(e):
            for w, value in zip(model.weights, initial):
                w.assign(value)
            raise UsageError(f"--backbone_checkpoint={path} does not fit this model: {str(e).splitlines()[0]}") from None
    finally:
        kept = []
        for w, value in zip(model.weights, initial):
            if np.isnan(np.asarray(w.numpy())).all():
                w.assign(value)  # not in the file (or of another shape): its initialisation
                kept.append(w.path)
    # Keras loaded every weight that fits before raising.
    allowed = getattr(type(cfg.model), "classifier_layers", ()) if cfg is not None else ()
    other = [p for p in kept if not any(re.search(pattern, p) for pattern in allowed)]
    if other:
        raise UsageError(f"--backbone_checkpoint={path} does not fit this model: {len(other)} weight(s) such as "
                         f"{', '.join(other[:4])} have other shapes (another architecture or width?)")
    log(f"{path}: the class-dependent layers ({', '.join(sorted({p.rsplit('/', 1)[0] for p in kept}))}) have another "
        f"class count there and start from their initialisation; every other weight was loaded")


def _check_ground_truth(cfg: Config) -> None:
    """COCO evaluation against ``--val_json_file``: its images must be the validation records' (checked on the first
    records before any training or evaluation work, so a wrong file is a usage error, not a failure hours later)."""
    if cfg.eval.eval_metric != "coco" or not cfg.data.val_json_file:
        return
    from ssd_tf.evaluation.runner import GroundTruthMismatch, check_ground_truth

    try:
        check_ground_truth(cfg.data.val_json_file, cfg.data.validation_file_pattern)
    except GroundTruthMismatch as e:
        raise UsageError(str(e)) from None


def _warn_frozen_at_random(cfg: Config, model, log) -> None:
    """A run without ``--backbone_checkpoint`` whose model keeps weights frozen (frozen layers, frozen BatchNorm:
    settings made for a pretrained backbone) would train around random constants; such a run tends to diverge, and
    its divergence message cannot tell why, so the start of the run says it."""
    import re

    frozen = [w.path for w in model.non_trainable_weights if not re.search(r"moving_(mean|variance)$", w.path)]
    if frozen:
        hint = getattr(type(cfg.model), "from_scratch_flags", "")
        log(f"WARNING: no --backbone_checkpoint, so {len(frozen)} frozen weights (such as {', '.join(frozen[:3])}; "
            f"frozen layers and BatchNorm are meant for a pretrained backbone) keep their random initialisation. "
            f"Pass --backbone_checkpoint" + (f", or train every weight from scratch with {hint}" if hint else ""))


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


# ----------------------------------------------------------------------------------------------- modes
def train(cfg: Config, *, cluster=None, collective_timeout: Optional[float] = None, evaluate: bool = False,
          log=_print) -> dict:
    """Trains (resuming from the latest checkpoint in ``cfg.runtime.model_dir``); with ``evaluate`` also
    evaluates every ``eval_every_epochs`` and at the end. Returns the last evaluation's metrics (or {})."""
    with _keeping_dtype_policy():
        return _train(cfg, cluster=cluster, collective_timeout=collective_timeout, evaluate=evaluate, log=log)


def _train(cfg: Config, *, cluster=None, collective_timeout: Optional[float] = None, evaluate: bool = False,
           log=_print) -> dict:
    check_model_dir(cfg)
    strategy, task, global_batch = _setup(cfg, cluster, collective_timeout, log)
    from ssd_tf.distribute.strategy import is_chief
    from ssd_tf.training.checkpoints import ModelDirBusy, training_lock

    try:
        with training_lock(cfg.runtime.model_dir) if is_chief(strategy) else contextlib.nullcontext():
            return _train_locked(cfg, strategy, task, global_batch, evaluate=evaluate, log=log)
    except ModelDirBusy as e:
        raise UsageError(str(e)) from None


def _train_locked(cfg: Config, strategy, task, global_batch: int, *, evaluate: bool, log) -> dict:
    from ssd_tf import config as config_lib
    from ssd_tf.training import loop

    _check_gradient_determinism(cfg, task)
    from ssd_tf.data.reader import list_files

    if evaluate:
        _check_ground_truth(cfg)
    task.fit_to_training_data(list_files(cfg.data.training_file_pattern), log)
    model_dir = cfg.runtime.model_dir
    steps = total_steps(cfg, global_batch)
    schedule = make_schedule(cfg, global_batch, steps)
    t = cfg.train
    eval_every = int(round(cfg.eval.eval_every_epochs * steps_per_epoch(cfg, global_batch))) if evaluate else 0
    options = loop.LoopOptions(total_steps=steps, steps_per_loop=t.steps_per_loop, log_every_steps=t.log_every_steps,
                               checkpoint_every_steps=t.checkpoint_every_steps, keep_checkpoints=t.keep_checkpoints,
                               eval_every_steps=eval_every, xla=t.xla, precision=cfg.runtime.precision)
    init_fn = (lambda model: load_backbone_weights(model, t.backbone_checkpoint, cfg, log)) if t.backbone_checkpoint \
        else None
    trainer = loop.Trainer(task, strategy, model_dir, make_optimizer_fn(cfg, schedule), options, init_fn=init_fn,
                           log_fn=log)
    if trainer.is_chief:
        config_lib.save(_persistent(cfg), model_dir)
        log(f"Model {cfg.model.name} ({cfg.model.family}): {trainer.model.count_params():,} parameters; "
            f"{strategy.num_replicas_in_sync} replica(s), global batch {global_batch}, {steps} steps")
        if t.steps_reference_batch and t.steps_reference_batch != global_batch:
            log(f"The recipe counts steps of {t.steps_reference_batch} images (train.steps_reference_batch): "
                f"train_steps {t.train_steps or '(from epochs)'} -> {steps}, lr_boundaries {list(t.lr_boundaries)} "
                f"-> {lr_boundary_steps(cfg, global_batch, steps)} at global batch {global_batch}; warmup_steps "
                f"unchanged")
        log("Config: " + json.dumps(cfg.to_dict(), sort_keys=True))
        if not t.backbone_checkpoint and int(trainer.global_step.numpy()) == 0:
            _warn_frozen_at_random(cfg, trainer.model, log)

    def evaluate_fn(step):
        return record_evaluation(cfg, task, trainer.model, step, trainer.manager.latest_checkpoint or "", log=log)

    evaluate_fn = evaluate_fn if evaluate else None

    try:
        with _input_errors_named(cfg, log):
            trainer.train(evaluate_fn)
        if evaluate_fn is not None and trainer.is_chief and not getattr(trainer, "last_eval", None):
            # Nothing was left to train: a run killed during its final evaluation finishes that evaluation.
            latest = trainer.manager.latest_checkpoint
            if latest and not _evaluated(model_dir, latest):
                step = int(trainer.global_step.numpy())
                log(f"Training finished earlier but {os.path.basename(latest)} was never evaluated; evaluating it")
                trainer.last_eval = evaluate_fn(step)
    except _collective_errors() as e:
        if not _is_multi_worker(strategy):
            raise
        import tensorflow as tf

        from ssd_tf.distribute.strategy import worker_index

        latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        raise CollectiveFailure(
            f"worker {worker_index(strategy)}: a collective operation with the other workers failed "
            f"({type(e).__name__}: {_collective_reason(e)}). Another worker died, stopped responding, or kept "
            f"this one waiting longer than --collective_timeout. Restart all workers: they resume from "
            f"{latest or 'step 0 (no checkpoint yet)'}.") from None
    _dump_weights(trainer.model, strategy)
    return getattr(trainer, "last_eval", {})


def _persistent(cfg: Config) -> Config:
    """What config.json keeps: everything but one-off choices of this invocation (``eval.eval_steps``, so a
    later evaluation scores the whole validation set unless asked again)."""
    import copy

    saved = copy.deepcopy(cfg)
    saved.eval.eval_steps = 0
    return saved


def train_and_eval(cfg: Config, **kwargs) -> dict:
    return train(cfg, evaluate=True, **kwargs)


def checkpoints_to_evaluate(cfg: Config, checkpoint: Optional[str] = None, all_checkpoints: bool = False) -> list:
    import tensorflow as tf

    if checkpoint == "best":
        from ssd_tf.training.checkpoints import CheckpointError, resolve_checkpoint

        try:
            return [resolve_checkpoint(cfg.runtime.model_dir, "best")]
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    if checkpoint:
        return [checkpoint]
    ckpt_dir = os.path.join(cfg.runtime.model_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(ckpt_dir)
    if state is None or not state.model_checkpoint_path:
        raise UsageError(f"--mode=eval: no checkpoint in {ckpt_dir}; train first or pass --checkpoint")
    return list(state.all_model_checkpoint_paths) if all_checkpoints else [state.model_checkpoint_path]


def restore_model(cfg: Config, model, path: str) -> int:
    """Restores the model weights of a training checkpoint (returns its step) or of a Keras ``.weights.h5`` file
    such as the converter's (step 0)."""
    import tensorflow as tf

    from ssd_tf.models.factory import load_weights_file
    from ssd_tf.training.checkpoints import is_weights_file

    if is_weights_file(path):
        try:
            load_weights_file(model, path)
        except (ValueError, OSError) as e:
            raise UsageError(f"--checkpoint={path} does not fit a {cfg.model.name} model with "
                             f"{cfg.model.num_classes} classes: {str(e).splitlines()[0][:300]}") from None
        return 0
    ckpt = tf.train.Checkpoint(model=model)
    try:
        ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.NotFoundError) as e:
        raise UsageError(f"checkpoint {path} does not fit a {cfg.model.name} model with "
                         f"{cfg.model.num_classes} classes: {str(e)[:300]}") from None
    tail = path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def evaluate(cfg: Config, *, checkpoint: Optional[str] = None, all_checkpoints: bool = False, cluster=None,
             log=_print) -> dict:
    """Evaluates the latest checkpoint (or ``checkpoint``, or every one kept) and records each result in
    ``eval_results.json``; returns the last metrics."""
    with _keeping_dtype_policy():
        return _evaluate(cfg, checkpoint=checkpoint, all_checkpoints=all_checkpoints, cluster=cluster, log=log)


def _evaluate(cfg: Config, *, checkpoint: Optional[str] = None, all_checkpoints: bool = False, cluster=None,
              log=_print) -> dict:
    strategy, task, _ = _setup(cfg, cluster, None, log)
    _check_ground_truth(cfg)
    with strategy.scope():
        model = task.build_model()
    metrics = {}
    for path in checkpoints_to_evaluate(cfg, checkpoint, all_checkpoints):
        step = restore_model(cfg, model, path)
        with _input_errors_named(cfg, log):
            metrics = record_evaluation(cfg, task, model, step, path, log=log)
        log(f"Eval results at step {step} ({path}): " + json.dumps(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    return metrics


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _input_errors_named(cfg: Config, log):
    """An input pipeline that fails on a record becomes a one-line UsageError naming the record: a class id
    outside the label map (the reader's own check names the source_id), or an image that does not decode (the
    files are scanned record by record to find it)."""
    import tensorflow as tf

    from ssd_tf.evaluation.runner import GroundTruthMismatch

    try:
        yield
    except GroundTruthMismatch as e:  # records past the ones checked at the start
        raise UsageError(str(e)) from None
    except tf.errors.InvalidArgumentError as e:
        message = str(getattr(e, "message", e))
        if "has class ids not in class_ids" in message:
            detail = message[message.index("record with source_id"):].splitlines()[0]
            raise UsageError(f"{detail}; the records' label map does not match the model's (--label_map)") from None
        if not any(word in message for word in ("Decode", "decode", "JPEG", "PNG", "image")):
            raise
        from ssd_tf.data.diagnose import find_undecodable_record

        log("An image failed to decode in the input pipeline; scanning the files for the record")
        for pattern in (cfg.data.training_file_pattern, cfg.data.validation_file_pattern):
            bad = find_undecodable_record(pattern) if pattern else None
            if bad is not None:
                raise UsageError(f"{bad.describe()}; re-convert the dataset (the converters check every image) or "
                                 f"remove that image") from None
        raise



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
