"""Convert a PyTorch state dict into a Keras ``.weights.h5`` for one of the package's models.

python -m ssd_tf.weights.convert --source {torchvision_ssd300_vgg16,ssd_pytorch,ssd_pytorch_vgg16_reducedfc,
    torchvision_resnet34,torchvision_ssd_resnet34,mlperf_ssd_r34,torchvision_fasterrcnn_resnet50_fpn,
    torchvision_resnet50,torchvision_resnet101} --input FILE.pth --output FILE.weights.h5 [--model NAME]
    [--num_classes N]

Backbone-only sources (ssd_pytorch_vgg16_reducedfc, torchvision_resnet34, torchvision_resnet50/101) leave the
other layers at their initialisation and say so. The output loads with
``ssd_tf.build_model(model, num_classes, weights=FILE)``.
"""
import argparse
import json
import pathlib
import sys

# source -> (importer module, function, default preset, backbone only, which model configs it fits)
_VGG = lambda m: m.family == "ssd" and m.backbone == "vgg16_reduced_fc"  # noqa: E731
_R34 = lambda m: m.family == "ssd" and m.backbone == "resnet34_mlperf"  # noqa: E731
_FRCNN = lambda m: m.family == "faster_rcnn" and not m.backbone.stride_in_1x1  # noqa: E731 (torchvision v1.5 blocks)
_R50 = lambda m: _FRCNN(m) and m.backbone.depth == 50  # noqa: E731
_R101 = lambda m: _FRCNN(m) and m.backbone.depth == 101  # noqa: E731
SOURCES = {
    "torchvision_ssd300_vgg16": ("torchvision", "load_torchvision_ssd300_vgg16", "ssd_vgg16", False, _VGG),
    "ssd_pytorch": ("ssd_pytorch", "load_ssd_pytorch", "ssd_vgg16_voc", False, _VGG),
    "ssd_pytorch_vgg16_reducedfc": ("ssd_pytorch", "load_ssd_pytorch_vgg16_reducedfc", "ssd_vgg16_voc", True, _VGG),
    "torchvision_resnet34": ("torchvision", "load_torchvision_resnet34", "ssd_resnet34", True, _R34),
    "torchvision_ssd_resnet34": ("torchvision", "load_torchvision_ssd_resnet34", "ssd_resnet34", False, _R34),
    "mlperf_ssd_r34": ("mlperf", "load_mlperf_ssd_r34", "ssd_resnet34", False, _R34),
    # torchvision FasterRCNN on resnet_fpn_backbone; --model faster_rcnn_r101_fpn reads the same layout at depth 101
    "torchvision_fasterrcnn_resnet50_fpn": ("torchvision_frcnn", "load_torchvision_fasterrcnn",
                                            "faster_rcnn_r50_fpn", False, _FRCNN),
    "torchvision_resnet50": ("torchvision_frcnn", "load_torchvision_resnet", "faster_rcnn_r50_fpn", True, _R50),
    "torchvision_resnet101": ("torchvision_frcnn", "load_torchvision_resnet", "faster_rcnn_r101_fpn", True, _R101),
}


def _fits(model_config, fits) -> bool:
    return bool(fits(model_config))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ssd_tf.weights.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--input", required=True, type=pathlib.Path, help="PyTorch state dict (.pth)")
    parser.add_argument("--output", required=True, type=pathlib.Path, help="Keras weights file (*.weights.h5)")
    parser.add_argument("--model", default=None, help="model preset (default depends on --source)")
    parser.add_argument("--num_classes", type=int, default=None, help="classes incl. background (preset default)")
    return parser.parse_args(argv)


def convert(source, input_path, output_path, model_name=None, num_classes=None):
    """Build the model, import ``input_path`` into it, save ``output_path``; returns the import report."""
    import importlib

    from ssd_tf import presets
    from ssd_tf.models.factory import build_from_config

    module_name, function, default_model, backbone_only, fits = SOURCES[source]
    model_name = model_name or default_model
    model_config = presets.model_config(model_name, **({} if num_classes is None else {"num_classes": num_classes}))
    if not _fits(model_config, fits):
        compatible = [p for p in presets.PRESETS if _fits(presets.preset(p).model, fits)]
        raise ValueError(f"--source {source} fits models {tuple(compatible)}, not --model {model_name}")
    if not str(output_path).endswith(".weights.h5"):
        raise ValueError(f"--output must end with .weights.h5 (Keras 3 weights file), got {output_path}")
    if not pathlib.Path(input_path).is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    model = build_from_config(model_config)
    loader = getattr(importlib.import_module(f"ssd_tf.weights.{module_name}"), function)
    report = loader(model, str(input_path))
    pathlib.Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(output_path))
    report = dict(report, model=model_name, num_classes=model_config.num_classes, backbone_only=backbone_only,
                  output=str(output_path))
    return report


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = convert(args.source, args.input, args.output, args.model, args.num_classes)
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
