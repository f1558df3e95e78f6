"""Synthetic click logs with a planted model, fast and identical whatever the world size.

Every sample is drawn from a counter-based generator (Philox) keyed by (seed, split, step) whose counter
starts at the sample's global index, so a rank generates only its own rows of the global batch and 1 rank
and N ranks see exactly the same data. Ids are uniform or Zipf-distributed (scrambled so that hot rows
spread over the table). Labels are Bernoulli draws from a planted logistic model over the dense features
and a hashed per-row weight of every id; its probabilities give the oracle AUC printed beside the trained one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from disttrain.batch import Batch, KeyedBags
from disttrain.config import Config
from disttrain.data.contract import SourceSpec, resume_note
from disttrain.tables import EmbeddingTableSpec, raw_id_tables, spread_ids

SPLITS = {"train": 0, "eval": 1}
SCRAMBLE_PRIMES = (2654435761, 2246822519, 3266489917, 668265263)
DENSE_SCALE = 1.0
SPARSE_SCALE = 2.0
BIAS = -1.3
EVAL_BATCHES = 8  # global batches per evaluation unless data.eval_batches says otherwise


def _hash_unit(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random value in [-1, 1) for every (id, salt): multiply-xorshift-multiply on uint64."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & (2**64 - 1))
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    return (x >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / 2**24) - np.float32(1.0)


class SyntheticCTR:
    """Generated click logs (the `DataSource` contract): batches are a function of (seed, split, step)."""

    held_out = ("eval", "eval")
    steps_per_epoch = 0  # no epochs: every step draws fresh samples

    def __init__(
        self,
        tables: list[EmbeddingTableSpec],
        *,
        num_dense: int,
        global_batch: int,
        seed: int = 0,
        distribution: str = "zipf",
        zipf_exponent: float = 1.05,
        multi_hot_max: int = 1,
        raw_ids: tuple[int, ...] = (),
    ):
        """`raw_ids`: the tables (dynamic ones) whose ids are spread over the whole int64 space."""
        self.raw_ids = tuple(raw_ids)
        self.tables, self.num_dense, self.global_batch = tables, num_dense, global_batch
        self.seed, self.distribution, self.alpha, self.multi_hot = seed, distribution, zipf_exponent, multi_hot_max
        self.notes: list[str] = []
        per_table = 1 if multi_hot_max == 1 else 1 + multi_hot_max
        self.draws = num_dense + 1 + per_table * len(tables)
        self.blocks = -(-self.draws // 4)  # Philox emits 4 values per counter step
        self._generators = {}
        for split, index in SPLITS.items():
            bitgen = np.random.Philox(key=np.array([seed & (2**64 - 1), index], dtype=np.uint64))
            self._generators[split] = (bitgen, np.random.Generator(bitgen))
        self.dense_weights = _hash_unit(np.arange(num_dense), seed * 7919 + 17) / math.sqrt(max(num_dense, 1))
        self.rows_T = np.array([t.num_rows for t in tables], dtype=np.int64)
        self.primes_T = np.array([self._prime_for(t.num_rows, i) for i, t in enumerate(tables)], dtype=np.int64)
        self.offsets_T = 7 * np.arange(len(tables), dtype=np.int64)
        self.zipf_span_T = (self.rows_T + 1.0) ** (1 - zipf_exponent) - 1.0 if zipf_exponent != 1.0 else None
        # Per-table sign so tables do not all push the logit the same way for the same id.
        self.table_signs_T = np.where(_hash_unit(np.arange(len(tables)), seed + 3) >= 0, 1.0, -1.0)

    @staticmethod
    def _prime_for(rows: int, index: int) -> int:
        for p in SCRAMBLE_PRIMES[index % 4 :] + SCRAMBLE_PRIMES:
            if math.gcd(p, rows) == 1:
                return p
        return 1

    def _uniforms(self, split: str, step: int, start: int, count: int) -> np.ndarray:
        """Uniforms of global samples [start, start + count) of batch `step`: the Philox counter is the
        sample's global position, so any rank can draw any rows without drawing the rows before them."""
        bitgen, generator = self._generators[split]
        counter = (step * self.global_batch + start) * self.blocks
        state = bitgen.state
        state["state"]["counter"] = np.array(
            [counter & (2**64 - 1), counter >> 64, 0, 0], dtype=np.uint64
        )
        state.update(buffer_pos=4, has_uint32=0, uinteger=0)  # drop buffered values of the last draw
        bitgen.state = state
        return generator.random((count, self.blocks * 4))[:, : self.draws]

    def _ids(self, u_BTM: np.ndarray) -> np.ndarray:
        """Ids for uniforms u [B, T, M], all tables at once."""
        rows = self.rows_T[None, :, None]
        if self.distribution == "uniform":
            return np.minimum((u_BTM * rows).astype(np.int64), rows - 1)
        a = self.alpha
        if abs(a - 1.0) < 1e-9:
            x = np.power(rows + 1.0, u_BTM)
        else:
            x = np.power(self.zipf_span_T[None, :, None] * u_BTM + 1.0, 1.0 / (1 - a))
        ids = np.clip(x.astype(np.int64) - 1, 0, rows - 1)
        return (ids * self.primes_T[None, :, None] + self.offsets_T[None, :, None]) % rows

    def position(self, step: int) -> dict:
        """Where the reader stands after `step` global batches (saved in checkpoints): batches are a function
        of (seed, step), so the step is the whole position."""
        return {"source": "synthetic", "seed": self.seed, "batches_consumed": step,
                "rows_consumed": step * self.global_batch}

    def restore(self, saved: dict, step: int) -> str | None:
        return resume_note(saved, self.position(step))

    def eval_batches(self, split: str, wanted: int = -1) -> int:
        return EVAL_BATCHES if wanted < 0 else wanted

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1, split: str = "train") -> Batch:
        """This rank's slice (samples [rank*B/W, (rank+1)*B/W)) of the global batch number `step`."""
        local = self.global_batch // world_size
        u = self._uniforms(split, step, rank * local, local)
        nd, num_tables, m = self.num_dense, len(self.tables), self.multi_hot
        dense = -np.log1p(-u[:, :nd])  # exponential(1) features
        logit = BIAS + DENSE_SCALE * (dense - 1.0) @ self.dense_weights
        if m == 1:
            ids_BTM = self._ids(u[:, nd + 1 :, None])
            lengths_BT = np.ones((local, num_tables), dtype=np.int64)
        else:
            block = u[:, nd + 1 :].reshape(local, num_tables, 1 + m)
            lengths_BT = 1 + np.minimum((block[:, :, 0] * m).astype(np.int64), m - 1)
            ids_BTM = self._ids(block[:, :, 1:])
        mask_BTM = np.arange(m)[None, None, :] < lengths_BT[:, :, None]
        weights = _hash_unit(ids_BTM, self.seed * 1009) * self.table_signs_T[None, :, None]
        per_table = np.where(mask_BTM, weights, 0.0).sum(axis=2) / lengths_BT
        logit += SPARSE_SCALE * per_table.sum(axis=1) / math.sqrt(max(num_tables, 1))
        probabilities = 1.0 / (1.0 + np.exp(-logit))
        labels = (u[:, nd] < probabilities).astype(np.float32)
        ids_TBM = ids_BTM.transpose(1, 0, 2)
        values = ids_TBM.reshape(-1) if m == 1 else ids_TBM[mask_BTM.transpose(1, 0, 2)]
        lengths = torch.from_numpy(np.ascontiguousarray(lengths_BT.T).reshape(-1))
        values = torch.from_numpy(np.ascontiguousarray(values))
        if self.raw_ids:
            values = spread_ids(values, lengths.view(num_tables, local).sum(1), self.raw_ids)
        sparse = KeyedBags(
            keys=tuple(t.name for t in self.tables),
            bags_per_key=tuple(1 for _ in self.tables),
            batch_size=local,
            lengths=lengths,
            values=values,
        )
        return Batch(
            dense=torch.from_numpy(np.log1p(dense).astype(np.float32)),
            labels=torch.from_numpy(labels),
            sparse=sparse,
            probabilities=torch.from_numpy(probabilities.astype(np.float32)),
        )


def _open(cfg: Config, tables: list[EmbeddingTableSpec], comm, rank: int) -> SyntheticCTR:
    data = cfg.data
    return SyntheticCTR(tables, num_dense=data.num_dense, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                        distribution=data.distribution, zipf_exponent=data.zipf_exponent,
                        multi_hot_max=data.multi_hot_max,
                        raw_ids=raw_id_tables(cfg, tables))


SPEC = SourceSpec("synthetic", open=_open, epochs=False)
