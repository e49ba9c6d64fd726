"""Reference side of the parity tests, run in a subprocess: torchvision must be imported before TensorFlow
(importing it after TF segfaults with torch 2.14 / torchvision 0.29 / TF 2.21), and a subprocess keeps the test
process free of that ordering constraint.

usage: python torch_reference.py {vgg16,resnet34} OUTDIR
Writes OUTDIR/*.pth state dicts (seeded random weights) and OUTDIR/reference.npz (inputs NCHW, raw head outputs,
anchors, detections).
"""
import collections
import sys

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDHead

ANCHORS = [4, 6, 6, 6, 4, 4]


def randomise(module, seed):
    """Non-trivial biases, BN statistics and L2Norm scale so that every tensor's mapping is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("scale_weight"):
                p.copy_(10 + 20 * torch.rand(p.shape, generator=gen))
            elif name.endswith("bias") or (p.ndim == 1):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if name.endswith("weight") else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def calibrate_batchnorm(module, images):
    """Set BN running statistics from one forward pass in train mode, so that eval-mode activations stay of
    order 1 through the randomly initialised network (non-trivial statistics that exercise the BN mapping)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0
    module.train()
    with torch.no_grad():
        module(images)
    for m in bns:
        m.momentum = 0.1
    module.eval()


def detections_arrays(dets):
    n = max(len(d["scores"]) for d in dets)
    out = {"det_count": np.array([len(d["scores"]) for d in dets])}
    for key, width in (("boxes", 4), ("scores", None), ("labels", None)):
        shape = (len(dets), n) + ((width,) if width else ())
        arr = np.zeros(shape, np.float64 if key != "labels" else np.int64)
        for i, d in enumerate(dets):
            arr[i, : len(d[key])] = d[key].numpy()
        out[f"det_{key}"] = arr
    return out


def head_outputs(backbone, head, images):
    with torch.no_grad():
        features = list(backbone(images).values())
        out = head(features)
    return features, out


def run_vgg16(outdir):
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    randomise(model, 1)
    torch.save(model.state_dict(), f"{outdir}/ssd300_vgg16.pth")
    gen = torch.Generator().manual_seed(2)
    mean = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)
    images = torch.rand((2, 3, 300, 300), generator=gen) * 255 - mean  # normalised VGG input
    features, out = head_outputs(model.backbone, model.head, images)
    anchors = model.anchor_generator(ImageList(images, [(300, 300)] * 2), features)
    with torch.no_grad():
        dets = model.postprocess_detections(out, anchors, [(300, 300)] * 2)
    _, out64 = head_outputs(model.backbone.double(), model.head.double(), images[:1].double())
    np.savez(
        f"{outdir}/reference.npz", images=images.numpy(), bbox_regression=out["bbox_regression"].numpy(),
        cls_logits=out["cls_logits"].numpy(), bbox_regression64=out64["bbox_regression"].numpy(),
        cls_logits64=out64["cls_logits"].numpy(), anchors_xyxy=anchors[0].numpy(), **detections_arrays(dets),
    )


class R34Backbone(nn.Module):
    """resnet34 up to layer3 (layer3 stride 1) + the MLPerf v0.6 extras, torchvision-SSD style."""

    def __init__(self):
        super().__init__()
        r = torchvision.models.resnet34(weights=None)
        r.layer3[0].conv1.stride = (1, 1)
        r.layer3[0].downsample[0].stride = (1, 1)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
        self.body = nn.Sequential(collections.OrderedDict((n, getattr(r, n)) for n in names))
        spec = [(256, 256, 512, 2), (512, 256, 512, 2), (512, 128, 256, 2), (256, 128, 256, 1), (256, 128, 256, 1)]
        self.extra = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(i, m, 1), nn.ReLU(inplace=True),
                nn.Conv2d(m, o, 3, stride=s, padding=1 if s == 2 else 0), nn.ReLU(inplace=True),
            )
            for i, m, o, s in spec
        )

    def forward(self, x):
        x = self.body(x)
        feats = [x]
        for block in self.extra:
            x = block(x)
            feats.append(x)
        return collections.OrderedDict((str(i), f) for i, f in enumerate(feats))


class MlperfRefSSD(nn.Module):
    """Module tree and output layout of the MLPerf v0.6 REF SSD300-R34 (keys of REFERENCE_SPECS §1.13)."""

    def __init__(self, num_classes=81):
        super().__init__()
        r = torchvision.models.resnet34(weights=None)
        r.layer3[0].conv1.stride = (1, 1)
        r.layer3[0].downsample[0].stride = (1, 1)
        trunk = nn.Module()
        trunk.layer1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
        trunk.layer2 = nn.Sequential(r.layer3)
        self.model = trunk
        self.additional_blocks = R34Backbone().extra
        channels = [256, 512, 512, 256, 256, 256]
        self.num_classes = num_classes
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(channels, ANCHORS))
        self.conf = nn.ModuleList(nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(channels, ANCHORS))

    def forward(self, x):
        x = self.model.layer2(self.model.layer1(x))
        feats = [x]
        for block in self.additional_blocks:
            x = block(x)
            feats.append(x)
        n = x.shape[0]
        # bbox_view: NCHW views -> [N,4,sum(A*H*W)] / [N,C,...], (anchor, y, x) order, coordinate/class-major.
        locs = torch.cat([l(f).view(n, 4, -1) for f, l in zip(feats, self.loc)], 2)
        confs = torch.cat([c(f).view(n, self.num_classes, -1) for f, c in zip(feats, self.conf)], 2)
        return locs, confs


def run_resnet34(outdir):
    torch.manual_seed(0)
    backbone = R34Backbone()
    anchor_gen = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        steps=[8, 16, 32, 64, 100, 300],
    )
    head = SSDHead([256, 512, 512, 256, 256, 256], ANCHORS, 81)
    model = SSD(
        backbone, anchor_gen, (300, 300), 81, head=head, score_thresh=0.05, nms_thresh=0.5,
        detections_per_img=200, topk_candidates=200,
    ).eval()
    randomise(model, 1)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn((2, 3, 300, 300), generator=gen)  # mean/std-normalised input
    calibrate_batchnorm(model.backbone, torch.randn((2, 3, 300, 300), generator=gen))
    torch.save(model.state_dict(), f"{outdir}/tv_ssd_r34.pth")
    features, out = head_outputs(model.backbone, model.head, images)
    anchors = model.anchor_generator(ImageList(images, [(300, 300)] * 2), features)
    with torch.no_grad():
        dets = model.postprocess_detections(out, anchors, [(300, 300)] * 2)
    ref = MlperfRefSSD(81).eval()
    randomise(ref, 3)
    calibrate_batchnorm(ref, torch.randn((2, 3, 300, 300), generator=gen))
    torch.save(ref.state_dict(), f"{outdir}/mlperf_ref.pth")
    with torch.no_grad():
        ref_locs, ref_confs = ref(images)
    np.savez(
        f"{outdir}/reference.npz", images=images.numpy(), bbox_regression=out["bbox_regression"].numpy(),
        cls_logits=out["cls_logits"].numpy(), anchors_xyxy=anchors[0].numpy(), ref_locs=ref_locs.numpy(),
        ref_confs=ref_confs.numpy(), **detections_arrays(dets),
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    {"vgg16": run_vgg16, "resnet34": run_resnet34}[sys.argv[1]](sys.argv[2])
