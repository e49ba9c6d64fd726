"""ResNet-50/101 bottleneck backbones with frozen BatchNorm and a feature pyramid (Faster R-CNN).

torchvision ``resnet_fpn_backbone`` semantics (REFERENCE_SPECS §3.1):

* stem: 7x7/2 conv (pad 3), frozen BN, ReLU, 3x3/2 max-pool (pad 1); stages layer1..layer4 of
  [3, 4, 6, 3] (R-50) or [3, 4, 23, 3] (R-101) bottlenecks of widths 64, 128, 256, 512 (x4 outputs);
  the stride of a stage's first block sits on the 3x3 conv (torchvision "v1.5") or, with ``stride_in_1x1``,
  on the first 1x1 conv (MSRA / maskrcnn-benchmark). Every stride-2 op with a kernel > 1 pads symmetrically
  (``ZeroPadding2D`` + 'valid'), as PyTorch does; the stem max-pool's zero padding is exact after the ReLU.
* ``FrozenBatchNorm``: y = x * scale + shift with scale = gamma / sqrt(var + epsilon) and
  shift = beta - mean * scale; all four tensors are non-trainable and never updated (epsilon 0 for
  torchvision's COCO weights and maskrcnn-benchmark).
* ``norm="batch"`` (no pretrained weights; torchvision does the same) uses trainable BatchNormalization instead.
* ``trainable_layers`` k in 0..5 trains the last k of (conv1, layer1, layer2, layer3, layer4), as torchvision's
  ``trainable_backbone_layers``; the FPN always trains.
* FPN over C2..C5: lateral 1x1 convs, top-down nearest-neighbour resize to the lateral's size + add, 3x3 output
  convs (no ReLU), P6 = max-pool(kernel 1, stride 2) of P5 (torchvision ``LastLevelMaxPool``). FPN convs are
  initialised kaiming_uniform(a=1) with zero biases, as torchvision.

Layer names follow torchvision's module names with dots replaced by underscores: ``conv1``, ``bn1``,
``layer{s}_{b}_{conv1,bn1,conv2,bn2,conv3,bn3}``, ``layer{s}_0_downsample_{conv,bn}``, ``fpn_inner{0..3}``,
``fpn_layer{0..3}`` (index 0 = C2). NHWC throughout.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from ssd_tf.models.backbones.resnet import conv_pytorch_padding, scaled_channels
from ssd_tf.models.layers import BatchNormalization

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck width of layer1..layer4; outputs are 4x
EXPANSION = 4
# torchvision's order of trainable_backbone_layers: the first k of these train.
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


@keras.saving.register_keras_serializable(package="ssd_tf")
class FrozenBatchNorm(keras.layers.Layer):
    """BatchNorm with fixed statistics and affine terms: ``x * scale + shift`` (see the module docstring).

    Weights, in the order of ``get_weights()``: gamma, beta, moving_mean, moving_variance (Keras
    BatchNormalization's order), all non-trainable. The scale and shift are computed in float32 and cast to the
    compute dtype, so a mixed-precision policy keeps the statistics exact.
    """

    def __init__(self, epsilon=0.0, **kwargs):
        super().__init__(**kwargs)
        if epsilon < 0:
            raise ValueError(f"FrozenBatchNorm: epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"FrozenBatchNorm: the channel axis must be known, got input shape {input_shape}")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", trainable=False)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", trainable=False)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(channels,), initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(channels,), initializer="ones",
                                               trainable=False)

    def call(self, inputs):
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.epsilon)
        shift = self.beta - self.moving_mean * scale
        return inputs * ops.cast(scale, inputs.dtype) + ops.cast(shift, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="ssd_tf")
class NearestResize(keras.layers.Layer):
    """Nearest-neighbour resize of ``inputs[0]`` to the spatial size of ``inputs[1]`` (PyTorch
    ``F.interpolate(mode="nearest", size=...)``: source index floor(dst * in / out)). An exact 2x upsampling,
    the case of every input that is a multiple of 32, is a plain repeat."""

    def call(self, inputs):
        x, like = inputs
        in_h, in_w = x.shape[1], x.shape[2]
        out_h, out_w = like.shape[1], like.shape[2]
        if None not in (in_h, in_w, out_h, out_w) and out_h == 2 * in_h and out_w == 2 * in_w:
            return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
        in_hw, out_hw = ops.shape(x)[1:3], ops.shape(like)[1:3]
        rows = (ops.arange(out_hw[0]) * in_hw[0]) // out_hw[0]
        cols = (ops.arange(out_hw[1]) * in_hw[1]) // out_hw[1]
        return ops.take(ops.take(x, rows, axis=1), cols, axis=2)

    def compute_output_shape(self, input_shapes):
        x, like = input_shapes
        return (x[0], like[1], like[2], x[3])


def _resnet_conv_init():
    # torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu")
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _fpn_conv_init():
    # torchvision FPN: kaiming_uniform_(a=1) -> bound sqrt(3 / fan_in)
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="uniform")


def _norm(epsilon, name):
    """The backbone's normalisation: FrozenBatchNorm (``epsilon`` >= 0), or — ``epsilon`` None — a trainable
    BatchNormalization with PyTorch's defaults (epsilon 1e-5, momentum 0.1, i.e. Keras 0.9), which is what
    torchvision uses when a Faster R-CNN trains without pretrained weights."""
    if epsilon is None:
        return BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)
    return FrozenBatchNorm(epsilon, name=name)


def _conv(x, filters, kernel_size, stride, name):
    return conv_pytorch_padding(x, filters, kernel_size, stride, name, kernel_initializer=_resnet_conv_init())


def bottleneck(x, width, stride, stride_in_1x1, epsilon, name):
    """1x1 (width) - 3x3 (width) - 1x1 (4 width) with frozen BN; projection shortcut when the shape changes."""
    out_channels = width * EXPANSION
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv(x, out_channels, 1, stride, f"{name}_downsample_conv")
        shortcut = _norm(epsilon, name=f"{name}_downsample_bn")(shortcut)
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    y = _conv(x, width, 1, stride_1x1, f"{name}_conv1")
    y = _norm(epsilon, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, width, 3, stride_3x3, f"{name}_conv2")
    y = _norm(epsilon, name=f"{name}_bn2")(y)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, out_channels, 1, 1, f"{name}_conv3")
    y = _norm(epsilon, name=f"{name}_bn3")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu3")(y)


def resnet_body(inputs, depth=50, stride_in_1x1=False, epsilon=0.0, width_multiplier=1.0):
    """[B,H,W,3] -> [C2, C3, C4, C5] (strides 4, 8, 16, 32; 256..2048 channels at width 1)."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth!r}")
    x = _conv(inputs, scaled_channels(64, width_multiplier), 7, 2, "conv1")
    x = _norm(epsilon, name="bn1")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # exact: follows a ReLU
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    outputs = []
    for stage, (blocks, width) in enumerate(zip(RESNET_BLOCKS[depth], STAGE_WIDTHS), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = bottleneck(x, scaled_channels(width, width_multiplier), stride, stride_in_1x1, epsilon,
                           f"layer{stage}_{block}")
        outputs.append(x)
    return outputs


def fpn(features, channels):
    """FPN over [C2..C5] -> [P2, P3, P4, P5, P6], every level ``channels`` wide."""
    conv_kwargs = dict(kernel_initializer=_fpn_conv_init(), bias_initializer="zeros")
    last_inner = layers.Conv2D(channels, 1, name=f"fpn_inner{len(features) - 1}", **conv_kwargs)(features[-1])
    results = [layers.Conv2D(channels, 3, padding="same", name=f"fpn_layer{len(features) - 1}",
                             **conv_kwargs)(last_inner)]
    for index in range(len(features) - 2, -1, -1):
        lateral = layers.Conv2D(channels, 1, name=f"fpn_inner{index}", **conv_kwargs)(features[index])
        top_down = NearestResize(name=f"fpn_topdown{index}")([last_inner, lateral])
        last_inner = layers.Add(name=f"fpn_add{index}")([lateral, top_down])
        results.insert(0, layers.Conv2D(channels, 3, padding="same", name=f"fpn_layer{index}",
                                        **conv_kwargs)(last_inner))
    # P6: max_pool2d(kernel 1, stride 2) of P5 = every other row and column, starting at 0.
    results.append(layers.MaxPooling2D(1, strides=2, padding="valid", name="fpn_pool")(results[-1]))
    return results


def stage_layer_names(model, stage):
    """Names of the weighted layers of torchvision module ``stage`` (conv1 = conv1 + bn1, layer1..layer4)."""
    if stage == "conv1":
        return ["conv1", "bn1"]
    return [layer.name for layer in model.layers if layer.name.startswith(f"{stage}_") and layer.weights]


def resnet_fpn_backbone(depth=50, stride_in_1x1=False, epsilon=0.0, trainable_layers=3, fpn_channels=256,
                        width_multiplier=1.0, name="backbone", norm="frozen"):
    """Functional model [B,H,W,3] (H, W dynamic) -> [P2, P3, P4, P5, P6]. ``norm``: "frozen" | "batch"."""
    if norm not in ("frozen", "batch"):
        raise ValueError(f"norm must be 'frozen' or 'batch', got {norm!r}")
    epsilon = None if norm == "batch" else epsilon
    if not 0 <= trainable_layers <= len(TRAINABLE_ORDER):
        raise ValueError(f"trainable_layers must be in [0, {len(TRAINABLE_ORDER)}], got {trainable_layers!r}")
    inputs = keras.Input((None, None, 3), name="images")
    body = resnet_body(inputs, depth, stride_in_1x1, epsilon, width_multiplier)
    pyramid = fpn(body, scaled_channels(fpn_channels, width_multiplier))
    model = keras.Model(inputs, pyramid, name=name)
    for stage in TRAINABLE_ORDER[trainable_layers:]:
        for layer_name in stage_layer_names(model, stage):
            model.get_layer(layer_name).trainable = False
    return model
