"""The planner's cost model: bytes per step for each sharding type on plans small enough to check by hand, the
predicted step from them, and the planner's choices as the network changes (canned machine constants)."""

from __future__ import annotations

import pytest

from disttrain.sharding.cost_model import Machine, Workload, predict, rank_costs
from disttrain.sharding.plan import Shard, ShardingPlan, ShardingType, TablePlan
from disttrain.sharding.planner import plan_sharding
from disttrain.tables import EmbeddingTableSpec

ROWS = 1_000_000  # large enough that lookups are not served from cache (cost_model.CACHE_BYTES)
# 4 ranks in 2 nodes of 2, global batch 8 (2 samples per rank), one id per bag, dim 4, fp32, SGD.
WORK = Workload(global_batch=8, dense_flops_per_sample=1000.0, dense_params=100)


def _plan(kind: ShardingType, shards: list[Shard], *, bags: int = 1) -> ShardingPlan:
    table = TablePlan("t0", 0, ROWS, 4, kind, tuple(shards), bags_per_sample=bags)
    return ShardingPlan(world_size=4, optimizer="sgd", tables=(table,))


def _even(ranks: list[int]) -> list[Shard]:
    step = ROWS // len(ranks)
    return [Shard(r, (i * step, (i + 1) * step), (0, 4)) for i, r in enumerate(ranks)]


def test_table_wise_bytes_by_hand():
    # Each other rank exchanges with the owner: forward 2 lengths + 2 ids (int64) + 2 vectors of 4 fp32 = 64 bytes,
    # backward the 2 vectors' gradients = 32 bytes. Rank 0 owns it; rank 1 shares its node; ranks 2, 3 do not.
    costs = rank_costs(_plan(ShardingType.TABLE_WISE, [Shard(0, (0, ROWS), (0, 4))]), WORK, ranks_per_node=2)
    assert costs.a2a_forward_intra.tolist() == [64, 64, 0, 0]
    assert costs.a2a_forward_inter.tolist() == [128, 0, 64, 64]
    assert costs.a2a_backward_intra.tolist() == [32, 32, 0, 0]
    assert costs.a2a_backward_inter.tolist() == [64, 0, 32, 32]
    # The owner gathers the 8 ids of the global batch (4 fp32 each) and updates them (read + write): 8 * 4 * 12.
    assert costs.lookup_bytes.tolist() == [384, 0, 0, 0]
    assert costs.allreduce_bytes == 400 and costs.flops == 2 * 1000


def test_row_wise_and_table_row_wise_bytes_by_hand():
    # Row-wise over 4 ranks: each owner gets a quarter of the ids (2 * 0.25 * 8 bytes) but returns a partial
    # vector for every bag: 16 + 4 + 32 = 52 forward per pair. Every rank owns one shard: intra 52 + 52, inter
    # 2 * 52 + 2 * 52.
    rw = rank_costs(_plan(ShardingType.ROW_WISE, _even([0, 1, 2, 3])), WORK, ranks_per_node=2)
    assert rw.a2a_forward_intra.tolist() == [104] * 4 and rw.a2a_forward_inter.tolist() == [208] * 4
    assert rw.a2a_backward_inter.tolist() == [128] * 4
    assert rw.lookup_bytes.tolist() == [96] * 4
    # Table-row-wise over node 0 (ranks 0, 1): half the ids each, 16 + 8 + 32 = 56 per pair.
    twrw = rank_costs(_plan(ShardingType.TABLE_ROW_WISE, _even([0, 1])), WORK, ranks_per_node=2)
    assert twrw.a2a_forward_intra.tolist() == [112, 112, 0, 0]
    assert twrw.a2a_forward_inter.tolist() == [112, 112, 112, 112]
    # Across the network: row-wise sends 2x the pooled bytes of table-row-wise here (4 partials against 2).
    assert rw.a2a_backward_inter.sum() == 2 * twrw.a2a_backward_inter.sum()


def test_column_wise_and_replicated_bytes_by_hand():
    shards = [Shard(r, (0, ROWS), (r, r + 1)) for r in range(4)]  # one column each
    cw = rank_costs(_plan(ShardingType.COLUMN_WISE, shards), WORK, ranks_per_node=2)
    # 2 lengths + 2 ids + 2 one-column vectors = 16 + 16 + 8 = 40 forward per pair.
    assert cw.a2a_forward_intra.tolist() == [80] * 4 and cw.a2a_forward_inter.tolist() == [160] * 4
    dp = rank_costs(_plan(ShardingType.DATA_PARALLEL, [Shard(r, (0, ROWS), (0, 4)) for r in range(4)]), WORK, 2)
    assert not dp.a2a_bytes.any()
    # Every rank gathers the other 3 ranks' 2 row gradients (4 fp32 + an int64 id each).
    assert dp.gather_bytes.tolist() == [3 * 2 * 24] * 4


def test_predicted_step_by_hand():
    machine = Machine(gemm_gflops=1.0, dense_efficiency=0.5, memory_gbs=1.0, intra_gbs=1.0, intra_latency_us=10.0,
                      inter_gbs=0.5,
                      inter_latency_us=100.0)
    costs = rank_costs(_plan(ShardingType.TABLE_WISE, [Shard(0, (0, ROWS), (0, 4))]), WORK, ranks_per_node=2)
    pred = predict(costs, machine, ranks_per_node=2)
    assert pred.compute_s == pytest.approx(2000 / 0.5e9 + 384 / 1e9)  # FLOPs at half the GEMM rate
    # Node 0's link carries (128 + 64) / 2 bytes each way (node 1's: (64 + 32) * 2 / 2); rank 0's intra-node
    # traffic is (64 + 32) / 2; 4 all-to-alls each pay one intra-node and one inter-node latency.
    assert pred.exchange_s == pytest.approx(96 / 0.5e9 + 48 / 1e9 + 4 * (10e-6 + 100e-6))
    assert pred.allreduce_s == pytest.approx(2 * 3 / 4 * 400 / 0.5e9 + 2 * 2 * 100e-6)
    assert pred.step_s == pytest.approx(pred.compute_s + pred.exchange_s + pred.allreduce_s)


def _hot_tables() -> list[EmbeddingTableSpec]:
    # One table looked up 64 times per sample (a long multi-hot feature) among ordinary ones.
    return [EmbeddingTableSpec("hot", 400_000, 16, bags_per_sample=64)] + [
        EmbeddingTableSpec(f"t{i}", 200_000, 16) for i in range(7)]


@pytest.mark.parametrize(("inter_gbs", "expected"), [(100.0, {"row_wise"}), (0.05, {"table_wise", "table_row_wise"})])
def test_the_planner_keeps_lookups_in_a_node_when_the_network_slows(inter_gbs, expected):
    """Fast links: the hot table is spread over all 4 ranks (its lookups split 4 ways). Slow links: its partial
    sums would cross them, so it stays inside one node."""
    machine = Machine(memory_gbs=2.0, intra_gbs=8.0, inter_gbs=inter_gbs)
    plan = plan_sharding(_hot_tables(), world_size=4, ranks_per_node=2, machine=machine,
                         workload=Workload(global_batch=4096, dense_flops_per_sample=1e6, dense_params=10_000))
    hot = plan.tables[0]
    assert {hot.type.value} <= expected, hot
    nodes = {s.rank // 2 for s in hot.shards}
    assert len(nodes) == (2 if inter_gbs > 1 else 1)


def test_kaggle_tables_on_8_ranks_are_balanced_and_plan_fast():
    from disttrain.models.dlrm import DLRM_FLAVORS

    tables = [EmbeddingTableSpec(f"t{i}", rows, 16) for i, rows in enumerate(DLRM_FLAVORS["kaggle"].table_rows)]
    work = Workload(global_batch=8 * 1024, dense_flops_per_sample=2.9e6, dense_params=480_000)
    plan = plan_sharding(tables, world_size=8, ranks_per_node=8, optimizer_state=(1, 0), workload=work)
    memory = [r["bytes"] for r in plan.rank_bytes()]
    assert max(memory) / min(memory) <= 1.1
    assert sum(memory) == sum(t.num_rows * 16 * 8 for t in tables)  # weights + one state word per element
    for table in plan.tables:  # the shards of every table cover its rows exactly once
        covered = sorted(s.rows for s in table.shards)
        assert covered[0][0] == 0 and covered[-1][1] == table.num_rows
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


def test_a_memory_limit_is_kept_or_named():
    tables = [EmbeddingTableSpec(f"t{i}", 1_000_000, 16) for i in range(4)]  # 61 MiB of fp32 weights each
    plan = plan_sharding(tables, world_size=3, memory_limit=90 * 2**20)  # 4 tables on 3 ranks: one is split
    assert max(r["bytes"] for r in plan.rank_bytes()) <= 90 * 2**20
    assert any(t.type.splits_rows for t in plan.tables)
    from disttrain.errors import PlanError

    with pytest.raises(PlanError, match=r"sharding.memory_limit_mib: rank 0 needs 61 MiB .* at most 40 MiB \(4 rank"):
        plan_sharding(tables, world_size=4, memory_limit=40 * 2**20, strategy="table_wise")
