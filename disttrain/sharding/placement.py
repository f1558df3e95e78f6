"""Where `auto` puts each table: the layout with the least predicted step time that keeps every rank under its
memory cap.

Tables are placed largest first. For each, the candidates are: whole on the rank with the least memory (and on
the one with the least lookup time), split evenly over the ranks of the node with the most room (table-row-wise),
split evenly over every rank (row-wise), and, when no rank has room for it whole, split over the fewest ranks
with the most room, rows in proportion to it, filling them up to the mean memory per rank (or the cap, when that
leaves too little room). `disttrain.sharding.cost_model` predicts the step time of each; the fastest that fits
wins (ties: the one leaving the least memory on its fullest rank, then the fewest shards). Candidates are arrays
(ranks, row ranges): a row-wise candidate over 1,024 ranks costs a few array operations, not 1,024 objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disttrain.sharding.cost_model import Machine, StepCosts
from disttrain.sharding.plan import Shard, ShardingType


@dataclass(frozen=True)
class Candidate:
    type: ShardingType
    ranks: np.ndarray  # one shard per rank, in row order
    starts: np.ndarray
    stops: np.ndarray
    dim: int

    @property
    def rows(self) -> np.ndarray:
        return self.stops - self.starts

    @property
    def shards(self) -> tuple[Shard, ...]:
        return tuple(Shard(int(r), (int(a), int(b)), (0, self.dim))
                     for r, a, b in zip(self.ranks, self.starts, self.stops))


class Placer:
    """Running memory per rank and the step's costs; `place` decides one table and records it."""

    def __init__(self, world_size: int, ranks_per_node: int, costs: StepCosts, machine: Machine, cap: float,
                 level: float = 0.0, memory: np.ndarray | None = None):
        """`cap`: no rank above it; `level`: the mean memory per rank, up to which a split fills ranks; `memory`:
        the bytes per rank placed so far (updated in place)."""
        self.world, self.costs, self.machine, self.cap = world_size, costs, machine, cap
        self.level = min(level, cap) if level > 0 else cap
        self.local = max(min(ranks_per_node or world_size, world_size), 1)
        self.nodes = -(-self.world // self.local)
        self.memory = memory if memory is not None else np.zeros(world_size)
        self.future_lookup = 0.0  # lookup bytes of the tables not placed yet (the look-ahead)

    def place(self, *, rows: int, dim: int, bytes_per_row: float, terms_of) -> Candidate:
        """The best layout of a table of `rows` x `dim`; `terms_of(rows array, share array)`: the cost model's
        (forward, backward, lookup) bytes of its shards."""
        total = rows * bytes_per_row
        whole = terms_of(np.array([rows]), np.array([1.0]))
        self.future_lookup = max(self.future_lookup - float(whole[2][0]), 0.0)
        best, best_key, best_terms = None, None, None
        for option in self._candidates(rows, dim, bytes_per_row, total):
            added = option.rows * bytes_per_row
            after_max = max(float(self.memory.max()), float((self.memory[option.ranks] + added).max()))
            terms = terms_of(option.rows, option.rows / rows)
            step = self.costs.predict_with(self.machine, option.ranks, terms, future_lookup=self.future_lookup).step_s
            key = (after_max > self.cap * (1 + 1e-9), round(step, 9), after_max, option.ranks.size)
            if best_key is None or key < best_key:
                best, best_key, best_terms = option, key, terms
        np.add.at(self.memory, best.ranks, best.rows * bytes_per_row)
        self.costs.add_many(best.ranks, best_terms)
        return best

    def _candidates(self, rows: int, dim: int, per_row: float, total: float) -> list[Candidate]:
        out: list[Candidate] = []
        room = self.cap - self.memory
        fits = np.flatnonzero(room >= total)
        if fits.size:
            for rank in {int(fits[np.argmin(self.memory[fits])]), int(fits[np.argmin(self.costs.lookup[fits])])}:
                out.append(self._even(ShardingType.TABLE_WISE, np.array([rank]), rows, dim))
        if self.local > 1 and self.nodes > 1 and rows >= self.local:
            padded = np.zeros(self.nodes * self.local)
            padded[: self.world] = room
            node = int(np.argmax(padded.reshape(self.nodes, self.local).sum(axis=1)))
            ranks = np.arange(node * self.local, min((node + 1) * self.local, self.world))
            out.append(self._even(ShardingType.TABLE_ROW_WISE, ranks, rows, dim))
        if self.world > 1 and rows >= self.world:
            out.append(self._even(ShardingType.ROW_WISE, np.arange(self.world), rows, dim))
        if not fits.size and self.world > 1:
            level = self.level - self.memory
            out.append(self._fill(rows, dim, per_row, level if level.clip(min=0).sum() >= total else room))
        return out or [self._even(ShardingType.TABLE_WISE, np.array([int(np.argmin(self.memory))]), rows, dim)]

    @staticmethod
    def _even(kind: ShardingType, ranks: np.ndarray, rows: int, dim: int) -> Candidate:
        parts = min(len(ranks), rows) if rows else 1
        bounds = (np.arange(parts + 1) * rows) // parts
        return Candidate(kind, ranks[:parts], bounds[:-1], bounds[1:], dim)

    def _fill(self, rows: int, dim: int, per_row: float, room: np.ndarray) -> Candidate:
        """The fewest ranks with the most room, rows in proportion to their room. With too little room anywhere,
        every rank, the excess evenly."""
        room = np.maximum(room, 0.0)
        order = np.argsort(-room, kind="stable")
        need = rows * per_row
        count = int(np.searchsorted(np.cumsum(room[order]), need)) + 1
        ranks = order[: min(count, self.world)]
        weights = room[ranks]
        if weights.sum() < need:  # over the cap everywhere: spread what does not fit evenly
            weights = weights + (need - weights.sum()) / len(ranks)
        bounds = np.rint(np.cumsum(weights) / weights.sum() * rows).astype(np.int64)
        bounds[-1] = rows
        starts = np.concatenate([[0], bounds[:-1]])
        keep = bounds > starts
        ranks, starts, stops = ranks[keep], starts[keep], bounds[keep]
        if len(ranks) == 1:
            kind = ShardingType.TABLE_WISE
        elif len(np.unique(ranks // self.local)) == 1 and len(ranks) < self.world:
            kind = ShardingType.TABLE_ROW_WISE
        else:
            kind = ShardingType.ROW_WISE
        return Candidate(kind, ranks, starts, stops, dim)
