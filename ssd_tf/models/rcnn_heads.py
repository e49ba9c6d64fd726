"""Faster R-CNN heads: the RPN head shared across pyramid levels, and the two-MLP box head with its predictor.

RPN head (torchvision ``RPNHead``): 3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A deltas; all
three initialised N(0, 0.01) with zero biases. Outputs of every level are flattened in (y, x, anchor) order
(channels are anchor-major, so a plain reshape does it) and concatenated P2 -> P6; delta channels are
(ty, tx, th, tw) per anchor.

Box head (torchvision ``TwoMLPHead`` + ``FastRCNNPredictor``): flatten the pooled [N, 7, 7, C] features in NHWC
order (importers reorder fc6 from PyTorch's C x 7 x 7), fc6 + ReLU, fc7 + ReLU, then class logits [N, K] and
class-specific deltas [N, K, 4] (ty, tx, th, tw). Linear layers use PyTorch's default initialisation
(weights and biases uniform in +-1/sqrt(fan_in)).

Under a mixed-precision policy both heads compute in the policy's dtype and return float32 (a float64 policy
returns float64).
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops


def _output_dtype(layer):
    """float32 for half-precision compute, else the compute dtype (float32, or float64 in parity runs)."""
    return "float32" if layer.compute_dtype in ("float16", "bfloat16") else layer.compute_dtype


def _rpn_init():
    return dict(kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), bias_initializer="zeros")


def _linear_init(fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return dict(kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound))


@keras.saving.register_keras_serializable(package="ssd_tf")
class RPNHead(keras.layers.Layer):
    """features [P2..P6] -> (objectness float32 [B, N], deltas float32 [B, N, 4]), N = sum_l H_l * W_l * A."""

    def __init__(self, num_anchors, channels, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.conv = layers.Conv2D(channels, 3, padding="same", name="rpn_conv", **_rpn_init())
        self.cls_logits = layers.Conv2D(num_anchors, 1, name="rpn_cls_logits", **_rpn_init())
        self.bbox_pred = layers.Conv2D(4 * num_anchors, 1, name="rpn_bbox_pred", **_rpn_init())

    def build(self, input_shape):
        shape = tuple(input_shape[0])
        self.conv.build(shape)
        inner = shape[:-1] + (self.channels,)
        self.cls_logits.build(inner)
        self.bbox_pred.build(inner)

    def call(self, features):
        objectness, deltas = [], []
        for feature in features:
            t = ops.relu(self.conv(feature))
            batch = ops.shape(t)[0]
            objectness.append(ops.reshape(self.cls_logits(t), (batch, -1)))  # [B, H*W*A]
            deltas.append(ops.reshape(self.bbox_pred(t), (batch, -1, 4)))  # [B, H*W*A, 4]
        dtype = _output_dtype(self)
        return (ops.cast(ops.concatenate(objectness, axis=1), dtype),
                ops.cast(ops.concatenate(deltas, axis=1), dtype))

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels}


@keras.saving.register_keras_serializable(package="ssd_tf")
class BoxHead(keras.layers.Layer):
    """pooled [N, P, P, C] -> (class_logits float32 [N, K], box_deltas float32 [N, K, 4])."""

    def __init__(self, num_classes, representation_size, pooled_size, channels, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.representation_size = int(representation_size)
        self.pooled_size = int(pooled_size)
        self.channels = int(channels)
        flat = self.pooled_size * self.pooled_size * self.channels
        self.fc6 = layers.Dense(representation_size, name="fc6", **_linear_init(flat))
        self.fc7 = layers.Dense(representation_size, name="fc7", **_linear_init(representation_size))
        self.cls_score = layers.Dense(num_classes, name="cls_score", **_linear_init(representation_size))
        self.bbox_pred = layers.Dense(4 * num_classes, name="bbox_pred", **_linear_init(representation_size))

    def build(self, input_shape):
        flat = self.pooled_size * self.pooled_size * self.channels
        self.fc6.build((None, flat))
        for layer in (self.fc7, self.cls_score, self.bbox_pred):
            layer.build((None, self.representation_size))

    def call(self, pooled):
        x = ops.reshape(ops.cast(pooled, self.compute_dtype), (-1, self.pooled_size * self.pooled_size * self.channels))
        x = ops.relu(self.fc6(x))
        x = ops.relu(self.fc7(x))
        dtype = _output_dtype(self)
        logits = ops.cast(self.cls_score(x), dtype)
        deltas = ops.reshape(ops.cast(self.bbox_pred(x), dtype), (-1, self.num_classes, 4))
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "representation_size": self.representation_size, "pooled_size": self.pooled_size,
                "channels": self.channels}
