"""One rank's part of a dynamic table: raw 64-bit ids -> rows created on first sight, admitted, evicted.

The rank owns a range of id buckets (`disttrain.tables.bucket_of`); every id of the global batch in those buckets
arrives here through the all-to-all, so counts and ages are the same whatever the world size. Per training step
(`rows(ids, train=True)`):

1. expiry: with `ttl_steps` T > 0, rows (and candidates) last seen at a step s with step - s > T are dropped
   before the step's lookups (a row unseen for T steps is gone at the start of the next);
2. counting: every occurrence of an id adds one to its count and stamps its last-seen step;
3. admission: an id without a row becomes a row once its count (this step's occurrences included) reaches
   `min_count`; until then it is a *candidate* (an id, a count, a last-seen step; no row) and reads the default
   row, which is zeros and never trained;
4. capacity: with `capacity` C > 0, admitting past C rows first evicts the least frequently used rows not looked
   up in this step (smallest count, then oldest last-seen, then smallest id); a step whose own distinct admitted
   ids exceed C is an error naming the table, the rank, the ids and the capacity that would hold them. Candidates
   are capped at C the same way. The capacity is per rank, and which rank an id lands on is fixed by its bucket,
   never by load: a step whose ids crowd into one rank's buckets (a table-wise table: all of them; or a few hot
   buckets) needs that rank's share to fit, not the mean.

A new row's weights are `dynamic_init_rows(seed, table, id)`: a pure function of the id. Row 0 of `weight` is
the default row; freed rows are reused, and the optimizer resets their state (`pop_fresh`). Evaluation and
serving (`train=False`) change nothing: unknown ids read the default row and are counted (`unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disttrain.errors import DataError
from disttrain.sharding.id_map import IdMap
from disttrain.tables import dynamic_init_rows

MIN_ROWS = 1024


@dataclass
class DynamicStats:
    admitted: int = 0  # rows created
    evicted: int = 0  # rows dropped (expired or least frequently used)
    unknown: int = 0  # lookups of ids without a row while evaluating or serving

    def to_json(self, live: int, candidates: int, capacity: int) -> dict:
        return {"live": live, "admitted": self.admitted, "evicted": self.evicted, "candidates": candidates,
                "unknown": self.unknown, "capacity": capacity}


class _Entries:
    """Ids with a count and a last-seen step, each at an index of growable arrays; freed indices are reused."""

    def __init__(self, device, reserved: int):
        self.device, self.reserved = device, reserved
        self.map = IdMap(device=device)
        self.ids = torch.zeros(MIN_ROWS, dtype=torch.int64, device=device)
        self.counts = torch.zeros(MIN_ROWS, dtype=torch.int64, device=device)
        self.last = torch.zeros(MIN_ROWS, dtype=torch.int64, device=device)
        self.alive = torch.zeros(MIN_ROWS, dtype=torch.bool, device=device)
        self.free = torch.zeros(0, dtype=torch.int64, device=device)
        self.top = reserved  # indices below `top` have been handed out

    @property
    def live(self) -> int:
        return self.map.size

    def _grow(self, wanted: int) -> None:
        size = self.ids.numel()
        if wanted <= size:
            return
        new = max(wanted, size * 2)
        for name in ("ids", "counts", "last", "alive"):
            old = getattr(self, name)
            grown = torch.zeros(new, dtype=old.dtype, device=self.device)
            grown[:size] = old
            setattr(self, name, grown)

    def add(self, ids: torch.Tensor, counts: torch.Tensor, step: int) -> torch.Tensor:
        """New entries for `ids` (distinct, absent); returns their indices."""
        n = ids.numel()
        reuse = min(n, self.free.numel())
        fresh = torch.arange(self.top, self.top + n - reuse, dtype=torch.int64, device=self.device)
        index = torch.cat([self.free[self.free.numel() - reuse:], fresh])
        self.free = self.free[: self.free.numel() - reuse]
        self.top += n - reuse
        self._grow(self.top)
        self.ids[index], self.counts[index], self.alive[index] = ids, counts, True
        self.last[index] = step
        self.map.insert(ids, index)
        return index

    def drop(self, index: torch.Tensor) -> None:
        self.map.remove(self.ids[index])
        self.alive[index] = False
        self.free = torch.cat([self.free, index])

    def indices(self) -> torch.Tensor:
        return self.alive[: self.top].nonzero().squeeze(1)

    def expire(self, before: int) -> torch.Tensor:
        """Drop entries last seen before step `before`; returns their indices."""
        old = ((self.last[: self.top] < before) & self.alive[: self.top]).nonzero().squeeze(1)
        if old.numel():
            self.drop(old)
        return old

    def least_used(self, count: int, step: int) -> torch.Tensor:
        """The `count` entries to evict: not seen in `step`; smallest count, then oldest, then smallest id."""
        pool = self.indices()
        pool = pool[self.last[pool] != step]
        if count >= pool.numel():
            return pool
        score = self.counts[pool].clamp(max=2**31 - 1) * 2**32 + self.last[pool]
        cut = torch.kthvalue(score, count).values
        below, tied = pool[score < cut], pool[score == cut]
        tied = tied[torch.argsort(self.ids[tied])][: count - below.numel()]
        return torch.cat([below, tied])


class DynamicShard:
    """The rows of one dynamic table held by one rank (see the module's docstring)."""

    def __init__(self, *, table: str, table_index: int, dim: int, num_rows: int, seed: int, dtype: torch.dtype,
                 min_count: int, ttl_steps: int, capacity: int, device: torch.device | str = "cpu",
                 rank: int | None = None):
        self.table, self.table_index, self.dim, self.num_rows, self.seed = table, table_index, dim, num_rows, seed
        self.rank = rank  # for messages (None: "this rank"; the worker's error line names it)
        self.min_count, self.ttl_steps, self.capacity = max(min_count, 1), ttl_steps, capacity
        self.device, self.dtype = torch.device(device), dtype
        self.rows = _Entries(self.device, reserved=1)  # index = row of `weight`; row 0 is the default
        self.candidates = _Entries(self.device, reserved=0)
        self.weight = torch.zeros(MIN_ROWS, dim, dtype=dtype, device=self.device)
        self.stats = DynamicStats()
        self.step = 0  # training steps completed (the optimizer advances it)
        self._fresh: list[torch.Tensor] = []

    # ----- lookups --------------------------------------------------------------------------------------------
    def rows_of(self, ids: torch.Tensor, *, train: bool) -> torch.Tensor:
        """The row of every id (0 = the default row); training admits, counts and evicts."""
        if not train:
            rows = self.rows.map.find(ids)
            unknown = rows < 0
            self.stats.unknown += int(unknown.sum())
            return rows.clamp_(min=0)
        if self.ttl_steps > 0:
            before = self.step - self.ttl_steps
            self.stats.evicted += self.rows.expire(before).numel()
            self.candidates.expire(before)
        rows = self.rows.map.find(ids)
        hit = rows >= 0
        seen = rows[hit]
        self.rows.counts.index_add_(0, seen, torch.ones_like(seen))
        self.rows.last.index_fill_(0, seen, self.step)
        miss = (~hit).nonzero().squeeze(1)
        if miss.numel():
            new, inverse, counts = torch.unique(ids.index_select(0, miss), return_inverse=True, return_counts=True)
            admit = self._count_candidates(new, counts)
            new_rows = torch.zeros_like(new)
            if admit.numel():
                new_rows[admit] = self._admit(new[admit], counts[admit])
            rows[miss] = new_rows[inverse]
        return rows

    def _count_candidates(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Indices (into `ids`) of the ids admitted now; the others are counted as candidates. `counts` becomes
        each id's whole count."""
        if self.min_count <= 1:
            return torch.arange(ids.numel(), device=self.device)
        cand = self.candidates
        index = cand.map.find(ids)
        known = index >= 0
        counts[known] += cand.counts[index[known]]
        admit = counts >= self.min_count
        leaving = index[known & admit]
        if leaving.numel():
            cand.drop(leaving)
        staying = index[known & ~admit]
        cand.counts[staying] = counts[known & ~admit]
        cand.last[staying] = self.step
        newcomers = ~known & ~admit
        if bool(newcomers.any()):
            self._make_room(cand, int(newcomers.sum()), what="candidate ids")
            cand.add(ids[newcomers], counts[newcomers], self.step)
        return admit.nonzero().squeeze(1)

    def _make_room(self, entries: _Entries, n: int, *, what: str) -> None:
        over = entries.live + n - self.capacity if self.capacity > 0 else 0
        if over <= 0:
            return
        victims = entries.least_used(over, self.step)
        if victims.numel() < over:
            needed = entries.live - victims.numel() + n
            where = "this rank" if self.rank is None else f"rank {self.rank}"
            raise DataError(
                f"table {self.table}: one step brings {needed:,} distinct {what} to {where}, more than "
                f"model.dynamic_capacity={self.capacity:,} rows per table per rank; expected a capacity of at least "
                f"one step's distinct ids on the busiest rank: raise model.dynamic_capacity to {needed:,} or more "
                "(0 = unbounded) or lower train.batch_size (an id's rank is fixed by its bucket, the top 12 bits "
                "of mix64(id): row_wise gives each rank an equal range of the 4,096 buckets, table_wise all of "
                "them to one rank)")
        entries.drop(victims)
        if entries is self.rows:
            self.stats.evicted += victims.numel()

    def _admit(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        self._make_room(self.rows, ids.numel(), what="ids")
        index = self.rows.add(ids, counts, self.step)
        self._fit_weight(self.rows.ids.numel())
        init = dynamic_init_rows(seed=self.seed, table_index=self.table_index, ids=ids, dim=self.dim,
                                 num_rows=self.num_rows)
        self.weight.index_copy_(0, index, init.to(self.device, self.dtype))
        self.stats.admitted += ids.numel()
        self._fresh.append(index)
        return index

    def _fit_weight(self, size: int) -> None:
        """Grow `weight` to hold every handed-out row (to `size` rows: the bookkeeping's length, which doubles)."""
        if self.rows.top > self.weight.shape[0]:
            grown = torch.zeros(max(size, self.rows.top), self.dim, dtype=self.dtype, device=self.device)
            grown[: self.weight.shape[0]] = self.weight
            self.weight = grown

    def pop_fresh(self) -> torch.Tensor | None:
        """Rows (re)created since the last call: their optimizer state starts over."""
        fresh, self._fresh = self._fresh, []
        return torch.cat(fresh) if fresh else None

    # ----- state ----------------------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        return self.rows.live

    def nbytes(self) -> int:
        """Bytes held: weights, per-row bookkeeping and both hash maps."""
        arrays = [self.weight] + [a for e in (self.rows, self.candidates) for a in (e.ids, e.counts, e.last, e.alive)]
        return sum(a.numel() * a.element_size() for a in arrays) + self.rows.map.nbytes() + self.candidates.map.nbytes()

    def export(self) -> dict[str, torch.Tensor]:
        """Live rows and candidates in id order: ids, rows (as `index`), counts, last-seen steps."""
        out = {}
        for name, entries in (("rows", self.rows), ("candidates", self.candidates)):
            ids, index = entries.map.items()
            out.update({f"{name}/ids": ids, f"{name}/index": index, f"{name}/counts": entries.counts[index],
                        f"{name}/last": entries.last[index]})
        return out

    def restore(self, *, ids, weights, counts, last, cand_ids, cand_counts, cand_last) -> torch.Tensor:
        """Add saved rows (and candidates); returns the rows' indices in `weight` (for optimizer state)."""
        self.candidates.last[self.candidates.add(cand_ids, cand_counts, 0)] = cand_last
        index = self.rows.add(ids, counts, 0)
        self.rows.last[index] = last
        self._fit_weight(self.rows.top)
        self.weight[index] = weights.to(self.device, self.dtype)
        return index
