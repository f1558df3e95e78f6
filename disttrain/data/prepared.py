"""Training from a directory written by `disttrain data prepare` or `disttrain data criteo` (`data.source=prepared`,
or its old name `criteo`): memory-mapped, sharded by rank, shuffled by seed. Tables take the data's column names;
multi-hot features come as bags of their rows' ids (pooled by their schema's pooling).

Nothing is loaded into RAM: each rank maps the columns and gathers only the rows of its part of each global
batch, so a dataset larger than memory works (the page cache holds what is hot).

Order of the training rows in epoch e: the rows are cut into blocks of `BLOCK_ROWS` consecutive rows, the blocks
are permuted (seed, e), and the permuted sequence is cut into windows of `shuffle_window` rows whose rows are
permuted again (seed, e, window). Windows hold `shuffle_window` rows except the last one and the one that
received the short last block, wherever the block permutation put it (`ShuffleOrder`). A batch therefore reads
from one or two windows of nearby blocks (friendly to the page cache and to readahead), while consecutive batches
cover the whole dataset. Global batch b of epoch e is
positions [b*B, (b+1)*B) of that order, and rank r of W reads positions [b*B + r*B/W, b*B + (r+1)*B/W): 1 rank and
N ranks see exactly the same global batches. Validation and test are read in file order; the last global batch
is padded (the padding is masked out of the metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from disttrain.batch import Batch, KeyedBags
from disttrain.config import Config
from disttrain.data.columns import Columns, IdColumns, OffsetBags, Store
from disttrain.data.contract import SourceSpec, agreed, epochs_to_steps, resume_note
from disttrain.data.prepared_format import FORMAT, VERSIONS
from disttrain.data.shuffle_order import BLOCK_ROWS, ShuffleOrder
from disttrain.data.torchrec_days import TorchRecDays, is_torchrec_days
from disttrain.errors import ConfigError, DataError
from disttrain.fileio import sha256_file
from disttrain.tables import EmbeddingTableSpec, dynamic_indices

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    path: str  # a local directory or a URL
    meta: dict
    store: Store

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def num_dense(self) -> int:
        return int(self.meta["num_dense"])

    @property
    def table_rows(self) -> list[int]:
        return [int(t["rows"]) for t in self.meta["tables"]]

    @property
    def table_names(self) -> list[str]:
        return [str(t["name"]) for t in self.meta["tables"]]

    @property
    def multi_hot(self) -> list[bool]:
        return [bool(t.get("multi_hot", False)) for t in self.meta["tables"]]

    def split(self, name: str) -> tuple[int, int]:
        lo, hi = self.meta["splits"][name]
        return int(lo), int(hi)

    bounded = True  # ids are below their table's rows (TorchRec's days are folded by modulo)

    def columns(self) -> Columns:
        rows, store = self.rows, self.store
        # sparse.i32 is column-major: one contiguous id column per single-hot table; raw ones have their own file
        columns, slot = [], 0
        for t in self.meta["tables"]:
            if t.get("multi_hot"):
                continue
            if t.get("mode") == "raw":
                columns.append(store.column(f"raw/{t['name']}.i64", "<i8", (rows,)))
            else:
                columns.append(store.column("sparse.i32", "<i4", (rows,), offset=4 * rows * slot))
                slot += 1
        ids = IdColumns(columns)
        bags = {i: OffsetBags(store.column(f"multi/{t['name']}.offsets.i64", "<i8", (rows + 1,)),
                              store.column(f"multi/{t['name']}.values.{'i64' if t.get('mode') == 'raw' else 'i32'}",
                                           "<i8" if t.get("mode") == "raw" else "<i4", (int(t["values"]),)))
                for i, t in enumerate(self.meta["tables"]) if t.get("multi_hot")}
        return Columns(store.column("labels.u8", "u1", (rows,)), store.column("dense.f32", "<f4", (rows, self.num_dense)),
                       ids, bags)

    @property
    def fingerprint(self) -> str:
        """Identifies the processed data: the digest of its files' digests."""
        import hashlib

        files = self.meta["files"]
        return hashlib.sha256("".join(files[f]["sha256"] for f in sorted(files)).encode()).hexdigest()[:16]


def open_dataset(path, *, verify: str = "size") -> DatasetInfo:
    """Read and check `meta.json` against the files: sizes always, sha256 with verify="checksum" (local; on object
    storage a checksum would read every byte, so sizes are checked there: `disttrain data verify URL` hashes)."""
    store = Store(path)
    meta_path = store.where("meta.json")
    if not store.remote:
        local_dir = Path(store.root)
        partial = any(local_dir.parent.glob(f".tmp-{local_dir.name}-*"))
        hint = (" (an interrupted `disttrain data criteo` or `data prepare` left only its partial .tmp- directory; "
                "run it again)"
                if partial else "")
        if not local_dir.is_dir():
            raise DataError(f"data.path: {path} is not a directory; expected the --out of `disttrain data prepare` "
                            f"or `disttrain data criteo`{hint}")
        if not (local_dir / "meta.json").is_file():
            raise DataError(f"data.path: {path} has no meta.json; expected a directory written by "
                            f"`disttrain data prepare` or `disttrain data criteo`{hint}")
    try:
        meta = store.read_json("meta.json")
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                        f"expected {FORMAT!r}")
    if meta.get("version") not in VERSIONS:
        raise DataError(f"{meta_path}: format version {meta.get('version')!r}, expected one of {VERSIONS} "
                        "(re-run `disttrain data prepare` or `disttrain data criteo`)")
    try:
        rows, num_dense, tables, splits = meta["rows"], meta["num_dense"], meta["tables"], meta["splits"]
        expected = {
            "labels.u8": rows,
            "dense.f32": 4 * rows * num_dense,
            "sparse.i32": 4 * rows * sum(not t.get("multi_hot", False) and t.get("mode") != "raw" for t in tables),
        }
        for t in tables:
            if meta["version"] == 1:
                expected[f"vocab/{t['name']}.u32"] = 4 * (t["rows"] - (1 if t["reserved_default"] else 0))
                continue
            if t["mode"] == "vocabulary":
                expected[f"vocab/{t['name']}.u64"] = 8 * (t["rows"] - 1)
            raw = t["mode"] == "raw"
            if t["multi_hot"]:
                expected[f"multi/{t['name']}.offsets.i64"] = 8 * (rows + 1)
                expected[f"multi/{t['name']}.values.{'i64' if raw else 'i32'}"] = (8 if raw else 4) * t["values"]
            elif raw:
                expected[f"raw/{t['name']}.i64"] = 8 * rows
        for name in SPLITS:
            lo, hi = splits[name]
            if not 0 <= lo <= hi <= rows:
                raise DataError(f"{meta_path}: split {name} [{lo}, {hi}) is outside the {rows} rows")
        files = meta["files"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: incomplete metadata (missing {exc})") from None
    sizes = store.sizes()
    for name, size in expected.items():
        where = store.where(name)
        if name not in files:
            raise DataError(f"{meta_path}: no entry for {name}")
        if name not in sizes:
            raise DataError(f"{where}: missing (listed in {meta_path})")
        if sizes[name] != size or files[name]["bytes"] != size:
            raise DataError(f"{where}: {sizes[name]} bytes, expected {size} from {meta_path} "
                            f"({rows} rows); the directory is damaged or was changed")
    if verify == "checksum" and not store.remote:
        for name in expected:
            digest = sha256_file(Path(store.root) / name)
            if digest != files[name]["sha256"]:
                raise DataError(f"{store.where(name)}: sha256 {digest[:16]}..., expected "
                                f"{files[name]['sha256'][:16]}... from {meta_path}; the file was changed or damaged")
    return DatasetInfo(store.url, meta, store)


class CriteoData:
    """Batches from a processed directory (the `DataSource` contract)."""

    held_out = ("val", "test")

    def __init__(
        self,
        info: DatasetInfo,
        tables: list[EmbeddingTableSpec],
        *,
        global_batch: int,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1 << 18,
        dynamic: tuple[int, ...] = (),
    ):
        """`dynamic`: indices of dynamic tables (raw ids pass as they are, never folded)."""
        self.info, self.tables, self.global_batch, self.seed = info, tables, global_batch, seed
        self.dynamic_indices = dynamic
        self.shuffle = shuffle
        self.window = max(BLOCK_ROWS, shuffle_window // BLOCK_ROWS * BLOCK_ROWS)
        if len(tables) != len(info.table_rows):
            raise DataError(f"{info.path}: {len(info.table_rows)} categorical columns, but the model has "
                            f"{len(tables)} tables")
        self.columns = info.columns()
        self.single = [i for i, multi in enumerate(info.multi_hot) if not multi]
        self.notes = ([f"data.path: {info.path} is on object storage: files checked by size (a checksum would read "
                       "every byte; `disttrain data verify URL` hashes them)"] if info.store.remote else [])
        # Ids past a table's rows (the model caps tables with model.max_rows; TorchRec's days hold raw ids) are
        # folded by modulo.
        self.fold = np.array([t.num_rows for t in tables], dtype=np.int64)
        self.needs_fold = not info.bounded or any(t.num_rows < r for t, r in zip(tables, info.table_rows))
        # A raw feature read by a fixed table is folded too (hashing modulo its rows); dynamic tables never are.
        raw = [t.get("mode") == "raw" for t in getattr(info, "meta", {}).get("tables", [])]
        self.needs_fold = self.needs_fold or any(raw)
        for i in self.dynamic_indices:
            self.fold[i] = 0
        self.train_lo, self.train_hi = info.split("train")
        self.steps_per_epoch = (self.train_hi - self.train_lo) // global_batch
        self.order = ShuffleOrder(self.train_hi - self.train_lo, window=self.window, seed=seed,
                                  first_row=self.train_lo, where=str(info.path))

    # ---- the training order ---------------------------------------------------------------------------------

    def train_rows(self, step: int, start: int, count: int) -> np.ndarray:
        """Row numbers of positions [start, start + count) of global batch `step`."""
        if self.steps_per_epoch == 0:
            raise DataError(f"{self.info.path}: the train split has {self.train_hi - self.train_lo} rows, fewer than "
                            f"one global batch of {self.global_batch} (lower train.batch_size)")
        epoch, b = divmod(step, self.steps_per_epoch)
        first = b * self.global_batch + start
        if not self.shuffle:
            return np.arange(self.train_lo + first, self.train_lo + first + count)
        return self.order.rows(epoch, first, count)

    def position(self, step: int) -> dict:
        """Where the reader stands after `step` global batches (saved in checkpoints)."""
        epoch, b = divmod(step, max(self.steps_per_epoch, 1))
        return {"source": "criteo", "path": str(self.info.path), "fingerprint": self.info.fingerprint,
                "epoch": epoch, "batch_in_epoch": b, "steps_per_epoch": self.steps_per_epoch,
                "rows_consumed": step * self.global_batch, "seed": self.seed, "shuffle": self.shuffle,
                "shuffle_window": self.window}

    # ---- batches --------------------------------------------------------------------------------------------

    def restore(self, saved: dict, step: int) -> str | None:
        return resume_note(saved, self.position(step))

    def eval_batches(self, split: str, wanted: int = -1) -> int:
        lo, hi = self.info.split(split)
        available = -(-(hi - lo) // self.global_batch)
        return available if wanted < 0 else min(wanted, available)

    def _read(self, rows: np.ndarray, valid: np.ndarray | None) -> Batch:
        order = np.argsort(rows, kind="stable")  # read in file order, hand back in batch order
        sorted_rows = rows[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        cols = self.columns
        labels = cols.labels.take(sorted_rows).reshape(-1)[inverse].astype(np.float32)
        dense = cols.dense.take(sorted_rows)[inverse].astype(np.float32, copy=False)
        single = cols.ids.take(sorted_rows)[inverse] if self.single else None
        local = rows.size
        lengths, values = [], []
        for t in range(len(self.tables)):
            if t in cols.bags:
                n, v = cols.bags[t].bags(sorted_rows, inverse)
                lengths.append(n)
                values.append(v)
            else:
                lengths.append(np.ones(local, dtype=np.int64))
                values.append(single[:, self.single.index(t)])
            if self.needs_fold and self.fold[t]:
                values[-1] = values[-1] % self.fold[t]
        sparse = KeyedBags(
            keys=tuple(t.name for t in self.tables),
            bags_per_key=tuple(1 for _ in self.tables),
            batch_size=local,
            lengths=torch.from_numpy(np.concatenate(lengths)),
            values=torch.from_numpy(np.concatenate(values)),
        )
        return Batch(dense=torch.from_numpy(np.ascontiguousarray(dense)), labels=torch.from_numpy(labels),
                     sparse=sparse, valid=None if valid is None else torch.from_numpy(valid))

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1, split: str = "train") -> Batch:
        local = self.global_batch // world_size
        if split == "train":
            return self._read(self.train_rows(step, rank * local, local), None)
        lo, hi = self.info.split(split)
        pos = lo + step * self.global_batch + rank * local + np.arange(local)
        valid = pos < hi
        return self._read(np.where(valid, pos, lo), valid)


def torchrec_days(path) -> bool:
    """Whether `path` is a folder of TorchRec's .npy days rather than a prepared directory."""
    store = Store(path)
    if store.remote:
        return is_torchrec_days(store)
    root = Path(store.root)
    return root.is_dir() and not (root / "meta.json").exists() and any(root.glob("day_*_labels.npy"))


def open_data(path, *, verify: str = "size", table_rows: list[int] | None = None):
    """A prepared directory (`open_dataset`) or a folder of TorchRec days (no checksums there to verify)."""
    return TorchRecDays(path, table_rows) if torchrec_days(path) else open_dataset(path, verify=verify)


def verify_for_launch(path: str, verify: str) -> None:
    """Launcher pre-flight: the full check once, before any worker starts; workers then check sizes only (the
    job record says so: `disttrain.runtime.job.Job.verified_data`)."""
    open_data(path, verify=verify)


def _shape(cfg: Config) -> None:
    info = open_data(cfg.data.path, verify="size")
    rows = info.table_rows
    if not info.table_names:
        raise ConfigError(f"data.path: {cfg.data.path} has no categorical columns; expected at least one (an "
                          "embedding table) to train a model on it")
    if not info.bounded and not cfg.model.table_sizes:
        raise ConfigError(f"model.table_sizes: not set, but {cfg.data.path} holds TorchRec's days, whose files do not "
                          f"say how large the tables are; expected {len(info.table_names)} sizes (TorchRec's "
                          "--num_embeddings_per_feature; ids are folded by modulo of them as TorchRec does)")
    if not info.bounded:
        rows = list(cfg.model.table_sizes)
    if not cfg.model.table_sizes:
        cfg.model.table_sizes = list(rows)
    elif len(cfg.model.table_sizes) != len(rows):
        raise ConfigError(f"model.table_sizes: {len(cfg.model.table_sizes)} tables, but {cfg.data.path} has "
                          f"{len(rows)} categorical columns; expected {len(rows)} sizes (or none: the data's)")
    if not cfg.model.table_names:
        cfg.model.table_names = info.table_names
    for t in info.meta["tables"]:
        if t.get("multi_hot"):
            cfg.model.table_pooling.setdefault(t["name"], t.get("pooling", "sum"))
    cfg.data.num_dense = info.num_dense
    lo, hi = info.split("train")
    epochs_to_steps(cfg, hi - lo, f"rows of {cfg.data.path}")


def _open(cfg: Config, tables: list[EmbeddingTableSpec], comm, rank: int) -> CriteoData:
    path = cfg.data.path
    # The full check once: by the launcher (which then opens this with data.verify=size) or here by rank 0 for all.
    checksum = cfg.data.verify == "checksum"
    info = agreed(comm, lambda: open_data(path, verify="checksum" if checksum and rank == 0 else "size",
                                          table_rows=list(cfg.model.table_sizes)))
    return CriteoData(info, tables, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                      shuffle=cfg.data.shuffle, shuffle_window=cfg.data.shuffle_window,
                      dynamic=tuple(dynamic_indices(cfg.model.dynamic_tables, tables)))


SPEC = SourceSpec("criteo", open=_open, shape=_shape,
                  path="the directory written by `disttrain data prepare FILES... --out DIR` (or `disttrain data "
                       "criteo RAW... --out DIR`), or a folder of TorchRec's day_N_*.npy days",
                  preflight=lambda cfg: verify_for_launch(cfg.data.path, cfg.data.verify))
