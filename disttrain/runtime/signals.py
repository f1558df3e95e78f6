"""Stopping on request: SIGTERM (kill, docker stop, Kubernetes and Slurm preemption) or SIGINT (Ctrl-C).

A worker that receives the first signal finishes the step it is in; the ranks agree on it within the step
(`disttrain.engine.guard`), write a final checkpoint and exit with `PREEMPTED` (75, "try again later"), so a
requeued job with `train.resume=auto` loses no finished step. A second signal exits at once (128 + its number).
Signals arriving within `DUPLICATE_S` of the first count as the same request: a scheduler often signals every
process of a job while the launcher forwards the same signal. If the final checkpoint is not written within
`launch.stop_grace_s`, the worker exits anyway.

Launchers forward the first signal to their workers once, give them the same grace, then kill what is left.
A launcher that dies without passing anything on (SIGKILL, the OOM killer) orphans nothing: every process it
starts gets SIGTERM from the kernel when it exits (`dies_with_this_process`, set between fork and exec), and
every worker asks for the same of its own parent (`die_with_parent`), which covers the layers a third-party
launcher starts (torchrun's agent, horovodrun's middlemen). A SIGTERM so received is a stop request like any
other: the worker finishes its step and saves.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PREEMPTED = 75  # exit code of a run stopped by a signal after its final checkpoint (EX_TEMPFAIL: requeue it)
DUPLICATE_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


class Preempted(Exception):
    """The run stopped on request after a finished step (and its final checkpoint): exit with PREEMPTED."""


def die_with_parent(sig: int = signal.SIGTERM, *, parent: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; a no-op elsewhere). `parent`:
    the pid this process was started by, when known; if the parent is already gone (this process now belongs to
    another), act as if the signal had come.

    The kernel's parent is the *thread* that started this process, and the request survives exec (not that of
    a set-user-ID program): a launcher starts its processes from the thread that then waits for them."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if parent is None else parent
    _libc_prctl()(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def dies_with_this_process(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when the thread that starts it exits, even by
    SIGKILL. Set in the child between fork and exec, so no moment of its life is uncovered; a child whose parent
    died before that exits at once (128 + `sig`). None (nothing to do) off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    parent, prctl = os.getpid(), _libc_prctl()  # looked up here: the child only calls it

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(128 + sig)

    return set_death_signal


def _libc_prctl():
    return ctypes.CDLL("libc.so.6", use_errno=True).prctl


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
