"""The workers' tasks: the per-record checks of one shard (`precheck_shard`) and writing one shard
(`write_shard`: read, check, encode and append each of its images, one at a time, hashing each record
into the shard's resume fingerprint as it goes).

Image i belongs to shard i % num_shards; both tasks read the job from `pool.STATE`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

from data_tools.records import ConversionError, ImageRecord
from data_tools.writer.boxes import box_where, check_box
from data_tools.writer.framing import crc32c_extend, write_record
from data_tools.writer.images import ImageProblem, read_image
from data_tools.writer.pool import STATE, parent_alive, tick
from data_tools.writer.resume import Fingerprint, finished_path, incomplete_path, marker_path
from ssd_tf.data import example as ex
from ssd_tf.data.shards import shard_path

DELAY_ENV = "SSD_TF_WRITER_TEST_DELAY"  # test hook: seconds to sleep per image (interrupt tests)


def precheck_shard(k: int) -> list:
    """The per-record part of the checks for shard k of STATE's job (run in the workers): per image
    (source id key, where, (size, mtime_ns) or None, [(j, kind, where, reason)]), or (None, type name) for
    something that is not an ImageRecord. Nothing is raised here, so errors come out in record order."""
    st = STATE
    records, label_map, strict = st["records"], st["label_map"], st["strict"]
    out = []
    for i in range(k, len(records), st["options"]["num_shards"]):
        rec = records[i]
        if not isinstance(rec, ImageRecord):
            out.append((None, type(rec).__name__, None, None))
            continue
        where, entries = rec.where or rec.image_path, []
        try:
            s = os.stat(rec.image_path)
            file_stat = (s.st_size, s.st_mtime_ns)
        except OSError as e:
            file_stat = None
            entries.append((-1, "image", where, f"missing image file {rec.image_path} ({e.strerror})"))
        else:
            for j, obj in enumerate(rec.objects):
                if obj.label not in label_map:
                    entries.append((j, "box", box_where(rec, j, obj),
                                    f"unknown category id {obj.label!r} (not in the label map)"))
                elif strict and rec.width and rec.height:
                    box, reason = check_box(obj, rec.width, rec.height)
                    if box is None:
                        entries.append((j, "box", box_where(rec, j, obj), reason))
        out.append((str(rec.source_id), where, file_stat, entries))
    return out


def example_parts(i: int, rec: ImageRecord, verify: str, excluded, stats: dict, skip):
    """Read, check and encode image i -> (image bytes, serialized tf.train.Example as byte chunks, the image
    bytes being one of them, not copied), or None when the image is skipped."""
    try:
        data, fmt, width, height, reencoded = read_image(rec.image_path, verify)
    except ImageProblem as e:
        skip(i, -1, "image", rec.where or rec.image_path, f"{rec.image_path}: {e}")
        return None
    if rec.height is not None and rec.width is not None and (rec.height != height or rec.width != width):
        skip(i, -1, "image", rec.where or rec.image_path, f"{rec.image_path}: image is {height}x{width} (HxW) "
                                                          f"but the annotation says {rec.height}x{rec.width}")
        return None
    xmin, ymin, xmax, ymax, labels, texts, crowd, area, difficult, truncated = ([] for _ in range(10))
    per_label = stats["objects_per_label"]
    for j, obj in enumerate(rec.objects):
        if excluded and (i, j) in excluded:
            continue
        box, flag = check_box(obj, width, height)
        if box is None:
            skip(i, j, "box", box_where(rec, j, obj), flag)
            continue
        x0, y0, x1, y1 = box
        stats["clipped_boxes"] += flag
        xmin.append(x0 / width)
        ymin.append(y0 / height)
        xmax.append(x1 / width)
        ymax.append(y1 / height)
        labels.append(obj.label)
        texts.append(obj.text)
        crowd.append(obj.is_crowd)
        area.append(float(obj.area) if obj.area is not None else (x1 - x0) * (y1 - y0))
        difficult.append(obj.difficult)
        truncated.append(obj.truncated)
        key = str(obj.label)
        per_label[key] = per_label.get(key, 0) + 1
    stats["num_records"] += 1
    stats["num_objects"] += len(xmin)
    stats["images_without_objects"] += not xmin
    stats["formats"][fmt] = stats["formats"].get(fmt, 0) + 1
    stats["reencoded_images"] += reencoded
    return data, ex.encode_example_parts(
        encoded=data, image_format=fmt, height=height, width=width, source_id=rec.source_id,
        filename=rec.filename, sha256=hashlib.sha256(data).hexdigest(), xmin=xmin, ymin=ymin, xmax=xmax,
        ymax=ymax, labels=labels, texts=texts, is_crowd=crowd, area=area, difficult=difficult,
        truncated=truncated)


def example_bytes(i: int, rec: ImageRecord, verify: str, excluded, stats: dict, skip):
    """`example_parts` joined (None when the image is skipped)."""
    out = example_parts(i, rec, verify, excluded, stats, skip)
    return None if out is None else b"".join(out[1])


def write_shard(task: tuple) -> dict:
    """Write shard k of STATE's job into the work directory (`NAME.incomplete`, then `NAME` beside its
    done-marker `NAME.done.json`; the parent gives it its final name when the whole job has succeeded);
    returns its stats (also written to the done-marker).

    task: (k, excluded: the shard's image indices i and (i, j) box pairs left out by the checks,
    file_stats: {i: (size, mtime_ns)} of its images)."""
    k, excluded, file_stats = task
    st = STATE
    records, opts = st["records"], st["options"]
    num_shards, verify, strict = opts["num_shards"], opts["verify_images"], st["strict"]
    name = os.path.basename(shard_path(st["prefix"], k, num_shards))
    tmp = incomplete_path(st["work_dir"], name)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    stats = {"shard": k, "num_records": 0, "num_objects": 0, "objects_per_label": {}, "images_without_objects": 0,
             "clipped_boxes": 0, "formats": {}, "reencoded_images": 0, "skipped": []}
    framing_crc, pending = 0, 0

    def skip(i, j, kind, where, reason):
        if strict:
            raise ConversionError(f"{where}: {reason} (--strict turns skips into errors)")
        stats["skipped"].append([i, j, kind, where, reason])

    fp = Fingerprint(k, file_stats, excluded, opts)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            for i in range(k, len(records), num_shards):
                if delay:
                    time.sleep(delay)
                pending += 1
                if pending >= 16:
                    tick(pending)
                    pending = 0
                rec = records[i]
                fp.add(i, rec)
                if i in excluded:
                    continue
                out = example_parts(i, rec, verify, excluded, stats, skip)
                if out is None:
                    continue
                framed = write_record(fd, out[1], out[0])
                framing_crc = crc32c_extend(framing_crc, framed[0] + framed[1] + framed[-1])
        finally:
            os.close(fd)
        fingerprint = fp.hexdigest()
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    finally:
        if pending:
            tick(pending)
    stats.update(file=name, bytes=os.path.getsize(tmp), framing_crc32c=framing_crc, fingerprint=fingerprint)
    if not parent_alive():  # an orphan must not publish anything a rerun could mistake for its own work
        os.remove(tmp)
        os._exit(1)
    marker = marker_path(st["work_dir"], name)
    with open(marker + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(marker + ".tmp", marker)
    os.replace(tmp, finished_path(st["work_dir"], name))
    return stats
