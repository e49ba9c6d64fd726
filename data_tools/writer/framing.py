"""TFRecord framing without TensorFlow: masked CRC-32C (google-crc32c), framing a record, appending it to a
file descriptor, and reading / scanning a shard back with both CRCs checked.

A record on disk is: uint64 length (little endian), masked crc32c(length), data, masked crc32c(data).
"""
from __future__ import annotations

import os
import struct

from data_tools.records import ConversionError

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


def write_record(fd: int, parts: list, image: bytes) -> list:
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
