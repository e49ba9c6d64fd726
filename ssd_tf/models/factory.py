"""Models from model configs: ``build_from_config(model_config)`` dispatches on the config's family.

A family plugs in with one builder here (its network from its config value); preset names are resolved by
``ssd_tf.build_model`` (``ssd_tf/presets.py``), never here.
"""
from __future__ import annotations

import warnings


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
        load_weights_file(model, weights)
    return model


def load_weights_file(model, path) -> None:
    """``model.load_weights(path)`` for a ``.weights.h5`` file. When the file does not fit, Keras warns, once per
    layer container it skipped after the first mismatch, that those layers "will retain their freshly-initialized
    weights", then raises: a fitting file's weights are all loaded, so only the error is kept (callers turn it into
    one line naming the file). Warnings of a load that succeeds are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


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
