"""Shard and sidecar file names: the one place the converters' naming contract is written down.

A converter run with output prefix P writes `P-00000-of-0000N.tfrecord` ... and the sidecar `P.meta.json`
(label map, counts, skips). Readers find the sidecar from the shard names. No TensorFlow import.
"""
from __future__ import annotations

import os
import re

_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}(\.tfrecord)?$")


def shard_path(prefix: str, index: int, num_shards: int) -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_prefix(path) -> str:
    """`P` for `P-00000-of-0000N.tfrecord`; a name that is not a shard name is its own prefix."""
    return _SHARD_SUFFIX.sub("", os.fspath(path))


def sidecar_path(prefix: str) -> str:
    return f"{prefix}.meta.json"


def sidecars_for(files) -> dict:
    """{prefix: sidecar path} for the prefixes of `files` whose sidecar exists, in the order of `files`.

    A file whose name is not a shard name counts as its own prefix.
    """
    found = {}
    for f in files:
        prefix = shard_prefix(f)
        if prefix not in found:
            path = sidecar_path(prefix)
            found[prefix] = path if os.path.isfile(path) else None
    return {prefix: path for prefix, path in found.items() if path is not None}
