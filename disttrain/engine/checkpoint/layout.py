"""Sharded checkpoints on disk: names, the commit marker, and finding the newest complete one.

Layout of one checkpoint (`<checkpoint.dir>/step_00000120/`):

    rank_00000/ ...        torch.distributed.checkpoint files written by rank 0 (its shards, the dense part)
    rank_00001/ ...        rank 1's shards (each rank writes only what it holds)
    meta.json              step, model, tables, plan, where every shard lives, optimizer, history, config
    manifest.json          size and sha256 of every file above: the commit marker, written last

A checkpoint is assembled in a hidden `.tmp-...` directory and renamed into place once whole; readers never
list a hidden directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from disttrain.fileio import sha256_file

if TYPE_CHECKING:
    import torch

FORMAT = "disttrain-checkpoint-v1"
MANIFEST = "manifest.json"
META = "meta.json"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def rank_dir(rank: int) -> str:
    return f"rank_{rank:05d}"


def shard_key(table: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
    return f"tables/{table}/r{rows[0]}-{rows[1]}/c{cols[0]}-{cols[1]}"


def file_table(root: Path, sub: Path) -> dict[str, list]:
    return {
        str(p.relative_to(root)): [p.stat().st_size, sha256_file(p)]
        for p in sorted(sub.rglob("*")) if p.is_file()
    }


def write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dense_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("embeddings.")]


def committed_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (partial `.tmp-` directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)
