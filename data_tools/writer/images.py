"""Image sniffing: read an image file, find its format and size from the header, check it is complete
(or fully decode it), and re-encode what is neither JPEG nor PNG.

- JPEG (and MPO) and PNG bytes are stored as they are; the decoder turns grayscale, CMYK, palette,
  alpha and 16-bit images into RGB (tf.io.decode_image does: checked in tests). Any other format PIL
  reads (BMP, GIF first frame, TIFF, WebP, ...) is decoded and re-encoded losslessly as RGB PNG.
- verify "header" (default): the JPEG marker segments up to the frame header (or the PNG signature +
  IHDR) must parse, giving the size; a JPEG must end with its EOI marker (FF D9) and a PNG with its
  IEND chunk, else the image is fully decoded and skipped if that fails (so a truncated file is caught,
  while data appended after a valid image is accepted). This costs ~10 us per image; corruption inside
  the entropy-coded data of a complete-looking file is only caught by "full", which fully decodes every
  image with PIL and rejects what libjpeg/libpng cannot decode (the errors that would also stop
  tf.io.decode_image); damage libjpeg recovers from with a warning passes both PIL and TensorFlow and
  is accepted. Cost of "full" on bench/convert_throughput.py (4,000 COCO images of ~640x480): ~12 s of
  CPU instead of ~2 s (~2.5 ms per image), so it is not the default; `inspect_tfrecord --render` names a
  record whose image does not decode.
"""
from __future__ import annotations

import io
import os
import struct

VERIFY_MODES = ("header", "full")


class ImageProblem(Exception):
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


def read_file(path: str) -> bytes:
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


def full_decode(data: bytes, fmt: str, why: str) -> None:
    try:
        with _pil_open(data) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad data
        raise ImageProblem(f"corrupt or truncated {fmt} image ({why}: {type(e).__name__}: {e})") from e


def read_image(path: str, verify: str):
    """-> (bytes to store, format "jpeg"|"png", width, height, reencoded). Raises ImageProblem.

    header mode: the JPEG/PNG header must parse (marker segments up to the frame header / IHDR) and
    the file must end with the JPEG EOI marker / PNG IEND chunk; a file that does not is fully
    decoded (data appended after a complete image is accepted, a truncated image is not).
    """
    try:
        data = read_file(path)
    except OSError as e:
        raise ImageProblem(f"cannot read image file: {e.strerror or e}") from e
    if not data:
        raise ImageProblem("empty image file")
    size = jpeg_size(data)
    if size is not None:
        if verify == "full":
            full_decode(data, "JPEG", "full verification")
        elif not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            full_decode(data, "JPEG", "no end-of-image marker")
        return data, "jpeg", size[0], size[1], False
    size = png_size(data)
    if size is not None:
        if verify == "full":
            full_decode(data, "PNG", "full verification")
        elif not data.endswith(_PNG_END):
            full_decode(data, "PNG", "no IEND chunk")
        return data, "png", size[0], size[1], False
    try:  # anything else PIL reads: decode (first frame) and store as lossless RGB PNG
        img = _pil_open(data)
        if img.format in ("JPEG", "MPO", "PNG"):  # headers our parser did not follow: keep the bytes
            full_decode(data, img.format, "unusual header")
            return data, "png" if img.format == "PNG" else "jpeg", img.size[0], img.size[1], False
        img.seek(0)
        img.load()
        rgb = img if img.mode in ("RGB", "L") else img.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, "PNG")
    except ImageProblem:
        raise
    except Exception as e:
        kind = "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:8] == _PNG_SIGNATURE else "image"
        raise ImageProblem(f"corrupt or unsupported {kind} file ({type(e).__name__}: {e})") from e
    return out.getvalue(), "png", img.size[0], img.size[1], True
