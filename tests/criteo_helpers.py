"""Generated raw Criteo files and a plain-Python reading of them (the semantics the fast parser must match)."""

from __future__ import annotations

import gzip
import math
import random
from pathlib import Path

import numpy as np

HEADER = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]


def raw_rows(n: int, seed: int = 0) -> list[list[str]]:
    """Kaggle-like rows: empty fields, negative and large integers, hex ids of a few lengths and both cases,
    Zipf-ish categoricals (so vocabulary thresholds matter)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = "1" if rng.random() < 0.25 else "0"
        dense = []
        for j in range(13):
            r = rng.random()
            if r < 0.2:
                dense.append("")
            elif r < 0.25:
                dense.append(str(-rng.randint(1, 3)))
            else:
                dense.append(str(int(rng.expovariate(1.0) * 10 ** (j % 5))))
        sparse = []
        for j in range(26):
            r = rng.random()
            if r < 0.1:
                sparse.append("")
                continue
            rank = int(rng.paretovariate(1.1)) % (5 + 40 * j)
            value = (rank * 2654435761 + j * 97) % 2**32
            text = f"{value:08x}"
            if j == 3:
                text = text.upper()
            if j == 5:
                text = f"{value % 4096:x}"  # short hex ids
            sparse.append(text)
        rows.append([label, *dense, *sparse])
    return rows


def write_raw(path: Path, rows: list[list[str]], *, delimiter: str = "\t", header: list[str] | None = None,
              gz: bool = False, crlf: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    text = "".join(delimiter.join(r) + end for r in ([header] if header else []) + rows)
    data = text.encode()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def python_parse(rows: list[list[str]]):
    """labels, dense (log1p of max(x, 0)), hashes: the reference's semantics, one field at a time."""
    labels = np.array([int(r[0]) for r in rows], dtype=np.uint8)
    dense = np.array([[math.log1p(max(int(x), 0)) if x else 0.0 for x in r[1:14]] for r in rows], dtype=np.float32)
    hashes = np.array([[int(x, 16) if x else 0 for x in r[14:]] for r in rows], dtype=np.uint32)
    return labels, dense, hashes


def python_vocab_ids(hashes: np.ndarray, train_rows: int, threshold: int) -> np.ndarray:
    """Per table: values seen >= threshold times in the training rows get ids 1.. by descending count (ties by
    value); everything else 0."""
    out = np.zeros(hashes.shape, dtype=np.int64)
    for t in range(hashes.shape[1]):
        counts: dict[int, int] = {}
        for v in hashes[:train_rows, t].tolist():
            counts[v] = counts.get(v, 0) + 1
        kept = sorted((v for v, c in counts.items() if c >= threshold), key=lambda v: (-counts[v], v))
        ids = {v: i + 1 for i, v in enumerate(kept)}
        out[:, t] = [ids.get(v, 0) for v in hashes[:, t].tolist()]
    return out


def read_processed(path: Path):
    import json

    meta = json.loads((path / "meta.json").read_text())
    n = meta["rows"]
    labels = np.fromfile(path / "labels.u8", dtype=np.uint8)
    dense = np.fromfile(path / "dense.f32", dtype=np.float32).reshape(n, meta["num_dense"])
    ids = np.fromfile(path / "sparse.i32", dtype=np.int32).reshape(len(meta["tables"]), n).T
    return meta, labels, dense, ids
