"""The sharded layer serves unpooled sequence lookups (DIEN's history) through the same exchange."""

from __future__ import annotations

import pytest
import torch

from disttrain.batch import KeyedBags
from disttrain.collectives import SingleProcess
from disttrain.errors import DataError
from disttrain.layers import EmbeddingBagCollection
from disttrain.optim import SparseRowOptimizer
from disttrain.sharding.planner import plan_sharding
from disttrain.sharding.sharded_embedding_bags import ShardedEmbeddingBagCollection
from disttrain.tables import EmbeddingTableSpec
from tests.dist_helpers import run_ranks

HISTORY = 5
TABLES = [
    EmbeddingTableSpec("item_history", 41, 6, pooling="none", bags_per_sample=HISTORY),
    EmbeddingTableSpec("user", 13, 6),
]


def _batch(global_batch: int, seed: int) -> KeyedBags:
    gen = torch.Generator().manual_seed(seed)
    # History: each position holds one id or is padding (empty bag).
    history_lengths = (torch.rand(global_batch * HISTORY, generator=gen) > 0.3).long()
    history = torch.randint(0, 41, (int(history_lengths.sum()),), generator=gen)
    user = torch.randint(0, 13, (global_batch,), generator=gen)
    return KeyedBags(("item_history", "user"), (HISTORY, 1), global_batch,
                     torch.cat([history_lengths, torch.ones(global_batch, dtype=torch.long)]), torch.cat([history, user]))


def _check(comm, strategy: str) -> list[float]:
    global_batch, lr = 12, 0.5
    plan = plan_sharding(TABLES, world_size=comm.world_size, strategy=strategy)
    sharded = ShardedEmbeddingBagCollection(TABLES, plan, comm, seed=1)
    optimizer = SparseRowOptimizer(sharded, kind="sgd", lr=lr)
    reference = EmbeddingBagCollection(TABLES, seed=1)
    full = _batch(global_batch, seed=7)
    local = global_batch // comm.world_size
    mine = full.slice_samples(comm.rank * local, (comm.rank + 1) * local)
    outputs = sharded(mine)
    ref_outputs = reference(full)
    diffs = [(o - r[comm.rank * local : (comm.rank + 1) * local]).abs().max().item() for o, r in zip(outputs, ref_outputs)]
    assert outputs[0].shape == (local, HISTORY, 6)
    weights = torch.arange(1.0, 7.0)
    (sum((o * weights).sum() for o in outputs)).backward()
    optimizer.step()
    (sum((r * weights).sum() for r in ref_outputs)).backward()
    with torch.no_grad():
        for bag in reference.bags:
            bag.weight.add_(bag.weight.grad.to_dense(), alpha=-lr)
    for table, shard, weight in sharded.local_shards():
        ref = reference.bags[table.index].weight[shard.rows[0] : shard.rows[1], shard.cols[0] : shard.cols[1]]
        diffs.append((weight - ref).abs().max().item())
    return diffs


def _check_all(comm, strategies: list[str]) -> dict[str, float]:
    return {strategy: max(_check(comm, strategy)) for strategy in strategies}


def test_sequence_lookup_matches_unsharded():
    strategies = ["table_wise", "row_wise", "column_wise", "data_parallel"]
    for per_strategy in run_ranks(2, _check_all, strategies):
        assert set(per_strategy) == set(strategies)
        for strategy, diff in per_strategy.items():
            assert diff < 1e-6, strategy


def test_ids_out_of_range_name_the_table():
    plan = plan_sharding(TABLES, world_size=1)
    sharded = ShardedEmbeddingBagCollection(TABLES, plan, SingleProcess())
    batch = _batch(4, seed=0)
    batch.values[-1] = 13  # the user table has 13 rows
    with pytest.raises(DataError, match=r"table user: id 13 is out of range; expected 0 <= id < 13"):
        sharded(batch)
