"""Reference side of the Faster R-CNN parity tests, run in a subprocess (torchvision must be imported before
TensorFlow, see torch_reference.py).

usage: python torch_frcnn_reference.py DEPTH HEIGHT WIDTH OUTDIR

Builds torchvision ``FasterRCNN(resnet_fpn_backbone("resnet{DEPTH}"), num_classes=91)`` with FrozenBatchNorm2d
at epsilon 0 and seeded random weights everywhere: BN affine terms random, BN statistics calibrated on a batch
and then perturbed (so that activations stay of order 1 through 50/101 layers without being the identity), random
biases, and the RPN / box-predictor weights scaled so that proposals are well spread and detections pass the
0.05 score threshold. The transform is the identity on the test input (min_size/max_size = the input's sides,
mean 0, std 1; checked). Writes OUTDIR/fasterrcnn.pth (state dict, torchvision's current key names),
OUTDIR/fasterrcnn_old_keys.pth (the released weights' old FPN/RPN names) and OUTDIR/reference.npz:

* images [2,3,H,W]; rpn_obj_{l} [B, H_l*W_l*A] and rpn_dlt_{l} [B, H_l*W_l*A, 4] (dx, dy, dw, dh) per level in
  (y, x, anchor) order, also in float64 (``*_64``);
* proposals_{i} [n_i, 4] xyxy (eval RPN, test top-n), box-head outputs on them: logits_{i} [n_i, 91],
  deltas_{i} [n_i, 91*4] (and ``*_64``);
* det_{boxes,scores,labels}_{i}: the full model's detections;
* padded batch (image 1's true size ``padded_sizes[1]``): padded_images, padded_proposals_{i}, padded_det_*_{i};
* training: gt_boxes_{i} xyxy, gt_labels_{i}, rpn_pos_{i} / rpn_neg_{i} (sampled anchor masks), roi_boxes_{i}
  (the sampled RoIs, xyxy) and loss_{name} from ``model(images, targets)`` in train mode.
"""
import copy
import re
import sys

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

NUM_CLASSES = 91


def build(depth, height, width):
    torch.manual_seed(depth)
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    model = FasterRCNN(backbone, num_classes=NUM_CLASSES, min_size=min(height, width), max_size=max(height, width),
                       image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    overwrite_eps(model, 0.0)
    return model.eval()


def randomise(model, calibration, gen):
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, FrozenBatchNorm2d):
                # Residual branches (bn3) and projections get small scales: the sum over 16 / 33 blocks then stays
                # of order 1 and float32 stays well conditioned (at twice these scales R-101's activations grow
                # ~20x and float32 rounding alone reaches ~2e-3 on the RPN logits, in torchvision as in ours).
                last = name.endswith("bn3") or name.endswith("downsample.1")
                low, span = (0.1, 0.25) if last else (0.6, 0.5)
                module.weight.copy_(low + span * torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        head = model.rpn.head
        conv = head.conv[0][0]
        conv.weight.copy_(0.02 * torch.randn(conv.weight.shape, generator=gen))
        head.cls_logits.weight.copy_(0.15 * torch.randn(head.cls_logits.weight.shape, generator=gen))
        head.bbox_pred.weight.copy_(0.01 * torch.randn(head.bbox_pred.weight.shape, generator=gen))

        def calibrate(module, inputs):  # statistics of this batch, perturbed, then used by this very forward
            x = inputs[0]
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3)).clamp(min=1e-2)
            module.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(mean.shape, generator=gen))
            module.running_var.copy_(var * (0.75 + 0.5 * torch.rand(var.shape, generator=gen)))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        model.backbone(calibration)
        for h in hooks:
            h.remove()
        # Box predictor: logits of std 1.5 (the best of 91 classes passes 0.05; larger logits make float32
        # rounding alone move softmax scores by ~1e-4, the detection bound), deltas of std 0.5.
        features = model.backbone(calibration)
        sizes = [tuple(calibration.shape[-2:])] * calibration.shape[0]
        proposals, _ = model.rpn(ImageList(calibration, sizes), features)
        x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, proposals, sizes))
        predictor = model.roi_heads.box_predictor
        for layer, target in ((predictor.cls_score, 1.5), (predictor.bbox_pred, 0.5)):
            out = layer(x)
            layer.weight.mul_(target / out.std())
            layer.bias.mul_(target / out.std())


def smooth_images(shape, gen):
    """Unit-variance images that vary over ~8 pixels, like natural ones (white noise makes every sub-pixel shift of
    a proposal change its pooled features, which amplifies float32 rounding into detection-score differences)."""
    b, c, h, w = shape
    coarse = torch.randn((b, c, h // 8 + 1, w // 8 + 1), generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return images / images.std()


def rpn_outputs(model, features):
    """Raw RPN head outputs per level, flattened (y, x, anchor); deltas keep torchvision's (dx, dy, dw, dh)."""
    objectness, deltas = model.rpn.head(list(features.values()))
    out = {}
    for level, (o, d) in enumerate(zip(objectness, deltas)):
        b, a, h, w = o.shape
        out[f"rpn_obj_{level}"] = o.permute(0, 2, 3, 1).reshape(b, -1).numpy()
        out[f"rpn_dlt_{level}"] = d.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4).numpy()
    return out


def box_head_outputs(model, features, proposals, sizes):
    x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, proposals, sizes))
    return model.roi_heads.box_predictor(x)


def main(depth, height, width, outdir):
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(1000 + depth + height)
    model = build(depth, height, width)
    randomise(model, smooth_images((2, 3, height, width), gen), gen)
    state = model.state_dict()
    torch.save(state, f"{outdir}/fasterrcnn.pth")
    old = {}  # the released COCO weights' spelling; a plain dict (no version metadata) that torchvision remaps
    for key, value in state.items():
        key = re.sub(r"^(backbone\.fpn\.(inner|layer)_blocks\.\d)\.0\.", r"\1.", key)
        old[key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")] = value
    assert len(old) == len(state) and "backbone.fpn.inner_blocks.0.weight" in old and "rpn.head.conv.bias" in old
    build(depth, height, width).load_state_dict(old)  # torchvision itself accepts these names
    torch.save(old, f"{outdir}/fasterrcnn_old_keys.pth")

    images = smooth_images((2, 3, height, width), gen)
    sizes = [(height, width)] * 2
    out = {"images": images.numpy()}
    with torch.no_grad():
        transformed, _ = model.transform(list(images))
        assert torch.equal(transformed.tensors, images) and transformed.image_sizes == sizes, "transform not identity"
        features = model.backbone(images)
        out.update(rpn_outputs(model, features))
        proposals, _ = model.rpn(ImageList(images, sizes), features)
        logits, deltas = box_head_outputs(model, features, proposals, sizes)
        counts = [len(p) for p in proposals]
        for i, (p, lg, dl) in enumerate(zip(proposals, logits.split(counts), deltas.split(counts))):
            out[f"proposals_{i}"], out[f"logits_{i}"], out[f"deltas_{i}"] = p.numpy(), lg.numpy(), dl.numpy()
        for i, det in enumerate(model(list(images))):
            for key in ("boxes", "scores", "labels"):
                out[f"det_{key}_{i}"] = det[key].numpy()

        # float64: the same weights and inputs, for rounding-only differences.
        model64 = copy.deepcopy(model).double()
        features64 = model64.backbone(images.double())
        out.update({f"{k}_64": v for k, v in rpn_outputs(model64, features64).items()})
        logits64, deltas64 = box_head_outputs(model64, features64, [p.double() for p in proposals], sizes)
        for i, (lg, dl) in enumerate(zip(logits64.split(counts), deltas64.split(counts))):
            out[f"logits_{i}_64"], out[f"deltas_{i}_64"] = lg.numpy(), dl.numpy()

        # A padded batch: image 1 is smaller than the batch tensor. The padding is other noise, not zeros: a zero
        # region drives these random weights to saturated objectness (sigmoid exactly 1.0), whose many ties make
        # top-n and NMS order arbitrary in both implementations.
        padded_sizes = [(height, width), (height - 24, width - 40)]
        padded = images.clone()
        noise = smooth_images((1,) + tuple(images.shape[1:]), gen)[0]
        padded[1, :, padded_sizes[1][0]:] = noise[:, padded_sizes[1][0]:]
        padded[1, :, :, padded_sizes[1][1]:] = noise[:, :, padded_sizes[1][1]:]
        features = model.backbone(padded)
        proposals, _ = model.rpn(ImageList(padded, padded_sizes), features)
        dets, _ = model.roi_heads(features, proposals, padded_sizes)
        out["padded_images"], out["padded_sizes"] = padded.numpy(), np.array(padded_sizes)
        for i, (p, det) in enumerate(zip(proposals, dets)):
            out[f"padded_proposals_{i}"] = p.numpy()
            for key in ("boxes", "scores", "labels"):
                out[f"padded_det_{key}_{i}"] = det[key].numpy()

    # Training losses, recording the sampled anchors and RoIs.
    targets = []
    for i, n in enumerate((4, 2)):
        xy = torch.rand((n, 2), generator=gen) * torch.tensor([width - 40.0, height - 40.0])
        wh = 12.0 + torch.rand((n, 2), generator=gen) * 60.0
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(width), float(height)]))], 1)
        labels = torch.randint(1, NUM_CLASSES, (n,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
        out[f"gt_boxes_{i}"], out[f"gt_labels_{i}"] = boxes.numpy(), labels.numpy()
    record = {}
    rpn_sampler, select = model.rpn.fg_bg_sampler, model.roi_heads.select_training_samples

    def recording_rpn_sampler(labels):
        pos, neg = rpn_sampler(labels)
        record["rpn"] = (pos, neg)
        return pos, neg

    def recording_select(proposals, targets):
        result = select(proposals, targets)
        record["rois"] = result[0]
        return result

    model.rpn.fg_bg_sampler = recording_rpn_sampler
    model.roi_heads.select_training_samples = recording_select
    model.train()
    torch.manual_seed(5)
    with torch.no_grad():
        losses = model(list(images), targets)
    for name, value in losses.items():
        out[f"loss_{name}"] = np.array(float(value))
    for i, (pos, neg) in enumerate(zip(*record["rpn"])):
        out[f"rpn_pos_{i}"], out[f"rpn_neg_{i}"] = pos.bool().numpy(), neg.bool().numpy()
    for i, rois in enumerate(record["rois"]):
        out[f"roi_boxes_{i}"] = rois.numpy()
    np.savez(f"{outdir}/reference.npz", **out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
