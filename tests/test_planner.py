from __future__ import annotations

import pytest

from disttrain.config import load_config
from disttrain.errors import ConfigError, PlanError
from disttrain.planning.build import build_plan
from disttrain.ranges import even_split
from disttrain.sharding.planner import plan_sharding
from disttrain.tables import EmbeddingTableSpec


def _tables(rows, dim=8):
    return [EmbeddingTableSpec(f"t{i}", r, dim) for i, r in enumerate(rows)]


def _covers(table) -> bool:
    """The shards tile the table exactly: every (row, col) once."""
    cells = set()
    for s in table.shards:
        for r in range(*s.rows):
            for c in range(*s.cols):
                assert (r, c) not in cells
                cells.add((r, c))
    return len(cells) == table.num_rows * table.dim


def test_even_split():
    assert even_split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert even_split(2, 3) == [(0, 1), (1, 2)]  # empty shards dropped
    assert even_split(6, 2) == [(0, 3), (3, 6)]


@pytest.mark.parametrize("strategy", ["table_wise", "row_wise", "column_wise", "data_parallel", "auto"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_strategy_tiles_every_table(strategy, world):
    plan = plan_sharding(_tables([50, 101, 7, 2]), world_size=world, strategy=strategy)
    for table in plan.tables:
        if table.type.value == "data_parallel":
            assert table.ranks == list(range(world))
            assert all(s.rows == (0, table.num_rows) and s.cols == (0, 8) for s in table.shards)
        else:
            assert _covers(table)
        assert all(0 <= r < world for r in table.ranks)


def test_row_wise_uneven_rows_and_column_wise_distinct_ranks():
    plan = plan_sharding(_tables([7]), world_size=3, strategy="row_wise")
    assert [s.rows for s in plan.tables[0].shards] == [(0, 3), (3, 5), (5, 7)]
    plan = plan_sharding(_tables([7], dim=16), world_size=3, strategy="column_wise")
    assert [s.cols for s in plan.tables[0].shards] == [(0, 6), (6, 11), (11, 16)]
    assert sorted(plan.tables[0].ranks) == [0, 1, 2]


def test_table_wise_balances_memory():
    plan = plan_sharding(_tables([1000, 900, 600, 500, 400, 100]), world_size=2, strategy="table_wise")
    loads = [r["bytes"] for r in plan.rank_bytes()]
    assert sum(loads) == 3500 * 8 * 4
    # Greedy largest-first placement is within 4/3 of the best split (1750 rows per rank here).
    assert max(loads) <= 4 / 3 * 1750 * 8 * 4
    assert min(loads) >= 1500 * 8 * 4


def test_auto_splits_a_dominant_table_row_wise_and_honours_overrides():
    plan = plan_sharding(_tables([10_000, 50, 60, 70]), world_size=2, strategy="auto",
                         overrides={"t1": "column_wise", "t3": "data_parallel"})
    types = [t.type.value for t in plan.tables]
    assert types == ["row_wise", "column_wise", "table_wise", "data_parallel"]


def test_optimizer_state_counts_in_memory():
    from disttrain.optim import OPTIMIZERS

    def ranks(name):
        plan = plan_sharding(_tables([100]), world_size=1, optimizer=name, optimizer_state=OPTIMIZERS[name].state_words)
        return plan.rank_bytes()[0]

    sgd, adam, rowwise = ranks("sgd"), ranks("adam"), ranks("rowwise_adagrad")
    assert sgd["optimizer_bytes"] == 0 and adam["optimizer_bytes"] == 2 * 100 * 8 * 4
    assert rowwise["optimizer_bytes"] == 100 * 4


def test_plan_json_shape():
    data = plan_sharding(_tables([50, 7]), world_size=2, strategy="row_wise").to_json()
    assert set(data) >= {"tables", "ranks"}
    assert set(data["tables"][0]) >= {"name", "type", "ranks", "shards"}
    assert set(data["ranks"][0]) >= {"rank", "bytes"}


def test_errors_name_the_key_and_value():
    with pytest.raises(PlanError, match=r"sharding.num_column_shards: 9 column shards for table t0 of dim 8; expected at most 8"):
        plan_sharding(_tables([10]), world_size=2, strategy="column_wise", num_column_shards=9)
    with pytest.raises(PlanError, match=r"sharding.tables.t9: no table named 't9'"):
        plan_sharding(_tables([10]), world_size=2, overrides={"t9": "row_wise"})
    with pytest.raises(ConfigError, match=r"train.batch_size: got 10, expected a multiple of the world size 3"):
        build_plan(load_config(None, ["train.batch_size=10"]), 3)


def test_kaggle_flavor_plan_without_allocating_tables():
    model, plan = build_plan(load_config(None, ["model.flavor=kaggle"]), 2)
    assert len(plan.tables) == 26 and plan.tables[2].num_rows == 10131227
    assert next(model.embeddings.parameters()).is_meta
