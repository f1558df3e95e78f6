"""DIEN batches (the `DataSource` contract) from the benchmark's files or generated samples.

As the benchmark: the last `max_history` behaviours are kept; each history position gets a sampled negative item
(from the review pool, never the position's own item); samples are cut into buffers of 20 batches and sorted by
history length within a buffer (longest first), and every batch is padded to its longest history. Unlike the
benchmark, the epoch order is a seeded permutation per (seed, epoch) and each negative a hash of (seed, epoch,
sample, position), so 1 and N ranks see identical global batches and a resume continues exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from disttrain.batch import Batch, KeyedBags
from disttrain.config import Config
from disttrain.data.contract import SourceSpec, agreed, epochs_to_steps, resume_note
from disttrain.data.dien_files import DienDataset, DienSamples, count_samples, open_dien, vocab_rows
from disttrain.data.dien_generate import generate
from disttrain.errors import DataError
from disttrain.tables import EmbeddingTableSpec, raw_id_tables, spread_ids

SORT_BUFFER_BATCHES = 20  # the benchmark's DataIterator: batch_size * 20 samples sorted by history length

class DienData:
    """Global batches of DIEN samples (the `DataSource` contract); every rank builds only its slice."""

    held_out = ("test", "test")  # the benchmark has train and test only

    def __init__(self, dataset: DienDataset, tables: list[EmbeddingTableSpec], *, global_batch: int, seed: int = 0,
                 shuffle: bool = True, use_history: bool = True, raw_ids: tuple[int, ...] = ()):
        if [t.name for t in tables] != ["uid", "mid", "cat"]:
            raise DataError("DIEN data feeds the tables uid, mid, cat (model.name=dien)")
        self.data, self.tables, self.global_batch, self.seed = dataset, tables, global_batch, seed
        self.shuffle, self.use_history = shuffle, use_history
        self.raw_ids = tuple(raw_ids)  # generated data with data.raw_ids: these tables' ids spread over int64
        self.max_history = (tables[1].bags_per_sample - 1) // 2
        for name, spec, ids in (("uid", tables[0], (dataset.train.uid, dataset.test.uid)),
                                ("mid", tables[1], (dataset.train.mid, dataset.train.hist_mid, dataset.test.mid,
                                                    dataset.test.hist_mid, dataset.pool_mid)),
                                ("cat", tables[2], (dataset.train.cat, dataset.train.hist_cat, dataset.test.cat,
                                                    dataset.test.hist_cat, dataset.pool_cat))):
            top = max((int(x.max()) for x in ids if x.size), default=0)
            if top >= spec.num_rows:
                raise DataError(f"{dataset.description}: {name} id {top} needs {top + 1} rows, but table {name} has "
                                f"{spec.num_rows} (model.table_sizes / model.max_rows too small for this data)")
        self.steps_per_epoch = len(dataset.train) // global_batch
        self.notes = list(dataset.notes)
        self.exact_history = 0  # > 0: pad (and cut) every history to exactly this many positions
        self._orders: dict[int, np.ndarray] = {}

    # ---- order ----

    def _sorted_buffers(self, samples: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Within every buffer of 20 global batches, longest history first (stable)."""
        size = SORT_BUFFER_BATCHES * self.global_batch
        out = samples.copy()
        for lo in range(0, samples.size, size):
            chunk = samples[lo : lo + size]
            out[lo : lo + size] = chunk[np.argsort(-lengths[chunk], kind="stable")]
        return out

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            n = len(self.data.train)
            if self.shuffle:
                rng = np.random.Generator(np.random.Philox(key=[self.seed & (2**64 - 1), 0xD1E40000 + epoch]))
                order = rng.permutation(n)
            else:
                order = np.arange(n)
            self._orders[epoch] = self._sorted_buffers(order, self.data.train.history_lengths)
            while len(self._orders) > 2:
                self._orders.pop(min(self._orders))
        return self._orders[epoch]

    def _test_order(self) -> np.ndarray:
        if -1 not in self._orders:
            test = self.data.test
            self._orders[-1] = self._sorted_buffers(np.arange(len(test)), test.history_lengths)
        return self._orders[-1]

    def position(self, step: int) -> dict:
        epoch, b = divmod(step, max(self.steps_per_epoch, 1))
        return {"source": "dien", "path": self.data.description, "epoch": epoch, "batch_in_epoch": b,
                "steps_per_epoch": self.steps_per_epoch, "rows_consumed": step * self.global_batch,
                "seed": self.seed, "shuffle": self.shuffle}

    def restore(self, saved: dict, step: int) -> str | None:
        return resume_note(saved, self.position(step))

    def eval_batches(self, split: str, wanted: int = -1) -> int:
        available = -(-len(self.data.test) // self.global_batch)
        return available if wanted < 0 else min(wanted, available)

    # ---- batches ----

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1, split: str = "train") -> Batch:
        local = self.global_batch // world_size
        if split == "train":
            if self.steps_per_epoch == 0:
                raise DataError(f"{self.data.description}: {len(self.data.train)} training samples, fewer than one "
                                f"global batch of {self.global_batch} (lower train.batch_size)")
            epoch, b = divmod(step, self.steps_per_epoch)
            rows = self.epoch_order(epoch)[b * self.global_batch : (b + 1) * self.global_batch]
            return self._build(self.data.train, rows, rank * local, local, None, salt=(epoch, 0))
        order = self._test_order()
        pos = step * self.global_batch + np.arange(self.global_batch)
        valid = pos < order.size
        rows = order[np.where(valid, pos, 0)]
        return self._build(self.data.test, rows, rank * local, local, valid[rank * local : (rank + 1) * local],
                           salt=None)

    def _build(self, samples: DienSamples, rows: np.ndarray, start: int, count: int, valid, salt) -> Batch:
        lengths_all = np.minimum(samples.history_lengths[rows], self.max_history) if self.use_history else \
            np.zeros(rows.size, dtype=np.int64)
        if self.exact_history:
            lengths_all = np.minimum(lengths_all, self.exact_history)
        steps = self.exact_history or (int(lengths_all.max()) if rows.size else 0)  # the global batch's longest
        mine = rows[start : start + count]
        lengths = lengths_all[start : start + count]
        positions = np.arange(steps)
        present = positions[None, :] < lengths[:, None]  # [B, steps]
        index = samples.offsets[mine + 1][:, None] - lengths[:, None] + positions[None, :]
        index = np.where(present, index, 0)
        hist_mid = samples.hist_mid[index] if samples.hist_mid.size else np.zeros_like(index)
        hist_cat = samples.hist_cat[index] if samples.hist_cat.size else np.zeros_like(index)
        with_negatives = salt is not None
        if with_negatives:
            neg_mid, neg_cat = self._negatives(hist_mid, mine, salt)
        else:
            neg_mid = neg_cat = np.zeros_like(hist_mid)
        neg_present = present if with_negatives else np.zeros_like(present)
        mask = np.concatenate([np.ones((count, 1), dtype=bool), present, neg_present], axis=1)
        mids = np.concatenate([samples.mid[mine][:, None], hist_mid, neg_mid], axis=1)[mask]
        cats = np.concatenate([samples.cat[mine][:, None], hist_cat, neg_cat], axis=1)[mask]
        bags = 1 + 2 * steps
        per_bag = mask.reshape(-1).astype(np.int64)
        lengths_flat = torch.from_numpy(np.concatenate([np.ones(count, dtype=np.int64), per_bag, per_bag]))
        values = torch.from_numpy(np.concatenate([samples.uid[mine], mids, cats]))
        if self.raw_ids:
            values = spread_ids(values, torch.tensor([count, mids.size, cats.size]), self.raw_ids)
        sparse = KeyedBags(keys=("uid", "mid", "cat"), bags_per_key=(1, bags, bags), batch_size=count,
                           lengths=lengths_flat, values=values)
        return Batch(dense=torch.zeros(count, 0), labels=torch.from_numpy(samples.labels[mine].astype(np.float32)),
                     sparse=sparse, valid=None if valid is None else torch.from_numpy(valid))

    def _negatives(self, hist_mid: np.ndarray, samples: np.ndarray, salt) -> tuple[np.ndarray, np.ndarray]:
        """One sampled negative per history position, never the position's own item (when the pool allows).
        Each pick is a hash of (seed, epoch, sample, position, attempt), so it does not depend on the rank."""
        pool_mid, pool_cat = self.data.pool_mid, self.data.pool_cat
        steps = hist_mid.shape[1]
        keys = (samples.astype(np.uint64)[:, None] * np.uint64(4096) + np.arange(steps, dtype=np.uint64)[None, :])
        base = (self.seed & 0xFFFFFFFF) * 0x100000001B3 + (salt[0] + 1) * 0x9E3779B97F4A7C15
        picks = _hash_index(keys, base, pool_mid.size)
        for attempt in range(1, 9):  # redraw the few that hit the position's own item
            clash = pool_mid[picks] == hist_mid
            if not clash.any():
                break
            picks[clash] = _hash_index(keys[clash], base + attempt * 0xBF58476D1CE4E5B9, pool_mid.size)
        return pool_mid[picks], pool_cat[picks]


def _hash_index(keys: np.ndarray, salt: int, size: int) -> np.ndarray:
    """A fixed pseudo-random index in [0, size) per key (splitmix64 finaliser)."""
    x = keys.astype(np.uint64) + np.uint64(salt & (2**64 - 1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(size)).astype(np.int64)


def _open_files(cfg: Config, tables: list[EmbeddingTableSpec], comm, rank: int) -> DienData:
    return agreed(comm, lambda: _batches(cfg, tables, open_dien(cfg.data.path)))


def _open_generated(cfg: Config, tables: list[EmbeddingTableSpec], comm, rank: int) -> DienData:
    users, items, cats = (t.num_rows for t in tables)

    def make() -> DienData:
        dataset = generate(users=users, items=items, cats=cats, train_samples=cfg.data.synthetic_samples,
                           seed=cfg.train.seed, max_history=(tables[1].bags_per_sample - 1) // 2)
        return _batches(cfg, tables, dataset, raw_ids=raw_id_tables(cfg, tables))

    return agreed(comm, make)


def _batches(cfg: Config, tables: list[EmbeddingTableSpec], dataset: DienDataset,
             raw_ids: tuple[int, ...] = ()) -> DienData:
    return DienData(dataset, tables, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                    shuffle=cfg.data.shuffle, use_history=cfg.data.use_history, raw_ids=raw_ids)


def _shape_files(cfg: Config) -> None:
    if not cfg.model.table_sizes:
        cfg.model.table_sizes = list(vocab_rows(cfg.data.path))
    epochs_to_steps(cfg, count_samples(cfg.data.path), "samples")


def _shape_generated(cfg: Config) -> None:
    epochs_to_steps(cfg, cfg.data.synthetic_samples // 2 * 2, "samples")


# The benchmark's files (data.source=dien), and generated sequences (what data.source=synthetic means for DIEN).
SPEC = SourceSpec("dien", open=_open_files, shape=_shape_files,
                  path="the directory of the DIEN benchmark's files (or `disttrain data dien-synthetic --out DIR`)")
GENERATED_SPEC = SourceSpec("dien_synthetic", open=_open_generated, shape=_shape_generated)
