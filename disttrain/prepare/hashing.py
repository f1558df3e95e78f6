"""A stable 64-bit hash of categorical values: FNV-1a 64 of the value's UTF-8 text.

Stable across runs, processes, machines and languages (FNV-1a is a published constant-only algorithm; no seed,
no dependence on Python's hash randomisation). A value is hashed as text, so the integer 123 from a Parquet int
column and the field `123` of a CSV file hash alike. Missing values (null, and NaN in a float column) hash as the empty text.

Vectorised: the distinct values of a chunk (Arrow's dictionary encoding) are hashed one byte position at a
time for all of them at once, longest first, so no Python loop runs per value; values longer than LOCKSTEP_MAX
bytes take a fixed number of array passes over their bytes instead (no Python step per byte either: a 10 MB
field hashes in about 0.3 s, where a step per byte position took 80 s).
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def arrow(values: np.ndarray) -> pa.Array:
    """A numpy array of numbers as an Arrow array, zero-copy (`pa.array` would first import pandas, 0.2 s per
    process, to ask whether the input is one of its types)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), values.size, [None, pa.py_buffer(values)])


def numpy_of(array: pa.Array | pa.ChunkedArray, fill=0) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy, nulls as `fill` (`to_numpy` would import pandas first)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_boolean(array.type):
        return numpy_of(pc.cast(array, pa.uint8()), fill=int(fill)).view(bool)
    n = len(array)
    dtype = np.dtype(array.type.to_pandas_dtype())
    values = np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset: array.offset + n]
    if not array.null_count:
        return values
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    return np.where(bits[array.offset: array.offset + n].astype(bool), values, np.asarray(fill, dtype=dtype))


def text_scalar(value: str) -> pa.Scalar:
    """An Arrow string scalar made without `pa.scalar` (which imports pandas first, 0.2 s per process)."""
    data = value.encode()
    return pa.StringArray.from_buffers(1, pa.py_buffer(np.array([0, len(data)], dtype=np.int32)),
                                       pa.py_buffer(data))[0]


EMPTY = text_scalar("")


LOCKSTEP_MAX = 1024  # bytes: longer values are hashed by `_fnv1a64_long`, not position by position
BLOCK = 1 << 18  # bytes of long values hashed at once (bounds the temporaries: ~40 bytes per byte)


def fnv1a64(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of the byte strings data[offsets[i]:offsets[i+1]]. Values up to LOCKSTEP_MAX bytes are hashed
    in lockstep, one byte position at a time for all of them; longer ones (a 10 MB field would take 10 million
    such steps) by `_fnv1a64_long`, a fixed number of array passes over their bytes."""
    n = offsets.size - 1
    lengths = np.diff(offsets).astype(np.int64)
    starts = offsets[:-1].astype(np.int64)
    out = np.full(n, FNV_OFFSET, dtype=np.uint64)
    short = lengths <= LOCKSTEP_MAX
    out[short] = _fnv1a64_lockstep(starts[short], lengths[short], data)
    longer = np.flatnonzero(~short)
    if longer.size:
        parts = [data[starts[i]: starts[i] + lengths[i]] for i in longer.tolist()]
        out[longer] = _fnv1a64_long(parts[0] if len(parts) == 1 else np.concatenate(parts), lengths[longer])
    return out


def _fnv1a64_lockstep(starts: np.ndarray, lengths: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The values data[starts[i]:starts[i]+lengths[i]] one byte position at a time, all of them at once."""
    out = np.full(starts.size, FNV_OFFSET, dtype=np.uint64)
    if starts.size == 0 or lengths.max(initial=0) == 0:
        return out
    key = -lengths.astype(np.int16) if lengths.max() < 2**15 else -lengths  # int16: numpy sorts it by radix
    order = np.argsort(key, kind="stable")  # longest first: the active strings are a prefix
    starts = starts[order]
    sorted_lengths = lengths[order]
    h = out[order]
    with np.errstate(over="ignore"):
        for pos in range(int(sorted_lengths[0])):
            active = int(np.searchsorted(-sorted_lengths, -pos, side="left"))  # lengths > pos
            active = int((sorted_lengths > pos).sum()) if active == 0 else active
            if active == 0:
                break
            h[:active] ^= data[starts[:active] + pos].astype(np.uint64)
            h[:active] *= FNV_PRIME
    out[order] = h
    return out


# Long values. XOR with a byte changes only the low 8 bits, so one FNV step is an addition:
#     h' = (h ^ b) * P = (h + d) * P,  d = (l ^ b) - l  (l = h's low byte, -255 <= d <= 255),
# and a value of m bytes ends at  h_m = h_0 * P^m + sum_i d_i * P^(m-i)  (mod 2^64): one array product and sum
# once every position's low byte l_i is known. The low bytes follow l' = ((l ^ b) * P) mod 256, and bit j of
# x * P (P odd) is bit j of x XOR a function of x's lower bits; so bit j of l_{i+1} is bit j of l_i toggled by
# t_i (known once the lower bits are): bit j of l_i is a prefix XOR of t, found for all positions in one pass.
# Eight passes (bits 0..7) give every low byte. The values' bytes are taken BLOCK at a time, each value carrying
# its hash from one block into the next.
_PRIME_LOW = np.uint8(int(FNV_PRIME) & 0xFF)


def _fnv1a64_long(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of values of `lengths` (each > 0) whose bytes lie back to back in `data`."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    h = np.full(lengths.size, FNV_OFFSET, dtype=np.uint64)
    for lo in range(0, int(data.size), BLOCK):
        hi = min(lo + BLOCK, int(data.size))
        first = int(np.searchsorted(ends, lo, side="right"))  # the values with bytes in [lo, hi)
        last = int(np.searchsorted(starts, hi, side="left"))
        piece_starts = np.maximum(starts[first:last], lo) - lo
        piece_ends = np.minimum(ends[first:last], hi) - lo
        h[first:last] = _hash_pieces(h[first:last], data[lo:hi], piece_starts, piece_ends)
    return h


def _hash_pieces(h: np.ndarray, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each piece data[starts[i]:ends[i]] (back to back, covering `data`) hashed on from the state h[i]."""
    lengths = ends - starts
    low = _low_bytes(data, (h & np.uint64(0xFF)).astype(np.uint8), starts, lengths)
    d = (low ^ data).astype(np.int64) - low  # the addition each byte's XOR amounts to
    exponents = np.repeat(ends, lengths) - np.arange(data.size)  # m - i within each piece
    powers = _prime_powers()
    with np.errstate(over="ignore"):
        terms = d.astype(np.uint64) * powers[exponents]  # negative d wraps: arithmetic mod 2^64
        return h * powers[lengths] + np.add.reduceat(terms, starts)


def _low_bytes(data: np.ndarray, first: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The low byte of the hash before each byte of `data`, the pieces starting from the low bytes `first`."""
    low = np.zeros(data.size, dtype=np.uint8)
    for bit in range(8):
        lower = (low ^ data) & np.uint8((1 << bit) - 1)  # bits below `bit` of l ^ b
        toggle = ((data >> bit) ^ ((lower * _PRIME_LOW) >> bit)) & np.uint8(1)
        before = _prefix_xor(toggle) ^ toggle  # toggles before each position, over all pieces
        base = before[starts] ^ ((first >> bit) & np.uint8(1))  # ... minus the earlier pieces', plus the start bit
        low |= (before ^ np.repeat(base, lengths)) << bit
    return low


def _prefix_xor(bits: np.ndarray) -> np.ndarray:
    """Running XOR of an array of 0s and 1s, 64 at a time: packed into words, each word's prefix by shifts, then
    each word flipped by the parity of the words before it (20x `np.bitwise_xor.accumulate`)."""
    packed = np.packbits(bits, bitorder="little")
    words = np.concatenate([packed, np.zeros(-packed.size % 8, dtype=np.uint8)]).view("<u8")
    for shift in (1, 2, 4, 8, 16, 32):
        words ^= words << np.uint64(shift)
    parity = words >> np.uint64(63)  # the XOR of all the word's bits
    words ^= np.uint64(0) - (np.bitwise_xor.accumulate(parity) ^ parity)  # all ones where the words before flip
    return np.unpackbits(words.view(np.uint8), count=bits.size, bitorder="little")


@functools.cache
def _prime_powers() -> np.ndarray:
    """FNV_PRIME ** k mod 2^64 for k = 0 .. BLOCK."""
    powers = np.full(BLOCK + 1, FNV_PRIME, dtype=np.uint64)
    powers[0] = 1
    with np.errstate(over="ignore"):
        return np.multiply.accumulate(powers)


def _as_text(array: pa.Array) -> pa.Array:
    """The text of each value (applied to the distinct values only)."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        if pa.types.is_floating(array.type):  # 3.0 -> "3" so that a float column of integers hashes like ints
            as_int = pc.cast(array, pa.int64(), safe=False)
            whole = pc.equal(pc.cast(as_int, array.type), array)
            text = pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(array, pa.string()))
            array = pc.if_else(pc.is_nan(array), pa.nulls(1, pa.string())[0], text)  # NaN: missing, like a null
        else:
            array = pc.cast(array, pa.string())
    return pc.fill_null(array, EMPTY) if array.null_count else array


def hash_values(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 FNV-1a of each value's text (nulls as the empty text). The values are dictionary-encoded first (a
    hash table in Arrow, on the values as they are: no text is made for an integer column's rows), and only the
    distinct values are turned into text and hashed."""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:  # chunks of dictionaries may each have their own
            return np.concatenate([hash_values(c) for c in array.chunks] or [np.zeros(0, np.uint64)])
        array = array.chunk(0)
    encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
    dictionary = _as_text(encoded.dictionary).cast(pa.large_string())
    offsets = np.frombuffer(dictionary.buffers()[1], dtype=np.int64)[dictionary.offset:
                                                                        dictionary.offset + len(dictionary) + 1]
    data = np.frombuffer(dictionary.buffers()[2], dtype=np.uint8) if dictionary.buffers()[2] else np.zeros(0, np.uint8)
    hashed = np.append(fnv1a64(offsets, data), FNV_OFFSET)  # the last one: the empty text, for nulls
    return hashed[numpy_of(encoded.indices, fill=len(hashed) - 1)]


def hash_text(value: str) -> int:
    """The same hash of one value (for tests and documentation)."""
    h = int(FNV_OFFSET)
    for byte in value.encode():
        h = ((h ^ byte) * int(FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return h
