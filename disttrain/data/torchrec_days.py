"""TorchRec's preprocessed Criteo 1TB days, read as they are (`data.source=prepared` or `torchrec`, `data.path` =
the folder of days; no conversion):

    day_N_labels.npy              int32 [rows, 1]
    day_N_dense.npy               float32 [rows, 13]  (already transformed by TorchRec's preprocessing)
    day_N_sparse.npy              int32 or int64 [rows, 26]  one-hot ids
    day_N_sparse_multi_hot.npz    (instead of day_N_sparse.npy) members "0".."25": int32 [rows, size_j], the MLPerf
                                  DLRM-DCNv2 multi-hot days written by TorchRec's materialisation script

Days 0..D-2 are the training split; the last day is cut in two: validation is its first ceil(rows / 2) rows, test
the rest (TorchRec's rule). The files carry raw ids, which TorchRec folds with `% num_embeddings_per_feature` as it
reads; so does disttrain, by `model.table_sizes` (required: the files do not say how large the tables are).

Nothing is converted or loaded: each array is mapped (or read by byte ranges on object storage) at the offset of
its data inside the `.npy` file, or inside the uncompressed `.npz` archive (`np.savez`).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zipfile
from dataclasses import dataclass, field

import numpy as np

from disttrain.data.columns import Columns, DayColumns, FixedBags, IdRows, Store
from disttrain.errors import DataError

LABELS = re.compile(r"^day_(\d+)_labels\.npy$")
TABLE_NAMES = [f"cat_{j}" for j in range(26)]  # TorchRec's DEFAULT_CAT_NAMES
HEADER_BYTES = 1 << 16


def is_torchrec_days(store: Store, sizes: dict[str, int] | None = None) -> bool:
    sizes = store.sizes() if sizes is None else sizes
    return "meta.json" not in sizes and any(LABELS.match(name) for name in sizes)


def _npy_header(raw: bytes, where: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of the .npy file whose first bytes are `raw`."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(f)
    except (ValueError, KeyError, EOFError) as exc:
        raise DataError(f"{where}: not a .npy array ({exc})") from None
    if fortran or dtype.hasobject:
        raise DataError(f"{where}: {'Fortran-ordered' if fortran else 'object'} array; expected a C-ordered numeric "
                        "array as np.save writes")
    return dtype, tuple(shape), f.tell()


@dataclass
class _Array:
    name: str  # file inside the folder
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # of the data inside the file


def _npy(store: Store, name: str) -> _Array:
    return _Array(name, *_npy_header(store.read(name, 0, HEADER_BYTES), store.where(name)))


def _npz(store: Store, name: str, tables: int) -> list[_Array]:
    """The members "0".."tables-1" of an uncompressed .npz, located inside the archive."""
    where = store.where(name)
    try:
        with store.open(name) as f, zipfile.ZipFile(f) as archive:
            infos = {i.filename: i for i in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{where}: not a .npz archive ({exc})") from None
    out = []
    for j in range(tables):
        info = infos.get(f"{j}.npy")
        if info is None:
            raise DataError(f"{where}: no member {j}.npy; expected members 0..{tables - 1} (one per table)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise DataError(f"{where}: member {j}.npy is compressed; expected np.savez's uncompressed archive "
                            "(as TorchRec's multi-hot script writes it)")
        local = store.read(name, info.header_offset, info.header_offset + 30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        dtype, shape, offset = _npy_header(store.read(name, start, start + HEADER_BYTES), f"{where}:{j}.npy")
        out.append(_Array(name, dtype, shape, start + offset))
    return out


@dataclass
class _Day:
    number: int
    labels: _Array
    dense: _Array
    sparse: _Array | None = None
    multi_hot: list[_Array] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.labels.shape[0]


def _check(day: _Day, store: Store, first: _Day | None) -> None:
    where = store.where
    n = day.rows
    expect = [(day.labels, "iu", 2, 1), (day.dense, "f", 2, None)]
    expect += [(day.sparse, "iu", 2, None)] if day.sparse else [(a, "iu", 2, None) for a in day.multi_hot]
    for a, kinds, ndim, width in expect:
        if a.dtype.kind not in kinds or len(a.shape) != ndim or a.shape[0] != n or (width and a.shape[1] != width):
            raise DataError(f"{where(a.name)}: {a.dtype}{list(a.shape)}; expected {n} rows "
                            f"({'integer' if 'i' in kinds else 'float'}, 2-d{f', width {width}' if width else ''}) "
                            f"like {where(day.labels.name)}")
    if first is not None:
        mine = [day.dense.shape[1], *(a.shape[1] for a in ([day.sparse] if day.sparse else day.multi_hot))]
        theirs = [first.dense.shape[1], *(a.shape[1] for a in ([first.sparse] if first.sparse else first.multi_hot))]
        if mine != theirs:
            raise DataError(f"{where(day.dense.name)}: day {day.number} has widths {mine}, but day {first.number} has "
                            f"{theirs}; expected every day alike")


class TorchRecDays:
    """A folder of TorchRec days, with the reader's view of a prepared directory (`DatasetInfo`'s attributes)."""

    bounded = False  # raw ids: folded by modulo of model.table_sizes

    def __init__(self, path, table_rows: list[int] | None = None):
        self.store = store = Store(path)
        self.path = store.url
        sizes = store.sizes()
        numbers = sorted(int(m.group(1)) for m in map(LABELS.match, sizes) if m)
        if len(numbers) < 2:
            raise DataError(f"data.path: {path} has {len(numbers)} TorchRec day; expected 2 or more (day_0 ... day_N: "
                            "the last day is cut into validation and test)")
        self.days: list[_Day] = []
        for n in numbers:
            prefix = f"day_{n}_"
            for part in ("dense.npy",):
                if prefix + part not in sizes:
                    raise DataError(f"{store.where(prefix + part)}: missing (beside {prefix}labels.npy)")
            day = _Day(n, _npy(store, prefix + "labels.npy"), _npy(store, prefix + "dense.npy"))
            if prefix + "sparse_multi_hot.npz" in sizes:
                day.multi_hot = _npz(store, prefix + "sparse_multi_hot.npz", len(TABLE_NAMES))
            elif prefix + "sparse.npy" in sizes:
                day.sparse = _npy(store, prefix + "sparse.npy")
            else:
                raise DataError(f"{store.where(prefix + 'sparse.npy')}: missing (and no {prefix}sparse_multi_hot.npz)")
            _check(day, store, self.days[0] if self.days else None)
            self.days.append(day)
        if len({bool(d.multi_hot) for d in self.days}) > 1:
            raise DataError(f"data.path: {path} mixes one-hot (sparse.npy) and multi-hot (sparse_multi_hot.npz) days; "
                            "expected one kind")
        first = self.days[0]
        self.num_tables = len(first.multi_hot) if first.multi_hot else first.sparse.shape[1]
        self.rows = sum(d.rows for d in self.days)
        self.num_dense = first.dense.shape[1]
        self.table_rows = list(table_rows or [])
        last = self.days[-1].rows
        train = self.rows - last
        self._splits = {"train": (0, train), "val": (train, train + -(-last // 2)), "test": (train + -(-last // 2),
                                                                                           self.rows)}
        self._sizes = {name: sizes[name] for name in sorted(sizes) if name.startswith("day_")}
        pooled = [{"name": TABLE_NAMES[j] if j < len(TABLE_NAMES) else f"cat_{j}",
                   "rows": self.table_rows[j] if j < len(self.table_rows) else 0,
                   "multi_hot": bool(first.multi_hot), "pooling": "sum"} for j in range(self.num_tables)]
        self.meta = {"format": "torchrec-criteo-days", "rows": self.rows, "num_dense": self.num_dense,
                     "tables": pooled, "days": numbers}

    @property
    def table_names(self) -> list[str]:
        return [t["name"] for t in self.meta["tables"]]

    @property
    def multi_hot(self) -> list[bool]:
        return [bool(self.days[0].multi_hot)] * self.num_tables

    def split(self, name: str) -> tuple[int, int]:
        return self._splits[name]

    @property
    def fingerprint(self) -> str:
        """Identifies the days: their file names and sizes (hashing terabytes would read them all)."""
        return hashlib.sha256(repr(sorted(self._sizes.items())).encode()).hexdigest()[:16]

    def _column(self, arrays: list[_Array]):
        return DayColumns([self.store.column(a.name, a.dtype, a.shape, a.offset) for a in arrays])

    def columns(self) -> Columns:
        labels = self._column([d.labels for d in self.days])
        dense = self._column([d.dense for d in self.days])
        if self.days[0].multi_hot:
            bags = {j: FixedBags(self._column([d.multi_hot[j] for d in self.days])) for j in range(self.num_tables)}
            return Columns(labels, dense, IdRows(None), bags)
        return Columns(labels, dense, IdRows(self._column([d.sparse for d in self.days])), {})


def write_days(folder, days: list[dict], *, multi_hot: bool = False) -> None:
    """Write TorchRec's layout (a test and benchmark generator): each day a dict of `labels` [n] (0/1), `dense`
    [n, 13] float32, and `sparse` int [n, 26] or, with `multi_hot`, a list of int32 [n, size_j] arrays."""
    from pathlib import Path

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for n, day in enumerate(days):
        np.save(root / f"day_{n}_labels.npy", np.asarray(day["labels"], dtype=np.int32).reshape(-1, 1))
        np.save(root / f"day_{n}_dense.npy", np.asarray(day["dense"], dtype=np.float32))
        if multi_hot:
            np.savez(root / f"day_{n}_sparse_multi_hot.npz",
                     **{str(j): np.asarray(a, dtype=np.int32) for j, a in enumerate(day["sparse"])})
        else:
            np.save(root / f"day_{n}_sparse.npy", np.asarray(day["sparse"]))
