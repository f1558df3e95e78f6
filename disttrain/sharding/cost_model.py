"""What one training step costs each rank under a sharding plan, and how long it is predicted to take.

Counted per rank and per step (pure arithmetic on the plan; nothing runs):
- all-to-all bytes, forward (the ids each source sends to a shard's owner, with one length per bag, as int64,
  and the pooled vectors coming back) and backward (the vectors' gradients going to the owners), split into bytes
  that stay on the rank's node and bytes that cross the network; sent and received are both counted;
- all-reduce bytes (the dense gradients, fp32, ring-reduced) and the data-parallel tables' gathered row gradients;
- lookup bytes (rows read by the forward and read and written, with their optimizer state, by the update);
- GEMM FLOPs (the dense model's forward and backward on the rank's local batch), which run at the GEMM rate
  times the dense step's efficiency (the share of it a model's whole dense step reaches: `disttrain probe`
  measures it for the configured model, `disttrain bench` prints it as the roofline share).

Machine constants (`Machine`) turn them into seconds. Every rank waits at every collective for the slowest, so
the step is the slowest rank's compute and lookups, plus the all-to-alls (the busiest node's network link and the
busiest rank's intra-node traffic, plus a latency per message round), plus the all-reduce (ring bandwidth term,
recursive-doubling latency term). Nothing is assumed to overlap: shared-memory and loopback collectives run on
the cores that compute.

Every shard of a row-split table returns a partial vector for every bag of every source (empty bags too), so a
table split over k ranks costs k times a table-wise table's pooled bytes: what makes table-row-wise (k = a node's
ranks) cheaper than row-wise (k = every rank) across a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from disttrain.sharding.plan import ShardingPlan, ShardingType

ID_BYTES = 8  # ids and bag lengths travel as int64
GRAD_BYTES = 4  # dense gradients and data-parallel row gradients are fp32
ALL_TO_ALLS = 4  # forward: lengths, ids, pooled vectors; backward: their gradients
CACHE_BYTES = 2 << 20  # a shard smaller than this is read from cache: its lookups cost that share of memory time


@dataclass(frozen=True)
class Machine:
    """One rank's rates and the links between ranks (`cluster.*` keys, or `disttrain probe`'s measurement)."""

    gemm_gflops: float = 100.0  # one rank's dense matmul rate
    dense_efficiency: float = 0.7  # share of that rate a model's whole dense step reaches (activations, optimizer)
    memory_gbs: float = 5.0  # one rank's rate at gathering and updating random embedding rows
    intra_gbs: float = 4.0  # one rank's exchange rate with ranks of its own node (shared memory or loopback)
    intra_latency_us: float = 15.0
    inter_gbs: float = 1.25  # one node's network link (10 Gbit/s Ethernet)
    inter_latency_us: float = 50.0


@dataclass(frozen=True)
class Workload:
    """What one step does besides the tables: `dense_flops_per_sample` (forward + backward matmuls),
    `dense_params` (all-reduced), ids per bag (the pooling factor)."""

    global_batch: int
    dense_flops_per_sample: float = 0.0
    dense_params: int = 0
    ids_per_bag: float = 1.0


@dataclass
class RankCosts:
    """Per-rank counts (arrays of world size) for one step."""

    a2a_forward_intra: np.ndarray
    a2a_forward_inter: np.ndarray
    a2a_backward_intra: np.ndarray
    a2a_backward_inter: np.ndarray
    lookup_bytes: np.ndarray
    gather_bytes: np.ndarray  # data-parallel tables' row gradients received
    allreduce_bytes: float
    flops: float  # per rank (the same on every rank: equal local batches)

    @property
    def a2a_bytes(self) -> np.ndarray:
        return self.a2a_forward_intra + self.a2a_forward_inter + self.a2a_backward_intra + self.a2a_backward_inter


@dataclass(frozen=True)
class Prediction:
    compute_s: float  # the slowest rank's matmuls and lookups
    exchange_s: float  # the all-to-alls (and the data-parallel tables' gathers)
    allreduce_s: float

    @property
    def step_s(self) -> float:
        return self.compute_s + self.exchange_s + self.allreduce_s


def node_of(world_size: int, ranks_per_node: int) -> np.ndarray:
    return np.arange(world_size) // max(ranks_per_node, 1)


class StepCosts:
    """Per-owner accumulators of one step's costs; shards are added one by one (the planner adds and tries them,
    `rank_costs` adds a whole plan's)."""

    def __init__(self, world_size: int, ranks_per_node: int, workload: Workload, *, weight_bytes: int = 4,
                 optimizer_state: tuple[int, int] = (0, 0)):
        self.world, self.ranks_per_node, self.workload = world_size, ranks_per_node, workload
        self.node = node_of(world_size, ranks_per_node)
        self.wire, self.state = weight_bytes, optimizer_state
        self.batch = workload.global_batch / world_size  # per rank
        self.fwd_own = np.zeros(world_size)  # per owner: what each other rank exchanges with it, forward
        self.bwd_own = np.zeros(world_size)
        self.lookup = np.zeros(world_size)
        self.gather = np.zeros(world_size)

    def shard_terms(self, *, bags_per_sample: int, cols: int, rows: int, share: float = 1.0
                    ) -> tuple[float, float, float]:
        """(forward bytes each source exchanges with the owner, backward bytes, owner's lookup bytes) of one
        model-parallel shard of `rows` x `cols` holding `share` of its table's ids. Lookups in a shard smaller
        than the cache count in proportion to its size."""
        bags = self.batch * bags_per_sample
        ids = bags * self.workload.ids_per_bag
        per_elem, per_row = self.state
        forward = bags * ID_BYTES + ids * share * ID_BYTES + bags * cols * self.wire
        touched = self.world * ids * share * self._missed(rows, cols)  # every source's ids landing in this shard
        return forward, bags * cols * self.wire, touched * cols * (3 * self.wire + 8 * per_elem) + touched * 8 * per_row

    def _missed(self, rows, cols):
        """The share of lookups that go to memory: 1, or a shard's size over the cache (scalars or arrays)."""
        return np.minimum(1.0, rows * cols * self.wire / CACHE_BYTES)

    def add(self, rank: int, terms: tuple[float, float, float]) -> None:
        self.fwd_own[rank] += terms[0]
        self.bwd_own[rank] += terms[1]
        self.lookup[rank] += terms[2]

    def add_many(self, ranks, terms) -> None:
        """Shards on `ranks` (an array; a rank may repeat) with `terms` (forward, backward, lookup bytes: scalars
        or arrays like `ranks`)."""
        ranks = np.asarray(ranks, dtype=np.int64)
        for target, values in zip((self.fwd_own, self.bwd_own, self.lookup), terms):
            np.add.at(target, ranks, np.broadcast_to(values, ranks.shape))

    def add_replicated(self, *, bags_per_sample: int, dim: int, rows: int) -> None:
        ids = self.batch * bags_per_sample * self.workload.ids_per_bag * float(self._missed(rows, dim))
        per_elem, per_row = self.state
        self.gather += ids * (dim * GRAD_BYTES + ID_BYTES) * (self.world - 1)
        self.lookup += ids * dim * self.wire + ids * self.world * (dim * (2 * self.wire + 8 * per_elem) + 8 * per_row)

    def costs(self) -> RankCosts:
        fwd = _spread(self.fwd_own, self.node, self.world)
        bwd = _spread(self.bwd_own, self.node, self.world)
        return RankCosts(fwd[0], fwd[1], bwd[0], bwd[1], self.lookup.copy(), self.gather.copy(),
                         allreduce_bytes=float(self.workload.dense_params * GRAD_BYTES),
                         flops=self.batch * self.workload.dense_flops_per_sample)

    def predict_with(self, machine: Machine, ranks=(), terms=(0.0, 0.0, 0.0), *,
                     future_lookup: float = 0.0) -> Prediction:
        """The prediction if shards on `ranks` (an array) with `terms` (arrays of forward, backward, lookup bytes)
        were added, with `future_lookup` bytes of lookups still to place (spread evenly: the busiest rank has at
        least the mean); nothing is kept."""
        saved = self.fwd_own, self.bwd_own, self.lookup
        if len(ranks):
            self.fwd_own, self.bwd_own, self.lookup = saved[0].copy(), saved[1].copy(), saved[2].copy()
            self.add_many(ranks, terms)
        try:
            floor = (float(self.lookup.sum()) + future_lookup) / self.world
            return predict(self.costs(), machine, self.ranks_per_node, lookup_floor=floor)
        finally:
            self.fwd_own, self.bwd_own, self.lookup = saved


def rank_costs(plan: ShardingPlan, workload: Workload, ranks_per_node: int) -> RankCosts:
    """Bytes and FLOPs of one step on every rank of `plan` (ranks numbered node by node)."""
    return plan_costs(plan, workload, ranks_per_node).costs()


def plan_costs(plan: ShardingPlan, workload: Workload, ranks_per_node: int) -> StepCosts:
    acc = StepCosts(plan.world_size, ranks_per_node, workload, weight_bytes=plan.weight_bytes,
                    optimizer_state=plan.optimizer_state)
    for table in plan.tables:
        if table.type == ShardingType.DATA_PARALLEL:
            acc.add_replicated(bags_per_sample=table.bags_per_sample, dim=table.dim, rows=table.num_rows)
            continue
        span = max(s.rows[1] for s in table.shards) - min(s.rows[0] for s in table.shards)
        for shard in table.shards:
            share = shard.num_rows / max(span, 1) if table.type.splits_rows else 1.0
            acc.add(shard.rank, acc.shard_terms(bags_per_sample=table.bags_per_sample, cols=shard.num_cols,
                                                rows=table.expected_rows(shard, plan.dynamic.capacity), share=share))
    return acc


def _spread(own: np.ndarray, node: np.ndarray, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rank (intra-node, inter-node) bytes sent plus received, given per owner what each other rank exchanges
    with it: an owner exchanges with every other rank; every rank with every other rank's owned shards."""
    nodes = int(node.max()) + 1 if world else 0
    node_total = np.bincount(node, weights=own, minlength=nodes)
    size = np.bincount(node, minlength=nodes)[node]
    intra = node_total[node] - own + (size - 1) * own
    inter = own.sum() - node_total[node] + (world - size) * own
    return intra, inter


def predict(costs: RankCosts, machine: Machine, ranks_per_node: int, *, lookup_floor: float = 0.0) -> Prediction:
    """The step time of `costs`; `lookup_floor`: lookup bytes the busiest rank will have at least (the planner's
    look-ahead: tables still to place, spread evenly over the ranks)."""
    world = len(costs.lookup_bytes)
    node = node_of(world, ranks_per_node)
    nodes = int(node.max()) + 1
    local = min(ranks_per_node, world) if ranks_per_node > 0 else 1
    compute = costs.flops / (machine.gemm_gflops * machine.dense_efficiency * 1e9) + max(float(costs.lookup_bytes.max()), lookup_floor) / (
        machine.memory_gbs * 1e9)
    # Links are full duplex: half of sent + received is each direction's load.
    inter_node = np.bincount(node, weights=costs.a2a_forward_inter + costs.a2a_backward_inter + costs.gather_bytes
                             * _inter_share(world, local), minlength=nodes) / 2
    intra = (costs.a2a_forward_intra + costs.a2a_backward_intra) / 2
    latency = 0.0
    if local > 1:
        latency += machine.intra_latency_us * 1e-6
    if nodes > 1:
        latency += machine.inter_latency_us * 1e-6 * (nodes - 1)
    exchange = (float(inter_node.max()) / (machine.inter_gbs * 1e9) if nodes > 1 else 0.0)
    exchange += float(intra.max()) / (machine.intra_gbs * 1e9) + (ALL_TO_ALLS * latency if world > 1 else 0.0)
    if world > 1 and costs.gather_bytes.any():
        exchange += float(costs.gather_bytes.max()) * (1 - _inter_share(world, local)) / (machine.intra_gbs * 1e9)
    allreduce = 0.0
    if world > 1 and costs.allreduce_bytes:
        ring = 2 * (world - 1) / world * costs.allreduce_bytes
        rate = machine.inter_gbs if nodes > 1 else machine.intra_gbs
        slowest = machine.inter_latency_us if nodes > 1 else machine.intra_latency_us
        allreduce = ring / (rate * 1e9) + 2 * math.ceil(math.log2(world)) * slowest * 1e-6
    return Prediction(compute_s=compute, exchange_s=exchange, allreduce_s=allreduce)


def _inter_share(world: int, local: int) -> float:
    return (world - local) / (world - 1) if world > 1 else 0.0
