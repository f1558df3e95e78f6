"""Data-parallel dense parameters: gradients live in one flat buffer and are summed across ranks.

The loss is normalised by the *global* batch, so a sum (not a mean) of the ranks' gradients is the
single-process gradient. Buckets are all-reduced asynchronously as soon as backward has produced all of
their gradients, overlapping communication with the rest of backward (like DDP's reducer).

Collectives that run in the caller's thread (shared memory: `synchronous`) gain nothing from overlap and lose at
every bucket, where each rank waits for the slowest: they get one all-reduce of the whole buffer after backward.

`control`: a few numbers after the last gradient, in the first bucket backward sends, summed over the ranks with
it: what every rank must agree on before the update (a stop request, a non-finite loss) travels at no extra cost.
"""

from __future__ import annotations

import torch

from disttrain.collectives import Collectives, Handle
from disttrain.phases import phase

BUCKET_BYTES = 1 << 20


class DataParallelGrads:
    def __init__(self, params: list[torch.nn.Parameter], comm: Collectives, *, bucket_bytes: int = BUCKET_BYTES,
                 control: int = 2):
        self.params = [p for p in params if p.requires_grad]
        self.comm = comm
        total = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(total + control, device=self.params[0].device if self.params else "cpu")
        self.control = self.flat[total:]  # summed with the first bucket
        # Backward produces the last layers' gradients first, so buckets are cut in reverse order.
        offset = total
        self.buckets: list[tuple[int, int]] = []
        self.bucket_of: dict[int, int] = {}
        bucket_end = total + control
        for p in reversed(self.params):
            offset -= p.numel()
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            self.bucket_of[id(p)] = len(self.buckets)
            if (bucket_end - offset) * 4 >= bucket_bytes or offset == 0:
                self.buckets.append((offset, bucket_end))
                bucket_end = offset
        self.bucket_sizes = [0] * len(self.buckets)
        for p in self.params:
            self.bucket_sizes[self.bucket_of[id(p)]] += 1
        step = getattr(comm, "slot_bytes", 0) // self.flat.element_size()
        self.at_end = bool(getattr(comm, "synchronous", False)) and step >= 256
        if self.at_end:  # slot-sized, the control numbers' first (wait_control reads them before the rest)
            self.buckets = [(max(hi - step, 0), hi) for hi in range(total + control, 0, -step)]
        self._ready = [0] * len(self.buckets)
        self._handles: list[Handle] = []
        self._next = 0
        self._control_waited = False
        if comm.world_size > 1 and not self.at_end:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self._on_grad)

    def _on_grad(self, param: torch.Tensor) -> None:
        bucket = self.bucket_of[id(param)]
        self._ready[bucket] += 1
        # Launch buckets strictly in order so every rank issues the same collective sequence.
        if self._next < len(self.buckets) and self._ready[self._next] == self.bucket_sizes[self._next]:
            with phase("all_reduce"):
                while self._next < len(self.buckets) and self._ready[self._next] == self.bucket_sizes[self._next]:
                    lo, hi = self.buckets[self._next]
                    self._handles.append(self.comm.all_reduce_sum(self.flat[lo:hi], async_op=True))
                    self._next += 1

    def wait_control(self) -> torch.Tensor:
        """The control numbers summed over the ranks (after backward: the first bucket is sent by then, or now)."""
        if self.comm.world_size > 1 and self.buckets:
            if self._next == 0:  # its gradients never came (unused parameters): send it now, in order
                lo, hi = self.buckets[0]
                self._handles.append(self.comm.all_reduce_sum(self.flat[lo:hi], async_op=True))
                self._next = 1
            if not self._control_waited:
                self._handles[0].wait()
                self._control_waited = True
        return self.control

    def synchronize(self) -> None:
        """Wait for the gradient sums (call after backward, before the optimizer step)."""
        if self.comm.world_size == 1:
            return
        with phase("all_reduce"):
            self._wait()

    def _wait(self) -> None:
        while self._next < len(self.buckets):  # parameters that got no gradient this step
            lo, hi = self.buckets[self._next]
            self._handles.append(self.comm.all_reduce_sum(self.flat[lo:hi], async_op=True))
            self._next += 1
        for i, handle in enumerate(self._handles):
            if i or not self._control_waited:
                handle.wait()
        self._handles, self._next, self._ready = [], 0, [0] * len(self.buckets)
        self._control_waited = False

    def zero_grad(self) -> None:
        self.flat.zero_()
