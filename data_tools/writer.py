"""The shared TFRecord writer of every converter: `convert(records, ...)` and `add_output_flags()`.

How a conversion runs
- Checks first (cheap, before any shard is written): duplicate source ids (error), every image file
  exists (missing -> skip), every label is in the label map (unknown -> skip), and, under --strict,
  every box against the size the annotation states, so that a strict run fails at once.
- Image i goes to shard i % num_shards. Each worker process writes whole shards, one image at a time
  (read, check, build, append), so memory does not grow with the dataset and the shard bytes do not
  depend on --num_processes. No TensorFlow: records are framed here (masked CRC-32C via google-crc32c)
  and encoded by `ssd_tf.data.example`.
- A shard is written as `.{name}.convert/NNNNN-of-MMMMM.tfrecord.incomplete` and renamed to
  `{prefix}-NNNNN-of-MMMMM.tfrecord` only when complete, after a small done-marker (record count,
  size, a CRC-32C over the record framing and a fingerprint of the shard's inputs and options) is written beside the temporary file.
  A rerun reuses a finished shard whose fingerprint, size, record count and framing CRC match (every record's
  data CRC is re-checked) its marker and rewrites
  the others, so the final files equal those of an uninterrupted run byte for byte. Final-named files
  of shards that are not reused are deleted before work starts; the sidecar `{prefix}.meta.json` is
  written last (its presence means the job finished) and the work directory is then removed.

Images
- JPEG (and MPO) and PNG bytes are stored as they are; the decoder turns grayscale, CMYK, palette,
  alpha and 16-bit images into RGB (tf.io.decode_image does: checked in tests). Any other format PIL
  reads (BMP, GIF first frame, TIFF, WebP, ...) is decoded and re-encoded losslessly as RGB PNG.
- --verify_images=header (default): the JPEG marker segments up to the frame header (or the PNG
  signature + IHDR) must parse, giving the size; a JPEG must end with its EOI marker (FF D9) and a PNG
  with its IEND chunk, else the image is fully decoded and skipped if that fails (so a truncated file
  is caught, while data appended after a valid image is accepted). This costs ~10 us per image;
  corruption inside the entropy-coded data of a complete-looking file is only caught by
  --verify_images=full, which fully decodes every image with PIL (about 3-5 ms per VGA JPEG) and
  rejects what libjpeg/libpng cannot decode (the errors that would also stop tf.io.decode_image);
  damage libjpeg recovers from with a warning passes both PIL and TensorFlow and is accepted.
- The size found in the file must equal the annotation's (when it states one), else the image is skipped.

Boxes (absolute continuous pixels, x first, as in `data_tools.records`)
- non-finite coordinates, zero or negative width/height, or nothing left inside the image after clipping
  to [0, width] x [0, height] -> the box is skipped; a box partly outside is clipped (and counted).
- area = the annotation's area when given, else the clipped box area in pixels.

Every skip is listed in the sidecar with its reason; --strict turns any skip into a ConversionError.
"""
from __future__ import annotations

import gc
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import shutil
import struct
import sys
import time
from collections.abc import Sequence

from data_tools.records import ConversionError, ImageRecord, SkipReport
from ssd_tf.data import example as ex
from ssd_tf.data.shards import shard_path, sidecar_path  # noqa: F401  (part of the writer's API)

FORMAT_VERSION = 1
VERIFY_MODES = ("header", "full")
DELAY_ENV = "SSD_TF_WRITER_TEST_DELAY"  # test hook: seconds to sleep per image (interrupt tests)

try:
    import google_crc32c as _crc32c

    def crc32c_extend(crc: int, data: bytes) -> int:
        return _crc32c.extend(crc, data)
except ImportError:  # pragma: no cover - only without the pinned dependency (about 100x slower)
    _TABLE = []
    for _i in range(256):
        _c = _i
        for _ in range(8):
            _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def crc32c_extend(crc: int, data: bytes) -> int:
        crc ^= 0xFFFFFFFF
        for b in data:
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    return crc32c_extend(0, data)


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    return _mask(crc32c(data))


def frame_parts(parts: list) -> list:
    """TFRecord framing of a record given as byte chunks: uint64 length, masked crc32c(length), data,
    masked crc32c(data). Returns the chunks to write (nothing is copied)."""
    crc, length = 0, 0
    for p in parts:
        crc = crc32c_extend(crc, p)
        length += len(p)
    header = struct.pack("<Q", length)
    return [header, struct.pack("<I", masked_crc(header)), *parts, struct.pack("<I", _mask(crc))]


def frame_record(data: bytes) -> bytes:
    return b"".join(frame_parts([data]))


def read_records(path: str):
    """Yield the payloads of a TFRecord file, checking both CRCs (for tests and the inspector)."""
    with open(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ConversionError(f"{path}: record {index} truncated in its header")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
                raise ConversionError(f"{path}: record {index} length CRC mismatch")
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc(data):
                raise ConversionError(f"{path}: record {index} data truncated or CRC mismatch")
            yield data
            index += 1


def _work_dir(prefix: str) -> str:
    head, tail = os.path.split(os.path.abspath(prefix))
    return os.path.join(head, f".{tail}.convert")


# ----------------------------------------------------------------------------------------------- images

class _ImageProblem(Exception):
    """An image that cannot be used; the message is the skip reason."""


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def jpeg_size(data: bytes):
    """(width, height) from a JPEG's SOF segment, walking the marker segments; None if malformed."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            return None
        if marker in _SOF:
            if pos + 9 > n:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        pos += 2 + length
    return None


def png_size(data: bytes):
    """(width, height) from a PNG's IHDR chunk; None if malformed."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width and height else None


def _pil_open(data: bytes):
    from PIL import Image  # PIL only for formats other than JPEG/PNG, and for full verification

    return Image.open(io.BytesIO(data))


def _read_file(path: str) -> bytes:
    """The whole file, with one read() when its size is as stat says (no Python file object)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) != size:  # a short read, or the file changed size: read on to the end
            parts = [data]
            while parts[-1]:
                parts.append(os.read(fd, 1 << 20))
            data = b"".join(parts)
    finally:
        os.close(fd)
    return data


def _full_decode(data: bytes, fmt: str, why: str) -> None:
    try:
        with _pil_open(data) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad data
        raise _ImageProblem(f"corrupt or truncated {fmt} image ({why}: {type(e).__name__}: {e})") from e


def _read_image(path: str, verify: str):
    """-> (bytes to store, format "jpeg"|"png", width, height, reencoded). Raises _ImageProblem.

    header mode: the JPEG/PNG header must parse (marker segments up to the frame header / IHDR) and
    the file must end with the JPEG EOI marker / PNG IEND chunk; a file that does not is fully
    decoded (data appended after a complete image is accepted, a truncated image is not).
    """
    try:
        data = _read_file(path)
    except OSError as e:
        raise _ImageProblem(f"cannot read image file: {e.strerror or e}") from e
    if not data:
        raise _ImageProblem("empty image file")
    size = jpeg_size(data)
    if size is not None:
        if verify == "full":
            _full_decode(data, "JPEG", "full verification")
        elif not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            _full_decode(data, "JPEG", "no end-of-image marker")
        return data, "jpeg", size[0], size[1], False
    size = png_size(data)
    if size is not None:
        if verify == "full":
            _full_decode(data, "PNG", "full verification")
        elif not data.endswith(_PNG_END):
            _full_decode(data, "PNG", "no IEND chunk")
        return data, "png", size[0], size[1], False
    try:  # anything else PIL reads: decode (first frame) and store as lossless RGB PNG
        img = _pil_open(data)
        if img.format in ("JPEG", "MPO", "PNG"):  # headers our parser did not follow: keep the bytes
            _full_decode(data, img.format, "unusual header")
            return data, "png" if img.format == "PNG" else "jpeg", img.size[0], img.size[1], False
        img.seek(0)
        img.load()
        rgb = img if img.mode in ("RGB", "L") else img.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, "PNG")
    except _ImageProblem:
        raise
    except Exception as e:
        kind = "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:8] == _PNG_SIGNATURE else "image"
        raise _ImageProblem(f"corrupt or unsupported {kind} file ({type(e).__name__}: {e})") from e
    return out.getvalue(), "png", img.size[0], img.size[1], True


# ------------------------------------------------------------------------------------------------ boxes

def _desc(xmin, ymin, xmax, ymax) -> str:
    return f"[xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}]"


def check_box(obj, width: int, height: int):
    """-> ((xmin, ymin, xmax, ymax) clipped to the image, clipped: bool) or (None, skip reason)."""
    try:
        xmin, ymin, xmax, ymax = float(obj.xmin), float(obj.ymin), float(obj.xmax), float(obj.ymax)
    except (TypeError, ValueError):
        return None, f"non-numeric box coordinates {(obj.xmin, obj.ymin, obj.xmax, obj.ymax)}"
    if not (math.isfinite(xmin) and math.isfinite(ymin) and math.isfinite(xmax) and math.isfinite(ymax)):
        return None, f"non-finite box coordinates {_desc(xmin, ymin, xmax, ymax)}"
    if xmax < xmin or ymax < ymin:
        return None, f"negative box size {_desc(xmin, ymin, xmax, ymax)}"
    if xmax == xmin or ymax == ymin:
        return None, f"zero-size box {_desc(xmin, ymin, xmax, ymax)}"
    cx0 = xmin if xmin >= 0.0 else 0.0
    cy0 = ymin if ymin >= 0.0 else 0.0
    cx1 = xmax if xmax <= width else float(width)
    cy1 = ymax if ymax <= height else float(height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, (f"box {_desc(xmin, ymin, xmax, ymax)} has no area inside the {width}x{height} (WxH) "
                      "image after clipping")
    return (cx0, cy0, cx1, cy1), (cx0 != xmin or cy0 != ymin or cx1 != xmax or cy1 != ymax)


def _box_where(record: ImageRecord, j: int, obj) -> str:
    return obj.where or f"{record.where or record.image_path} object {j}"


# ----------------------------------------------------------------------------------------------- shards

class _Fingerprint:
    """Hash of everything that decides shard k's bytes: options, its records, their files' size + mtime.

    Fed one record at a time (`add`, in shard order), so a worker hashes each record as it writes it.
    """

    def __init__(self, k: int, file_stats, excluded, options: dict):
        self.k, self.file_stats, self.excluded, self.num_shards = k, file_stats, excluded, options["num_shards"]
        self.h = hashlib.sha256(json.dumps(dict(options, shard=k), sort_keys=True).encode())

    def add(self, i: int, rec: ImageRecord) -> None:
        self.h.update(pickle.dumps((i, _record_state(rec), self.file_stats[i], i in self.excluded), protocol=4))

    def hexdigest(self) -> str:
        n, k = self.num_shards, self.k
        self.h.update(repr(sorted(e for e in self.excluded if isinstance(e, tuple) and e[0] % n == k)).encode())
        return self.h.hexdigest()


def _record_state(rec: ImageRecord) -> tuple:
    """An ImageRecord as plain tuples (pickled ~5x faster than the dataclasses)."""
    return (rec.image_path, rec.source_id, rec.filename, rec.height, rec.width, rec.where,
            [(o.xmin, o.ymin, o.xmax, o.ymax, o.label, o.text, o.is_crowd, o.difficult, o.truncated, o.area, o.where)
             for o in rec.objects])


def _shard_fingerprint(records, k: int, file_stats, excluded, options: dict) -> str:
    fp = _Fingerprint(k, file_stats, excluded, options)
    for i in range(k, len(records), options["num_shards"]):
        fp.add(i, records[i])
    return fp.hexdigest()


# Worker state (set before the pool forks or by the pool initializer).
_STATE = {}


def _init_worker(state):
    _STATE.clear()
    _STATE.update(state)


def _example_parts(i: int, rec: ImageRecord, verify: str, excluded, stats: dict, skip):
    """Read, check and encode image i -> (image bytes, serialized tf.train.Example as byte chunks, the image
    bytes being one of them, not copied), or None when the image is skipped."""
    try:
        data, fmt, width, height, reencoded = _read_image(rec.image_path, verify)
    except _ImageProblem as e:
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
            skip(i, j, "box", _box_where(rec, j, obj), flag)
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


def _example_bytes(i: int, rec: ImageRecord, verify: str, excluded, stats: dict, skip):
    """`_example_parts` joined (None when the image is skipped)."""
    out = _example_parts(i, rec, verify, excluded, stats, skip)
    return None if out is None else b"".join(out[1])


def _write_record(fd: int, parts: list, image: bytes) -> list:
    """Append one record given as chunks, framed, with one writev: the chunks before and after `image`
    (one of them, not copied) are joined, so the CRC sees three buffers. Returns the framed chunks
    [header, header CRC, before, image, after, footer]."""
    for j, p in enumerate(parts):
        if p is image:
            framed = frame_parts([b"".join(parts[:j]), image, b"".join(parts[j + 1:])])
            break
    else:  # pragma: no cover - the encoder always passes the image bytes through as one chunk
        framed = frame_parts([b"".join(parts)])
    total = sum(map(len, framed))
    written = os.writev(fd, framed)
    if written < total:  # short write (rare on regular files): write the rest
        rest = memoryview(b"".join(framed))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]
    return framed


def _write_shard(task: tuple) -> dict:
    """Write shard k of _STATE's job; returns its stats (also written to the done-marker).

    task: (k, excluded: the shard's image indices i and (i, j) box pairs left out by the checks,
    file_stats: {i: (size, mtime_ns)} of its images)."""
    k, excluded, file_stats = task
    st = _STATE
    records, opts = st["records"], st["options"]
    num_shards, verify, strict = opts["num_shards"], opts["verify_images"], st["strict"]
    final = shard_path(st["prefix"], k, num_shards)
    tmp = os.path.join(st["work_dir"], os.path.basename(final) + ".incomplete")
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    stats = {"shard": k, "num_records": 0, "num_objects": 0, "objects_per_label": {}, "images_without_objects": 0,
             "clipped_boxes": 0, "formats": {}, "reencoded_images": 0, "skipped": []}
    framing_crc, pending = 0, 0

    def skip(i, j, kind, where, reason):
        if strict:
            raise ConversionError(f"{where}: {reason} (--strict turns skips into errors)")
        stats["skipped"].append([i, j, kind, where, reason])

    fp = _Fingerprint(k, file_stats, excluded, opts)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            for i in range(k, len(records), num_shards):
                if delay:
                    time.sleep(delay)
                pending += 1
                if pending >= 16:
                    _tick(pending)
                    pending = 0
                rec = records[i]
                fp.add(i, rec)
                if i in excluded:
                    continue
                out = _example_parts(i, rec, verify, excluded, stats, skip)
                if out is None:
                    continue
                framed = _write_record(fd, out[1], out[0])
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
            _tick(pending)
    stats.update(file=os.path.basename(final), bytes=os.path.getsize(tmp), framing_crc32c=framing_crc,
                 fingerprint=fingerprint)
    marker = tmp[: -len(".incomplete")] + ".done.json"
    with open(marker + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(marker + ".tmp", marker)
    os.replace(tmp, final)
    return stats


def scan_shard(path: str) -> tuple:
    """(number of records, CRC-32C of all framing bytes) of a TFRecord file; raises ConversionError
    if any record's length or data CRC is wrong (so a reused shard is checked byte for byte)."""
    crc, count = 0, 0
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return count, crc
            if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
                raise ConversionError(f"{path}: record {count}: bad or truncated header")
            (length,) = struct.unpack("<Q", header[:8])
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc(data):
                raise ConversionError(f"{path}: record {count}: data truncated or CRC mismatch")
            crc = crc32c_extend(crc, header + footer)
            count += 1


# ----------------------------------------------------------------------------------------------- checks

def _precheck_shard(k: int) -> list:
    """The per-record part of the checks for shard k of _STATE's job (run in the workers): per image
    (source id key, where, (size, mtime_ns) or None, [(j, kind, where, reason)]), or (None, type name) for
    something that is not an ImageRecord. Nothing is raised here, so errors come out in record order."""
    st = _STATE
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
                    entries.append((j, "box", _box_where(rec, j, obj),
                                    f"unknown category id {obj.label!r} (not in the label map)"))
                elif strict and rec.width and rec.height:
                    box, reason = check_box(obj, rec.width, rec.height)
                    if box is None:
                        entries.append((j, "box", _box_where(rec, j, obj), reason))
        out.append((str(rec.source_id), where, file_stat, entries))
    return out


def _precheck(records, num_shards: int, strict: bool, shard_results: list):
    """Cheap checks of the whole job before any shard is written, from `_precheck_shard`'s results
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


def _shard_task(k: int, num_shards: int, excluded: set, file_stats: list) -> tuple:
    """_write_shard's argument: shard k's part of the checks' results."""
    idx = range(k, len(file_stats), num_shards)
    mine = {e for e in excluded if (e if isinstance(e, int) else e[0]) % num_shards == k}
    return k, mine, {i: file_stats[i] for i in idx}


def _resolve_verify(verify_images):
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


def _reusable(final: str, marker: str, fingerprint: str):
    """The stats of a finished shard from an earlier run if its file still matches its marker, else None."""
    if not (os.path.isfile(final) and os.path.isfile(marker)):
        return None
    try:
        with open(marker) as f:
            stats = json.load(f)
        if (stats.get("fingerprint") == fingerprint and os.path.getsize(final) == stats["bytes"]
                and scan_shard(final) == (stats["num_records"], stats["framing_crc32c"])):
            return stats
    except (OSError, ValueError, KeyError):  # ConversionError is a ValueError
        pass
    return None


# ---------------------------------------------------------------------------------------------- convert

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
    verify = _resolve_verify(verify_images)
    strict = bool(skips.strict)

    options = {"format_version": FORMAT_VERSION, "num_shards": num_shards, "verify_images": verify,
               "label_map": [[int(k), str(v)] for k, v in label_map.items()]}

    work_dir, meta = _work_dir(output_prefix), sidecar_path(output_prefix)

    from tqdm import tqdm

    bar = tqdm(total=len(records), unit="img", file=sys.stderr, disable=not progress,
               desc=os.path.basename(output_prefix), smoothing=0.1)
    state = {"records": records, "options": options, "label_map": label_map, "strict": strict,
             "prefix": output_prefix, "work_dir": work_dir}
    workers = min(num_processes or os.cpu_count() or 1, num_shards)
    todo = []
    try:
        with _Workers(state, workers, bar.update) as pool:
            # the checks run in the workers too (one task per shard); every shard waits for all of them
            excluded, pre_entries, file_stats = _precheck(records, num_shards, strict,
                                                          pool.map(_precheck_shard, range(num_shards)))
            os.makedirs(work_dir, exist_ok=True)  # (the output directory too)
            if os.path.exists(meta):
                os.remove(meta)  # written last: its presence means "finished"
            shard_stats = {}
            for k in range(num_shards):
                final = shard_path(output_prefix, k, num_shards)
                marker = os.path.join(work_dir, os.path.basename(final) + ".done.json")
                stats = None
                if os.path.isfile(marker):  # fingerprints are computed here only on reruns (else in the workers)
                    stats = _reusable(final, marker, _shard_fingerprint(records, k, file_stats, excluded, options))
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
            results = pool.map(_write_shard, [_shard_task(k, num_shards, excluded, file_stats) for k in todo],
                               progress=True)
    except BaseException:
        for k in todo:  # a terminated worker leaves its temporary file behind
            tmp = os.path.join(work_dir, os.path.basename(shard_path(output_prefix, k, num_shards)) + ".incomplete")
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finally:
        bar.close()
    for stats in results:
        shard_stats[stats["shard"]] = stats

    sidecar = _sidecar(records, shard_stats, num_shards, label_map, skips, pre_entries, source, verify, strict)
    with open(meta + ".tmp", "w") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    os.replace(meta + ".tmp", meta)
    shutil.rmtree(work_dir, ignore_errors=True)
    return sidecar


class _Workers:
    """The job's worker processes (forked once, after parsing: they share the parent's records), or the
    calling process itself when workers <= 1. `map(fn, items, progress=...)` runs fn on each item in order."""

    def __init__(self, state: dict, workers: int, tick):
        self.state, self.workers, self.tick, self.pool = state, workers, tick, None

    def __enter__(self):
        if self.workers <= 1:
            _init_worker(dict(self.state, tick=self.tick))
            return self
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.counter = ctx.Value("q", 0)
        gc.freeze()  # forked workers then leave the parent's objects alone (no GC scans, no copy-on-write)
        try:
            self.pool = ctx.Pool(self.workers, initializer=_init_worker,
                                 initargs=(dict(self.state, counter=self.counter),))
        except BaseException:
            gc.unfreeze()
            raise
        return self

    def map(self, fn, items, progress: bool = False) -> list:
        items = list(items)
        if self.pool is None:
            return [fn(x) for x in items]
        result = self.pool.map_async(fn, items, chunksize=1)
        if progress:  # the workers count written images in self.counter
            shown = self.counter.value
            while not result.ready():
                result.wait(0.1)
                value = self.counter.value
                self.tick(value - shown)
                shown = value
        return result.get()

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()  # as Pool's own context manager does
            self.pool.join()
            gc.unfreeze()
        _STATE.clear()
        return False


def _tick(n):
    counter = _STATE.get("counter")
    if counter is not None:
        with counter.get_lock():
            counter.value += n
    elif "tick" in _STATE:
        _STATE["tick"](n)


def _sidecar(records, shard_stats, num_shards, label_map, skips, pre_entries, source, verify, strict) -> dict:
    per_label, formats = {}, {}
    writer_entries = list(pre_entries)
    totals = dict.fromkeys(("num_records", "num_objects", "images_without_objects", "clipped_boxes",
                            "reencoded_images"), 0)
    shards = []
    for k in range(num_shards):
        s = shard_stats[k]
        for key in totals:
            totals[key] += s[key]
        for label, n in s["objects_per_label"].items():
            per_label[label] = per_label.get(label, 0) + n
        for fmt, n in s["formats"].items():
            formats[fmt] = formats.get(fmt, 0) + n
        writer_entries.extend(s["skipped"])
        shards.append({"file": s["file"], "num_records": s["num_records"], "bytes": s["bytes"],
                       "framing_crc32c": s["framing_crc32c"]})
    writer_entries.sort(key=lambda e: (e[0], e[1]))
    new_entries = [{"kind": kind, "where": where, "reason": reason} for _, _, kind, where, reason in writer_entries]
    skips.entries.extend(new_entries)  # the caller's report now has everything
    per_class = {}
    for label, name in label_map.items():
        per_class[str(name)] = per_class.get(str(name), 0) + per_label.get(str(label), 0)
    counts = {}
    for e in skips.entries:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "label_map": [{"id": int(k), "name": str(v)} for k, v in label_map.items()],
        "num_source_images": len(records),
        "num_images": totals["num_records"],
        "num_objects": totals["num_objects"],
        "objects_per_class": per_class,
        "objects_per_class_id": {str(k): per_label.get(str(k), 0) for k in label_map},
        "images_without_objects": totals["images_without_objects"],
        "clipped_boxes": totals["clipped_boxes"],
        "image_formats": dict(sorted(formats.items())),
        "reencoded_images": totals["reencoded_images"],
        "skipped_counts": counts,
        "skipped": list(skips.entries),
        "options": {"num_shards": num_shards, "verify_images": verify, "strict": strict},
        "shards": shards,
    }


# ------------------------------------------------------------------------------------------------- flags

def add_output_flags(default_num_shards: int = 8) -> None:
    """Define --output_file_prefix, --num_shards, --num_processes, --strict, --verify_images (idempotent)."""
    from absl import flags

    f = flags.FLAGS
    if "output_file_prefix" in f:
        return
    flags.DEFINE_string("output_file_prefix", None,
                        "Output path prefix: writes PREFIX-00000-of-0000N.tfrecord shards and PREFIX.meta.json.")
    flags.DEFINE_integer("num_shards", default_num_shards, "Number of output shards (image i -> shard i % N).",
                         lower_bound=1)
    flags.DEFINE_integer("num_processes", 0, "Worker processes (0: one per CPU; never more than --num_shards). "
                         "The output does not depend on it.", lower_bound=0)
    flags.DEFINE_boolean("strict", False, "Stop with an error instead of skipping a bad image or box.")
    flags.DEFINE_enum("verify_images", "header", list(VERIFY_MODES),
                      "header: parse the header and check the JPEG EOI / PNG IEND end marker (a file without it "
                      "is fully decoded); full: fully decode every image with PIL (slower).")
    flags.mark_flag_as_required("output_file_prefix")


def output_kwargs_from_flags() -> dict:
    """convert()'s output keyword arguments from the parsed flags of add_output_flags()."""
    from absl import flags

    f = flags.FLAGS
    return {"output_prefix": f.output_file_prefix, "num_shards": f.num_shards,
            "num_processes": f.num_processes, "verify_images": f.verify_images}


def run_conversion(convert_call, output_file_prefix: str) -> int:
    """CLI tail shared by the converters: runs `convert_call()`, prints its one-line summary (or the
    ConversionError) to stderr and returns the process exit code (0, or 1 on bad input)."""
    import sys

    from data_tools.records import ConversionError

    try:
        sidecar = convert_call()
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {sidecar['num_images']} images, {sidecar['num_objects']} objects in {len(sidecar['shards'])} "
          f"shards; skipped {sidecar['skipped_counts'] or 'nothing'}; see {sidecar_path(output_file_prefix)}",
          file=sys.stderr)
    return 0
