"""Vectorised parsing of raw Criteo rows: a block of bytes -> labels, 13 numeric and 26 hex categorical columns.

No Python loop runs per row or per field. Separators are found with one scan of the block. Each field's start and
length follow from them. Numbers and hex ids are then decoded column-wise, one character position at a time, for
all fields at once. Rows that do not parse are reported with their line, field and reason, or skipped and counted.

Missing values are 0, as in the DLRM reference: an empty integer field reads as 0 and an empty categorical as the
hash 0 (so an empty field and `00000000` share an id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from disttrain.prepare.inputs import Piece
from disttrain.prepare.pipeline import Chunk, ChunkError

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
SPARSE_NAMES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
MAX_NUMBER_CHARS = 24
MAX_HEX_CHARS = 8
BLOCK_BYTES = 2 << 20  # one parse_block call: small enough that its temporaries stay in cache

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


@dataclass(frozen=True)
class Layout:
    """Where the label, dense and categorical fields are in a row of `num_fields` fields."""

    num_fields: int = 1 + NUM_DENSE + NUM_SPARSE
    delimiter: str = "\t"
    label: int = 0
    dense: tuple[int, ...] = tuple(range(1, 1 + NUM_DENSE))
    sparse: tuple[int, ...] = tuple(range(1 + NUM_DENSE, 1 + NUM_DENSE + NUM_SPARSE))
    names: tuple[str, ...] = ("label", *DENSE_NAMES, *SPARSE_NAMES)

    def to_json(self) -> dict:
        return {"num_fields": self.num_fields, "delimiter": self.delimiter, "label": self.label,
                "dense": list(self.dense), "sparse": list(self.sparse)}


@dataclass
class BadRow:
    line: int  # 1-based within the block until the caller adds the block's first line
    reason: str


@dataclass
class Parsed:
    labels: np.ndarray  # [R] uint8
    dense: np.ndarray  # [R, 13] float32, log(1 + max(x, 0))
    sparse: np.ndarray  # [R, 26] uint32 hashes
    lines: int  # lines in the block, good and bad
    bad: list[BadRow] = field(default_factory=list)
    bad_count: int = 0


class ParseError(ValueError):
    def __init__(self, bad: BadRow):
        super().__init__(bad.reason)
        self.bad = bad

    def __reduce__(self):  # crosses process boundaries (pool workers)
        return (ParseError, (self.bad,))


def _field_text(buf: np.ndarray, start: int, length: int) -> str:
    text = bytes(buf[start : start + min(length, 40)]).decode("utf-8", "replace")
    return repr(text + ("..." if length > 40 else ""))


def parse_block(block: bytes, layout: Layout, *, skip_bad_rows: bool, keep_examples: int = 5) -> Parsed:
    """Parse whole lines (the block ends with a newline, or is the file's last line). A bad row raises
    `ParseError` (its line counted from 1 in this block) unless `skip_bad_rows`."""
    n = len(block)
    # Padding: a newline if the last line lacks one, then room for the 8-byte reads past a field's end.
    buf = np.zeros(n + 1 + MAX_NUMBER_CHARS + 8, dtype=np.uint8)
    buf[:n] = np.frombuffer(block, dtype=np.uint8)
    if n and buf[n - 1] != 10:
        buf[n] = 10
        n += 1
    text = buf[:n]
    delimiter = ord(layout.delimiter)
    if delimiter == 9:
        seps = np.flatnonzero(text < 11)  # one compare: tab and newline are the only bytes below 11 in valid text
        kinds = text[seps]
        stray = (kinds != 9) & (kinds != 10)
        if stray.any():  # other control bytes: they are field content (and fail to parse), not separators
            seps, kinds = seps[~stray], kinds[~stray]
    else:
        seps = np.flatnonzero((text == delimiter) | (text == 10))
        kinds = text[seps]
    row_end = np.flatnonzero(kinds == 10)  # index of each row's newline among the separators
    num_lines = row_end.size
    fields_per_row = np.diff(row_end, prepend=-1)
    starts = np.empty_like(seps)
    starts[0:1] = 0
    starts[1:] = seps[:-1] + 1
    F = layout.num_fields
    good = fields_per_row == F
    bad: list[BadRow] = []
    bad_rows = np.flatnonzero(~good)
    if bad_rows.size:
        for r in bad_rows[: keep_examples if skip_bad_rows else 1]:
            bad.append(BadRow(int(r) + 1, f"{fields_per_row[r]} fields, expected {F} separated by "
                                          f"{layout.delimiter!r}"))
        if not skip_bad_rows:
            raise ParseError(bad[0])
        keep = np.repeat(good, fields_per_row)
        seps, starts = seps[keep], starts[keep]
    rows = np.flatnonzero(good)  # line index (0-based) of each parsed row
    S = starts.reshape(-1, F)
    E = seps.reshape(-1, F)
    # Windows line endings: the last field stops before a '\r'.
    last = E[:, -1]
    cr = (last > S[:, -1]) & (buf[np.maximum(last - 1, 0)] == 13)
    if cr.any():
        E = E.copy()
        E[cr, -1] -= 1
    words = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))  # 8 bytes from any offset

    num_cols = [layout.label, *layout.dense]
    ns = S[:, num_cols]
    values, ok = _numbers(words, ns, E[:, num_cols] - ns)
    labels = values[:, 0]
    ok[:, 0] &= ((labels == 0) | (labels == 1)) & (E[:, layout.label] > S[:, layout.label])
    sparse_cols = list(layout.sparse)
    hs = S[:, sparse_cols]
    hashes, hex_ok = _hexes(words, hs, E[:, sparse_cols] - hs)
    row_ok = ok.all(axis=1) & hex_ok.all(axis=1)
    if not row_ok.all():
        for r in np.flatnonzero(~row_ok)[: keep_examples if skip_bad_rows else 1]:
            bad.append(BadRow(int(rows[r]) + 1, _reason(text, layout, S[r], E[r] - S[r], ok[r], hex_ok[r])))
        if not skip_bad_rows:
            raise ParseError(min(bad, key=lambda b: b.line))
        values, hashes, labels = values[row_ok], hashes[row_ok], labels[row_ok]
    dense = np.log1p(np.maximum(values[:, 1:], 0.0)).astype(np.float32)
    bad.sort(key=lambda b: b.line)
    return Parsed(
        labels=labels.astype(np.uint8),
        dense=dense,
        sparse=hashes,
        lines=num_lines,
        bad=bad[:keep_examples],
        bad_count=int(bad_rows.size + (~row_ok).sum()),
    )


@dataclass(frozen=True)
class RawTask:
    """Pass 1 of the Criteo preset (`pipeline`), in a worker: one piece of a raw file -> a `Chunk` whose dense
    values are final (log(1 + max(x, 0)), taken here from the parsed float64) and whose keys are the 32-bit
    hashes, one column per table."""

    piece: Piece
    layout: Layout
    skip_bad_rows: bool

    def read(self) -> tuple[Chunk, int]:
        data = self.piece.data()
        try:
            parsed = parse_bytes(data, self.layout, self.skip_bad_rows)
        except ParseError as exc:
            raise ChunkError(exc.bad.line - 1, exc.bad.reason) from None
        sparse = np.ascontiguousarray(parsed.sparse.T)  # column-major: a contiguous column per table
        return Chunk(parsed.labels, parsed.dense, list(sparse), [], parsed.lines,
                     [(b.line - 1, b.reason) for b in parsed.bad], parsed.bad_count), len(data)


def parse_bytes(data: bytes, layout: Layout, skip_bad_rows: bool) -> Parsed:
    """Whole lines, BLOCK_BYTES at a time (`parse_block`); bad rows' lines counted from 1 in `data`."""
    parts: list[Parsed] = []
    lines = 0
    pos = 0
    while pos < len(data):
        end = data.rfind(b"\n", pos, pos + BLOCK_BYTES) + 1 if pos + BLOCK_BYTES < len(data) else len(data)
        if end <= pos:  # a line longer than a block
            end = data.find(b"\n", pos + BLOCK_BYTES) + 1 or len(data)
        try:
            part = parse_block(data[pos:end], layout, skip_bad_rows=skip_bad_rows)
        except ParseError as exc:
            raise ParseError(BadRow(exc.bad.line + lines, exc.bad.reason)) from None
        for b in part.bad:
            b.line += lines
        lines += part.lines
        parts.append(part)
        pos = end
    if not parts:
        return Parsed(np.zeros(0, np.uint8), np.zeros((0, len(layout.dense)), np.float32),
                      np.zeros((0, len(layout.sparse)), np.uint32), 0)
    return Parsed(
        labels=np.concatenate([p.labels for p in parts]),
        dense=np.concatenate([p.dense for p in parts]),
        sparse=np.concatenate([p.sparse for p in parts]),
        lines=lines,
        bad=[b for p in parts for b in p.bad],
        bad_count=sum(p.bad_count for p in parts),
    )


def _reason(buf, layout: Layout, starts, lengths, ok, hex_ok) -> str:
    cols = [layout.label, *layout.dense]
    for k, c in enumerate(cols):
        if not ok[k]:
            text = _field_text(buf, starts[c], lengths[c])
            if k == 0:
                return f"field {layout.names[c]} (column {c + 1}): {text} is not a label (expected 0 or 1)"
            return f"field {layout.names[c]} (column {c + 1}): {text} is not a number"
    for k, c in enumerate(layout.sparse):
        if not hex_ok[k]:
            text = _field_text(buf, starts[c], lengths[c])
            return (f"field {layout.names[c]} (column {c + 1}): {text} is not a hex id "
                    f"(expected up to {MAX_HEX_CHARS} hex digits or empty)")
    return "unparseable row"


_POW10 = 10.0 ** np.arange(-MAX_NUMBER_CHARS - 1, MAX_NUMBER_CHARS + 1)  # _POW10[e + MAX_NUMBER_CHARS + 1] = 10^e


def _pow10(e: np.ndarray) -> np.ndarray:
    return _POW10[e + MAX_NUMBER_CHARS + 1]


_U = np.uint64
_ZEROS = _U(0x3030303030303030)
_LOW_NIBBLES = _U(0x0F0F0F0F0F0F0F0F)
_HIGH_BITS = _U(0x8080808080808080)
_ONES = _U(0x0101010101010101)
# Per field length L (0..8): the mask of its own bytes in its 8-byte read (the rest belongs to the next fields),
# the shift that right-aligns them, and the '0' bytes that fill the front.
_KEEP = np.array([(1 << (8 * L)) - 1 for L in range(9)], dtype=np.uint64)
_SHIFT = np.array([8 * (8 - L) for L in range(9)], dtype=np.uint64)
_PAD = np.array([0x3030303030303030 & ~(((1 << (8 * L)) - 1) << (8 * (8 - L))) & (2**64 - 1) for L in range(9)],
                dtype=np.uint64)


def _right_aligned(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each field's (up to) 8 bytes moved to the end of its word, behind leading '0's."""
    L = np.minimum(lengths, 8)
    w = words & _KEEP[L]
    w <<= _SHIFT[L]
    w |= _PAD[L]
    return w


def _numbers(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal numbers `[-]digits[.digits]` (empty = 0) -> float64 values and an ok mask.

    Fields of up to 8 plain digits (nearly all of Criteo's) are read as whole 8-byte words with SWAR arithmetic
    (eight digits in three multiplies); others (a sign, a dot, more digits, bad characters) by a slower path."""
    shape = starts.shape
    starts, lengths = starts.ravel(), lengths.ravel()
    w = _right_aligned(words[starts], lengths)
    # All eight bytes in '0'..'9'?
    digits_only = ((w & _U(0xF0F0F0F0F0F0F0F0)) | (((w + _U(0x0606060606060606)) & _U(0xF0F0F0F0F0F0F0F0)) >> _U(4))
                   ) == _U(0x3333333333333333)
    fast = digits_only & (lengths <= 8)
    v = w - _ZEROS
    v = v * _U(10) + (v >> _U(8))
    v = (((v & _U(0x000000FF000000FF)) * _U(100 + (1000000 << 32))
          + (((v >> _U(16)) & _U(0x000000FF000000FF)) * _U(1 + (10000 << 32)))) >> _U(32))
    values = (v & _U(0xFFFFFFFF)).astype(np.float64)
    ok = np.ones(starts.size, dtype=bool)
    if not fast.all():
        idx = np.flatnonzero(~fast)
        values[idx], ok[idx] = _numbers_general(words, starts[idx], lengths[idx])
    return values.reshape(shape), ok.reshape(shape)


def _numbers_general(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = lengths <= MAX_NUMBER_CHARS
    width = -(-min(max(int(lengths.max(initial=0)), 1), MAX_NUMBER_CHARS) // 8) * 8
    parts = [words[starts + 8 * i] for i in range(width // 8)]
    chars = np.stack(parts, axis=1).view(np.uint8).reshape(starts.size, width)
    j = np.arange(width)
    inside = j < lengths[:, None]
    d = chars - np.uint8(48)
    dig = inside & (d < 10)
    negative = chars[:, 0] == 45
    dots = inside & (chars == 46)
    has_dot = dots.any(axis=1)
    point = np.where(has_dot, dots.argmax(axis=1), np.minimum(lengths, width))  # position of the decimal point
    legal = dig | dots | (negative[:, None] & (j == 0))
    ok &= (legal | ~inside).all(axis=1) & (dots.sum(axis=1) <= 1) & (dig.any(axis=1) | (lengths == 0))
    exponent = np.where(j < point[:, None], point[:, None] - 1 - j, point[:, None] - j)
    v = (np.where(dig, d, 0) * _pow10(np.clip(exponent, -MAX_NUMBER_CHARS, MAX_NUMBER_CHARS))).sum(axis=1)
    return np.where(negative, -v, v), ok


def _hexes(words: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex ids of up to 8 digits (empty = 0) -> uint32 values and an ok mask, with SWAR arithmetic on each
    field's 8 bytes: nibble = (c & 15) + 9 * (c is a letter), checked by mapping the nibble back to its digit."""
    shape = starts.shape
    starts, lengths = starts.ravel(), lengths.ravel()
    w = _right_aligned(words[starts], lengths)  # leading '0's: the value needs no shift
    n = (w & _LOW_NIBBLES) + ((w >> _U(6)) & _ONES) * _U(9)  # per byte 0..24; valid digits give 0..15
    over = ((n + _U(0x7070707070707070)) & _HIGH_BITS) != 0  # some byte >= 16
    letter = ((n + _U(0x7676767676767676)) >> _U(7)) & _ONES  # per byte: nibble >= 10
    canonical = n + _ZEROS + letter * _U(0x27)  # '0'..'9', 'a'..'f'
    ok = ~over & (canonical == (w | _U(0x2020202020202020))) & (lengths <= MAX_HEX_CHARS)
    # Pack: byte k (the k-th digit) -> bits 28 - 4k of the value.
    x = ((n & _U(0x000F000F000F000F)) << _U(4)) | ((n >> _U(8)) & _U(0x000F000F000F000F))
    x = (x & _U(0x000000FF000000FF)) | ((x >> _U(8)) & _U(0x0000FF000000FF00))
    x = (x & _U(0xFFFF)) | ((x >> _U(16)) & _U(0xFFFF0000))
    value = x.astype(np.uint32).byteswap()
    return value.reshape(shape), ok.reshape(shape)
