"""The one driver of every preparation, input files -> a directory of memory-mappable columns that
`data.source=prepared` trains on: `disttrain data prepare` (`tabular`) and its Criteo preset (`disttrain data
criteo`, `criteo`) are each a `Job` run here, data (a schema) and plug-ins (row parser, id numbering, meta.json).

Two passes, both on every core. Pass 1 reads the inputs in pieces (`inputs`: Parquet row groups, byte ranges of
text files cut at line ends, decompressed blocks) in worker processes: the job's row parser turns each piece into a
`Chunk` (labels, dense values, every categorical feature's keys), which the worker writes to part files that the
main process appends in input order. Pass 2 numbers each categorical feature's keys, one feature per task, while
one more task transforms the dense columns (unless the parser handed them over final). Everything goes to a
staging directory beside the output (`output`), renamed into place after meta.json is written.
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from disttrain.errors import DataError
from disttrain.fileio import sha256_file
from disttrain.prepare.inputs import Input, compute_splits
from disttrain.prepare.output import (
    Progress,
    abandon,
    allocate,
    commit,
    file_entries,
    is_write_failure,
    open_for_writing,
    phase_seconds,
    staging_dir,
)
from disttrain.prepare.schema import Counters, Schema


class ChunkError(Exception):
    """A row that cannot be read: `row` is 0-based within the chunk's lines (text) or rows (Parquet)."""

    def __init__(self, row: int, reason: str):
        super().__init__(row, reason)  # both in args: the exception crosses a process boundary pickled
        self.row, self.reason = row, reason


@dataclass
class Chunk:
    """What a row parser makes of one piece of input."""

    labels: np.ndarray  # [R] uint8
    dense: np.ndarray  # [R, D] float32 (raw, or final when the job's dense_file is dense.f32)
    single: list[np.ndarray]  # per single-hot feature: [R] keys (the job's `keys` type)
    multi: list[tuple[np.ndarray, np.ndarray]]  # per multi-hot feature: ([R] int32 lengths, [sum] keys)
    lines: int  # text: lines of the chunk, good and bad; Parquet: rows
    bad: list[tuple[int, str]] = field(default_factory=list)  # (0-based line in the chunk, reason), the first few
    bad_count: int = 0
    counters: Counters = field(default_factory=Counters)
    stored_rows: int = -1  # >= 0: the arrays went to part files (`read_to_parts`), this many rows

    @property
    def rows(self) -> int:
        return self.labels.size if self.stored_rows < 0 else self.stored_rows


class Job:
    """One preparation: its schema, inputs and output, and the plug-ins that differ between presets."""

    phase = "read"  # pass 1's name in progress lines and meta.json "seconds"
    keys = "u64"  # the type of the categorical keys the parser hands over
    dense_file = "dense.raw.f32"  # where pass 1 writes the dense values: raw (pass 2 transforms them), or final
    number: Callable[[dict], dict]  # worker: one `id_tasks` task -> the table's entry in meta.json

    def __init__(self, out: Path, schema: Schema, inputs: list[Input], *, split: str, workers: int, progress: bool):
        self.out, self.schema, self.inputs, self.split = Path(out), schema, inputs, split
        self.workers, self.progress, self.counters = workers, progress, Counters()

    def tasks(self, source: Input) -> Iterable:
        """Pass 1: the source's pieces as picklable tasks; `task.read()` -> (Chunk, input bytes covered)."""
        raise NotImplementedError

    def id_tasks(self, tmp: Path, rows: int, train_rows: int) -> list[dict]:
        """Pass 2: a task for `number` per categorical feature."""
        raise NotImplementedError

    def dense(self, pool, tmp: Path, rows: int, train_rows: int):
        """Pass 2 of the dense columns started in the pool (None: pass 1 wrote them final); its result ends with
        {file: sha256} of what it wrote."""
        return None

    def files(self, tmp: Path) -> list[str]:
        """The files of meta.json, in its order."""
        return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())

    def meta(self, rows: int, splits: dict, tables: list[dict], dense) -> dict:
        """meta.json but for "files" and "seconds"."""
        raise NotImplementedError


def run(job: Job, started: float) -> dict:
    """Both passes of a checked job; returns the metadata written to OUT/meta.json."""
    tmp = staging_dir(job.out)
    workers = job.workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    try:
        with ctx.Pool(workers) as pool:
            _pass1(pool, job, tmp)
            read_seconds = time.perf_counter() - started
            rows = sum(i.rows for i in job.inputs)
            if rows == 0:
                raise DataError(f"{', '.join(str(i.path) for i in job.inputs)}: no rows")
            splits = compute_splits(job.split, [i.rows for i in job.inputs])
            tables, dense, known = _pass2(pool, job, tmp, rows, splits["train"][1])
            id_seconds = time.perf_counter() - started - read_seconds
            files = job.files(tmp)
            rest = [f for f in files if f not in known]  # not digested by their writers: read back
            known.update(zip(rest, pool.map(sha256_file, [str(tmp / f) for f in rest])))
            digests = [known[f] for f in files]
        meta = {**job.meta(rows, splits, tables, dense), "files": file_entries(tmp, files, digests),
                "seconds": phase_seconds(started, **{job.phase: read_seconds}, ids=id_seconds)}
        commit(tmp, job.out, meta)
        return meta
    except BaseException as exc:
        failure = abandon(tmp, job.out, exc, input_bytes=sum(i.bytes for i in job.inputs))
        if failure is None:
            raise
        raise failure from None


def read_to_parts(item) -> tuple[Chunk, int]:
    """Worker: read one task and write its arrays to part files, which the main process appends in input order;
    hands back the chunk without its arrays (nothing large crosses the process boundary)."""
    index, task, folder, singles, multis = item
    chunk, nbytes = task.read()
    base = f"{folder}/{index:07d}"
    chunk.labels.tofile(f"{base}.labels")
    np.ascontiguousarray(chunk.dense, dtype="<f4").tofile(f"{base}.dense")
    for name, keys in zip(singles, chunk.single):
        keys.tofile(f"{base}.keys_{name}")
    for name, (lengths, keys) in zip(multis, chunk.multi):
        lengths.tofile(f"{base}.len_{name}")
        keys.tofile(f"{base}.keys_{name}")
    return replace(chunk, labels=chunk.labels[:0], dense=chunk.dense[:0], single=[], multi=[],
                   stored_rows=chunk.labels.size), nbytes


def _append(target, part: str) -> None:
    """Append a part file to an open output file (in the kernel where it can) and remove the part."""
    with open(part, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        target.flush()
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(src.fileno(), target.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except (AttributeError, OSError):
            src.seek(copied)
            shutil.copyfileobj(src, target)
    os.unlink(part)


def _pass1(pool, job: Job, tmp: Path) -> None:
    progress = Progress(job.progress, sum(i.bytes for i in job.inputs), label=job.phase)
    singles = [c.name for c in job.schema.categorical if not c.multi_hot]
    multis = [c.name for c in job.schema.categorical if c.multi_hot]
    names = {"labels": "labels.u8", "dense": job.dense_file}
    for c in job.schema.categorical:
        names["keys_" + c.name] = f"keys_{c.name}.{job.keys}"
        if c.multi_hot:
            names["len_" + c.name] = f"len_{c.name}.i32"
    parts = tmp / "parts"
    parts.mkdir()
    first = 0  # part number of the source's first task
    try:
        with open_for_writing([tmp / name for name in names.values()]) as opened:
            files = dict(zip(names, opened))
            for source in job.inputs:
                try:
                    work = _numbered(job.tasks(source), first, str(parts), singles, multis)
                    for index, (chunk, nbytes) in enumerate(pool.imap(read_to_parts, work), start=first):
                        for suffix, target in files.items():  # imap hands the results back in input order
                            _append(target, f"{parts}/{index:07d}.{suffix}")
                        first = index + 1
                        source.add(chunk)
                        job.counters.add(chunk.counters)
                        progress.update(nbytes or source.bytes_per_task, chunk.rows)
                except ChunkError as exc:
                    raise DataError(f"{source.where(exc.row)}: {exc.reason}" + (
                        " (--skip-bad-rows skips and counts such rows)" if exc.row >= 0 else "")) from None
                except (OSError, EOFError, gzip.BadGzipFile) as exc:
                    if is_write_failure(exc, tmp):
                        raise  # writing the output failed, not reading the input: run() says so
                    raise source.read_failed(exc) from None
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    progress.update(0, 0, force=True)
    progress.finish()


def _numbered(tasks: Iterable, first: int, *rest) -> Iterable[tuple]:
    """The items of `read_to_parts`: each task with its part number, counted from `first` as the tasks are made (in
    the pool's feeder thread, while the loop over the results moves on)."""
    for i, task in enumerate(tasks):
        yield (first + i, task, *rest)


def _pass2(pool, job: Job, tmp: Path, rows: int, train_rows: int) -> tuple[list[dict], object, dict[str, str]]:
    """(each table's entry in meta.json, the dense pass's result, {file: sha256} of the files digested so far)."""
    allocate(tmp / "sparse.i32", 4 * rows * sum(not c.multi_hot and not c.raw for c in job.schema.categorical))
    dense = job.dense(pool, tmp, rows, train_rows)
    done = {t["name"]: t for t in pool.imap_unordered(job.number, job.id_tasks(tmp, rows, train_rows))}
    tables = [done[c.name] for c in job.schema.categorical]  # beside the dense columns
    dense = dense.get() if dense is not None else None
    digests = dict(dense[-1]) if dense is not None else {}
    for t in tables:
        digests.update(t.pop("sha256", {}))
    for p in [tmp / "dense.raw.f32", *tmp.glob("keys_*"), *tmp.glob("len_*.i32")]:
        p.unlink(missing_ok=True)
    return tables, dense, digests
