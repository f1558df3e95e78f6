"""Stopping on request: SIGTERM (kill, docker stop, Kubernetes and Slurm preemption) or SIGINT (Ctrl-C).

A worker that receives the first signal finishes the step it is in; the ranks agree on it within the step
(`disttrain.engine.guard`), write a final checkpoint and exit with `PREEMPTED` (75, "try again later"), so a
requeued job with `train.resume=auto` loses no finished step. A second signal exits at once (128 + its number).
Signals arriving within `DUPLICATE_S` of the first count as the same request: a scheduler often signals every
process of a job while the launcher forwards the same signal. If the final checkpoint is not written within
`launch.stop_grace_s`, the worker exits anyway.

Launchers forward the first signal to their workers once, give them the same grace, then kill what is left;
workers started by a launcher also get SIGTERM when the launcher dies (`die_with_parent`), so none is orphaned.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PREEMPTED = 75  # exit code of a run stopped by a signal after its final checkpoint (EX_TEMPFAIL: requeue it)
DUPLICATE_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


class Preempted(Exception):
    """The run stopped on request after a finished step (and its final checkpoint): exit with PREEMPTED."""


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; a no-op elsewhere). If the
    parent is already gone, act as if the signal had come."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


class StopSignals:
    """The stop request of this process: `requested` is the first signal's number (0: none yet)."""

    def __init__(self, grace_s: float):
        self.grace_s, self.requested, self.first_at = grace_s, 0, 0.0
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, _frame) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self.first_at = signum, now
            name = signal.Signals(signum).name
            print(f"disttrain: {name}: finishing this step, then a final checkpoint (a second signal stops at once)",
                  file=sys.stderr, flush=True)
            threading.Thread(target=self._deadline, args=(signum,), daemon=True).start()
        elif now - self.first_at > DUPLICATE_S:
            _exit_now(128 + signum)

    def _deadline(self, signum: int) -> None:
        time.sleep(self.grace_s)
        print(f"disttrain: no final checkpoint within launch.stop_grace_s={self.grace_s:g} s; exiting",
              file=sys.stderr, flush=True)
        _exit_now(128 + signum)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
