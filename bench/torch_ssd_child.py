"""torchvision's SSD300 models timed in fp32 and bfloat16 autocast, each with the default (contiguous NCHW) and the
``channels_last`` memory format (PyTorch's recommended CPU layout: oneDNN's convolutions then run without reorders,
its fastest bf16 mode on AMX CPUs); modes ``fp32``, ``bf16``, ``fp32_channels_last``, ``bf16_channels_last``. Run
by bench/ssd_throughput.py in its own process, before TensorFlow starts (torch and TensorFlow do not share one
process well, and the two must not compete for the cores). Prints one JSON object on stdout.

    python bench/torch_ssd_child.py --presets ssd_resnet34,ssd_vgg16 --batch 8 --steps 3 --warmup 1 --threads 2

Models: ``ssd_vgg16`` = ``torchvision.models.detection.ssd300_vgg16(weights=None, num_classes=91)``;
``ssd_resnet34`` = torchvision's ``SSD`` around the MLPerf ResNet34 trunk and extras (the reference module of the
parity tests, ``tests/weights/torch_reference.py``) with 81 classes and MLPerf post-processing (0.05 / 0.5 /
200 / 200). Training step: forward with targets, the model's loss, backward, SGD(momentum 0.9, weight decay 5e-4).
Inference: eval mode, no grad, forward + post-processing, on 300x300 inputs (the transform's resize to 300x300 is
then an identity-size interpolation, counted as torchvision does).
"""
import argparse
import contextlib
import json
import os
import sys

sys.modules.setdefault("triton", None)  # torch's triton is not needed on the CPU paths
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "weights"))

from timing import timed  # noqa: E402


def build(preset):
    import torch
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    torch.manual_seed(0)
    if preset == "ssd_vgg16":
        return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91), 91
    from torch_reference import ANCHORS, R34Backbone

    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    head = SSDHead([256, 512, 512, 256, 256, 256], ANCHORS, 81)
    return SSD(R34Backbone(), anchors, (300, 300), 81, head=head, score_thresh=0.05, nms_thresh=0.5,
               detections_per_img=200, topk_candidates=200), 81


def conv_work(layers, batch, steps, warmup, precision):
    """bench/ssd_throughput.py's ``conv_work`` in PyTorch: the same conv layer list, channels_last, timed alone
    (forward under no_grad; the backward as the input and weight gradients of one autograd call, minus its
    forward)."""
    import torch

    from ssd_throughput import conv_summary

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rows, train_s, forward_s = [], 0.0, 0.0
    for layer in layers:
        h, w, c = layer["input"]
        kh, kw = layer["kernel"]
        padding = 0 if layer["padding"] == "VALID" else tuple(d * (k - 1) // 2 for d, k in zip(layer["dilation"],
                                                                                          layer["kernel"]))
        conv = torch.nn.Conv2d(c, layer["filters"], (kh, kw), tuple(layer["strides"]), padding,
                               tuple(layer["dilation"]), bias=False).to(dtype).to(memory_format=torch.channels_last)
        x = torch.randn(batch, c, h, w).to(dtype).to(memory_format=torch.channels_last)
        x.requires_grad_(layer["input_gradient"])
        wrt = [conv.weight] + ([x] if layer["input_gradient"] else [])
        with torch.no_grad():
            dy = torch.randn_like(conv(x))

        def forward():
            with torch.no_grad():
                conv(x)

        def forward_backward():
            torch.autograd.grad(conv(x), wrt, dy)

        t_f = timed(forward, steps, warmup)
        t_b = max(timed(forward_backward, steps, warmup) - t_f, 0.0)
        forward_s += layer["layers"] * t_f
        train_s += layer["layers"] * (t_f + t_b)
        rows.append({**layer, "forward_ms": round(t_f * 1e3, 2), "backward_ms": round(t_b * 1e3, 2)})
    return conv_summary(rows, batch, train_s, forward_s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="ssd_resnet34,ssd_vgg16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--conv_layers", default=None, help="a JSON file of conv layers (bench/ssd_throughput.py "
                   "conv_layers): time only those, channels_last, in each of --precisions")
    p.add_argument("--precisions", default="fp32,bf16")
    a = p.parse_args()
    import torch
    import torchvision

    torch.set_num_threads(a.threads)
    if a.conv_layers:
        with open(a.conv_layers) as f:
            layers = json.load(f)
        print(json.dumps({precision + "_channels_last": conv_work(layers, a.batch, a.steps, a.warmup, precision)
                          for precision in a.precisions.split(",")}))
        return
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
           "presets": {}}
    gen = torch.Generator().manual_seed(1)
    for preset in a.presets.split(","):
        images = [torch.rand((3, 300, 300), generator=gen) for _ in range(a.batch)]
        targets = []
        result = {}
        for layout in ("contiguous", "channels_last"):
            model, num_classes = build(preset)
            if not targets:
                for _ in range(a.batch):
                    xy = torch.rand((5, 2), generator=gen) * 200
                    wh = 20 + torch.rand((5, 2), generator=gen) * 80
                    targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                                    "labels": torch.randint(1, num_classes, (5,), generator=gen)})
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
            for precision in ("fp32", "bf16"):
                mode = precision if layout == "contiguous" else f"{precision}_{layout}"

                def ctx():
                    return (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                            else contextlib.nullcontext())

                def train_step():
                    model.train()
                    with ctx():
                        losses = model(images, targets)
                    loss = sum(losses.values())
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

                def infer():
                    model.eval()
                    with torch.inference_mode(), ctx():
                        model(images)

                train_s = timed(train_step, a.steps, a.warmup)
                infer_s = timed(infer, a.steps, a.warmup)
                result[mode] = {"train_images_per_s": a.batch / train_s, "inference_images_per_s": a.batch / infer_s}
                print(f"torchvision {preset} {mode}: train {a.batch / train_s:.3f} images/s, inference "
                      f"{a.batch / infer_s:.3f} images/s", file=sys.stderr, flush=True)
        out["presets"][preset] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()
