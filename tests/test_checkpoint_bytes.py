"""A checkpoint is tensors only (issue 31): DCP stores anything else as a "byte entry" and reads it back with
`torch.load(weights_only=False)`, which runs code. A byte entry crafted into a rank's `.metadata` (its bytes, a
pickle, appended to the `.distcp` file, both resealed in the manifest) is refused in one line naming the file and
the entry by every path that loads a checkpoint: resume, a resume that reshards, export, infer, quantize and
export-onnx; and DCP's load planner refuses byte entries even where the metadata check is bypassed."""

from __future__ import annotations

import io
import pickle
import shutil

import pytest
import torch

from tests.conftest import TRAINED
from tests.launch_helpers import cli, disttrain
from tests.test_checkpoint_safety import MARKER, _Payload, _reseal

RANK = "rank_00000"  # rank 0's directory: its dense part is read by every path, on every rank


def _byte_entry(step_dir, marker) -> str:
    """Turn rank 0's first dense tensor entry into a byte entry whose bytes are `torch.save` of a payload that
    creates `marker` when unpickled; reseal the manifest. Returns the entry's name."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    from disttrain.engine.checkpoint.safe_dcp import read_dcp_metadata

    rank = step_dir / RANK
    metadata = read_dcp_metadata(rank / ".metadata")
    entry = next(key for key in metadata.state_dict_metadata if key.startswith("dense/"))
    data = next(rank.glob("*.distcp"))
    payload = io.BytesIO()
    torch.save(_Payload(str(marker)), payload)
    offset = data.stat().st_size
    with data.open("ab") as file:
        file.write(payload.getvalue())
    metadata.state_dict_metadata[entry] = BytesStorageMetadata()
    for index in [i for i in metadata.storage_data if i.fqn == entry]:
        del metadata.storage_data[index]
    metadata.storage_data[MetadataIndex(entry)] = _StorageInfo(data.name, offset, len(payload.getvalue()))
    (rank / ".metadata").write_bytes(pickle.dumps(metadata))
    _reseal(step_dir, f"{RANK}/.metadata")
    _reseal(step_dir, f"{RANK}/{data.name}")
    return entry


@pytest.fixture
def hostile(trained, tmp_path):
    """(a copy of the session's 2-rank DLRM checkpoint with a byte entry, the entry, the payload's marker file)."""
    source = trained("dlrm").step_dir
    target = tmp_path / "ck" / source.name
    shutil.copytree(source, target)
    marker = tmp_path / MARKER
    return target, _byte_entry(target, marker), marker


def _refusal(step_dir, entry: str) -> str:
    return f"{step_dir / RANK / '.metadata'}: entry {entry!r} is a byte entry; expected tensors only"


def _one_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-1000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("verb", ["export", "infer", "quantize", "export-onnx"])
def test_serving_verbs_refuse_a_byte_entry_without_running_it(hostile, tmp_path, verb):
    step_dir, entry, marker = hostile
    out = tmp_path / "out"
    argv = {"export": ["export", step_dir, "--out", out],
            "infer": ["infer", "--checkpoint", step_dir, "--mode", "accuracy"],
            "quantize": ["quantize", "--checkpoint", step_dir, "--out", out, "quant.calibration_batches=1"],
            "export-onnx": ["export-onnx", step_dir, "--out", out]}[verb]
    line = _one_line(cli(*argv))
    assert _refusal(step_dir, entry) in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(("how", "args"), [
    ("resume", ["launch", "launch.nproc_per_node=2", "sharding.strategy=row_wise"]),  # the world and plan that wrote it
    ("reshard", ["train"]),  # one process reads the 2-rank checkpoint
])
def test_a_resume_refuses_a_byte_entry_without_running_it(hostile, tmp_path, how, args):
    step_dir, entry, marker = hostile
    same = [arg for arg in TRAINED["dlrm"] if not arg.startswith("train.steps=")]
    result = disttrain(*args, "model.name=dlrm", *same, "train.steps=62", f"train.resume={step_dir}",
                       "run.progress=false", "run.tensorboard=false", f"run.output_dir={tmp_path}/run")
    assert result.returncode != 0, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "byte entry" in line]
    assert errors and all(_refusal(step_dir, entry) in line for line in errors), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "CheckpointException" not in result.stderr
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # DCP in one process
def test_the_load_planner_refuses_byte_entries_where_the_metadata_check_is_bypassed(hostile):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from disttrain.engine.checkpoint.safe_dcp import TensorsOnlyLoadPlanner, read_dcp_metadata, refusal_in
    from disttrain.errors import DataError

    step_dir, entry, marker = hostile
    with pytest.raises(DataError) as refused:  # the metadata, read as data, names the entry
        read_dcp_metadata(step_dir / RANK / ".metadata")
    assert str(refused.value) == _refusal(step_dir, entry)
    # DCP's own reader (torch's pickle.load of the metadata; the file is plain records, so that is safe here).
    with pytest.raises(BaseException) as caught:  # noqa: B017 - DCP wraps errors in a BaseException
        dcp.load({entry: torch.empty(0)}, storage_reader=FileSystemReader(str(step_dir / RANK)),
                 planner=TensorsOnlyLoadPlanner(step_dir / RANK), no_dist=True)
    assert str(refusal_in(caught.value)) == _refusal(step_dir, entry)
    assert not marker.exists()
    # The payload is live: DCP's default planner runs it (the hole this closes).
    dcp.load({entry: torch.empty(0)}, storage_reader=FileSystemReader(str(step_dir / RANK)),
             planner=DefaultLoadPlanner(), no_dist=True)
    assert marker.exists()

