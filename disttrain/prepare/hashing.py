"""A stable 64-bit hash of categorical values: FNV-1a 64 of the value's UTF-8 text.

Stable across runs, processes, machines and languages (FNV-1a is a published constant-only algorithm; no seed,
no dependence on Python's hash randomisation). A value is hashed as text, so the integer 123 from a Parquet int
column and the field `123` of a CSV file hash alike. Missing values (null, and NaN in a float column) hash as the empty text.

Vectorised: the distinct values of a chunk (Arrow's dictionary encoding) are hashed one byte position at a
time for all of them at once, longest first, so no Python loop runs per value.
"""

from __future__ import annotations

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


def fnv1a64(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of the byte strings data[offsets[i]:offsets[i+1]]."""
    n = offsets.size - 1
    lengths = np.diff(offsets).astype(np.int64)
    out = np.full(n, FNV_OFFSET, dtype=np.uint64)
    if n == 0 or lengths.max(initial=0) == 0:
        return out
    key = -lengths.astype(np.int16) if lengths.max() < 2**15 else -lengths  # int16: numpy sorts it by radix
    order = np.argsort(key, kind="stable")  # longest first: the active strings are a prefix
    starts = offsets[:-1].astype(np.int64)[order]
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
