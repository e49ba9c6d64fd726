"""Models from model configs: ``build_from_config(model_config)`` dispatches on the config's family.

A family plugs in with one builder here (its network from its config value); preset names are resolved by
``ssd_tf.build_model`` (``ssd_tf/presets.py``), never here.
"""
from __future__ import annotations


def _builders() -> dict:
    from ssd_tf.models import ssd

    builders = {"ssd": ssd.build_ssd}
    try:
        from ssd_tf.models import faster_rcnn
    except ImportError:  # the family's model module has not landed in this checkout
        pass
    else:
        builders["faster_rcnn"] = faster_rcnn.build_faster_rcnn
    return builders


def build_from_config(model_config, weights=None):
    """The Keras model a family's model config describes; ``weights``: an optional ``.weights.h5`` to load."""
    builders = _builders()
    family = getattr(model_config, "family", None)
    if family not in builders:
        raise ValueError(f"no model builder for family {family!r}; known: {sorted(builders)}")
    model = builders[family](model_config)
    if weights is not None:
        model.load_weights(weights)
    return model


def build_model(name, num_classes=None, *, weights=None, **options):
    """Build preset ``name`` (``ssd_tf.presets.PRESETS``); ``num_classes`` includes background (default: the
    preset's reference count); other keyword arguments replace top-level fields of its model config (e.g.
    ``width_multiplier=0.25``, ``trainable_backbone_stages=4``). ``weights``: an optional ``.weights.h5``.

    SSD presets return a model mapping [B,300,300,3] normalised images to (box_regression [B,8732,4]
    (ty,tx,th,tw), class_logits [B,8732,num_classes]).
    """
    from ssd_tf import presets

    if num_classes is not None:
        options["num_classes"] = num_classes
    return build_from_config(presets.model_config(name, **options), weights=weights)
