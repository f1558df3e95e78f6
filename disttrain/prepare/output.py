"""What every `disttrain data ...` writer shares: a hidden staging directory beside the output, renamed into place
only after `meta.json` is written (an interrupted run never leaves a directory that looks complete; the partial
ones of killed runs are removed by the next run), progress lines on stderr, and one line instead of a traceback
when the output cannot be written (a full disk, a quota, a read-only filesystem), the staging directory removed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from disttrain.errors import DataError

# Errors of writing, whatever file they hit; numpy's short write (`tofile` on a full disk) has no errno.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
WRITE_ERRNOS = (*NO_SPACE, errno.EFBIG, errno.EROFS)
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def staging_dir(out: Path) -> Path:
    """A fresh `.tmp-<name>-<pid>` beside `out` (stale ones of dead processes removed first)."""
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(out)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"--out {out}: cannot create the staging directory {tmp} ({exc.strerror or exc}); expected "
                        "a writable directory") from None
    return tmp


def check_target(out: Path, force: bool, kind: str) -> None:
    """`--out` holds no dataset of this `kind` (prepared, processed) unless --force, and nothing else at all."""
    if (out / "meta.json").exists() and not force:
        raise DataError(f"--out {out}: already holds a {kind} dataset (remove it or pass --force)")
    if out.exists() and not (out / "meta.json").exists() and any(out.iterdir()):
        raise DataError(f"--out {out}: exists and is not a {kind} dataset; choose an empty or new directory")


@contextlib.contextmanager
def open_for_writing(paths: list[Path]):
    """The files opened for writing, all closed on the way out, also when opening one of them fails. The open-file
    limit is raised first where so many need it (a table's column each: the soft limit is often 1,024)."""
    _allow_open_files(len(paths) + 64)  # and the pool's pipes, the inputs
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open(p, "wb")) for p in paths]


def _allow_open_files(count: int) -> None:
    try:
        import resource
    except ImportError:  # not on Linux or macOS: the limit is what it is
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= count:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (count if hard == resource.RLIM_INFINITY else min(count, hard), hard))


def allocate(path: Path, nbytes: int) -> None:
    """A file of `nbytes` zeros whose blocks are reserved now: a full disk is an OSError here, not a SIGBUS in the
    worker that later writes into it through a memmap (which would leave its pool waiting forever)."""
    with open(path, "wb") as f:
        if nbytes <= 0:
            return
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            f.truncate(nbytes)  # a filesystem without preallocation: a sparse file, as before


def is_write_failure(exc: BaseException, tmp: Path) -> bool:
    """Whether an exception of a writer is a failure to write its output (staged in `tmp`): a full disk or
    quota, a file too large, a read-only filesystem, or any OSError naming a staged file."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in WRITE_ERRNOS or (exc.errno is None and SHORT_WRITE.search(str(exc)) is not None):
        return True
    return any(name and Path(os.fsdecode(name)).is_relative_to(tmp) for name in (exc.filename, exc.filename2))


def abandon(tmp: Path, out: Path, exc: BaseException, *, input_bytes: int) -> DataError | None:
    """Remove the staging directory of a run that failed with `exc`; returns the one-line error to raise instead
    when `exc` is a failure to write the output (None: raise `exc` itself)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if not is_write_failure(exc, tmp):
        return None
    assert isinstance(exc, OSError)
    short = exc.errno is None and SHORT_WRITE.search(str(exc)) is not None
    reason = exc.strerror or (f"{exc}: a short write, as on a full disk" if short else str(exc))
    if not (short or exc.errno in NO_SPACE):
        return DataError(f"--out {out}: writing the output failed ({reason}); expected a writable directory "
                         "(the partial output was removed)")
    free = shutil.disk_usage(out.parent).free if out.parent.exists() else 0
    return DataError(
        f"--out {out}: writing the output failed ({reason}); {_size(free)} free on its filesystem with the partial "
        f"output removed, expected room for about {_size(2 * input_bytes)} (twice the input's {_size(input_bytes)}: "
        "the dataset and the staging files beside it); free space there or choose another --out")


def _size(nbytes: float) -> str:
    """1536 -> `1.5 KiB`."""
    if nbytes < 1024:
        return f"{nbytes:,.0f} bytes"
    power = min(int(np.log2(nbytes) // 10), 4)
    return f"{nbytes / 1024**power:,.1f} {('KiB', 'MiB', 'GiB', 'TiB')[power - 1]}"


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
