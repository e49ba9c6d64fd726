"""One conversion job, `convert(records, ...)`: validate the arguments, run the checks of the whole job in
the workers and apply them in record order, decide which shards an earlier run left reusable, write the
others into the work directory, and only when every shard is done give them their final names (after
removing the final-named shards of earlier runs of the same prefix, whatever their --num_shards) and
write the sidecar. A failed or interrupted run therefore leaves no final-named shard of its own; its
finished shards stay in the work directory for a rerun to reuse."""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence

from data_tools.records import ConversionError, SkipReport
from data_tools.writer.images import VERIFY_MODES
from data_tools.writer.pool import Workers
from data_tools.writer.resume import (finished_path, incomplete_path, marker_path, reusable, shard_fingerprint,
                                      work_dir)
from data_tools.writer.shard import precheck_shard, write_shard
from data_tools.writer.sidecar import FORMAT_VERSION, build_sidecar
from ssd_tf.data.shards import shard_path, shards_on_disk, sidecar_path


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


def output_prefix_problem(prefix) -> str | None:
    """Why shards cannot be written under `prefix` (a usage error), or None."""
    if not prefix:
        return "is empty"
    prefix = os.fspath(prefix)
    if prefix.endswith(("/", os.sep)):
        return f"ends with a directory separator; give a file name prefix such as {prefix}train"
    parent = os.path.dirname(os.path.abspath(prefix))
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        return f"cannot create the output directory: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent}: permission denied"
    return None


def _remove_earlier_output(prefix: str, num_shards: int, wdir: str) -> None:
    """Delete the final-named shards of earlier runs of this prefix (saying so for other --num_shards), after
    moving back into the work directory any shard an interrupted run of this job had already published."""
    for path, k, n in shards_on_disk(prefix):
        name = os.path.basename(path)
        if n == num_shards and os.path.isfile(marker_path(wdir, name)) and not os.path.exists(finished_path(wdir, name)):
            os.replace(path, finished_path(wdir, name))  # the rerun checks it against its marker
    stale = {}
    for path, k, n in shards_on_disk(prefix):
        os.remove(path)
        if n != num_shards:
            stale.setdefault(n, []).append(path)
    for n, paths in sorted(stale.items()):
        print(f"removed {len(paths)} stale shard(s) of an earlier run with --num_shards={n} "
              f"({prefix}-*-of-{n:05d}.tfrecord)", file=sys.stderr)


def _write_sidecar(meta: str, sidecar: dict) -> None:
    with open(meta + ".tmp", "w") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    os.replace(meta + ".tmp", meta)


def _first_skip(skips) -> str:
    for e in skips.entries:
        return f" (the first: {e['where']}: {e['reason']})"
    return ""


def convert(records, *, output_prefix: str, num_shards: int, num_processes: int | None, label_map: dict,
            skips: SkipReport, source: dict, verify_images: str | None = None, progress: bool = True) -> dict:
    """Write `records` as `{output_prefix}-NNNNN-of-MMMMM.tfrecord` shards + sidecar.

    records: ImageRecords, as a list or any sequence that builds them on access (e.g. the COCO parser's
    compact `CocoRecords`: each worker then builds only its own shard's records, one at a time); any
    other iterable is turned into a list.

    label_map: {dataset id: name} in dataset order. skips: the parser's SkipReport (its `strict` applies
    to the writer too; the writer's skips are appended to it). source: free-form description of the
    input, copied into the sidecar. verify_images: "header" | "full" (None: the --verify_images flag
    when defined and parsed, else "header"). num_processes None or 0 means one per CPU. Returns the
    sidecar dict.

    Raises ConversionError for bad input (including nothing to convert, every image file missing, or no
    image usable), pool.WorkerLost when a worker process dies; shards finished before a failure are kept
    in the work directory for a rerun.
    """
    if not isinstance(records, Sequence):
        records = list(records)
    if not output_prefix:
        raise ValueError("output_prefix must be a non-empty path prefix")
    problem = output_prefix_problem(output_prefix)
    if problem:
        raise ValueError(f"output_prefix {output_prefix}: {problem}")
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 0):
        raise ValueError(f"num_processes must be an integer >= 1 (or None / 0: one per CPU), got {num_processes!r}")
    if not isinstance(label_map, dict):
        raise ValueError(f"label_map must be a dict {{id: name}}, got {type(label_map).__name__}")
    verify = resolve_verify(verify_images)
    strict = bool(skips.strict)
    if not len(records):
        raise ConversionError(f"no images to convert: the annotations list none{_first_skip(skips)}")

    options = {"format_version": FORMAT_VERSION, "num_shards": num_shards, "verify_images": verify,
               "label_map": [[int(k), str(v)] for k, v in label_map.items()]}

    wdir, meta = work_dir(output_prefix), sidecar_path(output_prefix)
    names = [os.path.basename(shard_path(output_prefix, k, num_shards)) for k in range(num_shards)]

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
            excluded, pre_entries, file_stats = precheck(
                records, num_shards, strict,
                pool.map(precheck_shard, range(num_shards), describe=lambda k: f"checking the records of shard {k}"))
            if all(s is None for s in file_stats):
                raise ConversionError(f"none of the {len(records)} image files exists (the first: "
                                      f"{records[0].image_path}): is the image directory right?")
            os.makedirs(wdir, exist_ok=True)  # (the output directory too)
            if os.path.exists(meta):
                os.remove(meta)  # written last: its presence means "finished"
            _remove_earlier_output(output_prefix, num_shards, wdir)
            shard_stats = {}
            for k, name in enumerate(names):
                path, marker = finished_path(wdir, name), marker_path(wdir, name)
                stats = None
                if os.path.isfile(marker):  # fingerprints are computed here only on reruns (else in the workers)
                    stats = reusable(path, marker, shard_fingerprint(records, k, file_stats, excluded, options))
                if stats is not None:
                    shard_stats[k] = stats
                    continue
                for stale in (path, marker):
                    if os.path.exists(stale):
                        os.remove(stale)
                todo.append(k)
            if shard_stats:
                print(f"reusing {len(shard_stats)} finished shard(s) of an earlier run of this job", file=sys.stderr)
                bar.update(sum(len(range(k, len(records), num_shards)) for k in shard_stats))
            results = pool.map(write_shard, [shard_task(k, num_shards, excluded, file_stats) for k in todo],
                               progress=True, describe=lambda task: f"writing shard {task[0]} of {num_shards}")
    except BaseException:
        for k in todo:  # a terminated worker leaves its temporary file behind
            tmp = incomplete_path(wdir, names[k])
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
    for stats in results:
        shard_stats[stats["shard"]] = stats

    sidecar = build_sidecar(records, shard_stats, num_shards, label_map, skips, pre_entries, source, verify, strict)
    if sidecar["num_images"] == 0:
        raise ConversionError(f"no image could be used: all {len(records)} were skipped{_first_skip(skips)}")
    for k, name in enumerate(names):  # every shard is done: publish them, then the sidecar
        os.replace(finished_path(wdir, name), shard_path(output_prefix, k, num_shards))
    _write_sidecar(meta, sidecar)
    shutil.rmtree(wdir, ignore_errors=True)
    return sidecar
