"""What every `disttrain data ...` writer shares: a hidden staging directory beside the output, renamed into place
only after `meta.json` is written (an interrupted run never leaves a directory that looks complete; the partial
ones of killed runs are removed by the next run), and progress lines on stderr."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def staging_dir(out: Path) -> Path:
    """A fresh `.tmp-<name>-<pid>` beside `out` (stale ones of dead processes removed first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def sha256_array(array: np.ndarray) -> str:
    """The sha256 of a C-contiguous array's bytes, from memory (an empty one too: a memoryview of it cannot be
    cast to bytes)."""
    return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


def file_entries(tmp: Path, files: list[str], digests: list[str]) -> dict:
    """meta.json's "files": size and sha256 of each written file."""
    return {f: {"bytes": os.path.getsize(tmp / f), "sha256": d} for f, d in zip(files, digests)}


def phase_seconds(started: float, **phases: float) -> dict:
    """meta.json's "seconds": each phase and the total since `started`."""
    return {**{k: round(v, 3) for k, v in phases.items()}, "total": round(time.perf_counter() - started, 3)}


def commit(tmp: Path, out: Path, meta: dict) -> None:
    """Write meta.json last, then put the directory in place (replacing an older output)."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        old = out.parent / f".old-{out.name}-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


class Progress:
    def __init__(self, enabled: bool, total_bytes: int, label: str = "parse"):
        self.enabled, self.total, self.done, self.rows, self.label = enabled, total_bytes, 0, 0, label
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, nbytes: int, rows: int, force: bool = False) -> None:
        self.done += nbytes
        self.rows += rows
        now = time.perf_counter()
        if not self.enabled or (now - self.last < (0.5 if self.tty else 5.0) and not force):
            return
        self.last = now
        pct = 100.0 * self.done / max(self.total, 1)
        rate = self.rows / max(now - self.start, 1e-9)
        line = f"{self.label}: {self.rows:,} rows, {pct:5.1f}% of input, {rate:,.0f} rows/s"
        print(("\r\x1b[K" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _remove_stale_tmp(out: Path) -> None:
    """Partial outputs of runs that were killed (their process is gone)."""
    for p in out.parent.glob(f".tmp-{out.name}-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)
