"""Resume: the work directory, fingerprints (what decides a shard's bytes), and whether a shard finished by
an earlier run of the same job can be reused instead of rewritten.

The work directory `.{name}.convert` beside the shards holds, per shard file name NAME:
`NAME.incomplete` while a worker writes it, then `NAME` (finished) with its done-marker `NAME.done.json`
(record count, size, CRC-32C over the record framing, fingerprint). Finished shards get their final names
only when the whole job has succeeded. A rerun reuses a finished shard when the fingerprint of its inputs
and options is unchanged and the file still matches its marker (every record's data CRC is re-checked).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle

from data_tools.records import ImageRecord
from data_tools.writer.framing import scan_shard


def work_dir(prefix: str) -> str:
    """The job's work directory `.{name}.convert` beside the shards (temporary files and done-markers)."""
    head, tail = os.path.split(os.path.abspath(prefix))
    return os.path.join(head, f".{tail}.convert")


def incomplete_path(wdir: str, name: str) -> str:
    return os.path.join(wdir, name + ".incomplete")


def finished_path(wdir: str, name: str) -> str:
    return os.path.join(wdir, name)


def marker_path(wdir: str, name: str) -> str:
    return os.path.join(wdir, name + ".done.json")


class Fingerprint:
    """Hash of everything that decides shard k's bytes: options, its records, their files' size + mtime.

    Fed one record at a time (`add`, in shard order), so a worker hashes each record as it writes it.
    """

    def __init__(self, k: int, file_stats, excluded, options: dict):
        self.k, self.file_stats, self.excluded, self.num_shards = k, file_stats, excluded, options["num_shards"]
        self.h = hashlib.sha256(json.dumps(dict(options, shard=k), sort_keys=True).encode())

    def add(self, i: int, rec: ImageRecord) -> None:
        self.h.update(pickle.dumps((i, record_state(rec), self.file_stats[i], i in self.excluded), protocol=4))

    def hexdigest(self) -> str:
        n, k = self.num_shards, self.k
        self.h.update(repr(sorted(e for e in self.excluded if isinstance(e, tuple) and e[0] % n == k)).encode())
        return self.h.hexdigest()


def record_state(rec: ImageRecord) -> tuple:
    """An ImageRecord as plain tuples (pickled ~5x faster than the dataclasses)."""
    return (rec.image_path, rec.source_id, rec.filename, rec.height, rec.width, rec.where,
            [(o.xmin, o.ymin, o.xmax, o.ymax, o.label, o.text, o.is_crowd, o.difficult, o.truncated, o.area, o.where)
             for o in rec.objects])


def shard_fingerprint(records, k: int, file_stats, excluded, options: dict) -> str:
    fp = Fingerprint(k, file_stats, excluded, options)
    for i in range(k, len(records), options["num_shards"]):
        fp.add(i, records[i])
    return fp.hexdigest()


def reusable(path: str, marker: str, fingerprint: str):
    """The stats of a finished shard from an earlier run if its file still matches its marker, else None."""
    if not (os.path.isfile(path) and os.path.isfile(marker)):
        return None
    try:
        with open(marker) as f:
            stats = json.load(f)
        if (stats.get("fingerprint") == fingerprint and os.path.getsize(path) == stats["bytes"]
                and scan_shard(path) == (stats["num_records"], stats["framing_crc32c"])):
            return stats
    except (OSError, ValueError, KeyError):  # ConversionError is a ValueError
        pass
    return None
