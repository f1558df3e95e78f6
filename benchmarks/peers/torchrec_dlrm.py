#!/usr/bin/env python3
"""Peer benchmark: TorchRec DLRM on CPU (gloo), Criteo Kaggle shapes; or DLRM-DCNv2 on MLPerf's shapes.

Run under torchrun with 2 ranks in the TorchRec peer venv, e.g.

    torchrun --nproc-per-node 2 benchmarks/peers/torchrec_dlrm.py --steps 40 --warmup 5
    torchrun --nproc-per-node 2 benchmarks/peers/torchrec_dlrm.py --model dcnv2 --max-rows 200000 \
        --multi-hot-max 4 --lr 0.005 --precision bf16

It trains torchrec.models.dlrm.DLRM (26 EmbeddingBag tables of dim 16, table-wise
sharded by DistributedModelParallel, fused SGD on the tables, torch SGD on the dense
part) on uniform random ids; with `--model dcnv2`, torchrec.models.dlrm.DLRM_DCN (dim 128, bottom
13-512-256-128, 3 low-rank cross layers of rank 512, top 1024-1024-512-256-1, the Criteo 1TB
cardinalities capped at --max-rows, bags of 1..--multi-hot-max ids). `--precision bf16` runs the
forward under CPU bf16 autocast (fp32 tables, fp32 loss). Rank 0 prints one final line:

    TORCHREC samples_per_s=<float> steps=<n> world_size=<n>

The random batches are generated before timing and cycled, so only training is timed.
This script is a benchmark driver for an external peer; it is not part of disttrain and
imports nothing from it.
"""

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities, C1..C26.
KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
# Criteo 1TB (Terabyte) cardinalities, the MLPerf DLRM tables.
TERABYTE_CARDINALITIES = [
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208, 11938,
    155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
]
NUM_DENSE = 13
# model -> (cardinalities, embedding dim, bottom MLP, top MLP)
SHAPES = {
    "dlrm": (KAGGLE_CARDINALITIES, 16, [512, 256, 64, 16], [512, 256, 1]),
    "dcnv2": (TERABYTE_CARDINALITIES, 128, [512, 256, 128], [1024, 1024, 512, 256, 1]),
}
DCN_LAYERS, DCN_RANK = 3, 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SHAPES), default="dlrm")
    p.add_argument("--multi-hot-max", type=int, default=1, help="ids per bag: uniform in 1..N (default 1)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=60, help="timed steps (after warmup)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warmup steps")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch; each rank takes batch/world")
    p.add_argument("--max-rows", type=int, default=1_000_000, help="cap on rows per table")
    p.add_argument("--pool", type=int, default=8, help="number of pre-generated batches to cycle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipeline", action="store_true",
                   help="train through TorchRec's TrainPipelineSparseDist (the next batch's input all-to-all "
                        "overlapped with this batch's compute) instead of a plain loop")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="pin each rank to CPU <local_rank> and use 1 intra-op thread (default on)")
    return p.parse_args(argv)


def log(rank, msg):
    if rank == 0:
        print(f"[torchrec_dlrm] {msg}", file=sys.stderr, flush=True)


class LossWrapper(nn.Module):
    """Runs DLRM and returns the mean BCE-with-logits loss."""

    def __init__(self, dlrm, bf16=False):
        super().__init__()
        self.model = dlrm
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.bf16 = bf16

    def forward(self, dense, sparse, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(dense, sparse).squeeze(-1)
        return self.loss_fn(logits.float(), labels)


def make_batches(n, local_batch, table_rows, keys, seed, multi_hot_max=1):
    """Pre-generates n (dense, KJT, labels) batches with 1..multi_hot_max uniform ids per table per sample."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        dense = torch.rand(local_batch, NUM_DENSE, generator=g)
        # KJT values are key-major: all samples of key 0, then key 1, ...
        lengths = torch.randint(1, multi_hot_max + 1, (len(keys) * local_batch,), generator=g, dtype=torch.int32)
        per_key = lengths.view(len(keys), local_batch).sum(dim=1).tolist()
        ids = torch.cat([
            torch.randint(0, rows, (count,), generator=g, dtype=torch.int64)
            for rows, count in zip(table_rows, per_key)
        ])
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=ids, lengths=lengths)
        labels = torch.randint(0, 2, (local_batch,), generator=g).float()
        batches.append((dense, kjt, labels))
    return batches


class PipelineLoss(nn.Module):
    """The loss module in TrainPipelineSparseDist's form: forward(batch) -> (loss, logits), the batch a
    torchrec.datasets.utils.Batch (its sparse_features is what the pipeline redistributes ahead of time)."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, batch):
        loss = self.wrapped(batch.dense_features, batch.sparse_features, batch.labels)
        return loss, loss.detach()


def pipelined_step(dmp, dense_opt, batches, device):
    """`step(i)` through TrainPipelineSparseDist over the cycled batches (it keeps its own position)."""
    import itertools

    from torchrec.datasets.utils import Batch
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    dmp._dmp_wrapped_module = PipelineLoss(dmp._dmp_wrapped_module)
    pipeline = TrainPipelineSparseDist(dmp, dense_opt, device)
    stream = itertools.cycle([Batch(dense_features=d, sparse_features=k, labels=y) for d, k, y in batches])

    def step(_i):
        return pipeline.progress(stream)

    return step


def make_topology(world, local_world):
    """CPU topology; uses TopologyFactory where this TorchRec has it (1.8+), else Topology."""
    from torchrec.distributed.planner import types as ptypes

    if hasattr(ptypes, "TopologyFactory"):
        return ptypes.TopologyFactory.create_topology(
            trainer_config=ptypes.TrainerConfig(world_size=world, local_world_size=local_world),
            kernel_config=ptypes.KernelConfig(compute_device="cpu"),
        )
    return ptypes.Topology(world_size=world, compute_device="cpu", local_world_size=local_world)


def main(argv=None):
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))

    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[local_rank % len(cpus)]})
        torch.set_num_threads(1)

    # Import TorchRec only after pinning so its thread pools start on the right core.
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.models.dlrm import DLRM, DLRM_DCN

    dist.init_process_group(backend="gloo")
    device = torch.device("cpu")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by world size {world}")
    local_batch = args.batch_size // world
    torch.manual_seed(args.seed)

    cardinalities, dim, bottom, top = SHAPES[args.model]
    table_rows = [min(c, args.max_rows) for c in cardinalities]
    keys = [f"cat_{i}" for i in range(len(table_rows))]
    tables = [
        EmbeddingBagConfig(name=f"table_{i}", embedding_dim=dim, num_embeddings=rows,
                           feature_names=[keys[i]])
        for i, rows in enumerate(table_rows)
    ]
    # Tables are built on the meta device; DMP materialises only each rank's own shards.
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    arch = dict(embedding_bag_collection=ebc, dense_in_features=NUM_DENSE, dense_arch_layer_sizes=bottom,
                over_arch_layer_sizes=top, dense_device=device)
    if args.model == "dcnv2":
        dlrm = DLRM_DCN(**arch, dcn_num_layers=DCN_LAYERS, dcn_low_rank_dim=DCN_RANK)
    else:
        dlrm = DLRM(**arch)
    model = LossWrapper(dlrm, bf16=args.precision == "bf16")

    # Sparse optimizer: SGD fused into the embedding backward (TorchRec's FBGEMM kernel).
    _apply_optimizer_in_backward(torch.optim.SGD, dlrm.sparse_arch.parameters(), {"lr": args.lr})

    sharders = [EmbeddingBagCollectionSharder()]
    constraints = {t.name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
                   for t in tables}
    planner = EmbeddingShardingPlanner(
        topology=make_topology(world, int(os.environ.get("LOCAL_WORLD_SIZE", world))),
        batch_size=local_batch,
        constraints=constraints,
    )
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=device, plan=plan, sharders=sharders)

    if rank == 0:
        ebc_plan = next(iter(plan.plan.values()))
        per_rank = {}
        for name, ps in ebc_plan.items():
            per_rank.setdefault(tuple(ps.ranks), []).append(name)
        kinds = sorted({(ps.sharding_type, ps.compute_kernel) for ps in ebc_plan.values()})
        log(rank, f"plan {kinds}: " + ", ".join(f"ranks{r}={len(v)} tables" for r, v in sorted(per_rank.items())))

    dense_params = [p for _, p in dmp.named_parameters() if not hasattr(p, "_in_backward_optimizers")]
    dense_opt = torch.optim.SGD(dense_params, lr=args.lr)

    batches = make_batches(args.pool, local_batch, table_rows, keys, args.seed * 1000 + rank, args.multi_hot_max)

    def step(i):
        dense, kjt, labels = batches[i % len(batches)]
        loss = dmp(dense, kjt, labels)
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        return loss

    if args.pipeline:
        step = pipelined_step(dmp, dense_opt, batches, device)

    dmp.train()
    loss = torch.tensor(float("nan"))
    for i in range(args.warmup):
        loss = step(i)
    log(rank, f"warmup done ({args.warmup} steps), loss={loss.item():.4f}")

    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(args.warmup + i)
    dist.barrier()
    elapsed = time.perf_counter() - t0

    log(rank, f"timed {args.steps} steps in {elapsed:.3f}s, last loss={loss.item():.4f}")
    if rank == 0:
        sps = args.steps * args.batch_size / elapsed
        print(f"TORCHREC samples_per_s={sps:.1f} steps={args.steps} world_size={world}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
