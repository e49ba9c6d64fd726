"""ResNet34 truncated after conv4_x (layer3) with layer3's stride set to 1: the SSD300-R34 backbone.

Matches torchvision's resnet34 (and the MLPerf PyTorch reference) exactly: every stride-2 op with a kernel
larger than 1 uses an explicit symmetric ``ZeroPadding2D`` followed by a 'valid' conv/pool, as PyTorch pads.
BatchNorm: epsilon 1e-5, momentum 0.9 (PyTorch momentum 0.1).

Layer names follow torchvision with dots replaced by underscores: ``conv1``, ``bn1``,
``layer{1,2,3}_{block}_{conv1,bn1,conv2,bn2}``, ``layer{2,3}_0_downsample_{conv,bn}``.
"""
from keras import layers

from ssd_tf.models.layers import BatchNormalization

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
# (blocks, channels, stride of the first block) for torchvision layer1..layer3; layer3's stride is 1 for SSD.
RESNET34_SSD_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 1))


def _bn(name):
    return BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def conv_pytorch_padding(x, filters, kernel_size, stride, name, kernel_initializer="glorot_uniform"):
    """Conv without bias, PyTorch padding (kernel_size // 2 on each side): stride-2 convs pad symmetrically with
    ZeroPadding2D + 'valid', as Keras' 'same' would pad (0, 1)."""
    pad = kernel_size // 2
    if stride > 1 and pad > 0:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad > 0 else "valid"  # stride 1, odd kernel: 'same' is symmetric
    return layers.Conv2D(filters, kernel_size, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=kernel_initializer, name=name)(x)


_conv = conv_pytorch_padding


def basic_block(x, filters, stride, name):
    """torchvision BasicBlock: 3x3-BN-ReLU-3x3-BN + shortcut (1x1 conv + BN projection if shape changes)."""
    in_channels = x.shape[-1]
    shortcut = x
    if stride != 1 or in_channels != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_downsample_conv")
        shortcut = _bn(f"{name}_downsample_bn")(shortcut)
    y = _conv(x, filters, 3, stride, f"{name}_conv1")
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, filters, 3, 1, f"{name}_conv2")
    y = _bn(f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(y)


def scaled_channels(channels, width_multiplier):
    """Channel count times the width multiplier (at least 8); 1.0 leaves the reference model untouched."""
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}")
    if width_multiplier == 1.0:
        return channels
    return max(8, int(round(channels * width_multiplier)))


def resnet34_ssd_backbone(inputs, width_multiplier=1.0):
    """[B,300,300,3] -> [B,38,38,256*width] (stem, layer1, layer2, layer3 with stride 1)."""
    x = _conv(inputs, scaled_channels(64, width_multiplier), 7, 2, "conv1")  # [B,150,150,64]
    x = _bn("bn1")(x)
    x = layers.ReLU(name="relu")(x)
    # 3x3/2 pad 1 max-pool; zero padding is exact after a ReLU.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)  # [B,75,75,64]
    for stage, (blocks, filters, stride) in enumerate(RESNET34_SSD_STAGES, start=1):
        for block in range(blocks):
            x = basic_block(x, scaled_channels(filters, width_multiplier), stride if block == 0 else 1,
                            f"layer{stage}_{block}")
    return x
