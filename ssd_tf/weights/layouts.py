"""Name and channel-layout knowledge shared by the SSD importers: the package's Keras layer names, and the
output-channel permutations that turn reference head layouts into ours.

Our heads: channel a*K + k (anchor-major), anchors flattened (y, x, a), box channels (ty, tx, th, tw).
"""
import numpy as np

from ssd_tf.models.backbones.resnet import RESNET34_SSD_STAGES
from ssd_tf.models.backbones.vgg import VGG16_STAGES
from ssd_tf.models.ssd import ANCHORS_PER_CELL
from ssd_tf.weights.common import bn_entries, conv_entries

XY_TO_YX = (1, 0, 3, 2)  # (dx, dy, dw, dh) -> (dy, dx, dh, dw)


def anchor_major_xy_box_index(anchors):
    """Box head of torchvision / ssd.pytorch (anchor-major, x-first) -> ours: our a*4+k <- their a*4+XY_TO_YX[k]."""
    return np.array([a * 4 + XY_TO_YX[k] for a in range(anchors) for k in range(4)])


def coordinate_major_xy_box_index(anchors):
    """MLPerf REF box head (channel coord*A + a, x-first) -> ours: our a*4+k <- their XY_TO_YX[k]*A + a."""
    return np.array([XY_TO_YX[k] * anchors + a for a in range(anchors) for k in range(4)])


def class_major_index(anchors, num_classes):
    """MLPerf REF class head (channel c*A + a) -> ours: our a*C+c <- their c*A + a."""
    return np.array([c * anchors + a for a in range(anchors) for c in range(num_classes)])


def mlperf_to_package_anchor_order(feature_sizes=(38, 19, 10, 5, 3, 1), anchors_per_cell=ANCHORS_PER_CELL):
    """Index ``p`` with ``ours = theirs[p]`` along the anchor axis: MLPerf (a, y, x) per level -> ours (y, x, a)."""
    index, offset = [], 0
    for size, anchors in zip(feature_sizes, anchors_per_cell):
        a, y, x = np.meshgrid(np.arange(anchors), np.arange(size), np.arange(size), indexing="ij")
        theirs = (a * size + y) * size + x  # flat (a, y, x) index of every (a, y, x)
        index.append(offset + np.transpose(theirs, (1, 2, 0)).reshape(-1))  # visit in (y, x, a) order
        offset += anchors * size * size
    return np.concatenate(index)


def ssd_head_mapping(num_classes, loc_prefix, conf_prefix, box_index, class_index=None):
    """Mapping of loc_i / conf_i. ``loc_prefix(i)`` / ``conf_prefix(i)`` give the source module names;
    ``box_index(A)`` / ``class_index(A, C)`` the output-channel permutations (None = identity)."""
    mapping = {}
    for level, anchors in enumerate(ANCHORS_PER_CELL):
        mapping[f"loc_{level}"] = conv_entries(loc_prefix(level), out_permutation=box_index(anchors))
        perm = None if class_index is None else class_index(anchors, num_classes)
        mapping[f"conf_{level}"] = conv_entries(conf_prefix(level), out_permutation=perm)
    return mapping


def resnet34_backbone_mapping(source_name):
    """Mapping of our ResNet34 backbone from a source whose module names are torchvision's after
    ``source_name`` (e.g. "layer2.0.downsample.0" -> the source prefix)."""
    mapping = {"conv1": conv_entries(source_name("conv1"), bias=False), "bn1": bn_entries(source_name("bn1"))}
    for stage, (blocks, _, _) in enumerate(RESNET34_SSD_STAGES, start=1):
        for block in range(blocks):
            ours, theirs = f"layer{stage}_{block}", f"layer{stage}.{block}"
            for part in ("conv1", "conv2"):
                mapping[f"{ours}_{part}"] = conv_entries(source_name(f"{theirs}.{part}"), bias=False)
            for part in ("bn1", "bn2"):
                mapping[f"{ours}_{part}"] = bn_entries(source_name(f"{theirs}.{part}"))
            if block == 0 and stage > 1:
                mapping[f"{ours}_downsample_conv"] = conv_entries(source_name(f"{theirs}.downsample.0"), bias=False)
                mapping[f"{ours}_downsample_bn"] = bn_entries(source_name(f"{theirs}.downsample.1"))
    return mapping


def extras_mapping(num_blocks, source_prefix):
    """extra{i}_conv1x1 / extra{i}_conv3x3 from ``source_prefix(i, 0 | 1)`` (0 = the 1x1 conv, 1 = the 3x3)."""
    mapping = {}
    for i in range(num_blocks):
        mapping[f"extra{i}_conv1x1"] = conv_entries(source_prefix(i, 0))
        mapping[f"extra{i}_conv3x3"] = conv_entries(source_prefix(i, 1))
    return mapping


def vgg16_layer_names():
    """Our 15 VGG conv layer names in network order: conv1_1..conv5_3, conv6, conv7."""
    names = [f"vgg_conv{s}_{i}" for s, widths in enumerate(VGG16_STAGES, start=1) for i in range(1, len(widths) + 1)]
    return names + ["vgg_conv6", "vgg_conv7"]


# Index of each conv in ssd.pytorch's flat `vgg` ModuleList (conv, ReLU pairs; M/C pools; pool5 at 30).
SSD_PYTORCH_VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
