"""SSD throughput on this machine, ours against torchvision's in the same invocation: train step, inference (with
post-processing), input pipeline, and the full runtime step (pipeline + step + logging) against the bare step.
Prints one JSON object on stdout (logs on stderr).

    python bench/ssd_throughput.py [--presets ssd_resnet34,ssd_vgg16] [--batch 8] [--steps 4] [--xla]
        [--precisions fp32,bf16] [--skip_torch] [--skip_runtime] [--profile]

Order: torchvision first, in a child process (``bench/torch_ssd_child.py``: fp32 and ``torch.autocast`` bfloat16,
each in the contiguous and the ``channels_last`` memory format), then ours in each of ``--precisions`` (default:
fp32, plus bf16 when ``--precision=auto`` picks it on this machine). The JSON holds the CPU model and ISA flags,
a 3x3 convolution's GFLOP/s (256 -> 256 channels, 38x38, batch 8; forward and forward + backward, in fp32 and each
precision benchmarked) as the machine's reachable rate, each side's figures per mode, and our best mode against
theirs (``best``). ``--profile`` adds each train step's kernel time by op type and category (TensorFlow's profiler)
and the convolutions alone (``conv_work``: every conv layer's forward and gradients timed in isolation and summed,
the rate a step of nothing but its convolutions would reach).

Achieved GFLOP/s counts 2 FLOPs per multiply-accumulate of every Conv2D/Dense layer; a training step is
counted as 3x the forward pass (forward + two backward products).
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402
from timing import timed  # noqa: E402

tf = None  # TensorFlow is imported by main() after the torchvision child has finished (see the docstring)


def _all_layers(model):
    stack, out = list(model.layers), []
    while stack:
        layer = stack.pop(0)
        out.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return out


def forward_flops(model) -> float:
    """2 x MACs of every Conv2D and Dense layer for one image."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape  # [B, H, W, C]
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += 2 * out[1] * out[2] * out[3] * kh * kw * cin // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return float(total)


def _import_tensorflow():
    global tf, presets, build_from_config, ssd_loss, ssd_default_boxes, ssd_postprocess, ssd_targets_batched
    global MomentumSGD
    import tensorflow

    tf = tensorflow
    from ssd_tf import presets
    from ssd_tf.models.factory import build_from_config
    from ssd_tf.models.ssd_loss import ssd_loss
    from ssd_tf.ops.anchors import ssd_default_boxes
    from ssd_tf.ops.postprocess import ssd_postprocess
    from ssd_tf.ops.targets import ssd_targets_batched
    from ssd_tf.training.optimizer import MomentumSGD


def conv_rate(precision, steps=5):
    """GFLOP/s of a 3x3 conv, 256 -> 256 channels, 38x38, batch 8: (forward, forward + backward)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    conv = keras.layers.Conv2D(256, 3, padding="same")
    x = tf.random.normal([8, 38, 38, 256])
    conv(x)
    flops = 2 * 8 * 38 * 38 * 256 * 256 * 9
    fwd = tf.function(lambda x: conv(x))

    @tf.function
    def fwd_bwd(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.cast(conv(x), tf.float32))
        return tape.gradient(y, [x] + conv.trainable_variables)

    t_f = timed(lambda: fwd(x).numpy(), steps, 2)
    t_b = timed(lambda: [g.numpy() for g in fwd_bwd(x)], steps, 2)
    keras.mixed_precision.set_global_policy("float32")
    return {"forward_gflops_per_s": flops / t_f / 1e9, "forward_backward_gflops_per_s": 3 * flops / t_b / 1e9}


def torchvision_figures(a, *extra):
    """The torchvision child's JSON (None when torch is not installed or --skip_torch)."""
    if a.skip_torch or importlib.util.find_spec("torch") is None:
        return None
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_ssd_child.py")
    r = subprocess.run([sys.executable, child, f"--presets={a.presets}", f"--batch={a.batch}", f"--steps={a.steps}",
                        f"--warmup={a.warmup}", *extra], capture_output=True, text=True)
    sys.stderr.write(r.stderr[-3000:])
    if r.returncode != 0:
        raise RuntimeError(f"torchvision child failed ({r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def synthetic_batch(preset, batch, num_classes, anchors, seed=0):
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.normal(size=(batch, 300, 300, 3)).astype(np.float32))
    m = 5
    yx = rng.uniform(0.0, 0.6, size=(batch, m, 2))
    hw = rng.uniform(0.1, 0.4, size=(batch, m, 2))
    boxes = tf.constant(np.concatenate([yx, yx + hw], -1).astype(np.float32))
    classes = tf.constant(rng.integers(1, num_classes, size=(batch, m)).astype(np.int32))
    box_t, cls_t, _ = ssd_targets_batched(boxes, classes, tf.fill([batch], m), anchors)
    return images, box_t, cls_t


def bench_step(preset, batch, steps, warmup, xla, profile=False):
    cfg = presets.model_config(preset)
    anchors = tf.constant(ssd_default_boxes(cfg.anchors), tf.float32)
    nc = cfg.num_classes
    model = build_from_config(cfg)
    opt = MomentumSGD(1e-4, momentum=0.9, weight_decay=5e-4)
    opt.build(model.trainable_variables)
    images, box_t, cls_t = synthetic_batch(preset, batch, nc, anchors)
    norm = cfg.loss_normalization

    def grads(images, box_t, cls_t):
        with tf.GradientTape() as tape:
            reg, logits = model(images, training=True)
            loss = ssd_loss(reg, logits, box_t, cls_t, normalization=norm)["total_loss"]
        return loss, tape.gradient(loss, model.trainable_variables)

    grads_fn = tf.function(grads, jit_compile=xla)

    @tf.function
    def train_step(images, box_t, cls_t):
        loss, g = grads_fn(images, box_t, cls_t)
        opt.apply_gradients(zip(g, model.trainable_variables))
        return loss

    step_time = timed(lambda: train_step(images, box_t, cls_t).numpy(), steps, warmup)
    profiled = op_profile(lambda: train_step(images, box_t, cls_t).numpy(), steps) if profile else None
    convs_alone = conv_work(conv_layers(model), batch, steps, warmup) if profile else None
    pp = dataclasses.asdict(cfg.postprocess)

    @tf.function(jit_compile=False)
    def infer(images):
        if xla:
            reg, logits = tf.function(lambda x: model(x, training=False), jit_compile=True)(images)
        else:
            reg, logits = model(images, training=False)
        return ssd_postprocess(reg, logits, anchors, **pp)

    infer_time = timed(lambda: infer(images)["num_detections"].numpy(), steps, warmup)

    @tf.function
    def forward_only(images):
        return model(images, training=False)

    fwd_time = timed(lambda: forward_only(images)[0].numpy(), steps, warmup)

    # Where a train step's time goes, by timing its prefixes: the training forward pass, + the loss (matching is in
    # the input pipeline, so this is the hard-negative mining and the two losses), + the backward pass, + the update.
    @tf.function(jit_compile=xla)
    def forward_train(images):
        reg, logits = model(images, training=True)
        return tf.reduce_sum(tf.cast(reg[:, :1], tf.float32)) + tf.reduce_sum(tf.cast(logits[:, :1], tf.float32))

    @tf.function(jit_compile=xla)
    def forward_loss(images, box_t, cls_t):
        reg, logits = model(images, training=True)
        return ssd_loss(reg, logits, box_t, cls_t, normalization=norm)["total_loss"]

    t_fwd = timed(lambda: forward_train(images).numpy(), steps, warmup)
    t_loss = timed(lambda: forward_loss(images, box_t, cls_t).numpy(), steps, warmup)
    t_grads = timed(lambda: grads_fn(images, box_t, cls_t)[0].numpy(), steps, warmup)
    split = {"forward_s": t_fwd, "loss_s": max(t_loss - t_fwd, 0.0), "backward_s": max(t_grads - t_loss, 0.0),
             "optimizer_update_s": max(step_time - t_grads, 0.0)}
    flops = forward_flops(model)
    return {
        "train_step_split": split,
        **({"train_step_profile": profiled, "convolutions_alone": convs_alone} if profiled else {}),
        "params": model.count_params(),
        "forward_gflops_per_image": flops / 1e9,
        "train_step_s": step_time,
        "train_images_per_s": batch / step_time,
        "train_gflops_per_s": 3 * flops * batch / step_time / 1e9,
        "inference_images_per_s": batch / infer_time,
        "inference_postprocess_s_per_batch": max(infer_time - fwd_time, 0.0),
        "inference_gflops_per_s": flops * batch / fwd_time / 1e9,
    }, model


def _needs_input_gradient(tensor, memo):
    """Whether a trainable layer lies upstream of this Keras tensor (else its gradient is never computed)."""
    op, node_index, _ = tensor._keras_history
    if id(op) not in memo:
        node = op._inbound_nodes[node_index]
        memo[id(op)] = any(
            (getattr(t._keras_history[0], "trainable_weights", None) or _needs_input_gradient(t, memo))
            for t in node.input_tensors)
    return memo[id(op)]


def conv_layers(model):
    """The model's Conv2D layers as distinct configurations with their count (JSON-able, for both frameworks)."""
    import collections

    import keras

    shapes, memo = collections.Counter(), {}
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            key = (tuple(layer.input.shape[1:]), layer.filters, tuple(layer.kernel_size), tuple(layer.strides),
                   layer.padding.upper(), tuple(layer.dilation_rate), _needs_input_gradient(layer.input, memo))
            shapes[key] += 1
    return [{"input": list(in_shape), "filters": filters, "kernel": list(kernel), "strides": list(strides),
             "padding": padding, "dilation": list(dilation), "input_gradient": input_grad, "layers": count}
            for (in_shape, filters, kernel, strides, padding, dilation, input_grad), count in shapes.items()]


REPEATS = 10


def conv_work(layers, batch, steps, warmup):
    """The convolutions of a train step alone: each Conv2D layer's forward, and its input and weight gradients
    scheduled together as in the backward pass (they are independent, so they run side by side on the inter-op
    threads), timed on random tensors of the layer's shapes and the compute dtype, summed over the layers. The input
    gradient is left out where no trainable layer lies upstream (TensorFlow prunes it). Dividing the batch by these
    sums bounds what a step that did nothing but its convolutions would reach. torchvision's side times the same
    list (bench/torch_ssd_child.py --conv_layers).

    Each graph runs a layer REPEATS times, one after the other (control dependencies, kept by switching grappler's
    dependency optimizer off while these graphs are built), on distinct inputs (batch windows of one larger tensor
    and slices of stacked filters, views rather than copies) so that TensorFlow's common-subexpression elimination
    cannot merge them: the time per run then leaves out the call into the graph (about 1 ms on a 2-core CPU, as
    much as a mid-sized convolution), which a train step pays once, not per layer. Distinct filters also make every
    run reorder its filter into oneDNN's layout, as a train step does after each update."""
    options = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"dependency_optimization": False})
    try:
        return _conv_work(layers, batch, steps, warmup)
    finally:
        tf.config.optimizer.set_experimental_options(
            {"dependency_optimization": options.get("dependency_optimization", True)})


def _conv_work(layers, batch, steps, warmup):
    import keras

    dtype = tf.dtypes.as_dtype(keras.mixed_precision.global_policy().compute_dtype)
    train_s = forward_s = 0.0
    rows = []
    for layer in layers:
        in_shape, kernel = tuple(layer["input"]), tuple(layer["kernel"])
        xs = tf.cast(tf.random.normal((batch + REPEATS - 1,) + in_shape), dtype)
        ws = tf.cast(tf.random.normal((REPEATS,) + kernel + (in_shape[-1], layer["filters"])) * 0.05, dtype)
        conv_args = dict(strides=[1, *layer["strides"], 1], padding=layer["padding"],
                         dilations=[1, *layer["dilation"], 1])

        def conv(i, xs, ws, dy=None):
            return [tf.raw_ops.Conv2D(input=xs[i:i + batch], filter=ws[i], **conv_args)]

        def grads(i, xs, ws, dy):
            x = xs[i:i + batch]
            out = [tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(ws[i]), out_backprop=dy,
                                                   **conv_args)]
            if layer["input_gradient"]:
                out.append(tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=ws[i], out_backprop=dy,
                                                          **conv_args))
            return out

        def repeated(fn):
            def run(xs, ws, dy):
                outputs = []
                for i in range(REPEATS):
                    with tf.control_dependencies(outputs):
                        outputs = fn(i, xs, ws, dy)
                return tf.add_n([tf.reduce_sum(tf.cast(o[..., :1], tf.float32)) for o in outputs])
            return tf.function(run)

        dy = tf.cast(tf.random.normal(conv(0, xs, ws)[0].shape), dtype)
        fwd, bwd = repeated(conv), repeated(grads)
        t_f = timed(lambda: fwd(xs, ws, dy).numpy(), steps, warmup) / REPEATS
        t_b = timed(lambda: bwd(xs, ws, dy).numpy(), steps, warmup) / REPEATS
        forward_s += layer["layers"] * t_f
        train_s += layer["layers"] * (t_f + t_b)
        rows.append({**layer, "forward_ms": round(t_f * 1e3, 2), "backward_ms": round(t_b * 1e3, 2)})
    return conv_summary(rows, batch, train_s, forward_s)


def conv_summary(rows, batch, train_s, forward_s):
    rows = sorted(rows, key=lambda r: -r["layers"] * (r["forward_ms"] + r["backward_ms"]))
    return {"train_step_s": train_s, "forward_s": forward_s, "train_images_per_s": batch / train_s,
            "forward_images_per_s": batch / forward_s, "largest": rows[:6]}


OP_CATEGORIES = (  # (category, substrings of a TensorFlow op type), first match wins
    ("convolution", ("Conv2D", "MatMul")),
    ("batch_norm", ("BatchNorm",)),
    ("optimizer_update", ("ResourceApply", "Assign")),
    ("layout", ("Concat", "Reshape", "Transpose", "Slice", "Pad", "Tile", "Pack", "Unpack", "Split", "Gather")),
    ("element_wise", ("Relu", "AddN", "AddV2", "Add", "Mul", "Sub", "Cast", "Select", "Square", "Abs", "Maximum",
                      "Minimum", "Neg", "Exp", "Log", "Less", "Greater", "Equal")),
)


def op_profile(fn, steps):
    """TensorFlow's profiler around ``steps`` calls of ``fn``: kernel time per step by op type and by category
    (OP_CATEGORIES; the rest is "other"). Kernels on the two inter-op threads overlap, so the sum exceeds the wall
    time; the shares say where the work is."""
    import collections
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = (time.perf_counter() - t) / steps
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))[0], "rb") as f:
            space.ParseFromString(f.read())
    by_type = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if "::" in name or ":" not in name:  # executor and runtime events, not kernels
                    continue
                op_type = name.rsplit(":", 1)[1]
                if op_type and " " not in op_type:
                    by_type[op_type] += event.duration_ps / 1e9 / steps  # ms per step
    by_category = collections.Counter()
    for op_type, ms in by_type.items():
        category = next((c for c, keys in OP_CATEGORIES if any(k in op_type for k in keys)), "other")
        by_category[category] += ms
    total = sum(by_type.values())
    return {"wall_ms_per_step": wall * 1e3, "kernel_ms_per_step": total,
            "by_category_ms": {c: round(ms, 1) for c, ms in by_category.most_common()},
            "by_category_share": {c: round(ms / total, 3) for c, ms in by_category.most_common()},
            "top_op_types_ms": {t: round(ms, 1) for t, ms in by_type.most_common(15)}}


def make_records(work):
    from data_tools.make_shapes_dataset import make_shapes_dataset

    paths = make_shapes_dataset(os.path.join(work, "shapes"), num_train=256, num_val=8, image_size=300, seed=0)
    import subprocess

    subprocess.run([sys.executable, "-m", "data_tools.create_coco_tfrecord", f"--image_dir={paths['train_images']}",
                    f"--object_annotations_file={paths['train_json']}", f"--output_file_prefix={work}/tf/train",
                    "--num_shards=4", "--num_processes=2"], check=True, capture_output=True,
                   cwd=os.path.join(os.path.dirname(__file__), ".."))
    with open(f"{work}/tf/train.meta.json") as f:
        meta = json.load(f)
    return f"{work}/tf/train-*.tfrecord", [e["id"] for e in meta["label_map"]], [e["name"] for e in meta["label_map"]]


def bench_pipeline(preset, pattern, class_ids, batch, batches=40):
    from ssd_tf.data.pipeline import build_ssd_dataset

    ds = build_ssd_dataset(pattern, model=presets.model_config(preset), batch_size=batch, is_training=True,
                           class_ids=class_ids, seed=0, shuffle_buffer=64)
    it = iter(ds)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def bench_runtime(preset, pattern, class_ids, names, batch, steps, work, bare_step_s):
    """The runtime's full step: Trainer + SSDTask (pipeline, step, loss logging every step)."""
    from ssd_tf.tasks.ssd import SSDTask
    from ssd_tf.training import loop

    cfg = presets.preset(preset)
    cfg.data.training_file_pattern = pattern
    cfg.data.class_ids, cfg.data.class_names = class_ids, names
    cfg.data.class_ids = class_ids
    cfg.train.train_batch_size = batch
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    task = SSDTask(cfg, global_batch_size=batch, log_fn=lambda *a: None)
    lines = []
    opts = loop.LoopOptions(total_steps=steps + 2, steps_per_loop=1, log_every_steps=1, checkpoint_every_steps=0)
    trainer = loop.Trainer(task, strategy, os.path.join(work, f"rt_{preset}"),
                           lambda: MomentumSGD(1e-4, momentum=0.9, weight_decay=5e-4), opts, log_fn=lines.append)
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the runtime's log lines; stdout carries only the JSON
        trainer.train()
    with open(os.path.join(work, f"rt_{preset}", "summaries", "train_log.jsonl")) as f:
        records = [json.loads(l) for l in f]
    step_times = [r["step_time"] for r in records[2:]]  # the first two include tracing
    full = float(np.mean(step_times))
    return {"runtime_step_s": full, "runtime_images_per_s": batch / full,
            "runtime_overhead_vs_bare_step": full / bare_step_s - 1.0,
            "runtime_data_wait_s": float(np.mean([r["data_wait"] for r in records[2:]]))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="ssd_resnet34,ssd_vgg16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--xla", action="store_true")
    p.add_argument("--precisions", default=None, help="ours: comma list of fp32, bf16 (default: fp32 + what auto "
                   "picks on this machine)")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--skip_runtime", action="store_true")
    p.add_argument("--profile", action="store_true", help="add each train step's kernel time by op type and "
                   "category (TensorFlow's profiler)")
    a = p.parse_args()
    from ssd_tf.training.precision import machine_summary, resolve_precision

    auto, why = resolve_precision("auto", check_gpu=False)
    precisions = a.precisions.split(",") if a.precisions else sorted({"fp32", auto})
    theirs = torchvision_figures(a)  # first, alone on the machine
    _import_tensorflow()
    import keras

    out = {"machine": machine_summary(), "auto_precision": auto, "auto_reason": why, "batch": a.batch, "xla": a.xla,
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
           "conv_3x3_256ch_38x38_b8": {pr: conv_rate(pr) for pr in sorted({"fp32", *precisions})}, "presets": {}}
    if theirs is not None:
        out["torchvision"] = {k: theirs[k] for k in ("torch", "torchvision", "threads")}
    with tempfile.TemporaryDirectory() as work:
        pattern, class_ids, names = make_records(work)
        for preset in a.presets.split(","):
            ours = {}
            for precision in precisions:
                keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
                r, model = bench_step(preset, a.batch, a.steps, a.warmup, a.xla, a.profile)
                keras.mixed_precision.set_global_policy("float32")
                conv = out["conv_3x3_256ch_38x38_b8"][precision]["forward_backward_gflops_per_s"]
                r["train_fraction_of_conv_rate"] = r["train_gflops_per_s"] / conv
                ours[precision] = r
                print(json.dumps({preset: {precision: r}}), file=sys.stderr, flush=True)
            best = max(ours, key=lambda k: ours[k]["train_images_per_s"])
            r = ours[best]
            r["pipeline_images_per_s"] = bench_pipeline(preset, pattern, class_ids, a.batch)
            r["pipeline_vs_train_consumption"] = r["pipeline_images_per_s"] / r["train_images_per_s"]
            if not a.skip_runtime:
                keras.mixed_precision.set_global_policy("mixed_bfloat16" if best == "bf16" else "float32")
                r.update(bench_runtime(preset, pattern, class_ids, names, a.batch, a.steps, work, r["train_step_s"]))
                keras.mixed_precision.set_global_policy("float32")
            entry = {"ours": ours}
            if theirs is not None:
                tv = theirs["presets"][preset]
                entry["torchvision"] = tv
                entry["best"] = {}
                for key in ("train_images_per_s", "inference_images_per_s"):
                    our_mode = max(ours, key=lambda k: ours[k][key])
                    their_mode = max(tv, key=lambda k: tv[k][key])
                    entry["best"][key] = {"ours": [our_mode, ours[our_mode][key]],
                                          "torchvision": [their_mode, tv[their_mode][key]],
                                          "ratio": ours[our_mode][key] / tv[their_mode][key]}
                if a.profile:  # the same conv layers alone in torchvision's fastest layout, after ours
                    layers_file = os.path.join(work, f"{preset}_conv_layers.json")
                    with open(layers_file, "w") as f:
                        json.dump(conv_layers(model), f)
                    entry["torchvision_convolutions_alone"] = torchvision_figures(
                        a, f"--conv_layers={layers_file}", f"--precisions={','.join(precisions)}")
            out["presets"][preset] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
