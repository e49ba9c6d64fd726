"""Small custom Keras layers shared by the SSD models."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ssd_tf")
class L2Normalization(keras.layers.Layer):
    """Per-location channel L2 normalisation times a learnable per-channel scale.

    torchvision semantics: ``x / max(||x||_2, epsilon) * scale`` over the last (channel) axis,
    the scale initialised to ``scale_init`` (20 in SSD300-VGG16).
    """

    def __init__(self, scale_init=20.0, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"L2Normalization: epsilon must be > 0, got {epsilon}")
        self.scale_init = float(scale_init)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"L2Normalization: the channel axis must be known, got input shape {input_shape}")
        self.scale = self.add_weight(
            name="scale", shape=(channels,), initializer=keras.initializers.Constant(self.scale_init)
        )

    def call(self, inputs):
        norm = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True))  # [B,H,W,1]
        return inputs / ops.maximum(norm, self.epsilon) * self.scale

    def get_config(self):
        config = super().get_config()
        config.update(scale_init=self.scale_init, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="ssd_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments, weights, moving-statistics update and outputs) computed
    by TensorFlow's fused kernel on NHWC inputs.

    Keras 3 normalises with separate moments, subtract, multiply and add ops, in float32 even under a bfloat16
    policy (casts on both sides): on a 2-core CPU its forward + backward took 1.7x the time of the 3x3 conv it
    follows (bf16, 8x75x75x64), the fused kernel 0.08x. The fused kernel computes in float32 internally whatever
    the input dtype. Synchronised batch statistics (``synchronized=True``), masks, renorm, other ranks or axes
    fall back to Keras' own ``call``.
    """

    def _fusable(self, inputs, mask):
        return (mask is None and not self.renorm and not getattr(self, "synchronized", False)
                and len(inputs.shape) == 4 and self.axis in (3, -1)
                and inputs.dtype in ("float32", "bfloat16", "float16"))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        x = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            # The kernel returns the Bessel-corrected batch variance; Keras' moving variance averages the biased one
            # (the one the batch is normalised with).
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * tf.maximum(n - 1.0, 0.0) / n
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        return y
