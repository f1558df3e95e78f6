"""What every rank must agree on before a step's update: was a stop requested (SIGTERM, Ctrl-C), and is any
rank's loss not finite.

Both travel as two numbers after the last dense gradient, in the first gradient bucket backward sends
(`DataParallelGrads.control`): no extra collective. They are set right after the forward pass and read after the
backward pass. Then, on every rank alike:

- a non-finite loss with `train.nonfinite_loss=stop` (the default): no update is applied, and the run stops with
  one line naming the step and the ranks whose loss went non-finite; the last checkpoint stays the last good one;
- with `train.nonfinite_loss=skip`: the step's gradients are dropped (no update anywhere), the step is counted
  (`skipped_steps` in summary.json) and training goes on;
- a stop request: the update is applied, then the run writes a final checkpoint and exits with `PREEMPTED`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from disttrain.errors import DataError
from disttrain.phases import phase


@dataclass(frozen=True)
class Verdict:
    stop: bool = False  # some rank was asked to stop
    nonfinite: bool = False  # some rank's loss is nan or inf
    local_nonfinite: bool = False  # this rank's is


class StepGuard:
    def __init__(self, comm, stops, *, mode: str, device: torch.device):
        self.comm, self.stops, self.mode, self.device = comm, stops, mode, device

    def vote(self, loss: torch.Tensor, grads) -> tuple:
        """After the forward pass: this rank's [stop requested, loss not finite] into the gradient buffer's control
        slots (or, without dense gradients to ride on, an all-reduce of their own)."""
        stop = float(bool(self.stops is not None and self.stops.requested))
        if loss.device.type == "cpu":  # reading the loss costs nothing here
            local = torch.tensor([stop, float(not math.isfinite(float(loss.detach())))])
        else:
            local = torch.stack([torch.tensor(stop, device=loss.device), (~torch.isfinite(loss.detach())).float()])
        if self.comm.world_size == 1:
            return local, local, None
        if grads.buckets:
            grads.control.copy_(local)
            return None, local, grads
        flags = local.clone()
        with phase("all_reduce"):
            return flags, local, self.comm.all_reduce_sum(flags, async_op=True)

    def verdict(self, vote) -> Verdict:
        """After the backward pass: what the ranks agreed on."""
        flags, local, pending = vote
        if pending is not None:
            with phase("all_reduce"):
                if flags is None:
                    flags = pending.wait_control()
                else:
                    pending.wait()
        stop, nonfinite, mine = (float(x) for x in torch.cat([flags, local[1:]]).tolist())
        return Verdict(stop=stop > 0, nonfinite=nonfinite > 0, local_nonfinite=mine > 0)

    def nonfinite_step(self, step: int, verdict: Verdict, par) -> str:
        """A step whose loss went non-finite somewhere: raise (stop) or drop its gradients everywhere (skip);
        returns the line to log. Collective."""
        ranks = [r for r, bad in enumerate(self.comm.all_gather_object(verdict.local_nonfinite)) if bad]
        where = f"at step {step + 1} on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        if self.mode == "stop":
            raise DataError(f"the train loss went non-finite {where}; stopped before the update, so the last "
                            "checkpoint is the last good one (lower train.lr, or train.nonfinite_loss=skip to skip "
                            "such steps)")
        with phase("all_reduce"):
            par.grads.synchronize()  # the in-flight gradient sums end before the next step starts
        with phase("optimizer"):
            par.sparse_optimizer.zero_grad()  # drops the row gradients, finishing their exchange
        return f"the train loss went non-finite {where}: step skipped (train.nonfinite_loss=skip)"
