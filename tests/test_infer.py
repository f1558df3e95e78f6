"""`disttrain infer`: accuracy mode reproduces the training run's evaluation from a sharded checkpoint; throughput
and latency modes report their figures; bad flags are one line."""

from __future__ import annotations

import json

import pytest

from tests.launch_helpers import cli, disttrain


@pytest.mark.parametrize("model", ["dlrm", "dien"])
def test_accuracy_mode_reproduces_the_run_evaluation(trained, model):
    ck, run = trained(model).ck, trained(model).run
    result = cli("infer", "--checkpoint", str(ck), "--mode", "accuracy", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["step"] == run["steps"] and out["samples"] == run["eval_samples"]
    assert abs(out["auc"] - run["eval_auc"]) < 1e-6 and abs(out["logloss"] - run["eval_logloss"]) < 1e-6
    bf16 = json.loads(cli("infer", "--checkpoint", str(ck), "--mode", "accuracy", "--precision", "bf16",
                          "--json").stdout)
    assert abs(bf16["auc"] - out["auc"]) < 0.01 and bf16["precision"] == "bf16"


def test_throughput_and_latency_modes(trained):
    ck = trained("dien").ck
    result = cli("infer", "--checkpoint", str(ck), "--mode", "throughput", "--batch-size", "32",
                       "--iterations", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 32:" in result.stdout and "recommendations/second" in result.stdout
    latency = json.loads(cli("infer", "--checkpoint", str(ck), "--mode", "latency", "--iterations", "30",
                             "--exact-max-length", "10", "--json").stdout)
    assert latency["batch_size"] == 1 and latency["iterations"] == 30
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]


def test_bad_flags_are_one_line(trained):
    dlrm, dien = trained("dlrm").ck, trained("dien").ck
    for args, message in (
        ([str(dlrm), "--mode", "latency", "--exact-max-length", "5"], "has no behaviour history"),
        ([str(dien), "--mode", "latency", "--exact-max-length", "500"], "more than the model's history of 10"),
        ([str(dien), "--mode", "latency", "--exact-max-length", "500", "--nproc", "2"],
         "more than the model's history of 10"),
        ([str(dlrm) + "/nope", "--mode", "accuracy"], "--checkpoint"),
    ):
        result = cli("infer", "--checkpoint", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_an_exported_file_is_named_as_such(trained, tmp_path):
    """`infer --checkpoint model.pt` on a `disttrain export` file: one line saying what the file is and how to
    read it, exit 2 (it said "no complete checkpoint there"); any other file is "a file, not a checkpoint"."""
    exported = tmp_path / "model.pt"
    result = cli("export", str(trained("dlrm").step_dir), "--out", str(exported))
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "notes.txt").write_text("not a model")
    hint = "an exported model file (`disttrain export`), not a sharded checkpoint"
    for target, flags, message in (
        (exported, [], f"--checkpoint: {exported}: {hint}"),
        (exported, ["--nproc", "2"], f"--checkpoint: {exported}: {hint}"),
        (exported, ["--runtime", "onnxruntime"], f"checkpoint: {exported}: {hint}"),
        (tmp_path / "notes.txt", [], f"--checkpoint: {tmp_path / 'notes.txt'}: a file, not a checkpoint"),
    ):
        result = cli("infer", "--checkpoint", str(target), "--mode", "accuracy", *flags)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, result.stderr
        assert ("disttrain.api.load_exported(path)" in result.stderr) == (target == exported), result.stderr
    result = cli("export", str(exported), "--out", str(tmp_path / "again.pt"))
    assert result.returncode == 2 and "checkpoint: " in result.stderr and "an exported model file" in result.stderr


@pytest.mark.parametrize("model", ["dlrm", "dien"])
def test_sharded_inference_equals_one_process(trained, model):
    """`--nproc 2`: the checkpoint resharded over two worker processes serves the same evaluation."""
    ck, run = trained(model).ck, trained(model).run
    result = disttrain("infer", "--checkpoint", str(ck), "--mode", "accuracy", "--nproc", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["world_size"] == 2 and out["samples"] == run["eval_samples"]
    assert abs(out["auc"] - run["eval_auc"]) < 1e-6 and abs(out["logloss"] - run["eval_logloss"]) < 1e-6
    assert {t["type"] for t in out["plan"]["tables"]} == {"row_wise"}  # the checkpoint's own strategy
    if model == "dlrm":
        result = disttrain("infer", "--checkpoint", str(ck), "--mode", "throughput", "--nproc", "2",
                           "--batch-size", "64", "--iterations", "5")
        assert result.returncode == 0 and "sharded over 2 ranks, batch 64:" in result.stdout, result.stderr[-2000:]
        assert "recommendations/second" in result.stdout and "resolved config" not in result.stdout
        latency = json.loads(disttrain("infer", "--checkpoint", str(ck), "--mode", "latency", "--nproc", "2",
                                       "--iterations", "20", "--json").stdout)
        assert latency["batch_size"] == 2 and 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]
        bad = cli("infer", "--checkpoint", str(ck), "--mode", "throughput", "--nproc", "2", "--batch-size", "3")
        assert bad.returncode == 2 and "expected a multiple of --nproc 2" in bad.stderr
        assert bad.stderr.strip().count("\n") == 0, bad.stderr


def test_dien_int8(trained, tmp_path):
    """DIEN quantizes too: its tables and the linears inference runs (not the auxiliary net, nor the attention
    layer whose weight the model splits itself); the saved model reproduces the report."""
    ck = trained("dien").ck
    result = cli("quantize", "--checkpoint", str(ck), "--out", str(tmp_path / "int8"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    names = {layer["name"] for layer in report["layers"]}
    assert {"embeddings.uid", "embeddings.mid", "embeddings.cat", "query", "fcn.0"} <= names
    assert not any(n.startswith(("aux_net", "attention.0")) for n in names)
    assert report["tuning"]["relative_auc_loss"] <= 0.01
    int8 = json.loads(cli("infer", "--checkpoint", str(tmp_path / "int8"), "--precision", "int8", "--mode",
                          "accuracy", "--json").stdout)
    assert abs(int8["auc"] - report["final"]["int8"]["auc"]) < 1e-9
