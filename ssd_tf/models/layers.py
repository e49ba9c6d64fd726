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
