"""A checkpoint is data: a hostile `.metadata` resealed in the manifest is refused without running, manifest paths
stay inside the checkpoint (no `..`, no absolute path, no symlink), and a forged meta.json is refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest

from tests.launch_helpers import cli, disttrain

MARKER = "disttrain-pwned"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _reseal(step_dir, rel: str) -> None:
    """Put `rel`'s current size and sha256 into the manifest, as whoever can write the directory can."""
    manifest = json.loads((step_dir / "manifest.json").read_text())
    data = (step_dir / rel).read_bytes()
    manifest["files"][rel] = [len(data), hashlib.sha256(data).hexdigest()]
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the session's 2-rank DLRM checkpoint, to damage."""
    source = trained("dlrm").step_dir
    target = tmp_path / "ck" / source.name
    shutil.copytree(source, target)
    return target


def _one_line(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_hostile_metadata_pickle_is_refused_without_running(copy, tmp_path):
    marker = tmp_path / MARKER
    (copy / "rank_00001" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    _reseal(copy, "rank_00001/.metadata")
    line = _one_line(cli("export", str(copy), "--out", str(tmp_path / "model.pt")))
    assert "rank_00001/.metadata: not a plain torch.distributed.checkpoint metadata file" in line
    assert "posix.system" in line and "nothing in it was run" in line
    assert not marker.exists() and not (tmp_path / "model.pt").exists()
    # The worker's path (a resume) refuses it the same way.
    result = disttrain("train", "model.flavor=debug", "train.steps=62", f"train.resume={copy}", "run.progress=false",
                       f"run.output_dir={tmp_path}/run")
    assert result.returncode == 2 and "nothing in it was run" in result.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_metadata_that_points_outside_its_rank_directory_is_refused(copy, tmp_path):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    from disttrain.engine.checkpoint.safe_dcp import read_dcp_metadata

    metadata = read_dcp_metadata(copy / "rank_00000" / ".metadata")
    first = next(iter(metadata.storage_data))
    metadata.storage_data[first] = _StorageInfo("../../../../etc/passwd", 0, 100)
    (copy / "rank_00000" / ".metadata").write_bytes(pickle.dumps(metadata))
    _reseal(copy, "rank_00000/.metadata")
    line = _one_line(cli("export", str(copy), "--out", str(tmp_path / "model.pt")))
    assert "names '../../../../etc/passwd'; expected one of this rank directory's files in the manifest" in line


@pytest.mark.parametrize("rel", ["../../../../etc/passwd", "/etc/shadow", "rank_00000/../../outside"])
def test_manifest_paths_stay_inside_the_checkpoint(copy, tmp_path, rel):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][rel] = [1, "0" * 64]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    line = _one_line(cli("export", str(copy), "--out", str(tmp_path / "model.pt")))
    assert f"the manifest names {rel!r}; expected a path inside the checkpoint" in line
    assert "bytes" not in line  # nothing about the named file (its size) is revealed


def test_a_symlink_in_the_checkpoint_is_refused(copy, tmp_path):
    outside = tmp_path / "outside.distcp"
    victim = next((copy / "rank_00001").glob("*.distcp"))
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    line = _one_line(cli("export", str(copy), "--out", str(tmp_path / "model.pt")))
    assert f"{victim.relative_to(copy)} passes through a symbolic link" in line


@pytest.mark.parametrize(("field", "value", "message"), [
    ("step", 10**18, "step 1000000000000000000, expected an integer in [0, 1000000000000]"),
    ("world_size", 0, "world_size 0, expected a positive integer"),
    ("shards", [{"table": "t0", "rows": [0, 10**9], "cols": [0, 8], "rank": 0, "key": "x"}],
     "does not lie inside its table and world"),
])
def test_a_forged_meta_json_is_refused(copy, tmp_path, field, value, message):
    meta = json.loads((copy / "meta.json").read_text())
    meta[field] = value
    (copy / "meta.json").write_text(json.dumps(meta))
    _reseal(copy, "meta.json")
    line = _one_line(cli("export", str(copy), "--out", str(tmp_path / "model.pt")))
    assert message in line
