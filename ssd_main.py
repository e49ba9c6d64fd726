"""Train, evaluate and use detectors: python ssd_main.py --mode=train|eval|train_and_eval|predict|export [flags].

Flags -> config -> ``ssd_tf.run``. The config starts from the saved ``model_dir/config.json`` when there is one
(resume, eval), else from ``--config_file`` (a saved config.json or a hand-written JSON/YAML subset) or the
``--model`` preset; flags override it; the effective config is what ``config.json`` saves. Wrong flags fail
before TensorFlow starts, with one line saying what to change (exit 2). Exit 3: training diverged; exit 4: a
multi-worker collective failed; exit 130 / 143: Ctrl-C / SIGTERM stopped a single-process training, after saving
a checkpoint at the step it reached (the same command resumes there).
"""
from __future__ import annotations

import os
import sys

# As run_1p.sh / run_8p.sh set it: TensorFlow's C++ warnings (e.g. a grappler cost-estimator line for every
# RoIAlign op of a Faster R-CNN graph) drown the run's own log; TF_CPP_MIN_LOG_LEVEL=0 shows them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from flags import definitions  # noqa: E402

definitions.define_all()
FLAGS = flags.FLAGS

# flag name -> config path; a flag left at None keeps the config's value.
_PATHS = {
    **{name: f"data.{name}" for name in ("training_file_pattern", "validation_file_pattern", "val_json_file",
                                         "label_map", "num_train_images", "max_boxes", "shuffle_buffer")},
    "num_classes": "model.num_classes",
    "width_multiplier": "model.width_multiplier",
    "min_size": "model.min_size",
    "max_size": "model.max_size",
    "trainable_backbone_layers": "model.backbone.trainable_layers",
    "loss_normalization": "model.loss_normalization",
    "score_threshold": "model.postprocess.score_threshold",
    "nms_iou_threshold": "model.postprocess.iou_threshold",
    "max_detections": "model.postprocess.max_detections",
    **{name: f"train.{name}" for name in (
        "train_batch_size", "num_epochs", "train_steps", "base_learning_rate", "lr_reference_batch", "lr_schedule",
        "warmup_epochs", "warmup_steps", "cosine_alpha", "lr_boundaries", "lr_gamma", "momentum", "weight_decay",
        "weight_decay_mode", "exclude_bn_bias_from_weight_decay", "bias_lr_factor", "bias_weight_decay",
        "steps_reference_batch", "precision", "xla", "deterministic_ops",
        "steps_per_loop",
        "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "seed", "backbone_checkpoint")},
    "resnet_checkpoint": "train.backbone_checkpoint",  # the seed's name, kept as an alias
    **{name: f"eval.{name}" for name in ("eval_batch_size", "eval_every_epochs", "eval_backend", "eval_metric",
                                         "eval_steps", "best_metric", "best_metric_mode")},
    **{name: f"runtime.{name}" for name in ("model_dir", "strategy", "num_devices", "sync_batchnorm")},
}
# Flags that only matter for training; --mode=eval ignores them.
# Modes that use a trained model directory as it is (its config.json; training flags ignored).
_TRAINED_MODES = ("eval", "predict", "export")
_TRAIN_ONLY = ("train.", "model.loss_normalization", "data.training_file_pattern", "data.num_train_images",
               "data.shuffle_buffer")


def _usage_error(message: str):
    from ssd_tf.run import UsageError

    return UsageError(message)


def _flag_values() -> dict:
    """{config path: value} of the flags the user set (or that differ from None)."""
    out = {}
    for name, path in _PATHS.items():
        value = getattr(FLAGS, name)
        if value is None:
            continue
        if name == "lr_boundaries":
            try:
                value = [float(v) for v in value]
            except ValueError:
                raise _usage_error(f"--lr_boundaries={','.join(value)}: expected numbers (fractions of training "
                                   f"< 1, or steps >= 1), e.g. --lr_boundaries=0.667,0.917") from None
        if name == "backbone_checkpoint" and FLAGS.resnet_checkpoint is not None:
            raise _usage_error("pass --backbone_checkpoint or its alias --resnet_checkpoint, not both")
        out[path] = value
    return out


def _params_override(items: list) -> dict:
    """--params_override 'a.b=1,c.d=[1, 2]' (repeatable) -> {dotted path: value}; values parsed as YAML."""
    from ssd_tf.config import ConfigError, parse_overrides
    from ssd_tf.run import UsageError

    try:
        return parse_overrides(items)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _in_flag_terms(message: str, values: dict) -> str:
    """A config error that starts with the path of a value the user set by flag names the flag instead."""
    path = message.split(" ", 1)[0].rstrip(":")
    if path in values:
        return f"{_flag_for(path)}={_flag_text(values[path])}: " + message[len(path):].lstrip(": ")
    return message


def _flag_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _flag_for(path: str) -> str:
    return next((f"--{name}" for name, p in _PATHS.items() if p == path and name != "resnet_checkpoint"), path)


def build_config():
    """Flags -> the run's config (see the module docstring). No TensorFlow."""
    from ssd_tf import config as config_lib
    from ssd_tf import presets
    from ssd_tf.run import UsageError, check_model_dir, check_output_dir

    if FLAGS.model not in presets.PRESETS:
        raise UsageError(f"unknown preset '{FLAGS.model}'; choose one of {', '.join(presets.PRESETS)}")
    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (checkpoints, config.json and eval results go there)")
    saved = None
    if os.path.exists(os.path.join(FLAGS.model_dir, "config.json")):
        saved = config_lib.load(FLAGS.model_dir)
    file_values = config_lib.read_config_file(FLAGS.config_file) if FLAGS.config_file else None
    from ssd_tf.training.checkpoints import is_weights_file

    if FLAGS.mode in _TRAINED_MODES and saved is None and not is_weights_file(FLAGS.checkpoint):
        raise UsageError(f"--mode={FLAGS.mode}: {FLAGS.model_dir} has no config.json, so nothing was trained there; "
                         f"train first, point --model_dir at a trained model, or give --checkpoint=FILE.weights.h5 "
                         f"(e.g. converted reference weights) with --model")
    if saved is not None:
        if FLAGS["model"].present and FLAGS.model != saved.model.name:
            if FLAGS.mode in _TRAINED_MODES:
                raise UsageError(f"--model={FLAGS.model} but {FLAGS.model_dir} holds a {saved.model.name} model")
            raise UsageError(f"{FLAGS.model_dir} holds checkpoints of a {saved.model.name} model, not "
                             f"--model={FLAGS.model}; use another --model_dir or the same --model")
        cfg = saved
    else:
        name = FLAGS.model
        if file_values is not None and not FLAGS["model"].present:
            name = (file_values.get("model") or {}).get("name") or name
            if name not in presets.PRESETS:
                raise UsageError(f"{FLAGS.config_file}: model.name '{name}' is not a preset; choose one of "
                                 f"{', '.join(presets.PRESETS)}")
        cfg = presets.preset(name)
    if file_values is not None:
        try:
            config_lib.merge(cfg, file_values)
        except config_lib.ConfigError as e:
            raise UsageError(f"--config_file={FLAGS.config_file}: {e}") from None
    overrides = _params_override(FLAGS.params_override or [])
    for path, value in overrides.items():
        try:
            config_lib.set_value(cfg, path, value)
        except config_lib.ConfigError as e:
            raise UsageError(f"--params_override {path}={value}: {e}") from None
    file_values = {**(file_values or {}), **{p: v for p, v in overrides.items()}}
    values = _flag_values()
    if FLAGS.mode in _TRAINED_MODES:
        # a weights file has no saved config: its compute precision is the one asked for
        keep = ("train.precision",) if saved is None else ()
        values = {p: v for p, v in values.items() if p in keep or not p.startswith(_TRAIN_ONLY)}
    for path, value in values.items():
        try:
            config_lib.set_value(cfg, path, value)
        except config_lib.ConfigError as e:
            flag = _flag_for(path)
            raise UsageError(f"{flag}={value}: {e}") from None
    _resolve_length_pairs(cfg, set(values) | _paths_in(file_values or {}))
    _resolve_step_scale(cfg, set(values) | _paths_in(file_values or {}))
    if FLAGS.augmentation is not None and FLAGS.mode not in _TRAINED_MODES:
        _apply_augmentation(cfg, FLAGS.augmentation)
    try:
        cfg = config_lib.validate(cfg)
    except config_lib.ConfigError as e:
        raise UsageError(_in_flag_terms(str(e), values)) from None
    check_model_dir(cfg)
    if FLAGS.mode not in _TRAINED_MODES:
        check_output_dir(cfg.runtime.model_dir, "--model_dir")
    if FLAGS.mode not in _TRAINED_MODES and cfg.runtime.sync_batchnorm and cfg.train.xla:
        raise UsageError("--sync_batchnorm cannot be combined with --xla: the BatchNorm all-reduces would sit inside "
                         "the XLA-compiled forward/backward function, which tf.distribute rejects (merge_call in a "
                         "nested tf.function); drop one of the two")
    return cfg


# (steps field, epochs field, what it sets): a preset may set either; the one the user gives wins.
_LENGTH_PAIRS = (("train.train_steps", "train.num_epochs", "the training length"),
                 ("train.warmup_steps", "train.warmup_epochs", "the warmup length"))


def _paths_in(tree: dict, prefix: str = "") -> set:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out |= _paths_in(value, path) if isinstance(value, dict) else {path}
    return out


def _resolve_length_pairs(cfg, given: set) -> None:
    """A length the user gives in epochs replaces the preset's length in steps (the presets of torchvision's
    and ssd.pytorch's recipes count steps); when the user gives both, steps win and a note says so."""
    from ssd_tf.config import get_value, set_value

    for steps, epochs, what in _LENGTH_PAIRS:
        if epochs in given and steps not in given:
            set_value(cfg, steps, -1 if steps == "train.warmup_steps" else 0)
        elif epochs in given and steps in given and get_value(cfg, steps) not in (0, -1):
            print(f"note: {_flag_for(steps)}={get_value(cfg, steps)} and {_flag_for(epochs)}={get_value(cfg, epochs)} "
                  f"both given; {what} follows {_flag_for(steps)}", file=sys.stderr, flush=True)


def _resolve_step_scale(cfg, given: set) -> None:
    """Step counts the user gives (--train_steps, --lr_boundaries in steps) are taken as given: a preset that counts
    its recipe's steps at a reference batch (train.steps_reference_batch) stops rescaling unless the user sets
    --steps_reference_batch too."""
    from ssd_tf.config import set_value

    t = cfg.train
    if not t.steps_reference_batch or "train.steps_reference_batch" in given:
        return
    user_steps = ("train.train_steps" in given and t.train_steps) or (
        "train.lr_boundaries" in given and any(b >= 1 for b in t.lr_boundaries))
    if user_steps:
        print(f"note: step counts given by flag are used as given (the preset counts its steps at a global batch of "
              f"{t.steps_reference_batch} and rescales them; pass --steps_reference_batch={t.steps_reference_batch} "
              f"to rescale yours too)", file=sys.stderr, flush=True)
        set_value(cfg, "train.steps_reference_batch", 0)


def _apply_augmentation(cfg, name: str) -> None:
    from ssd_tf.run import UsageError

    if cfg.model.family != "ssd":
        raise UsageError(f"--augmentation applies to SSD models; {cfg.model.name} is a {cfg.model.family} model")
    if name == "auto":
        return
    from ssd_tf.model_configs.ssd import AUGMENTATIONS

    cfg.model.augmentation = AUGMENTATIONS[name]


def cluster_from_flags():
    from ssd_tf.distribute import cluster as cluster_lib
    from ssd_tf.run import UsageError

    try:
        return cluster_lib.resolve_cluster(worker_hosts=FLAGS.worker_hosts, task_index=FLAGS.task_index,
                                           rank_table_file=FLAGS.rank_table_file, rank_id=FLAGS.rank_id,
                                           base_port=FLAGS.base_port)
    except cluster_lib.ClusterConfigError as e:  # a bad rank table / TF_CONFIG: say what, no traceback
        raise UsageError(str(e)) from None


def check_inference_flags(cfg):
    """The predict / export flags, --checkpoint=best and --best_metric checked before TensorFlow starts (a
    ValueError names what to fix); returns predict's or export's arguments (None for the other modes)."""
    from ssd_tf.training import checkpoints

    if cfg.eval.best_metric and FLAGS.mode in ("train", "train_and_eval", "eval"):
        checkpoints.check_best_metric(cfg.eval.best_metric, cfg.eval.best_metric_mode, cfg.eval.eval_metric,
                                      cfg.data.class_names)
    if FLAGS.mode == "eval" and (FLAGS.checkpoint == "best" or checkpoints.is_weights_file(FLAGS.checkpoint)):
        checkpoints.resolve_checkpoint(cfg.runtime.model_dir, FLAGS.checkpoint)
    if FLAGS.mode == "predict":
        from ssd_tf.inference import predict

        predict.apply_defaults(cfg, score_threshold_given=FLAGS.score_threshold is not None)
        return predict.check_args(cfg, FLAGS.input_pattern, FLAGS.output_dir, FLAGS.checkpoint)
    if FLAGS.mode == "export":
        from ssd_tf.inference import export

        return export.check_args(cfg, FLAGS.export_dir, FLAGS.checkpoint)
    return None


def run_inference(cfg, args) -> None:
    """--mode=predict (exit 1 when no picture could be read) or --mode=export."""
    if FLAGS.mode == "export":
        from ssd_tf.inference.export import export_saved_model

        export_saved_model(cfg, args)
        return
    from ssd_tf.inference.predict import predict

    if predict(cfg, args).num_images == 0:
        print("ERROR: no picture could be read; nothing was predicted", file=sys.stderr, flush=True)
        raise SystemExit(1)


def main(argv):
    if len(argv) > 1:
        print(f"ERROR: unexpected argument(s) {' '.join(argv[1:])!r}; every option is a --flag=value "
              f"(python ssd_main.py --helpfull)", file=sys.stderr, flush=True)
        raise SystemExit(2)
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO records (e.g. each checkpoint save's sharding time)
        from absl import logging  # drown the progress lines; --verbosity=0 shows them

        logging.set_verbosity(logging.WARNING)
    from ssd_tf import run

    try:
        cfg = build_config()
        run.resolve_data(cfg, FLAGS.mode, num_classes_given=FLAGS.num_classes is not None)
        cluster = cluster_from_flags()
        if FLAGS.collective_timeout is not None and FLAGS.collective_timeout <= 0:
            raise run.UsageError(f"--collective_timeout must be positive seconds, got {FLAGS.collective_timeout}")
        inference_args = check_inference_flags(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    from ssd_tf.training.loop import TrainingDiverged, TrainingInterrupted

    try:
        if FLAGS.mode in ("predict", "export"):
            run_inference(cfg, inference_args)
        elif FLAGS.mode == "eval":
            run.evaluate(cfg, checkpoint=FLAGS.checkpoint, all_checkpoints=FLAGS.eval_all_checkpoints,
                         cluster=cluster)
        else:
            run.train(cfg, cluster=cluster, collective_timeout=FLAGS.collective_timeout,
                      evaluate=FLAGS.mode == "train_and_eval")
    except run.UsageError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except TrainingDiverged as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    except TrainingInterrupted as e:
        print(f"Interrupted: {e}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum)
    except run.CollectiveFailure as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        raise SystemExit(4)


if __name__ == "__main__":
    app.run(main)
