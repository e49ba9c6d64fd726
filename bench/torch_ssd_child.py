"""torchvision's SSD300 models timed in their fp32 and bfloat16-autocast modes; run by bench/ssd_throughput.py in
its own process, before TensorFlow starts (torch and TensorFlow do not share one process well, and the two must
not compete for the cores). Prints one JSON object on stdout.

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
import time

sys.modules.setdefault("triton", None)  # torch's triton is not needed on the CPU paths
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "weights"))


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


def timed(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="ssd_resnet34,ssd_vgg16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    import torch
    import torchvision

    torch.set_num_threads(a.threads)
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
           "presets": {}}
    gen = torch.Generator().manual_seed(1)
    for preset in a.presets.split(","):
        model, num_classes = build(preset)
        images = [torch.rand((3, 300, 300), generator=gen) for _ in range(a.batch)]
        targets = []
        for _ in range(a.batch):
            xy = torch.rand((5, 2), generator=gen) * 200
            wh = 20 + torch.rand((5, 2), generator=gen) * 80
            targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                            "labels": torch.randint(1, num_classes, (5,), generator=gen)})
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        result = {}
        for mode in ("fp32", "bf16"):
            def ctx():
                return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()

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
