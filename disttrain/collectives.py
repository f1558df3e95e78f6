"""The small collectives interface the sharded layer and gradient sync use.

torch.distributed implements it (`TorchCollectives`); a single process needs no communication
(`SingleProcess`); Horovod's ops implement it under horovodrun (`HorovodCollectives`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist

from disttrain import shm_collectives
from disttrain.config import Config
from disttrain.runtime.backend import CCL_MODULE, resolve_backend
from disttrain.runtime.env import WorkerEnv, apply_transport_env, elastic_restart, is_loopback

STORE_JOIN_S = 120  # the least time a rank waits for the job's store (rank 0 may start that much later)


class Handle(Protocol):
    def wait(self) -> object: ...


class _Done:
    def wait(self) -> None:
        return None


class Collectives(Protocol):
    rank: int
    world_size: int

    def all_to_all(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        *,
        async_op: bool = False,
    ) -> Handle: ...

    def all_reduce_sum(self, tensor: torch.Tensor, *, async_op: bool = False) -> Handle: ...

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...

    def barrier(self) -> None: ...

    def all_gather_object(self, obj: object) -> list: ...


class SingleProcess:
    rank = 0
    world_size = 1

    def all_to_all(self, output, input, output_splits, input_splits, *, async_op=False) -> Handle:
        output.copy_(input)
        return _Done()

    def all_reduce_sum(self, tensor, *, async_op=False) -> Handle:
        return _Done()

    def all_gather(self, tensor) -> list[torch.Tensor]:
        return [tensor]

    def barrier(self) -> None:
        return None

    def all_gather_object(self, obj) -> list:
        return [obj]


class TorchCollectives:
    """torch.distributed on an initialised process group (gloo on CPU, nccl on GPU)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    @property
    def store(self):
        """The job's key-value store (the roll call after a failed collective); None where torch hides it."""
        try:
            return dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a private torch API: absent is fine
            return None

    def all_to_all(self, output, input, output_splits, input_splits, *, async_op=False) -> Handle:
        work = dist.all_to_all_single(
            output, input, output_splits, input_splits, group=self.group, async_op=async_op
        )
        return work if async_op else _Done()

    def all_reduce_sum(self, tensor, *, async_op=False) -> Handle:
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=async_op)
        return work if async_op else _Done()

    def all_gather(self, tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous(), group=self.group)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def all_gather_object(self, obj) -> list:
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


class _HorovodWork:
    """A Horovod async handle; `wait` finishes it (and, for all-to-all, fills the caller's output)."""

    def __init__(self, hvd, handle, output: torch.Tensor | None = None):
        self.hvd, self.handle, self.output = hvd, handle, output

    def wait(self) -> None:
        result = self.hvd.synchronize(self.handle)
        if self.output is not None:
            received = result[0] if isinstance(result, tuple) else result
            self.output.copy_(received.view_as(self.output))


class HorovodCollectives:
    """Horovod's own ops (`horovodrun --gloo`, or MPI where built): alltoall with splits, allreduce,
    allgather, barrier. Ops are matched across ranks by submission order, as with torch.distributed."""

    def __init__(self):
        try:
            import horovod.torch as hvd
        except ImportError:
            from disttrain.errors import missing

            raise missing("horovod", "launch.launcher: horovod") from None
        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.world_size = hvd.size()
        self._objects = 0

    def all_to_all(self, output, input, output_splits, input_splits, *, async_op=False) -> Handle:
        splits = torch.tensor(input_splits, dtype=torch.int32)
        work = _HorovodWork(self.hvd, self.hvd.alltoall_async(input.contiguous(), splits=splits), output)
        if async_op:
            return work
        work.wait()
        return _Done()

    def all_reduce_sum(self, tensor, *, async_op=False) -> Handle:
        work = _HorovodWork(self.hvd, self.hvd.allreduce_async_(tensor, op=self.hvd.Sum))
        if async_op:
            return work
        work.wait()
        return _Done()

    def all_gather(self, tensor) -> list[torch.Tensor]:
        return list(self.hvd.allgather(tensor.contiguous().unsqueeze(0)).unbind(0))

    def barrier(self) -> None:
        self.hvd.barrier()

    def all_gather_object(self, obj) -> list:
        # Horovod names the op after type(obj) by default: ranks passing different types would never match.
        self._objects += 1
        return self.hvd.allgather_object(obj, name=f"disttrain.object.{self._objects}")

    def shutdown(self) -> None:
        self.hvd.shutdown()


def all_gather_rows(comm: Collectives, rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather variable-length (rows [N], values [N, D]) from every rank, in rank order."""
    if comm.world_size == 1:
        return rows, values
    counts = [int(c) for c in comm.all_gather(torch.tensor([rows.numel()], device=rows.device))]
    most = max(counts)
    padded_rows = torch.zeros(most, dtype=rows.dtype, device=rows.device)
    padded_rows[: rows.numel()] = rows
    padded_values = torch.zeros(most, values.shape[1], dtype=values.dtype, device=values.device)
    padded_values[: rows.numel()] = values
    all_rows = comm.all_gather(padded_rows)
    all_values = comm.all_gather(padded_values)
    return (
        torch.cat([r[:c] for r, c in zip(all_rows, counts)]),
        torch.cat([v[:c] for v, c in zip(all_values, counts)]),
    )


def open_collectives(env: WorkerEnv, cfg: Config, *, horovod: bool = False,
                     device: torch.device | None = None) -> Collectives:
    """This worker's collectives: none for a world of one, Horovod's own ops under horovodrun, else a
    torch.distributed process group (`launch.backend`) from the torchrun environment; with gloo and every rank
    on this host, all-reduce and all-to-all go through shared memory (`launch.shared_memory`)."""
    comm = _process_group(env, cfg, horovod=horovod)
    if isinstance(comm, TorchCollectives) and cfg.launch.shared_memory and dist.get_backend() == "gloo" and \
            shm_collectives.usable(comm, device or torch.device("cpu")):
        return shm_collectives.SharedMemoryCollectives(comm, timeout_s=cfg.launch.timeout_s)
    return comm


def _process_group(env: WorkerEnv, cfg: Config, *, horovod: bool) -> Collectives:
    if not env.distributed:
        return SingleProcess()
    if horovod:
        return HorovodCollectives()
    backend = resolve_backend(cfg.launch.backend)
    if backend == "ccl":
        __import__(CCL_MODULE)  # registers the ccl backend with torch.distributed
    timeout = timedelta(seconds=cfg.launch.timeout_s)
    # Joining the store waits for the slowest rank to start (an interpreter and torch to import, on a loaded
    # machine): a short launch.timeout_s is meant for collectives that hang, not for the rendezvous.
    joining = max(timeout, timedelta(seconds=STORE_JOIN_S))
    attempt, agent_store = elastic_restart()
    store = None if agent_store else _job_store(env, joining)
    if store is not None:
        dist.init_process_group(backend=backend, store=store, rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
    elif agent_store and attempt != "0":
        # A restarted torchrun worker: the agent's store may still hold the previous attempt's gloo
        # addresses (dead ports), and a peer that reads one waits for a connection that never comes. Keys of
        # this attempt go under their own prefix.
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False, timeout=joining)
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"disttrain/attempt_{attempt}", store),
                                rank=env.rank, world_size=env.world_size, timeout=timeout)
    else:
        dist.init_process_group(
            backend=backend,
            init_method="env://",  # MASTER_ADDR/PORT, RANK, WORLD_SIZE; honours torchrun's agent store
            timeout=timeout,
        )
    return TorchCollectives()


def _job_store(env: WorkerEnv, timeout: timedelta) -> dist.TCPStore | None:
    """The job's store when MASTER_ADDR is an IP address (or localhost): rank 0 binds its listening socket to that
    address itself, so it listens on the job's address only (torch's own env:// store listens on every
    interface); where the address is not one of this machine's (NAT), rank 0 listens as torch would. Every rank
    decides alike from MASTER_ADDR alone: a store given to init_process_group and torch's env:// store name
    their keys differently. None for a host name: torch's env:// store."""
    if is_loopback(env.master_addr):
        apply_transport_env(env.master_addr)  # gloo on loopback too
    elif not _is_ip(env.master_addr):
        return None
    if env.rank != 0:
        return dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False, timeout=timeout)
    host = "127.0.0.1" if env.master_addr == "localhost" else env.master_addr
    try:
        listener = _listen(host, env.master_port, backlog=max(128, env.world_size))
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL or is_loopback(host):
            raise
        return dist.TCPStore(host, env.master_port, env.world_size, is_master=True, timeout=timeout)
    return dist.TCPStore(host, listener.getsockname()[1], env.world_size, is_master=True, timeout=timeout,
                         master_listen_fd=listener.detach())


def _listen(host: str, port: int, *, backlog: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def close_collectives(comm: Collectives) -> None:
    """Orderly shutdown: nobody tears down its transport while another rank still writes or talks."""
    comm.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    if hasattr(comm, "shutdown"):
        comm.shutdown()
