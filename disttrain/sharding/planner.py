"""The planner: a pure function of the tables, the world size, the nodes, the machine and the sharding settings.

`auto` places tables largest first where the cost model predicts the shortest step (`placement.Placer`): whole,
row-split over one node's ranks (table-row-wise), over every rank (row-wise), or over the fewest ranks with room,
keeping every rank's memory (weights + optimizer state) under `balance` x the mean and under the memory limit.
Explicit types are laid out first (row-wise, table-row-wise and replicated touch fixed ranks), then table-wise and
column-wise pieces go, largest first, to the rank with the least combined memory and lookup load. Per-table
overrides always win.
"""

from __future__ import annotations

import math

import numpy as np

from disttrain.config import MAX_TABLES
from disttrain.errors import PlanError
from disttrain.ranges import even_split
from disttrain.sharding.cost_model import Machine, StepCosts, Workload
from disttrain.sharding.placement import Placer
from disttrain.sharding.plan import (
    WEIGHT_BYTES,
    DynamicSettings,
    Shard,
    ShardingPlan,
    ShardingType,
    TablePlan,
    dynamic_rows,
)
from disttrain.tables import NUM_BUCKETS, EmbeddingTableSpec

DYNAMIC_TYPES = (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE, ShardingType.TABLE_WISE)
BALANCE = 1.05  # auto: no rank above this times the mean memory per rank, where tables can be split
BALANCE_COST = 0.05  # ... unless the plan without that balance is predicted this much faster


def _memory(spec: EmbeddingTableSpec, rows: int, cols: int, state: tuple[int, int], weight_bytes: int = 4) -> float:
    per_elem, per_row = state
    return float(weight_bytes * rows * cols + 4 * (rows * cols * per_elem + rows * per_row))


def _lookup_work(spec: EmbeddingTableSpec, cols: int) -> float:
    return float(spec.bags_per_sample * cols)


class _Loads:
    """Running memory and lookup load per rank; the greedy placer picks the least loaded."""

    def __init__(self, world_size: int, total_memory: float, total_work: float):
        self.memory = np.zeros(world_size)  # shared with the auto placer (placement.Placer)
        self.work = [0.0] * world_size
        self.total_memory = max(total_memory, 1.0)
        self.total_work = max(total_work, 1.0)

    def score(self, rank: int, memory: float, work: float) -> float:
        return (self.memory[rank] + memory) / self.total_memory + (self.work[rank] + work) / self.total_work

    def place(self, memory: float, work: float, exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        candidates = [r for r in range(len(self.memory)) if r not in exclude]
        rank = min(candidates, key=lambda r: (self.score(r, memory, work), r))
        self.memory[rank] += memory
        self.work[rank] += work
        return rank

    def add(self, rank: int, memory: float, work: float) -> None:
        self.memory[rank] += memory
        self.work[rank] += work


def _choose_types(
    tables: list[EmbeddingTableSpec], *, world_size: int, strategy: str, overrides: dict[str, str],
    state: tuple[int, int], dynamic: set[str]
) -> list[ShardingType | None]:
    names = {t.name for t in tables}
    for name in overrides:
        if name not in names:
            raise PlanError(f"sharding.tables.{name}: no table named {name!r} (tables: {', '.join(sorted(names))})")
    types: list[ShardingType | None] = []
    for spec in tables:
        chosen = overrides.get(spec.name, strategy)
        if spec.name in dynamic:
            # A dynamic table spreads its buckets over every rank unless a table-wise placement is asked for.
            if chosen == "auto":
                chosen = "row_wise"
            if ShardingType(chosen) not in DYNAMIC_TYPES:
                key = f"sharding.tables.{spec.name}" if spec.name in overrides else "sharding.strategy"
                raise PlanError(f"{key}: table {spec.name} is dynamic (model.dynamic_tables) and cannot be "
                                f"{chosen}; expected row_wise (its id buckets spread over the ranks), table_row_wise "
                                "(over one node's ranks) or table_wise")
            types.append(ShardingType(chosen))
            continue
        types.append(None if chosen == "auto" else ShardingType(chosen))
    return types


def plan_sharding(
    tables: list[EmbeddingTableSpec],
    *,
    world_size: int,
    strategy: str = "auto",
    overrides: dict[str, str] | None = None,
    num_column_shards: int = 0,
    optimizer: str = "sgd",
    optimizer_state: tuple[int, int] = (0, 0),
    embedding_dtype: str = "fp32",
    dynamic: set[str] | None = None,
    dynamic_settings: DynamicSettings | None = None,
    ranks_per_node: int = 0,
    machine: Machine | None = None,
    workload: Workload | None = None,
    memory_limit: float = 0.0,
    balance: float = BALANCE,
) -> ShardingPlan:
    """`optimizer` names the optimizer (for the record); `optimizer_state` is its state in fp32 words per
    element and per row (`disttrain.optim.OPTIMIZERS[name].state_words`), counted in each rank's memory.
    `dynamic`: names of dynamic tables (raw ids): row-wise by id bucket, or table-wise (all buckets on one rank);
    their memory is counted at their declared rows (capped by the capacity per rank). `ranks_per_node`: ranks
    numbered node by node, this many per node (0 = one node). `machine`, `workload`: the cost model's constants
    and step (defaults: `Machine()`, a global batch of 1024 per rank). `memory_limit`: bytes per rank (0 = none)."""
    dynamic = set(dynamic or ())
    dynamic_settings = dynamic_settings or DynamicSettings()
    if world_size < 1:
        raise PlanError(f"world size: got {world_size}, expected at least 1")
    if len(tables) > MAX_TABLES:  # the layout's work grows with tables x ranks: refused before it
        raise PlanError(f"tables: got {len(tables):,}, expected at most {MAX_TABLES:,} (disttrain.config.MAX_TABLES)")
    local = min(ranks_per_node or world_size, world_size)
    types = _choose_types(
        tables, world_size=world_size, strategy=strategy, overrides=overrides or {}, state=optimizer_state,
        dynamic=dynamic)
    settings = dict(tables=tables, world_size=world_size, local=local, num_column_shards=num_column_shards,
                    optimizer=optimizer, optimizer_state=tuple(optimizer_state), embedding_dtype=embedding_dtype,
                    dynamic=dynamic, dynamic_settings=dynamic_settings, machine=machine or Machine(),
                    workload=workload or Workload(global_batch=1024 * world_size), memory_limit=memory_limit)
    plan, step = _layout(list(types), balance=balance, **settings)
    if world_size > 1 and None in types and math.isfinite(balance):
        # Balanced memory costs time where splitting tables to balance them sends more partial sums (large worlds
        # of small ranks): the plan without the balance wins when it is predicted clearly faster.
        fast, fast_step = _layout(list(types), balance=math.inf, **settings)
        if fast_step < step * (1 - BALANCE_COST):
            plan = fast
    if memory_limit:
        _check_limit(plan, memory_limit)
    return plan


def _layout(types: list[ShardingType | None], *, tables, world_size, local, num_column_shards, optimizer,
            optimizer_state, embedding_dtype, dynamic, dynamic_settings, machine, workload, memory_limit,
            balance) -> tuple[ShardingPlan, float]:
    """One layout of every table (`auto` ones by the placer, with `balance`) and its predicted step (s)."""
    capacity = dynamic_settings.capacity
    weight_bytes = WEIGHT_BYTES[embedding_dtype]
    column_shards = num_column_shards or world_size
    total_memory = sum(_memory(t, _rows_held(t, dynamic, capacity), t.dim, optimizer_state, weight_bytes)
                       for t in tables)
    total_work = sum(_lookup_work(t, t.dim) for t in tables)
    loads = _Loads(world_size, total_memory, total_work)
    costs = StepCosts(world_size, local, workload, weight_bytes=weight_bytes, optimizer_state=optimizer_state)
    shards: dict[int, list[Shard]] = {}

    def terms(spec: EmbeddingTableSpec, shard: Shard, span: int, splits: bool):
        share = shard.num_rows / max(span, 1) if splits else 1.0
        rows = dynamic_rows(spec.num_rows, shard.num_rows, capacity) if spec.name in dynamic else shard.num_rows
        return costs.shard_terms(bags_per_sample=spec.bags_per_sample, cols=shard.num_cols, rows=rows, share=share)

    # Fixed layouts first (replicated, row-wise and table-row-wise touch fixed ranks), then greedy placement.
    for index, (spec, kind) in enumerate(zip(tables, types)):
        span = NUM_BUCKETS if spec.name in dynamic else spec.num_rows
        if kind == ShardingType.DATA_PARALLEL:
            shards[index] = [Shard(r, (0, spec.num_rows), (0, spec.dim)) for r in range(world_size)]
            costs.add_replicated(bags_per_sample=spec.bags_per_sample, dim=spec.dim, rows=spec.num_rows)
        elif kind == ShardingType.ROW_WISE:  # (a dynamic table's `auto` is row-wise already: _choose_types)
            shards[index] = [Shard(r, rows, (0, spec.dim)) for r, rows in enumerate(even_split(span, world_size))]
        elif kind == ShardingType.TABLE_ROW_WISE:
            node = _emptiest_node(loads, world_size, local)
            ranks = list(range(node * local, min((node + 1) * local, world_size)))
            shards[index] = [Shard(r, rows, (0, spec.dim)) for r, rows in zip(ranks, even_split(span, len(ranks)))]
        else:
            continue
        for shard in shards[index]:
            rows = dynamic_rows(spec.num_rows, shard.num_rows, capacity) if spec.name in dynamic else shard.num_rows
            loads.add(
                shard.rank,
                _memory(spec, rows, shard.num_cols, optimizer_state, weight_bytes),
                _lookup_work(spec, shard.num_cols) / len(shards[index]),
            )
            if types[index] != ShardingType.DATA_PARALLEL:
                costs.add(shard.rank, terms(spec, shard, span, types[index].splits_rows))

    pending: list[tuple[float, int, tuple[int, int]]] = []
    for index, (spec, kind) in enumerate(zip(tables, types)):
        if kind in (ShardingType.TABLE_WISE, None):
            rows = _rows_held(spec, dynamic, capacity)
            pending.append((_memory(spec, rows, spec.dim, optimizer_state, weight_bytes), index, (0, spec.dim)))
        elif kind == ShardingType.COLUMN_WISE:
            if column_shards > spec.dim:
                raise PlanError(
                    f"sharding.num_column_shards: {column_shards} column shards for table {spec.name} of dim "
                    f"{spec.dim}; expected at most {spec.dim}"
                )
            for cols in even_split(spec.dim, column_shards):
                pending.append((_memory(spec, spec.num_rows, cols[1] - cols[0], optimizer_state, weight_bytes), index, cols))
            shards[index] = []
    pending.sort(key=lambda item: (-item[0], item[1], item[2]))
    replicas = sum(_memory(t, t.num_rows, t.dim, optimizer_state, weight_bytes)
                   for t, kind in zip(tables, types) if kind == ShardingType.DATA_PARALLEL) * (world_size - 1)
    mean = (total_memory + replicas) / world_size
    cap = min(mean * balance, memory_limit) if memory_limit else mean * balance
    placer = Placer(world_size, local, costs, machine, cap, level=mean, memory=loads.memory)
    placer.future_lookup = sum(terms(tables[i], Shard(0, (0, tables[i].num_rows), cols), 1, False)[2]
                               for _m, i, cols in pending if types[i] is None)
    for memory, index, cols in pending:
        spec = tables[index]
        if types[index] is None:  # auto: the cost model decides
            per_row = memory / max(spec.num_rows, 1)
            chosen = placer.place(rows=spec.num_rows, dim=spec.dim, bytes_per_row=per_row,
                                  terms_of=lambda rows, share, spec=spec: costs.shard_terms(
                                      bags_per_sample=spec.bags_per_sample, cols=spec.dim, rows=rows, share=share))
            types[index] = chosen.type
            shards[index] = list(chosen.shards)
            for rank in chosen.ranks:  # (their memory is counted by the placer, in the array both share)
                loads.work[int(rank)] += _lookup_work(spec, spec.dim) / len(chosen.ranks)
            continue
        used = {s.rank for s in shards.get(index, [])}
        exclude = used if len(used) < world_size else set()
        rank = loads.place(memory, _lookup_work(spec, cols[1] - cols[0]), exclude)
        rows = (0, NUM_BUCKETS if spec.name in dynamic else spec.num_rows)
        shard = Shard(rank, rows, cols)
        costs.add(rank, terms(spec, shard, rows[1], False))
        shards.setdefault(index, []).append(shard)

    plans = tuple(
        TablePlan(
            name=spec.name,
            index=index,
            num_rows=spec.num_rows,
            dim=spec.dim,
            type=kind,
            shards=tuple(sorted(shards[index], key=lambda s: (s.cols, s.rows))),
            dynamic=spec.name in dynamic,
            bags_per_sample=spec.bags_per_sample,
        )
        for index, (spec, kind) in enumerate(zip(tables, types))
    )
    plan = ShardingPlan(world_size=world_size, optimizer=optimizer, tables=plans, embedding_dtype=embedding_dtype,
                        optimizer_state=tuple(optimizer_state), dynamic=dynamic_settings)
    return plan, costs.predict_with(machine, []).step_s


def _rows_held(spec: EmbeddingTableSpec, dynamic: set[str], capacity: int) -> int:
    return dynamic_rows(spec.num_rows, NUM_BUCKETS, capacity) if spec.name in dynamic else spec.num_rows


def _emptiest_node(loads: _Loads, world_size: int, local: int) -> int:
    nodes = -(-world_size // local)
    return min(range(nodes), key=lambda n: (sum(loads.memory[n * local : (n + 1) * local]), n))


def _check_limit(plan: ShardingPlan, limit: float) -> None:
    ranks = plan.rank_bytes()
    over = [r for r in ranks if r["bytes"] > limit]
    if over:
        worst = max(over, key=lambda r: r["bytes"])
        raise PlanError(f"sharding.memory_limit_mib: rank {worst['rank']} needs {worst['bytes'] / 2**20:,.0f} MiB of "
                        f"tables and optimizer state, expected at most {limit / 2**20:,.0f} MiB ({len(over)} rank(s) "
                        f"over); add ranks, or a smaller model.embedding_dtype / optimizer")
