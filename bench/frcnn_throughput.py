"""Faster R-CNN R50-FPN throughput on this machine, ours against torchvision's in the same invocation. Prints one
JSON object on stdout (logs go to stderr).

    python bench/frcnn_throughput.py [--steps 3] [--warmup 1] [--precision fp32|bf16|both] [--xla] [--skip-torch]
        [--train-size 512x512] [--train-batch 8] [--infer-size 512x512] [--infer-batch 8]
        [--large-size 800x1216] [--large-batch 1] [--threads N] [--width 1.0]

Measured, for each precision of ours (fp32; bf16 = the ``mixed_bfloat16`` policy) and of torchvision (fp32;
bf16 = ``torch.autocast("cpu", torch.bfloat16)``; each also with the model in ``channels_last``): a training step
(forward, the four losses, backward, SGD with momentum 0.9 and weight decay 1e-4) at ``--train-size`` x
``--train-batch``, and inference with post-processing at ``--infer-size`` x ``--infer-batch`` and ``--large-size``
x ``--large-batch``, in images/s; then the best mode of each side and our best / their best per workload.

Both models are configured alike: ResNet-50 FPN, 91 classes, FrozenBatchNorm, trainable_backbone_layers=3 (conv1
and layer1 frozen), RPN 2000/2000 train and 1000/1000 test proposals, 512 RoIs per image in training
(torchvision: ``FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3))``, which is what
``fasterrcnn_resnet50_fpn`` builds with a pretrained backbone, without downloading one; its transform's min/max
size equal the input so it does not resize). They run the same random weights (made by the torchvision child so
that the RPN proposes and detections pass 0.05, see ``working_random_weights``, and imported into ours) on the
same synthetic inputs, so both do the same work; the JSON lists proposals and detections per image of each.
Inference is measured before training (the steps change the weights). torchvision runs in a child process (torch
and TensorFlow do not share one process well), before TensorFlow is imported here.

Also reported: CPU model and ISA flags, a 3x3 convolution's GFLOP/s (256 -> 256 channels on 8 x 64 x 64, forward
and forward + backward, fp32 and bf16) as the machine's reachable rate, our achieved GFLOP/s (2 FLOPs per MAC of
every Conv2D / MatMul: the dense part plus the box head on the valid proposals (inference) or on 512 RoIs per image
(training, counted as forward + 2 x the forward of the trainable part)), and the inference time split
(backbone + FPN, RPN head + proposals, RoIAlign, box head, post-processing), each part timed on its own inputs.
The machine may be shared: smoke-run with ``--steps 1`` and small sizes; compare figures from one quiet sitting.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
sys.modules.setdefault("triton", None)  # torch's triton clashes with TF's LLVM; the CPU paths do not need it

from timing import timed  # noqa: E402

NUM_CLASSES = 91


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_size(text):
    h, w = (int(v) for v in text.lower().split("x"))
    if h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 32, got {text}")
    return h, w


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before each measurement")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    p.add_argument("--xla", action="store_true", help="jit-compile our dense part (backbone, FPN, RPN head); on "
                   "the AMX dev CPU this halved bf16 throughput (XLA does not use oneDNN's convolutions)")
    p.add_argument("--skip-torch", action="store_true", help="do not run torchvision")
    p.add_argument("--train-size", type=parse_size, default=(512, 512))
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--infer-size", type=parse_size, default=(512, 512))
    p.add_argument("--infer-batch", type=int, default=8)
    p.add_argument("--large-size", type=parse_size, default=(800, 1216))
    p.add_argument("--large-batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of both frameworks")
    p.add_argument("--width", type=float, default=1.0, help="our width multiplier (1.0 = the reference model; "
                   "torchvision always runs full width, so ratios are only meaningful at 1.0)")
    p.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weights-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def workloads(args):
    """Inference first: the training steps change the weights."""
    return [("infer", args.infer_size, args.infer_batch), ("infer_large", args.large_size, args.large_batch),
            ("train", args.train_size, args.train_batch)]


def cpu_info():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(),
            "isa": {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
                    "amx": any(f.startswith("amx") for f in flags),
                    "amx_flags": sorted(f for f in flags if f.startswith("amx"))}}


def synthetic_images(name, batch, height, width):
    """NHWC float32 images, unit variance, varying over ~8 pixels; the same on both sides (seeded by workload)."""
    import numpy as np

    rng = np.random.default_rng(sum(map(ord, name)))
    coarse = rng.normal(size=(batch, -(-height // 8), -(-width // 8), 3)).astype("float32")
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width])


def synthetic_targets(batch, height, width, boxes_per_image=8):
    """yxyx pixel boxes and classes in 1..90, the same on both sides."""
    import numpy as np

    rng = np.random.default_rng(1)
    yx = rng.uniform(0.0, 0.7, size=(batch, boxes_per_image, 2)) * [height, width]
    hw = rng.uniform(0.1, 0.3, size=(batch, boxes_per_image, 2)) * [height, width]
    boxes = np.concatenate([yx, np.minimum(yx + hw, [height, width])], axis=-1).astype("float32")
    classes = rng.integers(1, NUM_CLASSES, size=(batch, boxes_per_image)).astype("int32")
    return boxes, classes


# ------------------------------------------------------------------------------------------------ torchvision


def torch_child(args):
    """Runs in a subprocess: torchvision figures as JSON on stdout."""
    import numpy as np
    import torch
    import torchvision
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # mean 0, std 1: the inputs are already normalised (ours takes normalised images); the op still runs.
    model = FasterRCNN(_resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3),
                       num_classes=NUM_CLASSES, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    height, width = args.infer_size
    calibration = torch.from_numpy(synthetic_images("calibration", 2, height, width).transpose(0, 3, 1, 2).copy())
    model.transform.min_size, model.transform.max_size = (min(height, width),), max(height, width)
    working_random_weights(torch, model, calibration)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    if args.weights_out:
        torch.save(initial, args.weights_out)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
           "trainable_parameters": sum(p.numel() for p in params)}
    # The contiguous modes first, then the model moves to channels_last (PyTorch's recommended CPU layout, in which
    # oneDNN's convolutions run without reorders) for the same two.
    for mode, autocast, channels_last in (("fp32", False, False), ("bf16_autocast", True, False),
                                          ("fp32_channels_last", False, True),
                                          ("bf16_autocast_channels_last", True, True)):
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
        res = {}
        for name, (height, width), batch in workloads(args):
            model.transform.min_size, model.transform.max_size = (min(height, width),), max(height, width)
            images = list(torch.from_numpy(synthetic_images(name, batch, height, width).transpose(0, 3, 1, 2).copy()))

            def ctx():
                return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

            if name == "train":
                boxes, classes = synthetic_targets(batch, height, width)
                targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]].copy()),
                            "labels": torch.from_numpy(c.astype("int64"))} for b, c in zip(boxes, classes)]
                model.train()

                def step():
                    with ctx():
                        loss = sum(model(images, targets).values())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            else:
                model.eval()
                with torch.inference_mode():
                    found = model(images)
                    batch_list = model.transform(images)[0]
                    proposals = model.rpn(batch_list, model.backbone(batch_list.tensors))[0]
                res[f"{name}_proposals_per_image"] = float(np.mean([len(p) for p in proposals]))
                res[f"{name}_detections_per_image"] = float(np.mean([len(d["scores"]) for d in found]))

                def step():
                    with torch.inference_mode(), ctx():
                        model(images)
            seconds = timed(step, args.steps, args.warmup)
            res[f"{name}_images_per_s"] = batch / seconds
            res[f"{name}_s_per_batch"] = seconds
            log(f"torchvision {mode} {name} {height}x{width} b{batch}: {batch / seconds:.3f} images/s")
        out[mode] = res
    print(json.dumps(out))


def working_random_weights(torch, model, calibration):
    """Random weights that behave: FrozenBN statistics calibrated on a batch (torchvision's default identity
    statistics let 16 unnormalised blocks blow the activations up, and the RPN then proposes nothing), small
    residual-branch scales, and a box predictor whose logits have std 1.5 so that detections pass 0.05 and
    post-processing has real work. Both sides then run on these same weights and the same inputs."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops.misc import FrozenBatchNorm2d

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, FrozenBatchNorm2d):
                last = name.endswith("bn3") or name.endswith("downsample.1")
                low, span = (0.1, 0.25) if last else (0.6, 0.5)
                module.weight.copy_(low + span * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))

        def calibrate(module, inputs):
            x = inputs[0]
            module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp(min=1e-2))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        model.backbone(calibration)
        for h in hooks:
            h.remove()
        model.rpn.head.cls_logits.weight.mul_(15.0)  # objectness logits of a few units, not ~0
        features = model.backbone(calibration)
        sizes = [tuple(calibration.shape[-2:])] * calibration.shape[0]
        model.eval()
        proposals, _ = model.rpn(ImageList(calibration, sizes), features)
        x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, proposals, sizes))
        predictor = model.roi_heads.box_predictor
        for layer, target in ((predictor.cls_score, 1.5), (predictor.bbox_pred, 0.5)):
            scale = target / layer(x).std()
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)


def run_torch(args, weights_out):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--threads", str(args.threads), "--weights-out", weights_out]
    for flag, size in (("--train-size", args.train_size), ("--infer-size", args.infer_size),
                       ("--large-size", args.large_size)):
        cmd += [flag, f"{size[0]}x{size[1]}"]
    cmd += ["--train-batch", str(args.train_batch), "--infer-batch", str(args.infer_batch), "--large-batch",
            str(args.large_batch)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"torchvision child exited with {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ ours


def graph_flops(concrete_fn):
    """2 x MACs of every Conv2D / MatMul / BatchMatMul in a traced graph (nested functions included)."""
    import numpy as np

    seen, total = set(), 0.0

    def walk(graph):
        nonlocal total
        for op in graph.get_operations():
            if op.type == "Conv2D":
                out = op.outputs[0].shape.as_list()
                kernel = op.inputs[1].shape.as_list()  # [kh, kw, cin, cout]
                total += 2.0 * np.prod(out) * kernel[0] * kernel[1] * kernel[2]
            elif op.type in ("MatMul", "BatchMatMulV2"):
                a, out = op.inputs[0].shape.as_list(), op.outputs[0].shape.as_list()
                inner = a[-2] if op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-1]
                total += 2.0 * np.prod(out) * inner
            for attr in ("f", "then_branch", "else_branch", "body"):
                try:
                    fn_name = op.get_attr(attr).name
                except (ValueError, AttributeError):
                    continue
                if fn_name not in seen:
                    seen.add(fn_name)
                    fn = graph._get_function(fn_name)
                    if fn is not None:
                        walk(fn.graph)

    walk(concrete_fn.graph)
    return total


def conv_rate(tf, dtype, steps):
    """GFLOP/s of a 3x3 256 -> 256 conv on [8, 64, 64, 256], forward and forward + backward."""
    x = tf.random.normal([8, 64, 64, 256], dtype=dtype)
    w = tf.Variable(tf.random.normal([3, 3, 256, 256], stddev=0.02, dtype=dtype))
    flops = 2.0 * 8 * 64 * 64 * 256 * 9 * 256

    @tf.function
    def fwd():
        return tf.nn.conv2d(x, w, 1, "SAME")

    @tf.function
    def fwd_bwd():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, w, 1, "SAME")
        return tape.gradient(y, [x, w])

    out = {}
    for name, fn, mult in (("fwd", fwd, 1.0), ("fwd_bwd", fwd_bwd, 3.0)):
        seconds = timed(lambda: [t.numpy() for t in tf.nest.flatten(fn())], max(steps, 3), 1)
        out[name] = flops * mult / seconds / 1e9
    return out


def bench_ours(args, precision, weights):
    import keras
    import numpy as np
    import tensorflow as tf

    from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig
    from ssd_tf.models.faster_rcnn import build_faster_rcnn
    from ssd_tf.training.optimizer import MomentumSGD

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        keras.utils.set_random_seed(0)
        cfg = FasterRCNNModelConfig(num_classes=NUM_CLASSES, width_multiplier=args.width)
        model = build_faster_rcnn(cfg, jit_compile=args.xla)
    finally:
        keras.config.set_dtype_policy("float32")
    if weights:
        from ssd_tf.weights.torchvision_frcnn import load_torchvision_fasterrcnn

        load_torchvision_fasterrcnn(model, weights)
    else:  # no torchvision weights: tame the default initialisation a little (see working_random_weights)
        for layer in model.backbone.layers:
            if layer.name.endswith(("_bn3", "_downsample_bn")):
                layer.gamma.assign(layer.gamma * 0.2)
    optimizer = MomentumSGD(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    res = {"trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
           "weights": "torchvision child's" if weights else "default initialisation (bn3 gammas x 0.2)"}

    for name, (height, width), batch in workloads(args):
        images = tf.constant(synthetic_images(name, batch, height, width))
        if name == "train":
            boxes, classes = synthetic_targets(batch, height, width)
            boxes, classes, num = tf.constant(boxes), tf.constant(classes), tf.fill([batch], boxes.shape[1])
            counter = tf.Variable(0, dtype=tf.int64)

            @tf.function
            def train_step():
                counter.assign_add(1)
                seed = tf.stack([counter, tf.constant(0, tf.int64)])
                with tf.GradientTape() as tape:
                    losses = model.compute_losses(images, None, boxes, classes, num, seed)
                grads = tape.gradient(losses["total_loss"], model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                return losses["total_loss"]

            seconds = timed(lambda: train_step().numpy(), args.steps, args.warmup)
            res["train_images_per_s"] = batch / seconds
            res["train_s_per_batch"] = seconds
            dense, per_roi, frozen = model_flops(tf, model, height, width)
            # forward + 2 x the forward of everything that trains (backward: input and weight gradients)
            flops = 3.0 * (dense + per_roi * model.cfg.roi.batch_size_per_image) - 2.0 * frozen
            res["train_gflop_per_image"] = flops / 1e9
            res["train_gflop_per_s"] = flops * batch / seconds / 1e9
        else:
            infer = tf.function(lambda x: model(x, training=False))
            found = infer(images)
            res[f"{name}_detections_per_image"] = float(np.mean(found["num_detections"].numpy()))
            seconds = timed(lambda: infer(images)["num_detections"].numpy(), args.steps, args.warmup)
            dense, per_roi, _ = model_flops(tf, model, height, width)
            proposals = mean_valid_proposals(tf, model, images)
            flops = dense + per_roi * proposals
            res[f"{name}_proposals_per_image"] = proposals
            res[f"{name}_images_per_s"] = batch / seconds
            res[f"{name}_s_per_batch"] = seconds
            res[f"{name}_gflop_per_image"] = flops / 1e9
            res[f"{name}_gflop_per_s"] = flops * batch / seconds / 1e9
            res[f"{name}_split_ms"] = time_split(tf, model, images, args)
        log(f"ours {precision}{' xla' if args.xla else ''} {name} {height}x{width} b{batch}: "
            f"{batch / seconds:.3f} images/s")
    return res


def model_flops(tf, model, height, width):
    """(FLOPs of the dense part for one image, FLOPs of the box head per RoI, FLOPs of the frozen stem+layer1)."""
    import keras

    spec = tf.TensorSpec([1, height, width, 3], tf.float32)
    dense = graph_flops(tf.function(lambda x: model.dense_forward(x)).get_concrete_function(spec))
    pool, channels = model.cfg.roi.pool_size, model.box_head.channels
    per_roi = graph_flops(tf.function(lambda x: model.box_head(x)).get_concrete_function(
        tf.TensorSpec([1, pool, pool, channels], tf.float32)))
    frozen = 0.0
    if model.cfg.backbone.trainable_layers <= 3:  # conv1 and layer1 frozen: no backward through them
        last = [layer.name for layer in model.backbone.layers if layer.name.startswith("layer1_")][-1]
        stem = keras.Model(model.backbone.input, model.backbone.get_layer(last).output)
        frozen = graph_flops(tf.function(lambda x: stem(x)).get_concrete_function(spec))
    return dense, per_roi, frozen


def mean_valid_proposals(tf, model, images):
    features, objectness, deltas = model.dense_forward(images)
    anchors, level_sizes = model.anchors(images, features)
    image_shape = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
    valid = model.propose(objectness, deltas, anchors, level_sizes, image_shape)[2]
    return float(tf.reduce_mean(tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)))


def time_split(tf, model, images, args):
    """Milliseconds per batch of each inference stage, each timed on its own precomputed inputs."""
    cfg = model.cfg
    image_shape = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
    backbone = tf.function(lambda x: model.backbone(x))
    features = backbone(images)

    @tf.function
    def rpn(features):
        objectness, deltas = model.rpn_head(features)
        anchors, level_sizes = model.anchors(images, features)
        return model.propose(objectness, deltas, anchors, level_sizes, image_shape)

    proposals, _, valid = rpn(features)
    from ssd_tf.ops.roi_align import multilevel_roi_align

    roi = cfg.roi

    @tf.function
    def align(features, proposals):
        return multilevel_roi_align([tf.cast(f, tf.float32) for f in features[:4]], proposals,
                                    output_size=roi.pool_size, sampling_ratio=roi.sampling_ratio)

    pooled = align(features, proposals)

    @tf.function
    def head(pooled):
        return model.box_head(tf.reshape(pooled, [-1] + pooled.shape[2:].as_list()))

    logits, deltas = head(pooled)
    batch, num = proposals.shape[0], proposals.shape[1]
    logits = tf.reshape(logits, [batch, num, -1])
    deltas = tf.reshape(deltas, [batch, num, -1, 4])
    post = tf.function(lambda l, d, p, v: model.postprocess(l, d, p, v, image_shape))
    steps, warmup = max(args.steps, 1), max(args.warmup, 1)
    ms = lambda fn: 1e3 * timed(fn, steps, warmup)  # noqa: E731
    return {
        "backbone_fpn": ms(lambda: [t.numpy() for t in backbone(images)][:0]),
        "rpn_head_and_proposals": ms(lambda: rpn(features)[0].numpy()),
        "roi_align": ms(lambda: align(features, proposals).numpy()),
        "box_head": ms(lambda: head(pooled)[0].numpy()),
        "postprocess": ms(lambda: post(logits, deltas, proposals, valid)["num_detections"].numpy()),
    }


def best(side):
    """Best mode per workload: {workload: (mode, images/s)}."""
    out = {}
    for mode, res in side.items():
        if not isinstance(res, dict):
            continue
        for key, value in res.items():
            if key.endswith("_images_per_s") and (key not in out or value > out[key][1]):
                out[key] = (mode, value)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.torch_child:
        torch_child(args)
        return 0
    report = {"cpu": cpu_info(), "threads": args.threads, "xla": args.xla, "width_multiplier": args.width,
              "steps": args.steps, "warmup": args.warmup,
              "workloads": {name: {"size": list(size), "batch": batch} for name, size, batch in workloads(args)}}
    torch_result, weights = None, None
    workdir = tempfile.mkdtemp(prefix="frcnn_bench_")
    if not args.skip_torch:
        try:
            import importlib.util

            have_torch = importlib.util.find_spec("torchvision") is not None
        except ImportError:
            have_torch = False
        if have_torch:
            log("running torchvision (child process)...")
            weights = os.path.join(workdir, "torchvision_random.pth")
            torch_result = run_torch(args, weights)
            if args.width != 1.0 or not os.path.isfile(weights):
                weights = None
        else:
            log("torch/torchvision not installed: skipping the torchvision side")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    report["versions"] = {"tensorflow": tf.__version__}
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    report["conv_3x3_gflop_per_s"] = {p: conv_rate(tf, tf.bfloat16 if p == "bf16" else tf.float32, args.steps)
                                      for p in precisions}
    ours = {p: bench_ours(args, p, weights) for p in precisions}
    shutil.rmtree(workdir, ignore_errors=True)
    for p, res in ours.items():
        rate = report["conv_3x3_gflop_per_s"][p]
        res["train_fraction_of_conv_rate"] = res["train_gflop_per_s"] / rate["fwd_bwd"]
        res["infer_fraction_of_conv_rate"] = res["infer_gflop_per_s"] / rate["fwd"]
    report["ours"] = ours
    if torch_result is not None:
        report["torchvision"] = torch_result
        ours_best, theirs_best = best(ours), best({k: v for k, v in torch_result.items() if isinstance(v, dict)})
        report["best"] = {
            key: {"ours": {"mode": ours_best[key][0], "images_per_s": ours_best[key][1]},
                  "torchvision": {"mode": theirs_best[key][0], "images_per_s": theirs_best[key][1]},
                  "ratio": ours_best[key][1] / theirs_best[key][1]}
            for key in ours_best if key in theirs_best}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
