"""`disttrain plan --simulate N1,N2,...`: the plan and the cost model's predicted step for each world size, with
a fixed batch per rank (weak scaling), in nodes of `cluster.ranks_per_node` ranks. Nothing starts: each world is
planned exactly as a run of that size would be, and its step is predicted from the machine's rates (`cluster.*`,
a probe file, or the defaults)."""

from __future__ import annotations

import copy
import dataclasses
import time
from statistics import median

from disttrain.config import Config
from disttrain.errors import ConfigError
from disttrain.planning.build import build_plan
from disttrain.planning.cluster import machine_of, workload_of
from disttrain.sharding.cost_model import predict, rank_costs

MAX_WORLD = 1 << 14


def parse_worlds(text: str) -> list[int]:
    """`1,2,8,64` -> [1, 2, 8, 64] (one-line error naming the bad item)."""
    worlds = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not 1 <= int(item) <= MAX_WORLD:
            raise ConfigError(f"--simulate: got {item!r} in {text!r}; expected world sizes from 1 to {MAX_WORLD}, "
                              "comma-separated (e.g. 1,2,8,64,1024)")
        worlds.append(int(item))
    return sorted(set(worlds))


def simulate(cfg: Config, worlds: list[int], *, batch_per_rank: int = 0, base_world: int = 0,
             count_flops: bool = True) -> dict:
    """One row per world size: the prediction, its split, bytes and memory per rank, how long planning took.
    `base_world`: the launch's world size (default: launch.nproc_per_node x launch.nnodes), over which
    `train.batch_size` is split when `batch_per_rank` is not given."""
    nproc = cfg.launch.nproc_per_node
    base_world = base_world or (int(nproc) * cfg.launch.nnodes if isinstance(nproc, int) else 1)
    per_rank = batch_per_rank or max(cfg.train.batch_size // base_world, 1)
    flops = None
    if count_flops:
        from disttrain.planning.roofline import flops_per_sample

        flops = flops_per_sample(cfg)
    machine = machine_of(cfg)
    rows = []
    for world in worlds:
        run = copy.deepcopy(cfg)
        run.train.batch_size = per_rank * world
        local = min(world, cfg.cluster.ranks_per_node or _local(cfg, base_world))
        run.cluster.ranks_per_node = local
        start = time.perf_counter()
        model, plan = build_plan(run, world)
        planned = time.perf_counter() - start
        workload = workload_of(run, model)
        if flops is not None:
            workload = dataclasses.replace(workload, dense_flops_per_sample=flops)
        costs = rank_costs(plan, workload, local)
        pred = predict(costs, machine, local)
        memory = [r["bytes"] for r in plan.rank_bytes()]
        a2a = costs.a2a_bytes
        inter = costs.a2a_forward_inter + costs.a2a_backward_inter
        rows.append({
            "world_size": world, "ranks_per_node": local, "nodes": -(-world // local),
            "global_batch": run.train.batch_size,
            "step_ms": pred.step_s * 1e3, "compute_ms": pred.compute_s * 1e3, "exchange_ms": pred.exchange_s * 1e3,
            "allreduce_ms": pred.allreduce_s * 1e3, "samples_per_s": run.train.batch_size / pred.step_s,
            "a2a_bytes_per_rank": {"max": float(a2a.max()), "median": float(median(a2a))},
            "a2a_inter_node_bytes_per_rank": {"max": float(inter.max()), "median": float(median(inter))},
            "allreduce_bytes": costs.allreduce_bytes, "lookup_bytes_max": float(costs.lookup_bytes.max()),
            "flops_per_rank": costs.flops,
            "memory_mib_per_rank": {"max": max(memory) / 2**20, "min": min(memory) / 2**20,
                                    "median": median(memory) / 2**20},
            "types": _types(plan), "plan_seconds": planned,
        })
    return {"model": f"{cfg.model.name}/{cfg.model.flavor}", "batch_per_rank": per_rank,
            "machine": dataclasses.asdict(machine),
            "worlds": rows}


def _local(cfg: Config, base_world: int) -> int:
    nproc = cfg.launch.nproc_per_node
    return int(nproc) if isinstance(nproc, int) and nproc > 0 else base_world


def _types(plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in plan.tables:
        out[table.type.value] = out.get(table.type.value, 0) + 1
    return out


def describe(result: dict) -> str:
    m = result["machine"]
    lines = [f"weak scaling, {result['model']}, {result['batch_per_rank']} samples per rank; machine: GEMM "
             f"{m['gemm_gflops']:g} GFLOP/s, lookups {m['memory_gbs']:g} GB/s per rank; intra-node {m['intra_gbs']:g} "
             f"GB/s, {m['intra_latency_us']:g} us; inter-node {m['inter_gbs']:g} GB/s per node, "
             f"{m['inter_latency_us']:g} us",
             f"{'ranks':>6}{'nodes':>6}{'step ms':>9}{'compute':>9}{'exchange':>9}{'allred':>8}{'samples/s':>12}"
             f"{'a2a MiB/rank':>13}{'inter MiB':>10}{'mem MiB max':>12}{'max/min':>8}{'plan s':>7}  types"]
    for r in result["worlds"]:
        mem = r["memory_mib_per_rank"]
        lines.append(
            f"{r['world_size']:>6}{r['nodes']:>6}{r['step_ms']:>9.2f}{r['compute_ms']:>9.2f}{r['exchange_ms']:>9.2f}"
            f"{r['allreduce_ms']:>8.2f}{r['samples_per_s']:>12,.0f}{r['a2a_bytes_per_rank']['max'] / 2**20:>13.2f}"
            f"{r['a2a_inter_node_bytes_per_rank']['max'] / 2**20:>10.2f}{mem['max']:>12,.1f}"
            f"{mem['max'] / max(mem['min'], 1e-9):>8.3f}{r['plan_seconds']:>7.2f}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["types"].items())))
    return "\n".join(lines)
