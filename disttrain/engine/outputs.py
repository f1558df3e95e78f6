"""Where a run writes `run.output_dir`'s files (config.yaml, summary.json, TensorBoard events, traces).

A local `run.output_dir` is written directly, as always. On object storage (`s3://...`) the run writes to a local
staging directory (the same path for the launcher and the workers of a machine) and rank 0 publishes it: after
every checkpoint and at the end of the run, so a run killed between checkpoints loses no more of its outputs than
of its training. `published_summary` reads the result back wherever it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from disttrain.storage import filesystem, is_remote, join, local, remote_call


def _staging(url: str) -> Path:
    return Path(tempfile.gettempdir()) / f"disttrain-runs-{os.getuid()}" / hashlib.sha1(url.encode()).hexdigest()[:16]


def run_dir(cfg) -> Path:
    """The local directory the run's files are written to (created)."""
    url = cfg.run.output_dir
    path = _staging(url) if is_remote(url) else Path(local(url)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop_staging(cfg) -> None:
    """After a job that succeeded (its last publish done): remove the local staging of a remote run.output_dir."""
    if is_remote(cfg.run.output_dir):
        shutil.rmtree(_staging(cfg.run.output_dir), ignore_errors=True)


def new_run_dir(cfg) -> Path:
    """`run_dir` at the start of a launch: an earlier run's staged files of the same URL are dropped, so they are
    never published as this run's (restarted workers keep what this run staged)."""
    drop_staging(cfg)
    return run_dir(cfg)


def publish(cfg) -> None:
    """Upload the staging directory's files to a remote `run.output_dir` (nothing to do for a local one)."""
    url = cfg.run.output_dir
    if not is_remote(url):
        return
    fs, root = filesystem(url, key="run.output_dir")
    staging = run_dir(cfg)
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    if files:
        remote_call(url, "run.output_dir", fs.put, [str(staging / f) for f in files], [join(root, f) for f in files])


def published_summary(cfg) -> dict | None:
    """summary.json of a finished run (None where this machine cannot see it: another node's rank 0)."""
    url = cfg.run.output_dir
    if not is_remote(url):
        path = Path(local(url)).expanduser() / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None
    fs, root = filesystem(url, key="run.output_dir")
    try:
        return json.loads(fs.cat_file(join(root, "summary.json")))
    except FileNotFoundError:
        return None
