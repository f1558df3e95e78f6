"""One way in (`disttrain.serving.open.open_model`): a sharded checkpoint (local or on a store), its export and its
int8 output open to the same config, step, tables and predictions; every kind of bad input is one line; `infer`
hashes the checkpoint once and builds the model once, in one process and as the `--nproc` driver."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from disttrain.collectives import SingleProcess
from disttrain.engine.checkpoint import MANIFEST
from disttrain.engine.checkpoint.layout import EXPORT_FORMAT
from disttrain.engine.evaluation import held_out_metrics
from disttrain.errors import DisttrainError
from disttrain.planning.build import open_data
from disttrain.serving.open import CHECKPOINT, EXPORT, INT8, KINDS, open_model
from tests.launch_helpers import cli


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """(the session's DLRM run, its export file, its int8 output directory, the quantize report)."""
    dlrm = trained("dlrm")
    root = tmp_path_factory.mktemp("open_model")
    exported, int8 = root / "model.pt", root / "int8"
    result = cli("export", str(dlrm.ck), "--out", str(exported))
    assert result.returncode == 0, result.stderr[-3000:]
    result = cli("quantize", "--checkpoint", str(dlrm.ck), "--out", str(int8), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return dlrm, exported, int8, json.loads(result.stdout)


def _tables(opened) -> list[tuple]:
    return [(t.name, t.num_rows, t.dim, t.bag_mode) for t in opened.tables]


def _batches(opened, split_index: int = 1):
    source = open_data(opened.config, opened.tables, comm=SingleProcess(), rank=0)
    split = source.held_out[split_index]
    return [source.batch(i, split=split) for i in range(source.eval_batches(split, opened.config.data.eval_batches))]


def _auc(model, batches) -> float:
    with torch.no_grad():
        return held_out_metrics(lambda batch: model(batch.dense, batch.sparse), batches)["auc"]


def test_a_checkpoint_its_export_and_its_int8_output_open_alike(served):
    dlrm, exported, int8, report = served
    checkpoint, export, quantized = (open_model(path) for path in (dlrm.ck, exported, int8))
    assert (checkpoint.kind, export.kind, quantized.kind) == (CHECKPOINT, EXPORT, INT8)
    assert checkpoint.path == str(dlrm.step_dir) and export.path == str(exported)
    assert quantized.path == str(int8 / "model_int8.pt")
    assert checkpoint.step == export.step == quantized.step == dlrm.run["steps"]
    assert checkpoint.config.model == export.config.model == quantized.config.model
    assert checkpoint.config.data == export.config.data == quantized.config.data
    assert _tables(checkpoint) == _tables(export) == _tables(quantized)
    assert not checkpoint.model.training and not export.model.training and not quantized.model.training
    # The same model: every tensor, every prediction; and the run's own evaluation.
    a, b = checkpoint.model.state_dict(), export.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    batches = _batches(checkpoint)
    with torch.no_grad():
        assert all(torch.equal(checkpoint.model(x.dense, x.sparse), export.model(x.dense, x.sparse)) for x in batches)
    assert abs(_auc(checkpoint.model, batches) - dlrm.run["eval_auc"]) < 1e-6
    # The int8 model reproduces what quantize measured on the final split.
    assert _auc(quantized.model, batches) == pytest.approx(report["final"]["int8"]["auc"], abs=1e-9)
    assert report["final"]["fp32"]["auc"] == pytest.approx(_auc(export.model, batches), abs=1e-9)


def test_the_verbs_own_entry_points_are_the_opener(served):
    """`plain_model`, `unsharded_state`, `load_exported` and `load_quantized` (the Python API and the tests'
    entry points) hand back what `open_model` does."""
    from disttrain.export import load_exported, plain_model, unsharded_state
    from disttrain.serving.int8 import load_quantized

    dlrm, exported, int8, _ = served
    opened = open_model(dlrm.ck)
    plain, cfg, step = plain_model(dlrm.ck)
    assert step == opened.step and cfg.model == opened.config.model
    _, state, _ = unsharded_state(dlrm.step_dir)
    reloaded, _ = load_exported(exported)
    for other in (plain.state_dict(), state, reloaded.state_dict()):
        assert other.keys() == opened.model.state_dict().keys()
        assert all(torch.equal(other[k], v) for k, v in opened.model.state_dict().items())
    model, stored, step, file = load_quantized(int8)
    assert stored == open_model(int8).stored and step == opened.step and file == int8 / "model_int8.pt"


def test_a_checkpoint_on_a_store_opens_like_its_local_copy(served, tmp_path):
    """A checkpoint named by URL (fsspec's in-process memory store standing in for S3): the same model, its URL
    as the path, and no local copy left behind."""
    import tempfile
    from pathlib import Path

    import fsspec

    dlrm = served[0]
    fs = fsspec.filesystem("memory")
    for file in dlrm.step_dir.rglob("*"):
        if file.is_file():
            fs.pipe(f"/open-model/ck/{file.relative_to(dlrm.ck)}", file.read_bytes())
    copies = set(Path(tempfile.gettempdir()).glob("disttrain-checkpoints-*/*"))
    try:
        remote = open_model("memory://open-model/ck")
    finally:
        fs.rm("/open-model", recursive=True)
    assert remote.path == f"memory://open-model/ck/{dlrm.step_dir.name}" and remote.step == dlrm.run["steps"]
    local = open_model(dlrm.step_dir).model.state_dict()
    assert all(torch.equal(t, local[k]) for k, t in remote.model.state_dict().items())
    assert set(Path(tempfile.gettempdir()).glob("disttrain-checkpoints-*/*")) == copies


def _one_line(call) -> str:
    with pytest.raises(DisttrainError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message, message
    return message


def test_bad_input_is_one_line(served, tmp_path):
    dlrm, exported, int8, _ = served
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    torch.save({"format": EXPORT_FORMAT, "config": 3}, tmp_path / "damaged.pt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "model_int8.pt").write_text("not an archive")
    cases = [
        # nothing a model is: every kind is named
        (lambda: open_model(tmp_path / "empty"), f"{tmp_path / 'empty'}: a directory, no model; expected a sharded "
                                                 "checkpoint"),
        (lambda: open_model(tmp_path / "nope"), "nope: not found, no model; expected"),
        (lambda: open_model(tmp_path / "notes.txt"), "a `disttrain export` file or a `disttrain quantize` output"),
        # a kind the caller does not read
        (lambda: open_model(exported, kinds=(CHECKPOINT,), key="--checkpoint"),
         f"--checkpoint: {exported}: an exported model file (`disttrain export`), not a sharded checkpoint"),
        (lambda: open_model(int8, kinds=(CHECKPOINT,)), "holds an int8 model (disttrain quantize), not a sharded"),
        (lambda: open_model(dlrm.ck, kinds=(INT8,)), "expected a `disttrain quantize --out DIR` directory"),
        (lambda: open_model(dlrm.ck, kinds=(EXPORT,)), "not a readable disttrain export (IsADirectoryError"),
        # files that are not what they say
        (lambda: open_model(tmp_path / "damaged.pt", kinds=(EXPORT,)), "whose config, state_dict, step is missing"),
        (lambda: open_model(tmp_path / "other.pt", kinds=(EXPORT,)), f"not a disttrain export (expected format "
                                                                      f"{EXPORT_FORMAT})"),
        (lambda: open_model(tmp_path / "q"), "not a readable disttrain int8 model"),
        # a model that is not the one saved
        (lambda: open_model(exported, ["model.flavor=kaggle"]), f"{exported}: its tensors do not fit model dlrm/kaggle"),
        (lambda: open_model(int8, ["model.flavor=kaggle"]), "the file does not fit model dlrm/kaggle"),
        (lambda: open_model(dlrm.ck, ["model.name=wide_deep"]), "does not fit this model: model dlrm (this run: wide_deep)"),
    ]
    for call, needle in cases:
        message = _one_line(call)
        assert needle in message, (needle, message)
    # On the command line: exit 2, one line.
    for args, needle in ((["infer", "--checkpoint", tmp_path / "empty", "--mode", "accuracy"], "no complete checkpoint"),
                         (["export", int8, "--out", tmp_path / "x.pt"], "holds an int8 model"),
                         (["quantize", "--checkpoint", exported, "--out", tmp_path / "x"], "an exported model file")):
        result = cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


def _counted(target: str):
    import importlib

    module, name = target.rsplit(".", 1)
    return mock.patch(target, side_effect=getattr(importlib.import_module(module), name))


def test_infer_hashes_the_checkpoint_once_and_builds_the_model_once(served):
    """Each file of the manifest is hashed once (sha256) and the model built once, by `infer` in one process and
    by the `--nproc` driver (its launch pre-flight hashes; the workers, started here by nobody, would check sizes
    only)."""
    dlrm = served[0]
    files = len(json.loads((dlrm.step_dir / MANIFEST).read_text())["files"])
    with _counted("disttrain.engine.checkpoint.verify.sha256_file") as hashed, \
            _counted("disttrain.planning.build.check_model") as built:
        result = cli("infer", "--checkpoint", str(dlrm.ck), "--mode", "accuracy", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["auc"] == pytest.approx(dlrm.run["eval_auc"], abs=1e-6)
    assert hashed.call_count == files and len({c.args[0] for c in hashed.call_args_list}) == files
    assert built.call_count == 1
    with _counted("disttrain.engine.checkpoint.verify.sha256_file") as hashed, \
            _counted("disttrain.planning.build.check_model") as built, \
            mock.patch("disttrain.launch.launch", return_value=0) as started:
        result = cli("infer", "--checkpoint", str(dlrm.ck), "--mode", "accuracy", "--nproc", "2")
    assert started.call_count == 1 and "sharded inference over 2 workers failed" in result.stderr, result.stderr
    assert hashed.call_count == files and built.call_count == 1
    # Opened for its config only: nothing hashed, nothing built.
    with _counted("disttrain.engine.checkpoint.verify.sha256_file") as hashed, \
            _counted("disttrain.planning.build.check_model") as built:
        opened = open_model(dlrm.ck, load=False)
    assert opened.model is None and opened.step == dlrm.run["steps"]
    assert hashed.call_count == 0 and built.call_count == 0


def test_every_kind_is_listed():
    assert KINDS == (CHECKPOINT, EXPORT, INT8)
