"""Sharded checkpoints on disk: names, the commit marker, finding the newest complete one, and telling a
`disttrain export` file from a checkpoint.

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
import zipfile
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
EXPORT_FORMAT = "disttrain-export-v1"  # `disttrain export`'s one-file model (disttrain.serving.export)


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


def is_export(file) -> bool:
    """Is `file` (a path or an open binary file) a `disttrain export` model file? Told by the format tag in the
    torch.save archive's pickle, which is read as bytes, never unpickled."""
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("data.pkl") and i.file_size < 64 << 20]
            return any(EXPORT_FORMAT.encode() in archive.read(i) for i in pickles)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def not_a_checkpoint(key: str, spec: str, *, exported: bool) -> str:
    """The line for a file named where a checkpoint is expected (an export above all: no verb reads one)."""
    if exported:
        return (f"{key}: {spec}: an exported model file (`disttrain export`), not a sharded checkpoint; expected the "
                f"checkpoint it was exported from (a {STEP_PREFIX}N directory, or the directory holding them); "
                "an export is read in Python with disttrain.api.load_exported(path)")
    return (f"{key}: {spec}: a file, not a checkpoint; expected a {STEP_PREFIX}N directory holding {MANIFEST}, "
            "or the directory holding them")


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


def dense_buffers(model) -> list[tuple[str, torch.Tensor]]:
    """The persistent buffers outside the tables (a BatchNorm's running statistics): saved, loaded and exported
    with the dense parameters (rank 0's)."""
    out = []
    for prefix, module in model.named_modules():
        if prefix == "embeddings" or prefix.startswith("embeddings."):
            continue
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out.append((f"{prefix}.{name}" if prefix else name, buf))
    return out


# The dtypes a saved buffer may have (meta.json names them; anything else is refused as a damaged file).
BUFFER_DTYPES = ("float64", "float32", "bfloat16", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


def committed_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (partial `.tmp-` directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)
