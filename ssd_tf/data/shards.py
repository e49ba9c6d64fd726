"""Shard and sidecar file names: the one place the converters' naming contract is written down.

A converter run with output prefix P writes `P-00000-of-0000N.tfrecord` ... and the sidecar `P.meta.json`
(label map, counts, skips). Readers find the sidecar from the shard names. Also the one expander of file
patterns (`expand_pattern`). No TensorFlow import (except for URL-scheme patterns).
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


def shards_on_disk(prefix: str) -> list:
    """[(path, index, num_shards)] of the files `{prefix}-NNNNN-of-MMMMM.tfrecord` that exist (any count M),
    sorted by name; a name that merely starts with the prefix (`{prefix}x-...`, `{prefix}-extra-...`) is not
    one of them. Local paths only."""
    head, tail = os.path.split(os.path.abspath(os.fspath(prefix)))
    pattern = re.compile(re.escape(tail) + r"-(\d{5})-of-(\d{5})\.tfrecord")
    try:
        names = sorted(os.listdir(head))
    except OSError:
        return []
    out = []
    for name in names:
        m = pattern.fullmatch(name)
        if m:
            out.append((os.path.join(os.path.dirname(os.fspath(prefix)), name), int(m.group(1)), int(m.group(2))))
    return out


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


def _has_scheme(pattern: str) -> bool:
    """`gs://...`, `s3://...`, `hdfs://...`: a path only TensorFlow's filesystem layer can list."""
    head = pattern.split("/", 1)[0]
    return head.endswith(":") and len(head) > 2 and pattern[len(head):].startswith("//")


def split_patterns(file_pattern) -> list:
    """A glob, a comma-separated list of globs, or a list of globs -> the list of non-empty globs."""
    patterns = file_pattern.split(",") if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    return [os.fspath(p).strip() for p in patterns if p and os.fspath(p).strip()]


def expand_pattern(file_pattern) -> list:
    """The one file-pattern expander: sorted, de-duplicated files matching a glob, a comma-separated list of
    globs or a list of globs. Local paths are listed with `glob` (no TensorFlow import); a pattern with a
    URL scheme (`gs://bucket/train-*`) with `tf.io.gfile.glob`. An empty result is an empty list; callers say
    which flag or argument matched nothing."""
    import glob

    files = set()
    for pattern in split_patterns(file_pattern):
        if _has_scheme(pattern):
            import tensorflow as tf

            files.update(tf.io.gfile.glob(pattern))
        else:
            files.update(f for f in glob.glob(os.path.expanduser(pattern)) if not os.path.isdir(f))
    return sorted(files)
