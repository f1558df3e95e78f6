"""Checking a checkpoint before anything is read: every file against the manifest (size, sha256), and the saved
model against this run's model."""

from __future__ import annotations

import json
from pathlib import Path

from disttrain.engine.checkpoint import remote
from disttrain.engine.checkpoint.layout import FORMAT, MANIFEST, META
from disttrain.engine.checkpoint.safe_read import check_manifest_paths, check_meta
from disttrain.errors import DataError
from disttrain.fileio import sha256_file


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"checkpoint {path}: {MANIFEST} is unreadable or corrupted ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"checkpoint {path}: format {found!r}, expected {FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or META not in files or not all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str)
            for v in files.values()):
        raise DataError(f"checkpoint {path}: {MANIFEST} has no valid file table (size and sha256 per file)")
    check_manifest_paths(path, files)
    return manifest


def read_meta(path: Path) -> dict:
    """The checkpoint's meta.json, checked field by field (call after its hash was verified)."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"checkpoint {path}: {META} is unreadable ({exc})") from None
    return check_meta(meta, path)


def _problems(path: Path, manifest: dict, files: list[str], *, digest: bool) -> list[str]:
    out = []
    for rel in files:
        size, expected = manifest["files"][rel]
        file = path / rel
        if not file.is_file():
            out.append(f"checkpoint {path}: {rel} is missing")
        elif file.stat().st_size != size:
            out.append(f"checkpoint {path}: {rel} is truncated or altered ({file.stat().st_size} bytes, expected {size})")
        elif digest and sha256_file(file) != expected:
            out.append(f"checkpoint {path}: {rel} is corrupted (sha256 differs from {MANIFEST})")
    return out


def _files_under(manifest: dict, dirs: set[str] | None) -> list[str]:
    return sorted(rel for rel in manifest["files"] if dirs is None or rel == META or rel.split("/", 1)[0] in dirs)


def verify(path: Path, *, only: set[str] | None = None) -> dict:
    """Check files against the manifest (all, or those under the `only` sub-directories); returns meta."""
    manifest = read_manifest(path)
    if remote.is_copy(path):
        remote.fetch(path, _files_under(manifest, only))
    problems = _problems(path, manifest, _files_under(manifest, only), digest=True)
    if problems:
        raise DataError(problems[0])
    return read_meta(path)


def verify_shared(path: Path, comm, dirs: set[str], *, verified: str = "") -> dict:
    """Collective `verify`: sizes everywhere, and each file hashed by one rank only (files read by any rank,
    shared out round-robin); a checkpoint `disttrain launch` has just hashed (`verified`, its resolved path: the
    job's `verified_checkpoint`) is not hashed again."""
    manifest = read_manifest(path)
    if remote.is_copy(path):  # each rank fetched its own copy: it checks every byte it will read
        files = _files_under(manifest, dirs)
        remote.fetch(path, files)
        problems = sorted(p for found in comm.all_gather_object(_problems(path, manifest, files, digest=True))
                          for p in found)
        if problems:
            raise DataError(problems[0])
        return read_meta(path)
    files = _files_under(manifest, set().union(*comm.all_gather_object(sorted(dirs))))
    hashed = verified != str(path.resolve())
    mine = _problems(path, manifest, files, digest=False)
    if hashed:
        mine += _problems(path, manifest, files[comm.rank :: comm.world_size], digest=True)
    problems = sorted(p for found in comm.all_gather_object(mine) for p in found)
    if problems:
        raise DataError(problems[0])
    return read_meta(path)


def check_fits(meta: dict, path: Path, *, model: str, tables, dense_shapes: dict[str, list[int]]) -> None:
    """The checkpoint's model, tables and dense shapes must be this model's; name every mismatch."""
    problems = []
    if meta["model"] != model:
        problems.append(f"model {meta['model']} (this run: {model})")
    saved = {t["name"]: (t["rows"], t["dim"]) for t in meta["tables"]}
    here = {t.name: (t.num_rows, t.dim) for t in tables}
    for name in sorted(set(saved) | set(here), key=lambda n: (len(n), n)):
        if name not in here:
            problems.append(f"table {name} {saved[name][0]}x{saved[name][1]} is not in this model")
        elif name not in saved:
            problems.append(f"table {name} {here[name][0]}x{here[name][1]} is not in the checkpoint")
        elif saved[name] != here[name]:
            problems.append(f"table {name} is {saved[name][0]}x{saved[name][1]} in the checkpoint, "
                            f"{here[name][0]}x{here[name][1]} here")
    for name in sorted(set(meta["dense"]) | set(dense_shapes)):
        a, b = meta["dense"].get(name), dense_shapes.get(name)
        if a != b:
            problems.append(f"dense {name} is {a} in the checkpoint, {b} here")
    if problems:
        raise DataError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))
