"""One conversion job, `convert(records, ...)`: validate the arguments, run the checks of the whole job in
the workers and apply them in record order, decide which shards an earlier run left reusable, write the
others, then the sidecar."""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence

from data_tools.records import ConversionError, SkipReport
from data_tools.writer.images import VERIFY_MODES
from data_tools.writer.pool import Workers
from data_tools.writer.resume import reusable, shard_fingerprint, work_dir
from data_tools.writer.shard import precheck_shard, write_shard
from data_tools.writer.sidecar import FORMAT_VERSION, build_sidecar
from ssd_tf.data.shards import shard_path, sidecar_path


def precheck(records, num_shards: int, strict: bool, shard_results: list):
    """Cheap checks of the whole job before any shard is written, from `precheck_shard`'s results
    (one list per shard), applied in record order (duplicate source ids are errors).

    -> (excluded: set of image indices i and (i, j) box pairs, entries [[i, j, kind, where, reason]],
        file_stats [(size, mtime_ns) or None]).
    """
    excluded, entries, seen = set(), [], {}
    file_stats = [None] * len(records)

    def skip(i, j, kind, where, reason):
        if strict:
            raise ConversionError(f"{where}: {reason} (--strict turns skips into errors)")
        entries.append([i, j, kind, where, reason])
        excluded.add(i if j < 0 else (i, j))

    for i in range(len(records)):
        key, where, file_stat, rec_entries = shard_results[i % num_shards][i // num_shards]
        if key is None:
            raise ConversionError(f"record {i}: expected an ImageRecord, got {where}")
        if key in seen:
            raise ConversionError(f"{where}: duplicate source id {key!r} (also used by {seen[key]})")
        seen[key] = where
        file_stats[i] = file_stat
        for j, kind, w, reason in rec_entries:
            skip(i, j, kind, w, reason)
    return excluded, entries, file_stats


def shard_task(k: int, num_shards: int, excluded: set, file_stats: list) -> tuple:
    """write_shard's argument: shard k's part of the checks' results."""
    idx = range(k, len(file_stats), num_shards)
    mine = {e for e in excluded if (e if isinstance(e, int) else e[0]) % num_shards == k}
    return k, mine, {i: file_stats[i] for i in idx}


def resolve_verify(verify_images):
    if verify_images is None:
        try:
            from absl import flags

            f = flags.FLAGS
            verify_images = f.verify_images if ("verify_images" in f and f.is_parsed()) else "header"
        except ImportError:  # pragma: no cover
            verify_images = "header"
    if verify_images not in VERIFY_MODES:
        raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {verify_images!r}")
    return verify_images


def convert(records, *, output_prefix: str, num_shards: int, num_processes: int, label_map: dict,
            skips: SkipReport, source: dict, verify_images: str | None = None, progress: bool = True) -> dict:
    """Write `records` as `{output_prefix}-NNNNN-of-MMMMM.tfrecord` shards + sidecar.

    records: ImageRecords, as a list or any sequence that builds them on access (e.g. the COCO parser's
    compact `CocoRecords`: each worker then builds only its own shard's records, one at a time); any
    other iterable is turned into a list.

    label_map: {dataset id: name} in dataset order. skips: the parser's SkipReport (its `strict` applies
    to the writer too; the writer's skips are appended to it). source: free-form description of the
    input, copied into the sidecar. verify_images: "header" | "full" (None: the --verify_images flag
    when defined and parsed, else "header"). num_processes 0 means one per CPU. Returns the sidecar dict.
    """
    if not isinstance(records, Sequence):
        records = list(records)
    if not output_prefix:
        raise ValueError("output_prefix must be a non-empty path prefix")
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if not isinstance(num_processes, int) or num_processes < 0:
        raise ValueError(f"num_processes must be an integer >= 0, got {num_processes!r}")
    if not isinstance(label_map, dict):
        raise ValueError(f"label_map must be a dict {{id: name}}, got {type(label_map).__name__}")
    verify = resolve_verify(verify_images)
    strict = bool(skips.strict)

    options = {"format_version": FORMAT_VERSION, "num_shards": num_shards, "verify_images": verify,
               "label_map": [[int(k), str(v)] for k, v in label_map.items()]}

    wdir, meta = work_dir(output_prefix), sidecar_path(output_prefix)

    from tqdm import tqdm

    bar = tqdm(total=len(records), unit="img", file=sys.stderr, disable=not progress,
               desc=os.path.basename(output_prefix), smoothing=0.1)
    state = {"records": records, "options": options, "label_map": label_map, "strict": strict,
             "prefix": output_prefix, "work_dir": wdir}
    workers = min(num_processes or os.cpu_count() or 1, num_shards)
    todo = []
    try:
        with Workers(state, workers, bar.update) as pool:
            # the checks run in the workers too (one task per shard); every shard waits for all of them
            excluded, pre_entries, file_stats = precheck(records, num_shards, strict,
                                                         pool.map(precheck_shard, range(num_shards)))
            os.makedirs(wdir, exist_ok=True)  # (the output directory too)
            if os.path.exists(meta):
                os.remove(meta)  # written last: its presence means "finished"
            shard_stats = {}
            for k in range(num_shards):
                final = shard_path(output_prefix, k, num_shards)
                marker = os.path.join(wdir, os.path.basename(final) + ".done.json")
                stats = None
                if os.path.isfile(marker):  # fingerprints are computed here only on reruns (else in the workers)
                    stats = reusable(final, marker, shard_fingerprint(records, k, file_stats, excluded, options))
                if stats is not None:
                    shard_stats[k] = stats
                    continue
                for stale in (final, marker):
                    if os.path.exists(stale):
                        os.remove(stale)
                todo.append(k)
            if shard_stats:
                print(f"reusing {len(shard_stats)} finished shard(s) of an earlier run of this job", file=sys.stderr)
                bar.update(sum(len(range(k, len(records), num_shards)) for k in shard_stats))
            results = pool.map(write_shard, [shard_task(k, num_shards, excluded, file_stats) for k in todo],
                               progress=True)
    except BaseException:
        for k in todo:  # a terminated worker leaves its temporary file behind
            tmp = os.path.join(wdir, os.path.basename(shard_path(output_prefix, k, num_shards)) + ".incomplete")
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
    for stats in results:
        shard_stats[stats["shard"]] = stats

    sidecar = build_sidecar(records, shard_stats, num_shards, label_map, skips, pre_entries, source, verify, strict)
    with open(meta + ".tmp", "w") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    os.replace(meta + ".tmp", meta)
    shutil.rmtree(wdir, ignore_errors=True)
    return sidecar
