"""Shared machinery of the weight importers: reading PyTorch state dicts, tensor layout conversions and a
strict "mapping -> model" assignment that names every missing, unexpected or mis-shaped tensor.

A mapping is ``{keras_layer_name: [(source_key, transform), ...]}`` listing the source tensors in the order of
``layer.get_weights()`` (Conv2D: kernel, bias; BatchNormalization: gamma, beta, moving_mean, moving_variance;
L2Normalization: scale).
"""
import re

import numpy as np

# PyTorch BN bookkeeping with no Keras counterpart; always dropped.
ALWAYS_IGNORED = (r"(^|\.)num_batches_tracked$",)


class WeightImportError(ValueError):
    """A state dict does not fit the model; the message lists every offending tensor."""


def load_torch_state_dict(source):
    """A state dict as ``{key: float32 np.ndarray}``.

    ``source``: a path (read with ``torch.load(map_location="cpu", weights_only=True)``, so no code is
    unpickled) or an in-memory mapping of tensors/arrays. A checkpoint dict that wraps the weights under
    "model" or "state_dict" is unwrapped.
    """
    if isinstance(source, dict):
        state = source
    else:
        try:
            import torch
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {source} needs torch (pip install 'ssd_tf[torch]')") from err
        import pickle

        try:
            state = torch.load(str(source), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise WeightImportError(f"{source}: torch.load(weights_only=True) refused it: it holds objects other "
                                    f"than tensors and plain containers, which are not loaded (no pickled code is "
                                    f"run). {str(err).splitlines()[0]}") from None
        if not isinstance(state, dict):
            raise WeightImportError(f"{source}: expected a state dict, got {type(state).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    out = {}
    for key, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out


def conv_kernel(w):
    """PyTorch conv weight OIHW [out,in,kh,kw] -> Keras HWIO [kh,kw,in,out]."""
    if w.ndim != 4:
        raise WeightImportError(f"conv kernel must be 4-D OIHW, got shape {w.shape}")
    return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w):
    """PyTorch linear weight [out,in] -> Keras Dense [in,out]."""
    if w.ndim != 2:
        raise WeightImportError(f"linear weight must be 2-D [out,in], got shape {w.shape}")
    return w.T


def identity(w):
    return w


def out_channel_permutation(index):
    """Transform that reorders the output channels (last axis in HWIO, the only axis of a bias) so that
    ``new[..., i] = old[..., index[i]]``; applied after ``conv_kernel`` for kernels."""
    index = np.asarray(index)

    def transform(w):
        if w.shape[-1] != index.size:
            raise WeightImportError(f"output-channel permutation of size {index.size} on a tensor of shape {w.shape}")
        return np.take(w, index, axis=-1)

    return transform


def compose(*transforms):
    def transform(w):
        for t in transforms:
            w = t(w)
        return w

    return transform


def conv_entries(prefix, bias=True, out_permutation=None):
    """Mapping entries of a PyTorch Conv2d ``prefix`` (weight [+ bias]), optionally permuting output channels."""
    perm = out_channel_permutation(out_permutation) if out_permutation is not None else identity
    entries = [(f"{prefix}.weight", compose(conv_kernel, perm))]
    if bias:
        entries.append((f"{prefix}.bias", perm))
    return entries


def bn_entries(prefix):
    """Mapping entries of a PyTorch BatchNorm2d ``prefix`` in Keras order (gamma, beta, mean, variance)."""
    return [(f"{prefix}.{n}", identity) for n in ("weight", "bias", "running_mean", "running_var")]


def assign_state_dict(model, state, mapping, *, skip_layers=(), ignore_keys=(), where="state dict"):
    """Assign ``state`` to ``model`` through ``mapping``, all-or-nothing.

    skip_layers: regexes of Keras layer names allowed to have no source (e.g. heads in a backbone-only
    import); every other layer with weights must be in ``mapping``. ignore_keys: regexes of source keys that
    are deliberately dropped (e.g. layer4/fc of an ImageNet ResNet). Any other source key not consumed, any
    missing key and any shape mismatch is an error; all problems are reported together.
    Returns ``{"assigned_tensors", "skipped_layers", "ignored_keys"}``.
    """
    errors, updates, used, skipped = [], [], set(), []
    layers = {layer.name: layer for layer in _layers_with_weights(model)}
    for name in mapping:
        if name not in layers:
            errors.append(f"mapping names layer {name!r}, which {model.name} does not have")
    for name, layer in layers.items():
        if name not in mapping:
            if any(re.search(p, name) for p in skip_layers):
                skipped.append(name)
            else:
                errors.append(f"layer {name!r} has no source tensor in {where}")
            continue
        entries = mapping[name]
        targets = layer.weights
        if len(entries) != len(targets):
            errors.append(f"layer {name!r}: {len(targets)} weights but {len(entries)} source tensors")
            continue
        values = []
        for (key, transform), target in zip(entries, targets):
            if key not in state:
                errors.append(f"missing tensor {key!r} in {where} (for {target.path}, shape {tuple(target.shape)})")
                continue
            used.add(key)
            try:
                value = transform(state[key])
            except WeightImportError as err:
                errors.append(
                    f"shape mismatch: {key!r} {tuple(state[key].shape)} vs {target.path} {tuple(target.shape)} ({err})"
                )
                continue
            if tuple(value.shape) != tuple(target.shape):
                errors.append(
                    f"shape mismatch: {key!r} {tuple(state[key].shape)} (converted {tuple(value.shape)}) "
                    f"vs {target.path} {tuple(target.shape)}"
                )
                continue
            values.append(value.astype(target.dtype))
        if len(values) == len(targets):
            updates.append((layer, values))
    ignore = tuple(ignore_keys) + ALWAYS_IGNORED
    ignored = sorted(k for k in state if k not in used and any(re.search(p, k) for p in ignore))
    unexpected = sorted(set(state) - used - set(ignored))
    errors.extend(f"unexpected tensor {k!r} shape {tuple(state[k].shape)} in {where}" for k in unexpected)
    if errors:
        raise WeightImportError(f"cannot load {where} into {model.name}:\n  " + "\n  ".join(errors))
    for layer, values in updates:
        layer.set_weights(values)
    return {"assigned_tensors": sum(len(v) for _, v in updates), "skipped_layers": skipped, "ignored_keys": ignored}


def _layers_with_weights(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            raise WeightImportError(f"nested model {layer.name!r} inside {model.name}: importers expect a flat model")
        if layer.weights:
            yield layer


class FlatView:
    """The weighted leaf layers of a nested Keras model (e.g. Faster R-CNN's backbone and heads), for
    ``assign_state_dict`` (which walks ``.layers``)."""

    def __init__(self, model):
        self.name = model.name
        self.layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                       if not list(layer._flatten_layers(include_self=False, recursive=False))]


def describe_source(label, source):
    """``label`` plus the file name when ``source`` is a path (for error messages)."""
    return label if isinstance(source, dict) else f"{label} {source}"
