"""VGG16 "reduced fc" backbone of SSD300 (ssd.pytorch / torchvision ssd300_vgg16).

conv1_1..conv5_3 (3x3, bias, ReLU), pool3 in ceil mode (75 -> 38), pool5 3x3/1 pad 1, conv6 3x3 dilation 6
(1024), conv7 1x1 (1024). Returns conv4_3 (after ReLU, before L2Norm) and conv7.
Layer names: ``vgg_conv{stage}_{i}``, ``vgg_conv6``, ``vgg_conv7``.
"""
from keras import layers

from ssd_tf.models.backbones.resnet import scaled_channels

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _conv_relu(x, filters, kernel_size, name, dilation_rate=1):
    x = layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation_rate, name=name)(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def vgg16_stage_layer_names(stage):
    """Names of the conv layers of VGG stage 1..5 (used to freeze early stages)."""
    return [f"vgg_conv{stage}_{i}" for i in range(1, len(VGG16_STAGES[stage - 1]) + 1)]


def vgg16_reduced_fc_backbone(inputs, width_multiplier=1.0):
    """[B,300,300,3] -> (conv4_3 [B,38,38,512], conv7 [B,19,19,1024])."""
    x = inputs
    conv4_3 = None
    for stage, widths in enumerate(VGG16_STAGES, start=1):
        for i, filters in enumerate(widths, start=1):
            x = _conv_relu(x, scaled_channels(filters, width_multiplier), 3, f"vgg_conv{stage}_{i}")
        if stage == 4:
            conv4_3 = x  # [B,38,38,512]
        if stage < 5:
            # 2x2/2 pools: 300->150->75->38 (ceil mode at pool3; 'same' pads the end, exact after ReLU) ->19.
            x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"vgg_pool{stage}")(x)
    x = layers.MaxPooling2D(3, strides=1, padding="same", name="vgg_pool5")(x)  # [B,19,19,512]
    x = _conv_relu(x, scaled_channels(1024, width_multiplier), 3, "vgg_conv6", dilation_rate=6)  # 'same' pads 6/6 like PyTorch padding=6
    conv7 = _conv_relu(x, scaled_channels(1024, width_multiplier), 1, "vgg_conv7")  # [B,19,19,1024]
    return conv4_3, conv7
