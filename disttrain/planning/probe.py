"""`disttrain probe`: the machine's rates for the planner's cost model, measured by the job's own workers.

Launched like training (any launcher; the worker entry point runs this instead of the trainer when
its job is `probe`: `disttrain.runtime.job`), every rank at once, pinned and threaded as training would be:
- `gemm_gflops`: fp32 matmuls on the rank's threads (`planning.roofline.gemm_gflops`);
- `dense_efficiency`: the configured model's dense training step (forward, backward, SGD; tiny tables) on the
  rank's share of `train.batch_size`, as a share of that GEMM rate (the model's FLOPs: `planning.roofline`);
- `memory_gbs`: random rows gathered from and added back into a table far larger than the caches, counted as the
  cost model counts lookup bytes (3 x the row bytes per id with SGD);
- links through the job's own collectives (shared memory between ranks of one host, else the network):
  `*_latency_us` is an all-to-all of 8 bytes per peer, `*_gbs` a 4 MiB-per-peer all-to-all's bytes (sent plus
  received, halved: full duplex) over its time. Ranks on one host measure `intra_*`; ranks on several hosts measure
  `inter_*` (per node: a rank's rate times the ranks sharing the host's link).
The slowest rank's rates are kept. Rank 0 writes `probe.json` ({"machine": {...}, "per_rank": [...], ...}) into
`run.output_dir`; `cluster.probe: <that file>` hands it to `disttrain plan` and `plan --simulate`.
"""

from __future__ import annotations

import platform
import time

import torch

TABLE_ROWS = 4 << 20  # x 16 fp32 = 256 MiB per rank
LOOKUP_IDS = 1 << 16
LINK_BYTES = 4 << 20  # per peer
LATENCY_CALLS, BANDWIDTH_CALLS = 300, 15


def _timed(fn, seconds: float) -> float:
    """Best seconds per call of `fn` over about `seconds`."""
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def dense_efficiency(cfg, batch: int, gemm: float, steps: int = 6) -> float:
    """The share of `gemm` GFLOP/s the configured model's dense training step reaches on `batch` samples (tiny
    tables: lookups are the cost model's other term)."""
    from disttrain.models.loss import training_loss
    from disttrain.planning.roofline import dense_model, flops_per_sample

    model, data, spec = dense_model(cfg, batch)
    params = [p for name, p in model.named_parameters() if not name.startswith("embeddings.")]
    optimizer = torch.optim.SGD(params, lr=1e-6)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss, _ = training_loss(model, data, batch, spec)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - start)
    took = sorted(times[1:])[len(times[1:]) // 2]
    return min(flops_per_sample(cfg) * batch / took / 1e9 / gemm, 1.0)


def memory_gbs(seconds: float = 0.6) -> float:
    table = torch.zeros(TABLE_ROWS, 16)
    grads = torch.ones(LOOKUP_IDS, 16)
    gen = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, TABLE_ROWS, (LOOKUP_IDS,), generator=gen)
        table.index_select(0, ids)
        table.index_add_(0, ids, grads)

    return LOOKUP_IDS * 16 * 4 * 3 / _timed(step, seconds) / 1e9


def _collective_time(fn, calls: int) -> float:
    """Median seconds per call over `calls` calls; every rank makes the same calls (a count, not a duration)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def link_rates(comm) -> tuple[float, float]:
    """(GB/s per rank, latency in microseconds) of this job's all-to-all (collective: every rank calls it)."""
    world = comm.world_size
    tiny_in, tiny_out = torch.zeros(world, dtype=torch.int64), torch.zeros(world, dtype=torch.int64)
    ones = [1] * world
    latency = _collective_time(lambda: comm.all_to_all(tiny_out, tiny_in, ones, ones).wait(), LATENCY_CALLS)
    per_peer = LINK_BYTES // 4
    big_in, big_out = torch.ones(world * per_peer), torch.zeros(world * per_peer)
    splits = [per_peer] * world
    took = _collective_time(lambda: comm.all_to_all(big_out, big_in, splits, splits).wait(), BANDWIDTH_CALLS)
    moved = 2 * LINK_BYTES * (world - 1) / 2  # sent + received, halved (full duplex)
    return moved / max(took - latency, 1e-9) / 1e9, latency * 1e6


def run_probe(cfg, env, comm, placement: dict) -> dict | None:
    """Measure on every rank; rank 0 returns the result (its caller writes it to the run's `probe.json`)."""
    from disttrain.planning.roofline import gemm_gflops
    from disttrain.shm_collectives import host_id

    threads = int(placement.get("threads") or torch.get_num_threads())
    comm.barrier()
    gemm = gemm_gflops(torch.float32, threads)
    mine = {"rank": env.rank, "host": platform.node(), "threads": threads, "gemm_gflops": gemm,
            "memory_gbs": memory_gbs(),
            "dense_efficiency": dense_efficiency(cfg, max(cfg.train.batch_size // comm.world_size, 1), gemm)}
    hosts = comm.all_gather_object(host_id())
    if comm.world_size > 1:
        comm.barrier()
        rate, latency = link_rates(comm)
        mine |= {"link_gbs": rate, "link_latency_us": latency}
    everyone = comm.all_gather_object(mine)
    if env.rank != 0:
        return None
    machine = {"gemm_gflops": min(r["gemm_gflops"] for r in everyone),
               "dense_efficiency": min(r["dense_efficiency"] for r in everyone),
               "memory_gbs": min(r["memory_gbs"] for r in everyone)}
    nodes = len(set(hosts))
    if comm.world_size > 1:
        rate = min(r["link_gbs"] for r in everyone)
        latency = max(r["link_latency_us"] for r in everyone)
        if nodes == 1:
            machine |= {"intra_gbs": rate, "intra_latency_us": latency}
        else:
            sharing = max(hosts.count(h) for h in set(hosts))  # ranks of one host share its link
            machine |= {"inter_gbs": rate * sharing, "inter_latency_us": latency}
    result = {"machine": machine, "world_size": comm.world_size, "hosts": nodes, "per_rank": everyone,
              "cpu": _cpu_model(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe(result: dict) -> str:
    m = result["machine"]
    names = {"gemm_gflops": "GEMM GFLOP/s per rank", "dense_efficiency": "dense step / GEMM rate",
             "memory_gbs": "lookup GB/s per rank",
             "intra_gbs": "intra-node GB/s per rank", "intra_latency_us": "intra-node latency us",
             "inter_gbs": "inter-node GB/s per node", "inter_latency_us": "inter-node latency us"}
    lines = [f"probe: {result['world_size']} rank(s) on {result['hosts']} host(s), {result['cpu']}"]
    lines += [f"  {names[k]:<26}{v:>10.2f}" for k, v in m.items()]
    return "\n".join(lines)
