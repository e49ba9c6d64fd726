"""ssd_tf: SSD300 (ResNet34 / VGG16) and Faster R-CNN FPN detectors on TensorFlow 2 / Keras 3.

``build_model`` and ``default_boxes`` are exported lazily so that ``import ssd_tf`` does not import TensorFlow.
"""
__version__ = "0.1.0"

__all__ = ["build_model", "default_boxes", "__version__"]


def default_boxes(name):
    """The default boxes of SSD preset ``name``: float32 [8732, 4] normalised yxyx, order (y, x, anchor)."""
    from ssd_tf import presets
    from ssd_tf.ops.anchors import ssd_default_boxes

    model = presets.preset(name).model
    if model.family != "ssd":
        raise ValueError(f"default_boxes: {name} is a {model.family} model, not an SSD preset")
    return ssd_default_boxes(model.anchors)


def __getattr__(name):
    if name == "build_model":
        from ssd_tf.models.factory import build_model

        return build_model
    raise AttributeError(f"module 'ssd_tf' has no attribute {name!r}")
