"""All-reduce and all-to-all through shared memory when every rank runs on one host (CPU tensors).

Loopback TCP (gloo) copies every byte through the kernel and its threads run on the very cores the ranks compute
on. Here the ranks map one file in /dev/shm: per rank a header (an epoch counter, the bytes it wrote, its
all-to-all splits, its pid) and two data slots used alternately. An operation is: write your part into your slot,
publish your epoch, wait until every rank has published it (a spin on the headers, yielding the core after a
while, or at once when the ranks outnumber the CPUs they may run on), read what you need from the others'
slots. Alternating slots makes the arrival of the next operation the proof that everyone finished reading the
previous one: one wait per operation, no second barrier.

Every rank sums the slots in rank order, so all ranks hold bitwise the same sums. Messages larger than a slot,
objects, gathers and barriers go through the process group (`inner`). A peer that exits is noticed within a
second (its pid), a peer that hangs after `timeout_s`; both raise the RuntimeError the worker's roll call reads
(`disttrain.engine.stall`). The file is unlinked as soon as every rank has mapped it: nothing is left behind.
"""

from __future__ import annotations

import mmap
import os
import platform
import time
import uuid

import numpy as np
import torch

SLOT_BYTES = 64 << 20  # per rank and slot (pages are only used once touched; less on a small /dev/shm)
HEADER_WORDS = 4  # epoch, pid, bytes written (for even, odd epochs); then the all-to-all offsets, per parity
ALIGN = 64
SPINS_BEFORE_YIELD = 2000


class _Done:
    def wait(self) -> None:
        return None


def usable(comm, device: torch.device) -> bool:
    """Shared memory serves this job: CPU tensors, x86 (its store order makes the flag protocol safe), every rank on
    this host (collective: every rank calls it)."""
    here = (platform.machine() in ("x86_64", "AMD64") and device.type == "cpu" and os.path.isdir("/dev/shm"),
            host_id())
    everyone = comm.all_gather_object(here)
    return all(ok for ok, _ in everyone) and len({host for _, host in everyone}) == 1


def host_id() -> str:
    """The machine (boot id) and this process's network namespace: ranks in other namespaces (the two-node tests,
    containers) count as other hosts and talk over their network."""
    parts = [os.uname().nodename]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append("")
    for namespace in ("net", "ipc"):
        try:
            parts.append(os.readlink(f"/proc/self/ns/{namespace}"))
        except OSError:
            parts.append("")
    return "/".join(parts)


class SharedMemoryCollectives:
    """The collectives interface with all-reduce and all-to-all through shared memory; the rest delegates to
    `inner` (a TorchCollectives on the same ranks)."""

    synchronous = True  # every operation is done when it returns: nothing to overlap

    def __init__(self, inner, *, slot_bytes: int = SLOT_BYTES, timeout_s: float = 600.0):
        self.inner, self.rank, self.world_size = inner, inner.rank, inner.world_size
        self.slot_bytes, self.timeout_s = slot_bytes, timeout_s
        world = self.world_size
        self.header_bytes = -(-(HEADER_WORDS + 2 * world) * 8 // ALIGN) * ALIGN
        if self.rank == 0:  # a small /dev/shm (a container's 64 MiB) gets smaller slots, not a SIGBUS
            stat = os.statvfs("/dev/shm")
            room = stat.f_bavail * stat.f_frsize // (4 * world)  # at most half the free space in use
            slot_bytes = max(min(slot_bytes, room // ALIGN * ALIGN), 0)
            offer = (f"/dev/shm/disttrain-{uuid.uuid4().hex}", slot_bytes)
        offers = inner.all_gather_object((offer if self.rank == 0 else None, sorted(os.sched_getaffinity(0))))
        name, slot_bytes = offers[0][0]
        # More ranks than CPUs among them (oversubscribed cores): a spinning rank would hold the core its peer needs
        # to reach the meeting point, so a wait yields from the first spin.
        usable_cpus = set().union(*(cpus for _, cpus in offers))
        self.spins_before_yield = 0 if world > len(usable_cpus) else SPINS_BEFORE_YIELD
        self.slot_bytes = slot_bytes
        size = world * self.header_bytes + 2 * world * slot_bytes
        if self.rank == 0:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
        inner.barrier()
        if self.rank != 0:
            fd = os.open(name, os.O_RDWR)
        self.map = mmap.mmap(fd, size)
        os.close(fd)
        inner.barrier()
        if self.rank == 0:
            os.unlink(name)  # every rank has it mapped: the memory lives until the last one unmaps it
        self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)
        headers = np.frombuffer(self.map, dtype=np.int64, count=world * self.header_bytes // 8)
        self.headers = headers.reshape(world, self.header_bytes // 8)
        self.epochs = self.headers[:, 0]
        self.mine = self.headers[self.rank]
        self.mine[1] = os.getpid()
        inner.barrier()
        self.pids = self.headers[:, 1].copy()
        self.epoch = 0

    @property
    def store(self):
        return getattr(self.inner, "store", None)

    # ----- the protocol ---------------------------------------------------------------------------------------
    def _slot(self, rank: int, epoch: int, nbytes: int) -> torch.Tensor:
        start = self.world_size * self.header_bytes + ((epoch % 2) * self.world_size + rank) * self.slot_bytes
        return self.bytes[start : start + nbytes]

    def _offsets(self, rank: int) -> np.ndarray:
        """Where each destination's part starts in `rank`'s all-to-all slot (this epoch's parity)."""
        first = HEADER_WORDS + (self.epoch % 2) * self.world_size
        return self.headers[rank, first : first + self.world_size]

    def _publish_and_wait(self, nbytes: int) -> bool:
        """Publish this epoch (after `nbytes` of data, -1: too large for a slot); wait for every rank. Whether
        every rank's data is in its slot (the same answer on every rank). Sizes and offsets alternate by epoch
        parity like the slots: a rank publishing epoch e + 2 has seen everyone publish e + 1, so everyone is
        done reading epoch e's."""
        self.mine[2 + self.epoch % 2] = nbytes
        self.mine[0] = self.epoch  # last: the data and the sizes are written before the epoch is seen
        epochs, epoch, spins, patience = self.epochs, self.epoch, 0, self.spins_before_yield
        deadline = time.monotonic() + self.timeout_s
        next_check = time.monotonic() + 1.0
        while int(epochs.min()) < epoch:
            spins += 1
            if spins > patience:
                os.sched_yield()
                if spins % 256 == 0:
                    now = time.monotonic()
                    if now > next_check:
                        self._check_peers(now, deadline)
                        next_check = now + 1.0
        return bool((self.headers[:, 2 + self.epoch % 2] >= 0).all())

    def _check_peers(self, now: float, deadline: float) -> None:
        late = [r for r in range(self.world_size) if int(self.epochs[r]) < self.epoch]
        for r in late:
            try:
                os.kill(int(self.pids[r]), 0)
            except ProcessLookupError:
                raise RuntimeError(f"Connection closed by peer: rank {r} (pid {int(self.pids[r])}) exited during a "
                                   "shared-memory collective") from None
            except PermissionError:
                pass
        if now > deadline:
            raise RuntimeError(f"Timed out after {self.timeout_s:.0f} s in a shared-memory collective waiting for "
                               f"rank(s) {', '.join(map(str, late))}")

    # ----- the interface --------------------------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor, *, async_op: bool = False):
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > self.slot_bytes or not tensor.is_contiguous():  # the same size on every rank: all alike
            return self.inner.all_reduce_sum(tensor, async_op=async_op)
        self.epoch += 1
        flat = tensor.view(-1)
        self._slot(self.rank, self.epoch, nbytes).view(tensor.dtype).copy_(flat)
        self._publish_and_wait(nbytes)
        parts = [self._slot(r, self.epoch, nbytes).view(tensor.dtype) for r in range(self.world_size)]
        if len(parts) == 1:
            flat.copy_(parts[0])
        else:  # rank order on every rank; the first sum written straight into place (one pass fewer than copy, add)
            torch.add(parts[0], parts[1], out=flat)
            for part in parts[2:]:
                flat.add_(part)
        return _Done()

    def all_to_all(self, output, input, output_splits, input_splits, *, async_op: bool = False):
        item = input.element_size()
        nbytes = input.numel() * item
        self.epoch += 1
        fits = nbytes <= self.slot_bytes
        if fits:
            self._slot(self.rank, self.epoch, nbytes).view(input.dtype).copy_(input.reshape(-1))
            self._offsets(self.rank)[:] = np.cumsum([0, *input_splits[:-1]])
        if not self._publish_and_wait(nbytes if fits else -1):  # some rank's part is too large: all go by TCP
            return self.inner.all_to_all(output, input, output_splits, input_splits, async_op=async_op)
        out = output.view(-1)
        row = output[0].numel() if output.dim() > 1 and output.shape[0] else 1  # splits count rows of dim 0
        at = 0
        for source, count in enumerate(output_splits):
            if count:
                start = int(self._offsets(source)[self.rank]) * row * item
                chunk = self._slot(source, self.epoch, start + count * row * item)[start:]
                out[at : at + count * row].copy_(chunk.view(output.dtype))
            at += count * row
        return _Done()

    def all_gather(self, tensor):
        return self.inner.all_gather(tensor)

    def barrier(self) -> None:
        self.inner.barrier()

    def all_gather_object(self, obj) -> list:
        return self.inner.all_gather_object(obj)
