"""A launcher's side of a stop request: while its processes run, the first SIGTERM or SIGINT it gets is sent on
to them once (as SIGTERM: finish the step, write a final checkpoint); a second signal, or processes still
running `grace_s` after the first, are killed with their process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from disttrain.runtime.signals import DUPLICATE_S, STOP_SIGNALS


class SignalForwarder:
    def __init__(self, procs: list[subprocess.Popen], *, grace_s: float):
        self.procs, self.grace_s = procs, grace_s
        self.signum, self.first_at, self.hard = 0, 0.0, False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self.first_at = signum, now
            print(f"disttrain: {signal.Signals(signum).name}: asking the workers to finish the step and save a final "
                  f"checkpoint (up to {self.grace_s:g} s; a second signal stops them at once)", flush=True)
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        elif now - self.first_at > DUPLICATE_S:
            self.hard = True

    def expired(self) -> bool:
        """A second signal came, or the grace period is over with processes still running."""
        late = self.signum and time.monotonic() - self.first_at > self.grace_s + 5.0
        return self.hard or bool(late and any(p.poll() is None for p in self.procs))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started in its session
                except (ProcessLookupError, PermissionError):
                    proc.kill()
            proc.wait()

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGKILL)
