"""Run configuration: one dataclass tree per run (model, data, train, eval, runtime), no TensorFlow.

* ``model`` is the family's model config (``ssd_tf/model_configs``: SSD, Faster R-CNN), carrying every value the
  model, its parser, loss and post-processing need; ``data``, ``train``, ``eval`` and ``runtime`` are shared by
  every family.
* Presets are complete configs defined in ``ssd_tf/presets.py``.
* ``config.json`` in the model directory is the whole tree as trained (``version`` 2). Loading it never consults
  today's presets, so a model directory describes itself. A version-1 file (written before presets became
  values: the model section held only name, width and class count) is read by rebuilding its preset and
  applying what the file recorded. A version-2 file without a field its family's model config added later gets
  the value that reproduces how it trained (the config class's ``fields_added_later``), not today's default.
* A run's config is built as: preset (or ``--config_file``, a saved ``config.json`` or a hand-written JSON/YAML
  subset) -> flag overrides (``set_value`` with dotted paths such as ``model.postprocess.score_threshold``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
import typing
from typing import Any, Optional

VERSION = 2


class ConfigError(ValueError):
    """A config value, path or file that cannot be used; the message names it."""


@dataclasses.dataclass
class DataConfig:
    training_file_pattern: str = ""  # glob, comma-separated globs
    validation_file_pattern: str = ""
    val_json_file: str = ""
    label_map: str = ""  # label-map file or converter sidecar; empty: the sidecar beside the shards
    class_ids: list = dataclasses.field(default_factory=list)  # dataset ids, contiguous id = index + 1
    class_names: list = dataclasses.field(default_factory=list)
    num_train_images: int = 0  # epoch length; 0: from the sidecar
    max_boxes: int = 100  # boxes kept per image (padding size)
    shuffle_buffer: int = 1024
    drop_crowd: bool = False  # training targets leave out is_crowd boxes (evaluation keeps them as ignore regions)
    drop_difficult: bool = False  # training targets leave out VOC difficult boxes (evaluation ignores them)
    drop_images_without_boxes: bool = False  # training skips images with no (kept) boxes

    def __post_init__(self):
        _positive(self, "max_boxes", "shuffle_buffer")
        _at_least(self, 0, "num_train_images")


@dataclasses.dataclass
class TrainConfig:
    train_batch_size: int = 32  # per device
    num_epochs: float = 0.0
    train_steps: int = 0  # wins over num_epochs when > 0
    base_learning_rate: float = 3e-3
    lr_reference_batch: int = 32  # base_learning_rate is for this many images; scaled linearly
    lr_schedule: str = "cosine"  # cosine | multistep | constant
    warmup_epochs: float = 0.8
    warmup_steps: int = -1  # >= 0 wins over warmup_epochs
    warmup_start_factor: float = 0.0
    cosine_alpha: float = 0.01
    lr_boundaries: list = dataclasses.field(default_factory=list)  # fractions (<1) or steps (>=1)
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_mode: str = "coupled"  # coupled (L2 in the gradient, as the references) | decoupled
    exclude_bn_bias_from_weight_decay: bool = False
    # Layer biases (variables named .../bias): learning rate x this factor (maskrcnn-benchmark BIAS_LR_FACTOR 2) ...
    bias_lr_factor: float = 1.0
    # ... and this weight decay: None = weight_decay like every weight, 0 = none (maskrcnn-benchmark
    # WEIGHT_DECAY_BIAS 0); MomentumSGD excludes variables from decay, so other values are refused.
    bias_weight_decay: Optional[float] = None
    # > 0: train_steps and lr_boundaries given in steps (>= 1) count steps of this many images (the recipe's global
    # batch) and are rescaled to the run's global batch (x reference / global batch), so a run sees the recipe's
    # number of images whatever its batch; 0: steps are taken as given. Warmup steps are not rescaled (as
    # maskrcnn-benchmark's README does for other batch sizes: MAX_ITER and STEPS scale, the warmup stays).
    steps_reference_batch: int = 0
    precision: str = "auto"  # auto (bf16 where the hardware runs it natively, else fp32) | fp32 | fp16 | bf16
    xla: bool = False
    # TensorFlow op determinism: needed for bit-identical resume where a kernel is otherwise nondeterministic on
    # the CPU (crop_and_resize's gradient, used by Faster R-CNN's RoIAlign); costs the data-wait measurement.
    deterministic_ops: bool = False
    steps_per_loop: int = 10
    log_every_steps: int = 10
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 5
    seed: int = 0
    backbone_checkpoint: str = ""  # backbone (or whole-model) weights to start from

    def __post_init__(self):
        _positive(self, "train_batch_size", "lr_reference_batch", "steps_per_loop", "keep_checkpoints",
                  "base_learning_rate")
        _at_least(self, 0, "num_epochs", "train_steps", "warmup_epochs", "log_every_steps", "checkpoint_every_steps",
                  "weight_decay", "cosine_alpha", "warmup_start_factor", "lr_gamma", "bias_lr_factor",
                  "steps_reference_batch")
        if self.bias_weight_decay is not None and self.bias_weight_decay not in (0.0, self.weight_decay):
            raise ValueError(f"train.bias_weight_decay must be 0 (no decay on biases), the weight decay "
                             f"({self.weight_decay}) or null (the same), got {self.bias_weight_decay}")
        _one_of(self, "lr_schedule", ("cosine", "multistep", "constant"))
        _one_of(self, "weight_decay_mode", ("coupled", "decoupled"))
        _one_of(self, "precision", ("auto", "fp32", "fp16", "bf16"))
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.warmup_steps < -1:
            raise ValueError(f"train.warmup_steps must be >= 0 (or -1: use warmup_epochs), got {self.warmup_steps}")
        if any(not b > 0 for b in self.lr_boundaries):
            raise ValueError(f"train.lr_boundaries must be positive (fractions < 1 or steps), got {self.lr_boundaries}")
        if any(b1 > b2 for b1, b2 in zip(self.lr_boundaries, self.lr_boundaries[1:]) if (b1 < 1) == (b2 < 1)):
            raise ValueError(f"train.lr_boundaries must be in increasing order, got {self.lr_boundaries}")


@dataclasses.dataclass
class EvalConfig:
    eval_batch_size: int = 8
    eval_every_epochs: float = 0.0  # 0: only at the end of train_and_eval
    eval_backend: str = "faster"  # faster | pycocotools
    eval_metric: str = "coco"  # coco | voc07 | voc
    eval_steps: int = 0  # 0: the whole validation set
    best_metric: str = ""  # an eval_results.json key (COCO/AP, VOC/mAP, ...): keep the best checkpoint in best/
    best_metric_mode: str = "auto"  # auto (max for AP/AR/mAP, min for losses) | max | min

    def __post_init__(self):
        _positive(self, "eval_batch_size")
        _at_least(self, 0, "eval_every_epochs", "eval_steps")
        _one_of(self, "eval_backend", ("faster", "pycocotools"))
        _one_of(self, "eval_metric", ("coco", "voc07", "voc"))
        _one_of(self, "best_metric_mode", ("auto", "max", "min"))


@dataclasses.dataclass
class RuntimeConfig:
    model_dir: str = ""
    strategy: str = "auto"
    num_devices: int = 0
    sync_batchnorm: bool = False
    precision: str = ""  # written by a run: the precision train.precision resolved to on this machine ...
    precision_reason: str = ""  # ... and why

    def __post_init__(self):
        _one_of(self, "strategy", ("auto", "one_device", "mirrored", "multi_worker"))
        _at_least(self, 0, "num_devices")


def _section(obj) -> str:
    return {DataConfig: "data", TrainConfig: "train", EvalConfig: "eval", RuntimeConfig: "runtime"}[type(obj)]


def _positive(obj, *names):
    for name in names:
        if not getattr(obj, name) > 0:
            raise ValueError(f"{_section(obj)}.{name} must be positive, got {getattr(obj, name)!r}")


def _at_least(obj, low, *names):
    for name in names:
        if not getattr(obj, name) >= low:
            raise ValueError(f"{_section(obj)}.{name} must be >= {low}, got {getattr(obj, name)!r}")


def _one_of(obj, name, choices):
    if getattr(obj, name) not in choices:
        raise ValueError(f"{_section(obj)}.{name} must be one of {', '.join(choices)}, got {getattr(obj, name)!r}")


def _families() -> dict:
    from ssd_tf.model_configs import FAMILIES

    return FAMILIES


def _default_model():
    from ssd_tf.model_configs import SSDModelConfig

    return SSDModelConfig()


@dataclasses.dataclass
class Config:
    model: Any = dataclasses.field(default_factory=_default_model)  # a family's model config
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    version: int = VERSION

    @property
    def family(self) -> str:
        return self.model.family

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def override(self, section: str, **values) -> "Config":
        """Sets fields of one section (``cfg.override("train", momentum=0.8)``); unknown names are an error."""
        for key, value in values.items():
            set_value(self, f"{section}.{key}", value)
        return self


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "runtime": RuntimeConfig}


# ----------------------------------------------------------------------------------------------- dict <-> tree
def to_dict(obj) -> Any:
    """A config tree (or any part of it) as plain JSON types; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(tp, value, path: str):
    """``value`` (from JSON, YAML or a flag) as type ``tp``; errors name the dotted path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, values: dict, path: str):
    """``cls(**values)`` with nested values coerced; unknown keys are an error naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(fields)}")
    hints = _hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        message = str(e)
        raise ConfigError(message if message.startswith(f"{path}.") else f"{path}: {message}") from None


def model_from_dict(values: dict, path: str = "model"):
    family = values.get("family")
    families = _families()
    if family not in families:
        raise ConfigError(f"{path}.family must be one of {sorted(families)}, got {family!r}")
    return _build(families[family], values, path)


def from_dict(d: dict) -> Config:
    """A complete config tree from its dict form (``config.json`` version 2); unknown keys are errors."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - {"model", "version", *_SECTIONS})
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known: model, {', '.join(_SECTIONS)}")
    sections = {name: _build(cls, d.get(name, {}), name) for name, cls in _SECTIONS.items()}
    return Config(model=model_from_dict(d.get("model", {})), version=VERSION, **sections)


def validate(cfg: Config) -> Config:
    """Re-runs every dataclass's own checks (values set by attribute after construction skip them)."""
    return from_dict(to_dict(cfg))


# ----------------------------------------------------------------------------------------------- overrides
def get_value(cfg, path: str):
    obj = cfg
    for part in path.split("."):
        if not (dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}):
            raise ConfigError(_no_field(cfg, path))
        obj = getattr(obj, part)
    return obj


def _no_field(cfg, path: str) -> str:
    family = getattr(getattr(cfg, "model", None), "family", None)
    where = f" of a {family} model config" if path.startswith("model.") and family else ""
    return f"no config field {path}{where}"


def set_value(cfg, path: str, value) -> None:
    """Sets the field at a dotted ``path`` (``model.postprocess.score_threshold``), coerced to its type.

    Frozen parts (e.g. an anchor spec) are replaced, not mutated. The path must exist; the value is checked by
    the owning dataclass when it is frozen, else by ``validate``."""
    parts = path.split(".")
    chain = [cfg]
    for part in parts[:-1]:
        obj = chain[-1]
        if not (dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}):
            raise ConfigError(_no_field(cfg, path))
        chain.append(getattr(obj, part))
    owner, name = chain[-1], parts[-1]
    if not (dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}):
        raise ConfigError(_no_field(cfg, path))
    if name == "family" or (owner is cfg and name == "model" and not dataclasses.is_dataclass(value)):
        if name == "family" and value == getattr(owner, name):
            return
        raise ConfigError(f"{path} cannot be changed; start from a preset of the other family instead")
    if owner is cfg and name == "model":
        new = value
    else:
        new = _coerce(_hints(type(owner))[name], value, path)
    # Walk back up: frozen dataclasses get a replaced copy, mutable ones are set in place.
    for depth in range(len(chain) - 1, -1, -1):
        owner, name = chain[depth], parts[depth]
        if owner.__dataclass_params__.frozen:
            try:
                new = dataclasses.replace(owner, **{name: new})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{path}: {e}") from None
            continue
        setattr(owner, name, new)
        return


def parse_overrides(items) -> dict:
    """``--params_override`` values, 'a.b=1,c.d=[1, 2]' (one or several strings) -> {dotted path: value}, each value
    read as YAML; commas inside brackets do not split. ConfigError names a part that is not path=value."""
    import yaml

    out = {}
    for item in ([items] if isinstance(items, str) else items):
        for part in _split_top_level(item):
            if "=" not in part:
                raise ConfigError(f"--params_override={item}: '{part}' is not path=value")
            path, text = (t.strip() for t in part.split("=", 1))
            try:
                out[path] = yaml.safe_load(text) if text else ""
            except yaml.YAMLError:
                raise ConfigError(f"--params_override={item}: cannot read the value of {path}: {text!r}") from None
    return out


def _split_top_level(text: str) -> list:
    """Splits at commas outside brackets ('a=[1, 2],b=3' -> ['a=[1, 2]', 'b=3'])."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def merge(cfg: Config, overrides: dict, path: str = "") -> Config:
    """Applies a nested mapping of values onto ``cfg`` (in place; returns it). A mapping value for a nested
    config part merges into it; anything else replaces the field."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {overrides!r}")
    for key, value in overrides.items():
        sub = f"{path}.{key}" if path else str(key)
        if sub in ("version", "model.family", "model.name"):
            continue
        current = get_value(cfg, sub)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            if current.__dataclass_params__.frozen:
                set_value(cfg, sub, {**to_dict(current), **value})
            else:
                merge(cfg, value, sub)
        else:
            set_value(cfg, sub, value)
    return cfg


# ----------------------------------------------------------------------------------------------- files
def read_config_file(path: str) -> dict:
    """A config file as a nested dict: JSON (``.json``) or YAML (``.yaml``/``.yml``, the subset of plain
    mappings, lists, strings, numbers, booleans and null). Errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: invalid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def save(cfg: Config, model_dir: str) -> str:
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cfg.to_json())
    os.replace(tmp, path)
    return path


def load(model_dir: str) -> Config:
    """``model_dir/config.json`` as trained (a version-1 file is migrated; see the module docstring)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: '{model_dir}' holds no trained model (run --mode=train first)")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} line {e.lineno}: invalid JSON ({e.msg})") from None
    try:
        if d.get("version", 1) == 1:
            return from_v1(d)
        return from_dict(_with_fields_added_later(d))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _with_fields_added_later(d: dict) -> dict:
    """A saved model section without a field its family's config added later (``fields_added_later``) gets the
    value that reproduces how it was trained, not today's default (e.g. a Faster R-CNN run from before fitted
    canvases resumes on its two orientation canvases, so its data order and resume stay exact)."""
    model = d.get("model")
    cls = _families().get(model.get("family")) if isinstance(model, dict) else None
    added = {k: v for k, v in getattr(cls, "fields_added_later", {}).items() if k not in model}
    return {**d, "model": {**model, **added}} if added else d


# Version-1 fields that moved into the model config (or were renamed).
_V1_MOVES = {
    ("train", "loss_normalization"): "model.loss_normalization",
    ("train", "resnet_checkpoint"): "train.backbone_checkpoint",
    ("eval", "score_threshold"): "model.postprocess.score_threshold",
    ("eval", "nms_iou_threshold"): "model.postprocess.iou_threshold",
    ("eval", "max_candidates_per_class"): "model.postprocess.max_candidates_per_class",
    ("eval", "max_detections"): "model.postprocess.max_detections",
}


def from_v1(d: dict) -> Config:
    """A version-1 ``config.json``: its model section named a preset; everything else was recorded."""
    from ssd_tf import presets

    d = copy.deepcopy(d)
    model = d.get("model", {})
    cfg = presets.preset(model.get("name", "ssd_resnet34"))
    for key in ("num_classes", "width_multiplier"):
        if key in model:
            set_value(cfg, f"model.{key}", model[key])
    for (section, key), target in _V1_MOVES.items():
        value = d.get(section, {}).pop(key, None)
        if value is not None:
            set_value(cfg, target, value)
    augmentation = d.get("data", {}).pop("augmentation", "auto")
    if augmentation not in (None, "auto"):
        from ssd_tf.model_configs.ssd import AUGMENTATIONS

        cfg.model.augmentation = AUGMENTATIONS[augmentation]
    for section in _SECTIONS:
        merge(cfg, d.get(section, {}), section)
    return validate(cfg)
