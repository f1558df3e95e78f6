"""The files of a prepared dataset as arrays a reader gathers rows from: memory-mapped when local, read by byte
ranges when on object storage (never whole files).

A remote column is read in blocks of `BLOCK_BYTES`; the blocks a batch needs are fetched together (one request
each, concurrently through fsspec's `cat_ranges`) and kept in a small LRU cache, so the nearby rows of the next
batches (the training order shuffles blocks of rows, then rows within windows) mostly come from memory.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from disttrain.storage import filesystem, is_remote, join, local, remote_call

BLOCK_BYTES = 1 << 20
CACHE_BLOCKS = 512  # per column: 512 MiB at most


class LocalColumn:
    def __init__(self, path: str, dtype: str, shape: tuple[int, ...], offset: int = 0):
        self.array = np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]

    def ranges(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        count = (stops - starts).astype(np.int64)
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return np.asarray(self.array[np.repeat(starts, count) + within])


class EmptyColumn:
    """A column without bytes: the dense features of a dataset that has none (`[rows, 0]`), or a multi-hot column
    without a value. An empty file cannot be memory-mapped, and there is nothing to fetch."""

    def __init__(self, dtype: str, shape: tuple[int, ...]):
        self.shape, self.dtype = shape, np.dtype(dtype)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros((np.asarray(rows).size, *self.shape[1:]), dtype=self.dtype)

    def ranges(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        return np.zeros(int((stops - starts).sum()), dtype=self.dtype)


class RemoteColumn:
    """Rows of a little-endian array at `offset` in a remote file, fetched by blocks."""

    def __init__(self, fs, url: str, path: str, dtype: str, shape: tuple[int, ...], offset: int = 0):
        self.fs, self.url, self.path, self.dtype, self.shape, self.offset = fs, url, path, np.dtype(dtype), shape, offset
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.rows_per_block = max(1, BLOCK_BYTES // self.row_bytes)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _blocks(self, wanted: list[int]) -> None:
        """Fetch the blocks of `wanted` not in the cache (one concurrent request set), mark all as recently used."""
        missing = [b for b in wanted if b not in self.cache]
        if missing:
            starts = [self.offset + b * self.rows_per_block * self.row_bytes for b in missing]
            ends = [min(s + self.rows_per_block * self.row_bytes, self.offset + self.shape[0] * self.row_bytes)
                    for s in starts]
            data = remote_call(self.url, "data.path", self.fs.cat_ranges, [self.path] * len(missing), starts, ends)
            for b, raw in zip(missing, data):
                if isinstance(raw, Exception):
                    raise remote_call(self.url, "data.path", _raise, raw)
                self.cache[b] = np.frombuffer(raw, dtype=self.dtype).reshape(-1, *self.shape[1:])
        for b in wanted:
            self.cache.move_to_end(b)
        while len(self.cache) > CACHE_BLOCKS:
            self.cache.popitem(last=False)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        order = None
        if rows.size > 1 and bool((rows[1:] < rows[:-1]).any()):  # readers mostly ask in file order already
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
        blocks = rows // self.rows_per_block
        bounds = np.flatnonzero(np.diff(blocks)) + 1 if rows.size else np.zeros(0, np.int64)
        firsts = np.concatenate(([0], bounds)) if rows.size else bounds
        wanted = blocks[firsts].tolist()
        self._blocks(wanted)
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        for b, lo, hi in zip(wanted, firsts.tolist(), [*bounds.tolist(), rows.size]):  # one slice per block
            out[lo:hi] = self.cache[b][rows[lo:hi] - b * self.rows_per_block]
        if order is None:
            return out
        result = np.empty_like(out)
        result[order] = out
        return result

    def ranges(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        count = (stops - starts).astype(np.int64)
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return self.take(np.repeat(starts, count) + within)


def _raise(exc: BaseException):
    raise exc


class Store:
    """A prepared dataset's directory: local, or a URL on object storage."""

    def __init__(self, path):
        self.url = str(path)
        self.remote = is_remote(path)
        if self.remote:
            self.fs, self.root = filesystem(self.url, key="data.path")
        else:
            self.root = local(path)

    def where(self, name: str) -> str:
        return join(self.url, name) if self.remote else join(self.root, name)

    def read_json(self, name: str):
        if not self.remote:
            with open(join(self.root, name)) as f:
                return json.load(f)
        return json.loads(remote_call(self.url, "data.path", self.fs.cat_file, join(self.root, name)))

    def sizes(self) -> dict[str, int]:
        """Every file below the directory, relative name -> bytes."""
        if not self.remote:
            import os

            out = {}
            for folder, _, files in os.walk(self.root):
                for f in files:
                    full = os.path.join(folder, f)
                    out[os.path.relpath(full, self.root)] = os.path.getsize(full)
            return out
        found = remote_call(self.url, "data.path", self.fs.find, self.root, detail=True)
        prefix = self.root.rstrip("/") + "/"
        return {k[len(prefix):]: int(v["size"]) for k, v in found.items() if k.startswith(prefix)}

    def read(self, name: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of a file (fewer at its end)."""
        if not self.remote:
            with open(join(self.root, name), "rb") as f:
                f.seek(start)
                return f.read(stop - start)
        return remote_call(self.url, "data.path", self.fs.cat_file, join(self.root, name), start, stop)

    def open(self, name: str):
        """A seekable binary file object (remote ones read by ranges)."""
        if not self.remote:
            return open(join(self.root, name), "rb")
        return remote_call(self.url, "data.path", self.fs.open, join(self.root, name), "rb")

    def column(self, name: str, dtype: str, shape: tuple[int, ...], offset: int = 0):
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return EmptyColumn(dtype, shape)
        if self.remote:
            return RemoteColumn(self.fs, self.where(name), join(self.root, name), dtype, shape, offset)
        return LocalColumn(join(self.root, name), dtype, shape, offset)


# ---- what a reader takes from the columns ----------------------------------------------------------------------


class Columns(NamedTuple):
    """What a reader gathers rows from: labels [rows(, 1)], dense [rows, d], the single-hot tables' ids
    (`take(rows) -> [n, tables]`) and each multi-hot table's bags (`bags(sorted_rows, inverse)`)."""

    labels: object
    dense: object
    ids: object
    bags: dict


class DayColumns:
    """Consecutive files (days) of the same columns, read as one: row r of the whole is row r - start of its day."""

    def __init__(self, parts: list):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        day = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        for d in np.unique(day):
            mask = day == d
            out[mask] = self.parts[d].take(rows[mask] - self.starts[d])
        return out


class IdColumns:
    """Single-hot ids stored one contiguous column per table (a prepared directory's sparse.i32)."""

    def __init__(self, columns: list):
        self.columns = columns

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, len(self.columns)), dtype=np.int64)
        for k, c in enumerate(self.columns):
            out[:, k] = c.take(rows)
        return out


class IdRows:
    """Single-hot ids stored row-major, one row of every table per sample (TorchRec's day_N_sparse.npy)."""

    def __init__(self, column):
        self.column = column

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.column.take(rows).astype(np.int64, copy=False)


class OffsetBags:
    """Multi-hot bags of varying length: offsets [rows + 1] into a values column."""

    def __init__(self, offsets, values):
        self.offsets, self.values = offsets, values

    def bags(self, sorted_rows: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = self.offsets.take(sorted_rows)[inverse]
        stops = self.offsets.take(sorted_rows + 1)[inverse]
        return (stops - starts).astype(np.int64), self.values.ranges(starts, stops).astype(np.int64)


class FixedBags:
    """Multi-hot bags of one length: a [rows, size] column (TorchRec's materialised multi-hot days)."""

    def __init__(self, column):
        self.column = column

    def bags(self, sorted_rows: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = self.column.take(sorted_rows)[inverse]
        return np.full(values.shape[0], values.shape[1], dtype=np.int64), values.reshape(-1).astype(np.int64)
