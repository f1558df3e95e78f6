"""Injected faults, for the tests of restarts: `DISTTRAIN_FAULT=RANK:STEP[:KIND]` makes that rank die at that step
of a fresh run (never after a resume): `exit` (code 17, the default), `kill` (SIGKILL), or `checkpoint` (rank 0
dies while writing that step's checkpoint, after its files and before the commit), or `hang` (the rank stops
answering: it sleeps until it is killed), or `diverge` (the rank adds 0.001 to its first dense parameter and goes
on: its replica no longer equals rank 0's)."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from disttrain.engine.state import RunState
from disttrain.runtime.env import process_environ

FAULT = "DISTTRAIN_FAULT"


def injected_fault(rank: int, environ=None) -> tuple[int, str]:
    """(step, kind) of this rank's injected fault (a test hook the user's environment sets, `FAULT`); (-1, "")
    when none."""
    environ = process_environ() if environ is None else environ
    parts = environ.get(FAULT, "").split(":")
    if len(parts) >= 2 and int(parts[0]) == rank:
        return int(parts[1]), parts[2] if len(parts) > 2 else "exit"
    return -1, ""


class FaultInjection:
    def __init__(self, rank: int, *, fresh: bool, model=None):
        self.step, self.kind = injected_fault(rank) if fresh else (-1, "")
        self.model = model

    def crash_in_checkpoint(self, step: int) -> bool:
        """Whether the checkpoint of `step` must die before its commit."""
        return self.kind == "checkpoint" and step == self.step

    def before(self, step: int) -> None:
        if step != self.step or self.kind == "checkpoint":
            return
        if self.kind == "diverge":
            with torch.no_grad():
                next(p for n, p in self.model.named_parameters() if not n.startswith("embeddings.")).add_(1e-3)
            return
        sys.stdout.flush()
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while self.kind == "hang":
            time.sleep(1)
        os._exit(17)

    def after(self, state: RunState) -> bool:
        return False

    def close(self) -> None:
        return None
