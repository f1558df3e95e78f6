"""The inputs of every preparation (`data prepare`, and `data criteo`, its preset): the record of each input file
(its rows, lines and bad rows as pass 1 reads it), the pieces pass 1 reads a text file in (byte ranges cut at line
ends, or decompressed blocks handed to the workers), and the train/val/test splits (the reference's arithmetic)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from disttrain.errors import DataError

CHUNK_BYTES = 16 << 20  # one task of pass 1
SPLIT_MODES = ("auto", "kaggle", "days", "files", "none")
KAGGLE_DAYS = 7


@dataclass
class Input:
    """One input file, and what pass 1 found in it."""

    path: str
    format: str  # parquet | csv
    bytes: int
    codec: str | None = None
    names: tuple[str, ...] = ()
    delimiter: str = ","
    header_lines: int = 0
    row_groups: int = 0
    rows: int = 0
    lines: int = 0
    chunks: int = 0
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def bytes_per_task(self) -> int:
        return self.bytes // max(self.row_groups, 1) if self.format == "parquet" else 0

    def where(self, row: int) -> str:
        if self.format == "parquet":
            return f"{self.path} row group {self.chunks}" + (f", row {row}" if row >= 0 else "")
        return f"{self.path}:{self.header_lines + self.lines + row + 1}" if row >= 0 else self.path

    def read_failed(self, exc: BaseException) -> DataError:
        where = f"row group {self.chunks}" if self.format == "parquet" else f"line {self.header_lines + self.lines}"
        return DataError(f"{self.path}: read failed after {where} ({exc})")

    def add(self, chunk) -> None:
        """Count a chunk pass 1 read (`pipeline.Chunk`), in input order."""
        for row, reason in chunk.bad:
            if len(self.bad_examples) < 5:
                self.bad_examples.append(f"{self.where(row)}: {reason}")
        self.bad_rows += chunk.bad_count
        self.rows += chunk.rows
        self.lines += chunk.lines
        self.chunks += 1

    def to_json(self) -> dict:
        return {"path": str(Path(self.path).resolve()), "format": self.format, "bytes": self.bytes,
                "codec": self.codec,
                "rows": self.rows, "bad_rows": self.bad_rows, "bad_examples": self.bad_examples,
                **({"row_groups": self.row_groups} if self.format == "parquet" else
                   {"lines": self.lines, "header": bool(self.header_lines), "delimiter": self.delimiter})}


@dataclass(frozen=True)
class Piece:
    """A part of a text file that a worker reads: bytes [start, stop) of the file, or (compressed input) the
    decompressed bytes themselves."""

    path: str
    start: int = 0
    stop: int = 0
    payload: bytes | None = None

    def data(self) -> bytes:
        if self.payload is not None:
            return self.payload
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.stop - self.start)


def text_pieces(source: Input, opener: Callable | None = None) -> Iterator[Piece]:
    """A text file after its header line, in ~CHUNK_BYTES pieces that end at line ends: byte ranges of a plain
    file, or the blocks of the stream `opener(path)` decompresses (read here, in the main process)."""
    if opener is None:
        start = 0
        if source.header_lines:
            with open(source.path, "rb") as f:
                f.readline()
                start = f.tell()
        for a, b in byte_ranges(Path(source.path), start, source.bytes, CHUNK_BYTES):
            yield Piece(source.path, a, b)
        return
    with opener(source.path) as f:
        rest, header = b"", bool(source.header_lines)
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            data = rest + data
            if header:  # drop the header line once it is whole
                if b"\n" not in data:
                    rest = data
                    continue
                data, header = data.split(b"\n", 1)[1], False
            cut = data.rfind(b"\n") + 1
            rest, data = (data, b"") if cut == 0 else (data[cut:], data[:cut])
            if data:
                yield Piece(source.path, payload=data)
        if rest and not header:
            yield Piece(source.path, payload=rest)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def byte_ranges(path: Path, start: int, size: int, chunk: int) -> list[tuple[int, int]]:
    """[start, size) cut into ~chunk-byte ranges that end at line ends."""
    cuts = [start]
    with open(path, "rb") as f:
        pos = start + chunk
        while pos < size:
            f.seek(pos)
            tail = f.read(1 << 20)
            nl = tail.find(b"\n")
            if nl < 0:
                break
            cuts.append(pos + nl + 1)
            pos = cuts[-1] + chunk
    if cuts[-1] < size:
        cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _halves(start: int, stop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The reference's split of the last day: test = the first half (the larger one), validation = the rest."""
    mid = start + (stop - start + 1) // 2
    return (start, mid), (mid, stop)


def compute_splits(mode: str, file_rows: list[int]) -> dict[str, list[int]]:
    total = sum(file_rows)
    offsets = np.cumsum([0, *file_rows]).tolist()
    if mode == "auto":
        mode = "kaggle" if len(file_rows) == 1 else "days"
    if mode == "none":
        return {"train": [0, total], "val": [total, total], "test": [total, total]}
    if mode == "kaggle":  # the reference: 7 equal "days" (the first get the remainder); last day -> test, val
        per_day, _ = divmod(total, KAGGLE_DAYS)
        last_day = total - per_day  # the first days take the remainder, the last day never does
        test, val = _halves(last_day, total)
        return {"train": [0, last_day], "val": list(val), "test": list(test)}
    if mode == "days":
        if len(file_rows) < 2:
            raise DataError("--split days: expected two or more day files (the last one is split into test and "
                            f"validation), got {len(file_rows)}")
        test, val = _halves(offsets[-2], total)
        return {"train": [0, offsets[-2]], "val": list(val), "test": list(test)}
    if mode == "files":
        if len(file_rows) not in (2, 3):
            raise DataError(f"--split files: expected 2 files (train, test) or 3 (train, validation, test), "
                            f"got {len(file_rows)}")
        if len(file_rows) == 2:
            return {"train": [0, offsets[1]], "val": [offsets[1], total], "test": [offsets[1], total]}
        return {"train": [0, offsets[1]], "val": [offsets[1], offsets[2]], "test": [offsets[2], total]}
    if mode.startswith("ratio:"):
        try:
            parts = [float(x) for x in mode[6:].split(",")]
            assert len(parts) == 3 and all(p >= 0 for p in parts) and sum(parts) > 0
        except (ValueError, AssertionError):
            raise DataError(f"--split: got {mode!r}, expected ratio:TRAIN,VAL,TEST (three non-negative numbers)") from None
        a = int(round(total * parts[0] / sum(parts)))
        b = int(round(total * (parts[0] + parts[1]) / sum(parts)))
        return {"train": [0, a], "val": [a, b], "test": [b, total]}
    raise DataError(f"--split: got {mode!r}, expected one of {', '.join(SPLIT_MODES)} or ratio:TRAIN,VAL,TEST")
