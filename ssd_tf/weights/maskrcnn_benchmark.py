"""Importers of maskrcnn-benchmark checkpoints and Detectron (Caffe2) ImageNet backbones into the Faster R-CNN
models (``ssd_tf.models.faster_rcnn``) built with maskrcnn-benchmark's conventions (preset ``faster_rcnn_r101_fpn``).

* ``load_maskrcnn_benchmark`` -- a maskrcnn-benchmark ``GeneralizedRCNN`` Faster R-CNN R-50/101-FPN checkpoint
  (e.g. the model zoo's ``e2e_faster_rcnn_R_101_FPN_1x.pth``): a dict whose ``model`` entry is the state dict (a
  bare state dict also works), keys possibly prefixed ``module.`` (saved from DistributedDataParallel). Read with
  ``torch.load(weights_only=True)``. Names (REFERENCE_SPECS §3.10): ``backbone.body.stem.{conv1,bn1}``,
  ``backbone.body.layer{1..4}.{i}.{conv1..3,bn1..3,downsample.{0,1}}``, ``backbone.fpn.fpn_{inner,layer}{1..4}``
  (1 = C2), ``rpn.head.{conv,cls_logits,bbox_pred}``, ``roi_heads.box.feature_extractor.{fc6,fc7}``,
  ``roi_heads.box.predictor.{cls_score,bbox_pred}``. The buffers ``rpn.anchor_generator.cell_anchors.{0..4}`` are
  not weights: they are checked against the model's own cell anchors (a checkpoint made with other anchors is an
  error) and not imported.
* ``load_detectron_resnet`` -- Detectron's ImageNet ``R-50.pkl`` / ``R-101.pkl`` (MSRA, BGR) as the backbone only:
  a pickled dict of numpy arrays, possibly under ``blobs``, with Caffe2 names: ``conv1_w``, ``res_conv1_bn_{s,b}``,
  ``res{2..5}_{i}_branch2{a,b,c}_w`` and ``..._bn_{s,b}``, ``res{n}_0_branch1_w`` (projection) and its ``_bn_{s,b}``.
  A Caffe2 "BN" is an affine channel op, y = x * s + b; it goes into our FrozenBatchNorm as gamma = s, beta = b,
  mean 0 and variance 1 - epsilon, so that gamma / sqrt(var + epsilon) = s exactly. ``fc1000_*`` (the classifier)
  and ``*_momentum`` (solver state; maskrcnn-benchmark skips these too) are left out. The file is read by
  ``load_numpy_pickle``, which never runs pickled code.

Layouts as torchvision's (REFERENCE_SPECS §4): conv OIHW -> HWIO, linear [out, in] -> [in, out], box-delta channels
(dx, dy, dw, dh) -> (dy, dx, dh, dw), fc6's input from C x 7 x 7 to 7 x 7 x C. Strict: a missing, unexpected or
mis-shaped tensor is an error naming it and both shapes; nothing is assigned unless everything fits.
"""
from __future__ import annotations

import pickle

import numpy as np

from ssd_tf.weights.common import (
    FlatView,
    WeightImportError,
    assign_state_dict,
    conv_kernel,
    describe_source,
    identity,
    load_torch_state_dict,
)
from ssd_tf.weights.torchvision_frcnn import fpn_and_heads_mapping, resnet_body_mapping

CELL_ANCHORS_KEY = "rpn.anchor_generator.cell_anchors.{}"


# ------------------------------------------------------------------------------------------------------------------
# maskrcnn-benchmark checkpoints
# ------------------------------------------------------------------------------------------------------------------

def _resnet_blocks(depth):
    from ssd_tf.models.backbones.resnet_fpn import RESNET_BLOCKS

    if depth not in RESNET_BLOCKS:
        raise WeightImportError(f"no ResNet-{depth} layout")
    return RESNET_BLOCKS[depth]


def maskrcnn_benchmark_mapping(model):
    """Our layers <- maskrcnn-benchmark module names (the whole Faster R-CNN; its FPN counts from 1)."""
    body = "backbone.body."
    mapping = resnet_body_mapping(model.cfg.backbone.depth, body, stem_prefix=f"{body}stem.")
    mapping.update(fpn_and_heads_mapping(
        model, fpn_inner="backbone.fpn.fpn_inner{n}", fpn_layer="backbone.fpn.fpn_layer{n}",
        rpn_conv="rpn.head.conv", box_head="roi_heads.box.feature_extractor", box_predictor="roi_heads.box.predictor"))
    return mapping


def strip_module_prefix(state):
    """Keys saved from DistributedDataParallel (``module.``) without the prefix; both spellings is an error."""
    out = {}
    for key, value in state.items():
        new = key[len("module."):] if key.startswith("module.") else key
        if new in out:
            raise WeightImportError(f"state dict holds both {new!r} and 'module.{new}' for one tensor")
        out[new] = value
    return out


def model_cell_anchors_xyxy(model):
    """The model's cell anchors per level as maskrcnn-benchmark stores them: [A, 4] xyxy, ratio-major."""
    from ssd_tf.ops.grid_anchors import cell_anchors

    spec = model.cfg.anchors
    out = []
    for size, stride in zip(spec.sizes, spec.strides):
        yxyx = cell_anchors(size, spec.aspect_ratios, spec.style, stride)
        out.append(yxyx[:, [1, 0, 3, 2]])
    return out


def check_cell_anchors(model, state, where):
    """Compares ``rpn.anchor_generator.cell_anchors.{l}`` (when present) with the model's anchors; returns the keys
    checked. A difference is an error: the checkpoint's RPN was trained on other anchors."""
    checked, errors = [], []
    expected = model_cell_anchors_xyxy(model)
    for level, ours in enumerate(expected):
        key = CELL_ANCHORS_KEY.format(level)
        if key not in state:
            continue
        checked.append(key)
        theirs = np.asarray(state[key], np.float64)
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, atol=1e-4):
            errors.append(f"{key} {theirs.shape} {np.round(theirs, 2).tolist()} differs from the model's cell "
                          f"anchors {ours.shape} {ours.tolist()} (model.anchors: style {model.cfg.anchors.style!r}, "
                          f"sizes {model.cfg.anchors.sizes}, aspect ratios {model.cfg.anchors.aspect_ratios})")
    extra = sorted(k for k in state if k.startswith("rpn.anchor_generator.") and k not in checked)
    errors.extend(f"unexpected tensor {k!r} shape {tuple(np.shape(state[k]))} in {where}" for k in extra)
    if errors:
        raise WeightImportError(f"cannot load {where} into {model.name}:\n  " + "\n  ".join(errors))
    return checked


def load_maskrcnn_benchmark(model, source):
    """maskrcnn-benchmark Faster R-CNN FPN checkpoint (path or mapping) -> a FasterRCNN model (module docstring)."""
    depth = model.cfg.backbone.depth
    where = describe_source(f"maskrcnn-benchmark e2e_faster_rcnn_R_{depth}_FPN checkpoint", source)
    state = strip_module_prefix(load_torch_state_dict(source))
    anchors = check_cell_anchors(model, state, where)
    weights = {k: v for k, v in state.items() if k not in anchors}
    report = assign_state_dict(FlatView(model), weights, maskrcnn_benchmark_mapping(model), where=where)
    return dict(report, checked_cell_anchors=len(anchors))


# ------------------------------------------------------------------------------------------------------------------
# Detectron ImageNet backbones (pickled numpy arrays)
# ------------------------------------------------------------------------------------------------------------------

def _numpy_module(name):
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    return getattr(core, name)


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as pickles of bytes at protocol < 3 use it (str -> latin-1 bytes), and nothing else."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1") \
            or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}, {errors!r}): only "
                                     f"latin-1 text (bytes in an old pickle) is decoded")
    return text.encode("latin1")


def _allowed_globals():
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers (dict, list, tuple, str, numbers) and numpy arrays, dtypes and scalars; any other
    global a pickle names (a function to call, a class to build) is refused when it is looked up, before anything
    is called. Python-2 pickles (Detectron's) are read with latin-1 strings, as numpy needs."""

    def __init__(self, file, source="pickle"):
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refused to load {module}.{name}: a weights pickle may only hold numpy arrays, so "
                f"this file was not read (nothing in it was run)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self._source}: refused a persistent id ({pid!r}); nothing in it was run")


def load_numpy_pickle(path):
    """The object in pickle file ``path``, read with ``NumpyOnlyUnpickler`` (never runs pickled code).
    A refused pickle raises ``WeightImportError`` naming the file and what it tried to load."""
    with open(path, "rb") as f:
        try:
            return NumpyOnlyUnpickler(f, source=str(path)).load()
        except pickle.UnpicklingError as err:
            raise WeightImportError(str(err)) from None
        except (EOFError, ValueError, TypeError) as err:
            raise WeightImportError(f"{path}: not a readable weights pickle ({type(err).__name__}: {err})") from None


def detectron_blobs(source):
    """``{name: float32 array}`` of a Detectron weights pickle (path or mapping), unwrapping ``blobs``."""
    data = source if isinstance(source, dict) else load_numpy_pickle(source)
    if not isinstance(data, dict):
        raise WeightImportError(f"{source}: expected a dict of numpy arrays, got {type(data).__name__}")
    blobs = data["blobs"] if isinstance(data.get("blobs"), dict) else data
    out = {}
    for key, value in blobs.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise WeightImportError(f"{source}: entry {key!r} is not a numeric numpy array ({type(value).__name__})")
        out[str(key)] = value.astype(np.float32, copy=False)
    return out


def _affine_bn_entries(layer, prefix):
    """FrozenBatchNorm (or BatchNormalization) <- a Caffe2 affine channel ``prefix_s`` / ``prefix_b``: gamma = s,
    beta = b, mean 0, variance 1 - epsilon (so that gamma / sqrt(variance + epsilon) = s)."""
    epsilon = float(getattr(layer, "epsilon", 0.0))
    if not 0.0 <= epsilon < 1.0:
        raise WeightImportError(f"{layer.name}: epsilon {epsilon} leaves no variance that keeps the scale exact")
    return [(f"{prefix}_s", identity), (f"{prefix}_b", identity),
            (f"{prefix}_s", lambda s: np.zeros_like(s)),
            (f"{prefix}_s", lambda s: np.full_like(s, 1.0 - epsilon))]


def detectron_resnet_mapping(model):
    """Our backbone body layers <- Detectron blob names (``res2`` = our layer1)."""
    layers = {layer.name: layer for layer in FlatView(model).layers}
    mapping = {"conv1": [("conv1_w", conv_kernel)], "bn1": _affine_bn_entries(layers["bn1"], "res_conv1_bn")}
    for stage, blocks in enumerate(_resnet_blocks(model.cfg.backbone.depth), start=1):
        for block in range(blocks):
            ours, theirs = f"layer{stage}_{block}", f"res{stage + 1}_{block}"
            branches = [(f"conv{i}", f"bn{i}", f"branch2{b}") for i, b in zip((1, 2, 3), "abc")]
            if block == 0:
                branches.append(("downsample_conv", "downsample_bn", "branch1"))
            for conv, bn, branch in branches:
                mapping[f"{ours}_{conv}"] = [(f"{theirs}_{branch}_w", conv_kernel)]
                mapping[f"{ours}_{bn}"] = _affine_bn_entries(layers[f"{ours}_{bn}"], f"{theirs}_{branch}_bn")
    return mapping


def load_detectron_resnet(model, source):
    """Detectron ``R-50.pkl`` / ``R-101.pkl`` (path or dict of arrays) -> the ResNet body of a FasterRCNN model;
    FPN and heads keep their initialisation."""
    depth = model.cfg.backbone.depth
    return assign_state_dict(
        FlatView(model), detectron_blobs(source), detectron_resnet_mapping(model),
        skip_layers=(r"^fpn_(inner|layer)\d$", r"^rpn_", r"^(fc6|fc7|cls_score|bbox_pred)$"),
        ignore_keys=(r"^fc1000_[wb]$", r"_momentum$"),
        where=describe_source(f"Detectron R-{depth} ImageNet weights", source))
