"""`disttrain infer`: accuracy mode reproduces the training run's evaluation from a sharded checkpoint; throughput
and latency modes report their figures; bad flags are one line."""

from __future__ import annotations

import json

import pytest

from tests.launch_helpers import disttrain, summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    runs = {}
    for model, extra in (("dlrm", ["train.batch_size=128"]),
                         ("dien", ["train.batch_size=64", "data.synthetic_samples=3000", "train.optimizer=adam",
                                   "train.lr=0.003"])):
        result = disttrain("launch", f"model.name={model}", "train.steps=20", "launch.nproc_per_node=2",
                           "sharding.strategy=row_wise", "run.progress=false", f"run.output_dir={root}/{model}",
                           f"checkpoint.dir={root}/{model}/ck", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[model] = (root / model / "ck", summary(root / model))
    return runs


@pytest.mark.parametrize("model", ["dlrm", "dien"])
def test_accuracy_mode_reproduces_the_run_evaluation(trained, model):
    ck, run = trained[model]
    result = disttrain("infer", "--checkpoint", str(ck), "--mode", "accuracy", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["step"] == 20 and out["samples"] == run["eval_samples"]
    assert abs(out["auc"] - run["eval_auc"]) < 1e-6 and abs(out["logloss"] - run["eval_logloss"]) < 1e-6
    bf16 = json.loads(disttrain("infer", "--checkpoint", str(ck), "--mode", "accuracy", "--precision", "bf16",
                                "--json").stdout)
    assert abs(bf16["auc"] - out["auc"]) < 0.01 and bf16["precision"] == "bf16"


def test_throughput_and_latency_modes(trained):
    ck, _ = trained["dien"]
    result = disttrain("infer", "--checkpoint", str(ck), "--mode", "throughput", "--batch-size", "32",
                       "--iterations", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 32:" in result.stdout and "recommendations/second" in result.stdout
    latency = json.loads(disttrain("infer", "--checkpoint", str(ck), "--mode", "latency", "--iterations", "30",
                                   "--exact-max-length", "10", "--json").stdout)
    assert latency["batch_size"] == 1 and latency["iterations"] == 30
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]


def test_bad_flags_are_one_line(trained):
    dlrm, _ = trained["dlrm"]
    dien, _ = trained["dien"]
    for args, message in (
        ([str(dlrm), "--mode", "latency", "--exact-max-length", "5"], "has no behaviour history"),
        ([str(dien), "--mode", "latency", "--exact-max-length", "500"], "more than the model's history of 10"),
        ([str(dlrm) + "/nope", "--mode", "accuracy"], "--checkpoint"),
    ):
        result = disttrain("infer", "--checkpoint", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
