"""build_model(name, ...): the one place where a preset name becomes a Keras model."""
from ssd_tf.models import ssd

MODEL_BUILDERS = {
    "ssd_resnet34": (ssd.ssd_resnet34, 81),
    "ssd_vgg16": (ssd.ssd_vgg16, 91),
    "ssd_vgg16_voc": (ssd.ssd_vgg16, 21),  # same network; only default boxes / class count differ
}


def build_model(name, num_classes=None, *, weights=None, **kwargs):
    """Build preset ``name`` (ssd_resnet34 | ssd_vgg16 | ssd_vgg16_voc).

    num_classes includes background (defaults: 81, 91, 21). ``weights``: optional ``.weights.h5`` file to load.
    Extra keyword arguments go to the builder (e.g. ``trainable_backbone_stages`` for the VGG presets).
    Returns a keras.Model mapping [B,300,300,3] normalised images to
    (box_regression [B,8732,4] (ty,tx,th,tw), class_logits [B,8732,num_classes]).
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_BUILDERS)}")
    builder, default_classes = MODEL_BUILDERS[name]
    model = builder(num_classes=default_classes if num_classes is None else num_classes, name=name, **kwargs)
    if weights is not None:
        model.load_weights(weights)
    return model
