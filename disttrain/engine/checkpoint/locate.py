"""Which checkpoint a run resumes from or a command reads: `auto` (the newest complete one in checkpoint.dir), a
checkpoint, or a checkpoint directory (its newest), on the local filesystem or on object storage (`remote`)."""

from __future__ import annotations

import json
from pathlib import Path

from disttrain.engine.checkpoint import remote
from disttrain.engine.checkpoint.layout import (
    MANIFEST,
    META,
    STEP_PREFIX,
    committed_checkpoints,
    is_export,
    not_a_checkpoint,
)
from disttrain.errors import ConfigError
from disttrain.storage import is_remote, local


def find_checkpoint(spec: str, root: str, *, key: str = "train.resume", run_id: str | None = None) -> Path | None:
    """`auto`: the newest complete checkpoint in `root` (None if there is none yet); a path: that checkpoint,
    or the newest inside a checkpoint directory. `run_id`: only checkpoints that run wrote (restarts). On object
    storage: a local copy holding the manifest and meta.json (`remote.fetch` brings the rest)."""
    if spec == "auto" or run_id is not None:
        if not root:
            raise ConfigError(f"{key}: got {spec!r}, but checkpoint.dir is empty; expected checkpoint.dir to be set")
        if is_remote(root):
            found_url = remote.find("auto", root, key=key, run_id=run_id)
            return remote.local_copy(found_url, key) if found_url else None
        root = local(root)
        found = committed_checkpoints(root)
        if run_id is not None:
            found = [p for p in found if run_id in _read_meta_quiet(p).get("run_ids", [])]
        return found[-1] if found else None
    if is_remote(spec):
        return remote.local_copy(remote.find(spec, "", key=key, run_id=None), key)
    path = Path(local(spec))
    if not path.exists():
        raise ConfigError(f"{key}: {spec}: checkpoint directory not found")
    if path.is_file():
        raise ConfigError(not_a_checkpoint(key, spec, exported=is_export(path)))
    if (path / MANIFEST).is_file():
        return path
    found = committed_checkpoints(path)
    if not found:
        raise ConfigError(f"{key}: {spec}: no complete checkpoint there (expected a {STEP_PREFIX}N directory "
                          f"holding {MANIFEST}, or one itself)")
    return found[-1]


def _read_meta_quiet(path: Path) -> dict:
    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}
