"""Convert reference weights (PyTorch state dicts, Detectron pickles) into a Keras ``.weights.h5`` for one of the
package's models.

python -m ssd_tf.weights.convert --source {torchvision_ssd300_vgg16,ssd_pytorch,ssd_pytorch_vgg16_reducedfc,
    torchvision_resnet34,torchvision_ssd_resnet34,mlperf_ssd_r34,torchvision_fasterrcnn_resnet50_fpn,
    torchvision_resnet50,torchvision_resnet101,maskrcnn_benchmark,detectron_resnet50,detectron_resnet101}
    --input FILE --output FILE.weights.h5 [--model NAME] [--num_classes N] [--params_override PATH=VALUE,...]

Backbone-only sources (ssd_pytorch_vgg16_reducedfc, torchvision_resnet34, torchvision_resnet50/101,
detectron_resnet50/101) leave the other layers at their initialisation and say so. ``--params_override`` sets model
config values by dotted path as ``ssd_main.py`` does (``model.backbone.depth=101``); each source says which model
configs it fits. The output loads with ``ssd_tf.build_model(model, num_classes, weights=FILE)`` (with the same
overrides as model options) or ``ssd_main.py --backbone_checkpoint=FILE`` / ``--checkpoint=FILE``.
"""
import argparse
import json
import pathlib
import sys
from typing import Callable, NamedTuple


class Source(NamedTuple):
    module: str  # ssd_tf.weights.<module>
    function: str  # its loader: function(model, input_path) -> report
    model: str  # default preset ...
    overrides: dict  # ... and model config values set on it (dotted paths under model.)
    backbone_only: bool
    fits: Callable  # model config -> bool
    fits_text: str  # what fits, for the error message


_VGG = lambda m: m.family == "ssd" and m.backbone == "vgg16_reduced_fc"  # noqa: E731
_R34 = lambda m: m.family == "ssd" and m.backbone == "resnet34_mlperf"  # noqa: E731
_FRCNN = lambda m: m.family == "faster_rcnn" and not m.backbone.stride_in_1x1  # noqa: E731 (torchvision v1.5 blocks)
_MSRA = lambda m: m.family == "faster_rcnn" and m.backbone.stride_in_1x1  # noqa: E731 (MSRA blocks: stride on 1x1)
_TV_FRCNN = "Faster R-CNN with torchvision's bottleneck (model.backbone.stride_in_1x1=false)"
_MRB_FRCNN = "Faster R-CNN with the MSRA bottleneck (model.backbone.stride_in_1x1=true)"


def _depth(fits, depth):
    return lambda m: fits(m) and m.backbone.depth == depth


SOURCES = {
    "torchvision_ssd300_vgg16": Source("torchvision", "load_torchvision_ssd300_vgg16", "ssd_vgg16", {}, False, _VGG,
                                       "SSD-VGG16"),
    "ssd_pytorch": Source("ssd_pytorch", "load_ssd_pytorch", "ssd_vgg16_voc", {}, False, _VGG, "SSD-VGG16"),
    "ssd_pytorch_vgg16_reducedfc": Source("ssd_pytorch", "load_ssd_pytorch_vgg16_reducedfc", "ssd_vgg16_voc", {},
                                          True, _VGG, "SSD-VGG16"),
    "torchvision_resnet34": Source("torchvision", "load_torchvision_resnet34", "ssd_resnet34", {}, True, _R34,
                                   "SSD-ResNet34"),
    "torchvision_ssd_resnet34": Source("torchvision", "load_torchvision_ssd_resnet34", "ssd_resnet34", {}, False,
                                       _R34, "SSD-ResNet34"),
    "mlperf_ssd_r34": Source("mlperf", "load_mlperf_ssd_r34", "ssd_resnet34", {}, False, _R34, "SSD-ResNet34"),
    # torchvision FasterRCNN on resnet_fpn_backbone; the same layout at depth 101 with model.backbone.depth=101
    "torchvision_fasterrcnn_resnet50_fpn": Source("torchvision_frcnn", "load_torchvision_fasterrcnn",
                                                  "faster_rcnn_r50_fpn", {}, False, _FRCNN, _TV_FRCNN),
    "torchvision_resnet50": Source("torchvision_frcnn", "load_torchvision_resnet", "faster_rcnn_r50_fpn", {}, True,
                                   _depth(_FRCNN, 50), _TV_FRCNN + " at depth 50"),
    "torchvision_resnet101": Source("torchvision_frcnn", "load_torchvision_resnet", "faster_rcnn_r50_fpn",
                                    {"backbone.depth": 101}, True, _depth(_FRCNN, 101), _TV_FRCNN + " at depth 101"),
    # maskrcnn-benchmark e2e_faster_rcnn_R_{50,101}_FPN checkpoints and Detectron's ImageNet pickles
    "maskrcnn_benchmark": Source("maskrcnn_benchmark", "load_maskrcnn_benchmark", "faster_rcnn_r101_fpn", {}, False,
                                 _MSRA, _MRB_FRCNN),
    "detectron_resnet50": Source("maskrcnn_benchmark", "load_detectron_resnet", "faster_rcnn_r101_fpn",
                                 {"backbone.depth": 50}, True, _depth(_MSRA, 50), _MRB_FRCNN + " at depth 50"),
    "detectron_resnet101": Source("maskrcnn_benchmark", "load_detectron_resnet", "faster_rcnn_r101_fpn", {}, True,
                                  _depth(_MSRA, 101), _MRB_FRCNN + " at depth 101"),
}


def _fits(model_config, fits) -> bool:
    return bool(fits(model_config))


def model_config_for(source, model_name=None, num_classes=None, overrides=None):
    """The model config a conversion builds: ``model_name`` (default: the source's preset and its overrides) with
    ``overrides`` ({dotted path: value}, paths under ``model.``) and ``num_classes`` applied. ValueError when the
    source does not fit it."""
    from ssd_tf import config as config_lib
    from ssd_tf import presets

    spec = SOURCES[source]
    values = {} if model_name else {f"model.{k}": v for k, v in spec.overrides.items()}
    values.update(overrides or {})
    if num_classes is not None:
        values["model.num_classes"] = num_classes
    model_name = model_name or spec.model
    cfg = presets.preset(model_name)
    for path, value in values.items():
        if not path.startswith("model."):
            raise ValueError(f"--params_override {path}: only model values (model....) matter to a conversion")
        config_lib.set_value(cfg, path, value)
    model_config = config_lib.validate(cfg).model
    if not _fits(model_config, spec.fits):
        compatible = [p for p in presets.PRESETS if _fits(presets.preset(p).model, spec.fits)]
        given = f"--model {model_name}" + (f" with {values}" if values else "")
        if compatible:
            raise ValueError(f"--source {source} fits models {tuple(compatible)} ({spec.fits_text}), not {given}")
        example = ",".join(f"model.{k}={v}" for k, v in spec.overrides.items())
        raise ValueError(f"--source {source} fits {spec.fits_text} (e.g. --model {spec.model} --params_override "
                         f"{example}, the default), not {given}")
    return model_config


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ssd_tf.weights.convert",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))  # first paragraph
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--input", required=True, type=pathlib.Path,
                        help="PyTorch state dict / checkpoint (.pth), or a Detectron weights pickle (.pkl)")
    parser.add_argument("--output", required=True, type=pathlib.Path, help="Keras weights file (*.weights.h5)")
    parser.add_argument("--model", default=None, help="model preset (default depends on --source)")
    parser.add_argument("--num_classes", type=int, default=None, help="classes incl. background (preset default)")
    parser.add_argument("--params_override", action="append", default=[],
                        help="model config values by dotted path, e.g. model.backbone.depth=101 (repeatable)")
    return parser.parse_args(argv)


def convert(source, input_path, output_path, model_name=None, num_classes=None, overrides=None):
    """Build the model, import ``input_path`` into it, save ``output_path``; returns the import report.
    ``overrides``: {dotted path under model.: value} (see ``model_config_for``)."""
    import importlib

    from ssd_tf.models.factory import build_from_config

    spec = SOURCES[source]
    model_config = model_config_for(source, model_name, num_classes, overrides)
    if not str(output_path).endswith(".weights.h5"):
        raise ValueError(f"--output must end with .weights.h5 (Keras 3 weights file), got {output_path}")
    if not pathlib.Path(input_path).is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    model = build_from_config(model_config)
    loader = getattr(importlib.import_module(f"ssd_tf.weights.{spec.module}"), spec.function)
    report = loader(model, str(input_path))
    pathlib.Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(output_path))
    report = dict(report, model=model_name or spec.model, num_classes=model_config.num_classes,
                  backbone_only=spec.backbone_only, output=str(output_path))
    if getattr(model_config, "family", "") == "faster_rcnn":
        report["backbone_depth"] = model_config.backbone.depth
    return report


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from ssd_tf.config import parse_overrides

        report = convert(args.source, args.input, args.output, args.model, args.num_classes,
                         parse_overrides(args.params_override))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report["backbone_only"]:
        print(f"note: backbone-only source; {len(report['skipped_layers'])} layers keep their initialisation",
              file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "skipped_layers"} |
                     {"skipped_layers": len(report["skipped_layers"])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
