"""Check before spending: what each rank will hold, what it may use, and where its checkpoints will go.

Per rank, from the plan and the model (nothing allocated): embedding weights and their optimizer state (the
plan's own figures), the dense parameters with their gradients and optimizer state, the all-to-all buffers, the
batches in flight and an estimate of the activations (every linear layer's output, kept for backward, times
three). The limit is what the host lets each local rank use: MemAvailable, or the cgroup's memory limit if
lower, shared by the ranks on this node (the GPU's free memory with nccl). A job that does not fit stops in one
line naming the rank, the need and the limit; `disttrain plan` prints the same verdict.

The checkpoint and output directories must be writable, and the checkpoint directory's file system must have
room for one more checkpoint (weights always fp32 on disk, optimizer state, dense part).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from disttrain.config import Config
from disttrain.errors import ConfigError, PlanError
from disttrain.optim import optimizer_spec
from disttrain.sharding.plan import ShardingPlan
from disttrain.storage import check_reachable, is_remote, local

MIB = 2**20
PREFETCH = 3  # batches built ahead of the step
ACTIVATION_FACTOR = 3  # outputs kept for backward, their gradients, the kernels' workspace


@dataclass(frozen=True)
class RankNeed:
    rank: int
    parts: dict[str, int]  # bytes: embeddings, embedding optimizer, dense, exchange, batches, activations

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """`embeddings 61 MiB, dense 1.2 MiB, ...`: the parts that hold 1% of the total or more, each in a unit
        that shows it ("" when the rank needs nothing)."""
        return ", ".join(f"{name} {size_text(value)}" for name, value in self.parts.items()
                         if value > 0 and value * 100 >= self.total)


def size_text(num_bytes: int) -> str:
    """`1,234 MiB`, `1.4 MiB`, `340 KiB`, `80 B`: never `0 MiB` for something that is there."""
    if num_bytes >= 10 * MIB:
        return f"{num_bytes / MIB:,.0f} MiB"
    if num_bytes >= MIB:
        return f"{num_bytes / MIB:.1f} MiB"
    return f"{num_bytes / 1024:.0f} KiB" if num_bytes >= 1024 else f"{num_bytes} B"


def _dense_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embeddings."))


def _linear_outputs(model) -> int:
    return sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def rank_needs(cfg: Config, model, plan: ShardingPlan) -> list[RankNeed]:
    """Bytes each rank of `plan` will hold for this config and model (the plan's tables are not allocated)."""
    local = cfg.train.batch_size // plan.world_size
    dense_words = 2 + sum(optimizer_spec(cfg.train.optimizer).state_words)  # parameter, gradient, state
    dense = _dense_parameters(model) * dense_words * 4
    looked_up = sum(t.bags_per_sample * t.dim for t in model.tables)
    exchange = local * looked_up * 4 * 4  # pooled vectors out and back, their gradients, both directions
    ids = sum(t.bags_per_sample for t in model.tables) * max(cfg.data.multi_hot_max, 1)
    batches = local * (cfg.data.num_dense + 2 * ids + 2) * 8 * PREFETCH
    activations = local * (_linear_outputs(model) + looked_up) * 4 * ACTIVATION_FACTOR
    return [RankNeed(r["rank"], {"embeddings": r["weight_bytes"], "embedding optimizer": r["optimizer_bytes"],
                                 "dense": dense, "exchange": exchange, "batches": batches, "activations": activations})
            for r in plan.rank_bytes()]


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory() -> tuple[int, str]:
    """(bytes this host lets a job use now, where the figure comes from)."""
    available, source = None, "MemAvailable"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "free pages"
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and limit < 1 << 60 and limit - (used or 0) < available:
            available, source = limit - (used or 0), f"the cgroup limit ({limit_file})"
    return max(available, 0), source


def rank_limit(local_ranks: int, device: torch.device | None = None) -> tuple[int, str]:
    """(bytes one rank may use, how that was found): its GPU's free memory, or its share of the host's."""
    if device is not None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device}"
    available, source = host_memory()
    local_ranks = max(local_ranks, 1)
    return available // local_ranks, f"{source} {available / MIB:,.0f} MiB / {local_ranks} rank(s) on this node"


def memory_verdict(needs: list[RankNeed], limit: int, source: str) -> tuple[bool, str]:
    """(fits, one line): the rank that needs the most against the limit."""
    worst = max(needs, key=lambda n: n.total)
    parts = f" ({worst.describe()})" if worst.total else ""
    line = f"rank {worst.rank} needs {size_text(worst.total)}{parts} and may use {limit / MIB:,.0f} MiB ({source})"
    if worst.total <= limit:
        return True, f"memory: fits; the largest rank: {line}"
    return False, (f"does not fit: {line}; lower model.table_sizes, model.max_rows or train.batch_size, or add ranks "
                   "(launch.nproc_per_node, launch.nnodes)")


def check_memory(cfg: Config, model, plan: ShardingPlan, *, local_ranks: int, device=None) -> None:
    fits, line = memory_verdict(rank_needs(cfg, model, plan), *rank_limit(local_ranks, device))
    if not fits:
        raise PlanError(line)


def checkpoint_bytes(cfg: Config, model, plan: ShardingPlan) -> int:
    """The bytes one checkpoint of this run takes on disk (weights in fp32 whatever the table dtype)."""
    ranks = plan.rank_bytes()
    weights = sum(r["weight_bytes"] for r in ranks) * 4 // plan.weight_bytes
    dense = _dense_parameters(model) * (1 + sum(optimizer_spec(cfg.train.optimizer).state_words)) * 4
    return weights + sum(r["optimizer_bytes"] for r in ranks) + dense


def check_directories(cfg: Config, checkpoint_size: int) -> None:
    """`run.output_dir` and `checkpoint.dir` can be written, and the latter has room for one more checkpoint (on
    object storage: the store answers and lets us in; its room is the store's business)."""
    targets = [("run.output_dir", cfg.run.output_dir)] + ([("checkpoint.dir", cfg.checkpoint.dir)]
                                                          if cfg.checkpoint.dir else [])
    for key, directory in targets:
        if is_remote(directory):
            check_reachable(directory, key)
        else:
            _check_writable(key, Path(local(directory)))
    if cfg.checkpoint.dir and not is_remote(cfg.checkpoint.dir):
        free = shutil.disk_usage(_existing(Path(local(cfg.checkpoint.dir)))).free
        if free < checkpoint_size:
            raise ConfigError(f"checkpoint.dir: {cfg.checkpoint.dir} has {free / MIB:,.1f} MiB free, a checkpoint of "
                              f"this run takes {checkpoint_size / MIB:,.1f} MiB; expected room for at least one")


def _existing(directory: Path) -> Path:
    """`directory`, or its nearest ancestor that exists (where it would be created)."""
    directory = directory.absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _check_writable(key: str, directory: Path) -> None:
    """A file can be created in `directory`, or in the ancestor it would be created in (nothing is left)."""
    try:
        with tempfile.NamedTemporaryFile(dir=_existing(directory), prefix=".disttrain-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: {directory} is not writable ({exc.strerror or exc}); expected a directory this "
                          "job can create files in") from None


def check_resources_collectively(cfg: Config, model, plan: ShardingPlan, *, comm, local_ranks: int,
                                 device=None, checked: bool = False) -> None:
    """The worker's check when no launcher checked (`checked`: the job's `resources_checked`; false under
    torchrun or Ray by hand, `disttrain train`): every rank checks before any allocates, and all stop with the
    first problem."""
    from disttrain.errors import DisttrainError

    problem = None
    if not checked:
        try:
            check_memory(cfg, model, plan, local_ranks=local_ranks, device=device)
            if comm.rank == 0:
                check_directories(cfg, checkpoint_bytes(cfg, model, plan))
        except DisttrainError as exc:
            problem = f"rank {comm.rank}: {exc}" if comm.world_size > 1 else str(exc)
    problems = [p for p in comm.all_gather_object(problem) if p]
    if problems:
        raise PlanError(problems[0])
