"""Checkpoints on object storage (`checkpoint.dir=s3://bucket/run`, `train.resume=s3://...`).

Object stores have no atomic rename, so the commit is the order of writes: every rank uploads its own files
(written locally with torch.distributed.checkpoint and hashed there, then put with fsspec), then rank 0 uploads
`meta.json` and, last, `manifest.json`. A checkpoint is listed only when its manifest exists; a save that fails
or is killed leaves files without a manifest, which no reader lists and the next save deletes. Saving a step
that already exists first deletes its manifest, so the old files are never read as the new ones.

Reading makes a local copy: the manifest and meta.json at once, then only the files a rank reads (its shards'
writers), each checked against the manifest's size and sha256 like any local checkpoint. The copy is removed once
the checkpoint is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from disttrain.engine.checkpoint.layout import MANIFEST, META, STEP_PREFIX, is_export, not_a_checkpoint
from disttrain.errors import ConfigError, DataError
from disttrain.storage import filesystem, is_remote, join, remote_call

MARKER = ".remote"  # in a local copy: the URL it mirrors


def _fs(url: str, key: str):
    return filesystem(url, key=key)


def committed(root_url: str, key: str = "checkpoint.dir") -> list[str]:
    """URLs of the complete checkpoints under `root_url`, oldest first."""
    fs, root = _fs(root_url, key)
    found = remote_call(root_url, key, fs.glob, join(root, f"{STEP_PREFIX}*", MANIFEST))
    steps = sorted({p.rsplit("/", 2)[-2] for p in found})
    return [join(root_url, s) for s in steps]


def all_steps(root_url: str, key: str = "checkpoint.dir") -> list[str]:
    """Every step prefix under `root_url`, complete or not."""
    fs, root = _fs(root_url, key)
    try:
        entries = remote_call(root_url, key, fs.ls, root, detail=False)
    except DataError as exc:
        if "not found" in str(exc):
            return []
        raise
    return sorted(p.rsplit("/", 1)[-1] for p in entries if p.rsplit("/", 1)[-1].startswith(STEP_PREFIX))


def find(spec: str, root: str, *, key: str, run_id: str | None) -> str | None:
    """The URL of the checkpoint `spec` means (see layout.find_checkpoint)."""
    if spec == "auto" or run_id is not None:
        found = committed(root)
        if run_id is not None:
            found = [u for u in found if run_id in _meta(u, key).get("run_ids", [])]
        return found[-1] if found else None
    fs, path = _fs(spec, key)
    if remote_call(spec, key, fs.exists, join(path, MANIFEST)):
        return spec
    found = committed(spec, key)
    if not found and remote_call(spec, key, fs.isfile, path):
        with remote_call(spec, key, fs.open, path, "rb") as file:
            raise ConfigError(not_a_checkpoint(key, spec, exported=is_export(file)))
    if not found:
        raise ConfigError(f"{key}: {spec}: no complete checkpoint there (expected a {STEP_PREFIX}N prefix holding "
                          f"{MANIFEST}, or one itself)")
    return found[-1]


def _meta(url: str, key: str) -> dict:
    fs, path = _fs(url, key)
    try:
        return json.loads(fs.cat_file(join(path, META)))
    except Exception:  # noqa: BLE001 - a checkpoint without readable meta is not this run's
        return {}


def local_copy(url: str, key: str = "train.resume") -> Path:
    """A local directory mirroring the checkpoint at `url`: its manifest and meta.json now, the rest on demand."""
    fs, path = _fs(url, key)
    cache = Path(tempfile.gettempdir()) / f"disttrain-checkpoints-{os.getuid()}"
    cache.mkdir(exist_ok=True)
    local = cache / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{os.getpid()}-{path.rsplit('/', 1)[-1]}"
    if local.exists():
        shutil.rmtree(local)
    local.mkdir()
    for name in (MANIFEST, META):
        remote_call(url, key, fs.get_file, join(path, name), str(local / name))
    (local / MARKER).write_text(url)
    return local


def source_of(path) -> str:
    """The URL a local copy mirrors, else the path itself."""
    marker = Path(path) / MARKER
    return marker.read_text() if marker.is_file() else str(path)


def is_copy(path) -> bool:
    return (Path(path) / MARKER).is_file()


def fetch(path: Path, files: list[str]) -> None:
    """Download the files of a local copy it does not hold yet."""
    url = (path / MARKER).read_text()
    fs, root = _fs(url, "train.resume")
    wanted = [f for f in files if not (path / f).exists()]
    for rel in wanted:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
    if wanted:
        remote_call(url, "train.resume", fs.get, [join(root, f) for f in wanted], [str(path / f) for f in wanted])


def release(path) -> None:
    """Remove a local copy (nothing to do for a local checkpoint)."""
    if is_copy(path):
        shutil.rmtree(path, ignore_errors=True)


def open_checkpoint(spec) -> Path:
    """A local path for a checkpoint named by a local path or a URL."""
    return local_copy(str(spec)) if is_remote(spec) else Path(spec)
