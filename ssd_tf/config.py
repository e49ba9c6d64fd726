"""Run configuration: one dataclass tree per run, built from a named preset and overridden by flags.

`config.json` in the model directory is the tree as trained; `eval` reads it back, so a model
directory describes itself. Preset values come from the references (REFERENCE_SPECS.md):

* ``ssd_resnet34``: MLPerf SSD-ResNet34 model; recipe of the seed's Ascend port — base LR 3e-3 per 32
  images, linear warmup 0.8 epochs, cosine decay to alpha 0.01, weight decay 5e-4 (coupled L2 on every
  parameter), momentum 0.9, per-image loss normalisation, MLPerf post-processing.
* ``ssd_vgg16``: torchvision ``ssd300_vgg16`` model; 2e-3 per 64 images, multistep (x0.1 at 2/3 and
  11/12 of training, torchvision's 80/110 of 120 epochs), 60,000 iterations, per-batch normalisation.
* ``ssd_vgg16_voc``: ssd.pytorch's VOC model and recipe: 1e-3 per 32 images, x0.1 at 80k and 100k of
  120k iterations.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

PRESETS = ("ssd_resnet34", "ssd_vgg16", "ssd_vgg16_voc")


@dataclasses.dataclass
class ModelConfig:
    name: str = "ssd_resnet34"
    num_classes: int = 0  # 0: 1 + the number of classes in the label map
    width_multiplier: float = 1.0  # scales every channel count; 1.0 is the reference model


@dataclasses.dataclass
class DataConfig:
    training_file_pattern: str = ""
    validation_file_pattern: str = ""
    val_json_file: str = ""
    label_map: str = ""  # file; empty: the converter's sidecar beside the shards
    class_ids: list = dataclasses.field(default_factory=list)  # dataset ids, contiguous id = index + 1
    class_names: list = dataclasses.field(default_factory=list)
    num_train_images: int = 0  # epoch length; 0: from the sidecar
    max_boxes: int = 100
    shuffle_buffer: int = 1024
    augmentation: str = "auto"


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
    loss_normalization: str = "per_image"  # per_image (MLPerf) | per_batch (torchvision, ssd.pytorch)
    precision: str = "fp32"  # fp32 | fp16 | bf16
    xla: bool = False
    steps_per_loop: int = 10
    log_every_steps: int = 10
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 5
    seed: int = 0
    resnet_checkpoint: str = ""


@dataclasses.dataclass
class EvalConfig:
    eval_batch_size: int = 8
    eval_every_epochs: float = 0.0  # 0: only at the end of train_and_eval
    eval_backend: str = "faster"  # faster | pycocotools
    eval_metric: str = "coco"  # coco | voc07 | voc
    eval_steps: int = 0  # 0: the whole validation set
    score_threshold: Optional[float] = None  # None: the preset's reference value
    nms_iou_threshold: Optional[float] = None
    max_candidates_per_class: Optional[int] = None
    max_detections: Optional[int] = None


@dataclasses.dataclass
class RuntimeConfig:
    model_dir: str = ""
    strategy: str = "auto"
    num_devices: int = 0
    sync_batchnorm: bool = False


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def override(self, section: str, **values) -> "Config":
        """Sets fields of one section; unknown names are an error naming them."""
        sec = getattr(self, section)
        known = {f.name for f in dataclasses.fields(sec)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config section '{section}' has no field(s) {unknown}; known: {sorted(known)}")
        for k, v in values.items():
            setattr(sec, k, v)
        return self


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig,
             "runtime": RuntimeConfig}


def preset(name: str) -> Config:
    """The reference recipe for a model preset (see the module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    cfg = Config(model=ModelConfig(name=name))
    if name == "ssd_resnet34":
        cfg.train = TrainConfig()
    elif name == "ssd_vgg16":
        cfg.train = TrainConfig(base_learning_rate=2e-3, lr_reference_batch=64, lr_schedule="multistep",
                                warmup_epochs=0.0, warmup_steps=1000, warmup_start_factor=1e-3,
                                lr_boundaries=[2 / 3, 11 / 12], train_steps=60000,
                                loss_normalization="per_batch")
    elif name == "ssd_vgg16_voc":
        cfg.train = TrainConfig(base_learning_rate=1e-3, lr_reference_batch=32, lr_schedule="multistep",
                                warmup_epochs=0.0, warmup_steps=0, lr_boundaries=[80000, 100000],
                                train_steps=120000, loss_normalization="per_batch")
    return cfg


def from_dict(d: dict) -> Config:
    cfg = Config()
    for section, cls in _SECTIONS.items():
        values = d.get(section, {})
        known = {f.name for f in dataclasses.fields(cls)}
        setattr(cfg, section, cls(**{k: v for k, v in values.items() if k in known}))
    return cfg


def save(cfg: Config, model_dir: str) -> str:
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cfg.to_json())
    os.replace(tmp, path)
    return path


def load(model_dir: str) -> Config:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: '{model_dir}' holds no trained model (run --mode=train first)")
    with open(path) as f:
        return from_dict(json.load(f))
