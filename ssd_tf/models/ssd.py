"""SSD300 detectors (ResNet34 and VGG16 backbones) as Keras 3 functional models.

``build_ssd(model_config)`` builds the network an ``SSDModelConfig`` describes (backbone, width, class count,
anchors per cell from its anchor spec). Output: ``(box_regression [B,8732,4], class_logits [B,8732,num_classes])``,
anchors flattened in (y, x, anchor) order per level, levels concatenated 38, 19, 10, 5, 3, 1; regression channels
(ty, tx, th, tw). Each head is a 3x3 conv with A*K channels, channel index a*K + k (anchor-major), so a
plain reshape [B,H,W,A*K] -> [B,H*W*A,K] gives (y, x, anchor) order.

Initialisation of extras and heads: glorot_uniform (= xavier_uniform) kernels and zero biases, as the TPU
MLPerf model, ssd.pytorch and torchvision do (the MLPerf PyTorch reference keeps PyTorch's default uniform
bias init instead; irrelevant once weights are trained or imported).
"""
import keras
from keras import layers

from ssd_tf.models.backbones.resnet import resnet34_ssd_backbone, scaled_channels
from ssd_tf.models.backbones.vgg import VGG16_STAGES, vgg16_reduced_fc_backbone, vgg16_stage_layer_names
from ssd_tf.models.layers import L2Normalization

IMAGE_SIZE = 300
ANCHORS_PER_CELL = (4, 6, 6, 6, 4, 4)
FEATURE_SIZES = (38, 19, 10, 5, 3, 1)
NUM_ANCHORS = sum(a * s * s for a, s in zip(ANCHORS_PER_CELL, FEATURE_SIZES))  # 8732

# (1x1 channels, 3x3 channels, 3x3 stride); stride-2 convs pad 1 on each side, stride-1 ones do not pad.
RESNET34_EXTRAS = ((256, 512, 2), (256, 512, 2), (128, 256, 2), (128, 256, 1), (128, 256, 1))
VGG16_EXTRAS = ((256, 512, 2), (128, 256, 2), (128, 256, 1), (128, 256, 1))


def _conv_kwargs():
    return dict(kernel_initializer="glorot_uniform", bias_initializer="zeros")


def extra_block(x, mid_channels, out_channels, stride, name):
    """1x1 conv + ReLU, then 3x3 conv (stride 2 pad 1, or stride 1 no pad) + ReLU, all with bias."""
    x = layers.Conv2D(mid_channels, 1, name=f"{name}_conv1x1", **_conv_kwargs())(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    if stride == 2:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)  # PyTorch symmetric padding
    x = layers.Conv2D(out_channels, 3, strides=stride, padding="valid", name=f"{name}_conv3x3", **_conv_kwargs())(x)
    return layers.ReLU(name=f"{name}_relu2")(x)


def multibox_heads(features, num_classes, anchors_per_cell=ANCHORS_PER_CELL):
    """Per-level 3x3 loc/conf convs; returns (box_regression [B,A,4], class_logits [B,A,C])."""
    boxes, logits = [], []
    for level, (feature, anchors) in enumerate(zip(features, anchors_per_cell)):
        loc = layers.Conv2D(anchors * 4, 3, padding="same", name=f"loc_{level}", **_conv_kwargs())(feature)
        conf = layers.Conv2D(anchors * num_classes, 3, padding="same", name=f"conf_{level}", **_conv_kwargs())(
            feature
        )
        # [B,H,W,A*K] -> [B,H*W*A,K]: (y, x, anchor) order because channels are anchor-major.
        boxes.append(layers.Reshape((-1, 4), name=f"loc_{level}_flat")(loc))
        logits.append(layers.Reshape((-1, num_classes), name=f"conf_{level}_flat")(conf))
    # Outputs stay float32 under a mixed-precision policy; otherwise they follow the global policy.
    out_dtype = "float32" if keras.config.dtype_policy().name.startswith("mixed") else None
    box_regression = layers.Concatenate(axis=1, name="box_regression", dtype=out_dtype)(boxes)
    class_logits = layers.Concatenate(axis=1, name="class_logits", dtype=out_dtype)(logits)
    return box_regression, class_logits


def _check_common(num_classes, image_size):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + at least one class), got {num_classes!r}")
    if image_size != IMAGE_SIZE:
        raise ValueError(f"SSD300 models take {IMAGE_SIZE}x{IMAGE_SIZE} inputs, got image_size={image_size}")


def _check_feature_sizes(features, name, expected=FEATURE_SIZES):
    sizes = tuple(int(f.shape[1]) for f in features)
    if sizes != tuple(expected):
        raise ValueError(f"{name}: feature map sizes {sizes} != the anchor spec's {tuple(expected)}")


def build_ssd(cfg):
    """The SSD network of an ``SSDModelConfig``."""
    if cfg.backbone == "resnet34_mlperf":
        if cfg.trainable_backbone_stages is not None:
            raise ValueError("model.trainable_backbone_stages applies to the VGG16 backbone only")
        return ssd300_resnet34(cfg.num_classes, cfg.image_size, cfg.width_multiplier, name=cfg.name or "ssd",
                               anchors_per_cell=cfg.anchors.anchors_per_cell, feature_sizes=cfg.anchors.feature_sizes)
    if cfg.backbone == "vgg16_reduced_fc":
        return ssd300_vgg16(cfg.num_classes, cfg.image_size, cfg.trainable_backbone_stages, cfg.width_multiplier,
                            name=cfg.name or "ssd", anchors_per_cell=cfg.anchors.anchors_per_cell,
                            feature_sizes=cfg.anchors.feature_sizes)
    raise ValueError(f"unknown SSD backbone {cfg.backbone!r}")


def ssd300_resnet34(num_classes=81, image_size=IMAGE_SIZE, width_multiplier=1.0, name="ssd300_resnet34",
                    anchors_per_cell=ANCHORS_PER_CELL, feature_sizes=FEATURE_SIZES):
    """SSD300 with the MLPerf v0.6 ResNet34 backbone (no BN in the extras).

    width_multiplier scales every backbone and extra-layer channel count (1.0 = the reference model; smaller
    values give the same code path at a fraction of the cost, e.g. for the demo and tests).
    """
    _check_common(num_classes, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = resnet34_ssd_backbone(inputs, width_multiplier)  # [B,38,38,256]
    features = [x]
    for i, (mid, out, stride) in enumerate(RESNET34_EXTRAS):
        x = extra_block(x, scaled_channels(mid, width_multiplier), scaled_channels(out, width_multiplier), stride,
                        f"extra{i}")
        features.append(x)  # 19x19x512, 10x10x512, 5x5x256, 3x3x256, 1x1x256
    _check_feature_sizes(features, name, feature_sizes)
    return keras.Model(inputs, multibox_heads(features, num_classes, anchors_per_cell), name=name)


def ssd300_vgg16(num_classes=91, image_size=IMAGE_SIZE, trainable_backbone_stages=None, width_multiplier=1.0,
                 name="ssd300_vgg16", anchors_per_cell=ANCHORS_PER_CELL, feature_sizes=FEATURE_SIZES):
    """SSD300 with the VGG16 reduced-fc backbone and L2Norm on conv4_3.

    trainable_backbone_stages: None trains everything (ssd.pytorch). k in 0..5 freezes VGG conv stages
    1..5-k, as torchvision's ``trainable_backbone_layers`` (4 with a pretrained backbone: conv1_x frozen).
    conv6/conv7 stay trainable unless k == 0 (torchvision freezes the whole ``features`` block then).
    """
    _check_common(num_classes, image_size)
    stages = len(VGG16_STAGES)
    if trainable_backbone_stages is not None and not 0 <= trainable_backbone_stages <= stages:
        raise ValueError(f"trainable_backbone_stages must be None or in [0, {stages}], got {trainable_backbone_stages}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    conv4_3, x = vgg16_reduced_fc_backbone(inputs, width_multiplier)
    features = [L2Normalization(scale_init=20.0, name="l2norm")(conv4_3), x]
    for i, (mid, out, stride) in enumerate(VGG16_EXTRAS):
        x = extra_block(x, scaled_channels(mid, width_multiplier), scaled_channels(out, width_multiplier), stride,
                        f"extra{i}")
        features.append(x)  # 10x10x512, 5x5x256, 3x3x256, 1x1x256
    _check_feature_sizes(features, name, feature_sizes)
    model = keras.Model(inputs, multibox_heads(features, num_classes, anchors_per_cell), name=name)
    if trainable_backbone_stages is not None:
        for stage in range(1, stages - trainable_backbone_stages + 1):
            for layer_name in vgg16_stage_layer_names(stage):
                model.get_layer(layer_name).trainable = False
    return model
