"""Pass 2 of `disttrain data prepare` for the dense columns: raw values (NaN where missing) -> dense.f32.

Statistics (mean, standard deviation, minimum, maximum) are taken over the present values of the training split
only, never over a stand-in for the missing ones, and travel in meta.json so that `--vocab-from` applies the same
transform to a new day. Each column's missing entries are then stored as its `fill`, in the transformed units the
model sees: `mean` (the mean of the present training values after the transform: 0 for standardize), `zero`, or a
number. A column with `missing_indicator: true` adds a 0/1 feature (1: missing) after all the dense columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from disttrain.prepare.output import sha256_array

BLOCK_ROWS = 1 << 20


def dense_task(tmp: str, rows: int, train_rows: int, features: list[dict],
               given: list[dict] | None) -> tuple[list[dict], list[int], dict]:
    """Worker: the statistics (unless given: `--vocab-from`), then dense.f32 transformed and filled;
    (statistics per column, missing entries per column, {file: sha256}). Statistics of a directory written before
    missing values had a policy hold no `fill`: its missing entries were the transform of 0, and stay so."""
    path = Path(tmp) / "dense.raw.f32"
    raw = (np.memmap(path, dtype="<f4", mode="r", shape=(rows, len(features))) if rows and features
           else np.zeros((rows, len(features)), dtype="<f4"))  # an empty file cannot be memory-mapped
    stats = ([{**s, "fill": stored_fill(f, s)} for f, s in zip(features, given)] if given
             else dense_stats(raw, train_rows, features))
    out, missing = transform_dense(raw, features, stats)
    array = np.ascontiguousarray(out)
    array.tofile(Path(tmp) / "dense.f32")
    return stats, missing, {"dense.f32": sha256_array(array)}


def dense_stats(raw: np.ndarray, train_rows: int, features: list[dict]) -> list[dict]:
    """Per dense column, over the training split's present values: mean, std, min, max (float64), how many were
    present, and `fill`, the value a missing entry is stored as."""
    out = []
    for j, feature in enumerate(features):
        column = np.asarray(raw[:train_rows, j], dtype=np.float64)
        present = column[~np.isnan(column)]
        if present.size == 0:
            stats = {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "present": 0}
        else:
            stats = {"mean": float(present.mean()), "std": float(present.std()), "min": float(present.min()),
                     "max": float(present.max()), "present": int(present.size)}
        stats["fill"] = fill_value(feature, stats, present)
        out.append(stats)
    return out


def fill_value(feature: dict, stats: dict, present: np.ndarray) -> float:
    """The stored value of a missing entry: in the transformed units."""
    fill = feature["fill"]
    if fill == "zero":
        return 0.0
    if fill != "mean":
        return float(fill)
    if feature["transform"] == "standardize" or present.size == 0:
        return 0.0  # the mean of standardized values is 0 by construction
    return float(transform_column(present, feature["transform"], stats).mean())


def transform_column(column: np.ndarray, kind: str, stats: dict) -> np.ndarray:
    """One column's transform (NaN stays NaN)."""
    if kind == "log1p":
        return np.log1p(np.maximum(column, 0.0))
    if kind == "standardize":
        return (column - stats["mean"]) / (stats["std"] if stats["std"] > 0 else 1.0)
    if kind == "minmax":
        span = stats["max"] - stats["min"]
        return (column - stats["min"]) / span if span > 0 else np.where(np.isnan(column), np.nan, 0.0)
    return column


def stored_fill(feature: dict, stats: dict) -> float:
    """`fill` of the statistics; statistics written before missing values had a policy (a `--vocab-from` of an
    older directory) stored a missing entry as the transform of 0, and a new day keeps doing so."""
    if "fill" in stats:
        return float(stats["fill"])
    return float(transform_column(np.zeros(1), feature["transform"], stats)[0])


def transform_dense(raw: np.ndarray, features: list[dict], stats: list[dict]) -> tuple[np.ndarray, list[int]]:
    """(float32 [rows, D + indicators] after each column's transform and fill, block by block; missing entries
    per column)."""
    indicators = [j for j, f in enumerate(features) if f["missing_indicator"]]
    out = np.empty((raw.shape[0], len(features) + len(indicators)), dtype=np.float32)
    fills = [float(s["fill"]) for s in stats]
    missing = [0] * len(features)
    for lo in range(0, raw.shape[0], BLOCK_ROWS):
        block = np.asarray(raw[lo: lo + BLOCK_ROWS], dtype=np.float64)
        absent = np.isnan(block)
        for j, (feature, s) in enumerate(zip(features, stats)):
            column = transform_column(block[:, j], feature["transform"], s)
            block[:, j] = np.where(absent[:, j], fills[j], column)
            missing[j] += int(absent[:, j].sum())
        hi = lo + block.shape[0]
        out[lo:hi, : len(features)] = block
        out[lo:hi, len(features):] = absent[:, indicators]
    return out, missing
