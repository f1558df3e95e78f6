"""The planner: a pure function of the tables, the world size and the sharding settings.

`auto` balances per-rank memory (weights + optimizer state) and lookup work: a table whose memory exceeds its
fair share (total / world size) is split row-wise; the rest are placed whole, largest first, on the rank with
the least combined load (longest-processing-time greedy). Per-table overrides always win.
"""

from __future__ import annotations

from disttrain.errors import PlanError
from disttrain.ranges import even_split
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

DYNAMIC_TYPES = (ShardingType.ROW_WISE, ShardingType.TABLE_WISE)


def _memory(spec: EmbeddingTableSpec, rows: int, cols: int, state: tuple[int, int], weight_bytes: int = 4) -> float:
    per_elem, per_row = state
    return float(weight_bytes * rows * cols + 4 * (rows * cols * per_elem + rows * per_row))


def _lookup_work(spec: EmbeddingTableSpec, cols: int) -> float:
    return float(spec.bags_per_sample * cols)


class _Loads:
    """Running memory and lookup load per rank; the greedy placer picks the least loaded."""

    def __init__(self, world_size: int, total_memory: float, total_work: float):
        self.memory = [0.0] * world_size
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
) -> list[ShardingType]:
    names = {t.name for t in tables}
    for name in overrides:
        if name not in names:
            raise PlanError(f"sharding.tables.{name}: no table named {name!r} (tables: {', '.join(sorted(names))})")
    total = sum(_memory(t, t.num_rows, t.dim, state) for t in tables)
    types = []
    for spec in tables:
        chosen = overrides.get(spec.name, strategy)
        if spec.name in dynamic:
            # A dynamic table spreads its buckets over every rank unless a table-wise placement is asked for.
            if chosen == "auto":
                chosen = "row_wise"
            if ShardingType(chosen) not in DYNAMIC_TYPES:
                key = f"sharding.tables.{spec.name}" if spec.name in overrides else "sharding.strategy"
                raise PlanError(f"{key}: table {spec.name} is dynamic (model.dynamic_tables) and cannot be "
                                f"{chosen}; expected row_wise (its id buckets spread over the ranks) or table_wise")
            types.append(ShardingType(chosen))
            continue
        if chosen == "auto":
            too_big = world_size > 1 and _memory(spec, spec.num_rows, spec.dim, state) > total / world_size
            chosen = "row_wise" if too_big else "table_wise"
        types.append(ShardingType(chosen))
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
) -> ShardingPlan:
    """`optimizer` names the optimizer (for the record); `optimizer_state` is its state in fp32 words per
    element and per row (`disttrain.optim.OPTIMIZERS[name].state_words`), counted in each rank's memory.
    `dynamic`: names of dynamic tables (raw ids): row-wise by id bucket, or table-wise (all buckets on one rank);
    their memory is counted at their declared rows (capped by the capacity per rank)."""
    dynamic = set(dynamic or ())
    dynamic_settings = dynamic_settings or DynamicSettings()
    capacity = dynamic_settings.capacity
    if world_size < 1:
        raise PlanError(f"world size: got {world_size}, expected at least 1")
    weight_bytes = WEIGHT_BYTES[embedding_dtype]
    types = _choose_types(
        tables, world_size=world_size, strategy=strategy, overrides=overrides or {}, state=optimizer_state,
        dynamic=dynamic)
    column_shards = num_column_shards or world_size
    total_memory = sum(_memory(t, t.num_rows, t.dim, optimizer_state, weight_bytes) for t in tables)
    total_work = sum(_lookup_work(t, t.dim) for t in tables)
    loads = _Loads(world_size, total_memory, total_work)
    shards: dict[int, list[Shard]] = {}

    # Fixed layouts first (replicated and row-wise touch every rank), then greedy placement, largest first.
    for index, (spec, kind) in enumerate(zip(tables, types)):
        if kind == ShardingType.DATA_PARALLEL:
            shards[index] = [Shard(r, (0, spec.num_rows), (0, spec.dim)) for r in range(world_size)]
        elif kind == ShardingType.ROW_WISE:
            ranges = even_split(NUM_BUCKETS if spec.name in dynamic else spec.num_rows, world_size)
            shards[index] = [Shard(r, rows, (0, spec.dim)) for r, rows in enumerate(ranges)]
        else:
            continue
        for shard in shards[index]:
            rows = dynamic_rows(spec.num_rows, shard.num_rows, capacity) if spec.name in dynamic else shard.num_rows
            loads.add(
                shard.rank,
                _memory(spec, rows, shard.num_cols, optimizer_state, weight_bytes),
                _lookup_work(spec, shard.num_cols) / len(shards[index]),
            )

    pending: list[tuple[float, int, tuple[int, int]]] = []
    for index, (spec, kind) in enumerate(zip(tables, types)):
        if kind == ShardingType.TABLE_WISE:
            rows = dynamic_rows(spec.num_rows, NUM_BUCKETS, capacity) if spec.name in dynamic else spec.num_rows
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
    for memory, index, cols in pending:
        spec = tables[index]
        used = {s.rank for s in shards.get(index, [])}
        exclude = used if len(used) < world_size else set()
        rank = loads.place(memory, _lookup_work(spec, cols[1] - cols[0]), exclude)
        rows = (0, NUM_BUCKETS if spec.name in dynamic else spec.num_rows)
        shards.setdefault(index, []).append(Shard(rank, rows, cols))

    plans = tuple(
        TablePlan(
            name=spec.name,
            index=index,
            num_rows=spec.num_rows,
            dim=spec.dim,
            type=kind,
            shards=tuple(sorted(shards[index], key=lambda s: (s.cols, s.rows))),
            dynamic=spec.name in dynamic,
        )
        for index, (spec, kind) in enumerate(zip(tables, types))
    )
    return ShardingPlan(world_size=world_size, optimizer=optimizer, tables=plans, embedding_dtype=embedding_dtype,
                        optimizer_state=tuple(optimizer_state), dynamic=dynamic_settings)
