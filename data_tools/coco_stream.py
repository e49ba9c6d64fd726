"""Streaming decode of a COCO instances JSON with msgspec, holding ~1 MB of the file at a time.

`stream_coco(path, Img, Cat, Ann)` -> (images: list[Img], categories: list[Cat] | None | other value,
annotations: a function returning an iterator over batches of Ann (a second pass over the file), or None
when the key is absent). Raises `Unsupported` for anything it does not handle (malformed JSON, a key
given twice, a top-level value that is not what a COCO file holds, ...): the caller then parses the
whole file the usual way, which also gives the exact error messages.

How elements are found without a JSON tokenizer in Python: from the start of an array element, the
window is cut just after a `}` that is followed by `,` or `]` (a regex), and `[` + that text + `]` is
decoded as a list of objects. If the cut was inside an element (a `},` in a string or a nested object),
that text is not a complete JSON array and the decode fails, so the previous candidate is tried; a
successful decode can only end at a real element boundary. The window grows when no candidate works.
"""
from __future__ import annotations

import re
from typing import List, Optional

import msgspec

CHUNK = 1 << 20
_TAIL = 1 << 16
_WS = re.compile(rb"[ \t\n\r]*")
_KEY = re.compile(rb'"(?:[^"\\]|\\.)*"')
_ELEMENT_END = re.compile(rb"\}[ \t\n\r]*[,\]]")
_VALUE_END = re.compile(rb"[,}]")
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_MAX_VALUE_TRIES = 256


class Unsupported(Exception):
    """Not handled by the streaming decoder: parse the whole file instead."""


class _Window:
    """A forward-only window over a binary file."""

    def __init__(self, f):
        self.f, self.buf, self.pos, self.eof = f, b"", 0, False

    def fill(self, need: int) -> int:
        """Make at least `need` bytes available from pos (fewer at the end of the file); returns how many."""
        if len(self.buf) - self.pos < need and not self.eof:
            more = self.f.read(max(need - (len(self.buf) - self.pos), CHUNK))
            self.eof = len(more) == 0
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
        return len(self.buf) - self.pos

    def skip_ws(self) -> int:
        """Skip whitespace; the next byte (or -1 at the end of the file)."""
        while True:
            if self.fill(1) == 0:
                return -1
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            self.fill(CHUNK)

    def expect(self, char: bytes) -> None:
        if self.skip_ws() != char[0]:
            raise Unsupported(f"expected {char!r}")
        self.pos += 1


def _cut_points(w: _Window):
    """Candidate element ends in the window, last first (the window's last 64 KB scanned first)."""
    tail = max(w.pos, len(w.buf) - _TAIL)
    yield from reversed([m.start() + 1 for m in _ELEMENT_END.finditer(w.buf, tail)])
    if tail > w.pos:
        front = _ELEMENT_END.finditer(w.buf, w.pos, min(len(w.buf), tail + 4096))
        yield from reversed([m.start() + 1 for m in front if m.start() < tail])


def _batches(w: _Window, decoder):
    """Decoded batches of the array whose '[' was just consumed; returns after its ']'.

    The window is cut after its last candidate element end (then the one before, ...). When the array
    ends inside the window, msgspec reports "trailing characters (byte N)": the text up to N is then
    the rest of the array, closed by its own ']'."""
    if w.skip_ws() == ord("]"):
        w.pos += 1
        return
    size = CHUNK
    while True:
        w.fill(size)
        for e in _cut_points(w):
            text = b"[" + w.buf[w.pos:e] + b"]"
            try:
                items = decoder.decode(text)
            except msgspec.ValidationError as err:  # an element of another type, a number out of range
                raise Unsupported(str(err)) from err
            except msgspec.DecodeError as err:
                m = _TRAILING.search(str(err))
                if m is None:
                    continue  # cut inside an element: try the candidate before
                n = int(m.group(1)) - 1  # msgspec counts the offending byte: text[:n] is '[' + the rest + ']'
                try:
                    items = decoder.decode(text[:n])
                except msgspec.MsgspecError as err2:
                    raise Unsupported(str(err2)) from err2
                w.pos += n - 1
                yield items
                return
            w.pos = e
            yield items
            size = CHUNK
            if w.skip_ws() == ord("]"):
                w.pos += 1
                return
            w.expect(b",")
            w.skip_ws()
            break
        else:
            if w.eof:
                raise Unsupported("no array element end found")
            size = 2 * max(size, len(w.buf) - w.pos)


def _value(w: _Window, decoder):
    """Decode the value that starts at pos and ends before a ',' or '}' (the nearest that parses)."""
    tries, scan = 0, w.pos
    while True:
        for m in _VALUE_END.finditer(w.buf, scan):
            tries += 1
            if tries > _MAX_VALUE_TRIES:
                raise Unsupported("top-level value too complex to stream")
            try:
                value = decoder.decode(w.buf[w.pos:m.start()])
            except msgspec.MsgspecError:
                continue
            w.pos = m.start()
            return value
        if w.eof:
            raise Unsupported("top-level value without an end")
        scanned = len(w.buf) - w.pos
        w.fill(2 * scanned + CHUNK)
        scan = w.pos + scanned


def stream_coco(path: str, img_type, cat_type, ann_type):
    """See the module doc. Only 'images' and 'annotations' arrays are streamed; other values are decoded
    whole (categories) or skipped."""
    images_dec = msgspec.json.Decoder(List[img_type])
    cats_dec = msgspec.json.Decoder(List[cat_type])
    cat_value_dec = msgspec.json.Decoder(Optional[List[cat_type]])
    skip_dec = msgspec.json.Decoder(msgspec.Raw)
    raws_dec = msgspec.json.Decoder(List[msgspec.Raw])
    images = categories = annotations_at = None
    seen = set()
    with open(path, "rb") as f:
        w = _Window(f)
        w.expect(b"{")
        if w.skip_ws() == ord("}"):
            raise Unsupported("empty object")
        while True:
            w.skip_ws()
            w.fill(4096)
            m = _KEY.match(w.buf, w.pos)
            if m is None:
                raise Unsupported("expected a key")
            key = msgspec.json.decode(m.group())
            if key in seen:
                raise Unsupported(f"key {key!r} given twice")
            seen.add(key)
            w.pos = m.end()
            w.expect(b":")
            first = w.skip_ws()
            if key == "images" and first == ord("["):
                w.pos += 1
                images = [x for batch in _batches(w, images_dec) for x in batch]
            elif key == "annotations" and first == ord("["):
                annotations_at = f.tell() - (len(w.buf) - w.pos)  # file offset of the '['
                w.pos += 1
                for _ in _batches(w, skip_dec):  # skipped now (categories may come later), decoded in pass 2
                    pass
            elif key in ("images", "annotations"):
                raise Unsupported(f"{key!r} is not an array")
            elif first == ord("["):  # categories, licenses, ...: element by element too
                w.pos += 1
                items = [x for batch in _batches(w, cats_dec if key == "categories" else raws_dec) for x in batch]
                if key == "categories":
                    categories = items
            elif key == "categories":
                categories = _value(w, cat_value_dec)  # null (or something the checks reject)
            else:
                _value(w, skip_dec)
            nxt = w.skip_ws()
            w.pos += 1
            if nxt == ord("}"):
                break
            if nxt != ord(","):
                raise Unsupported("expected ',' or '}'")
        if w.skip_ws() != -1:
            raise Unsupported("data after the top-level object")
    if images is None:
        raise Unsupported("no 'images' array")

    def annotations(ann_dec=msgspec.json.Decoder(List[ann_type])):
        with open(path, "rb") as g:
            g.seek(annotations_at)
            w2 = _Window(g)
            w2.expect(b"[")
            yield from _batches(w2, ann_dec)

    return images, categories, (annotations if annotations_at is not None else None)
