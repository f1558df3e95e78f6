"""ONNX export (onnxruntime == PyTorch in fp32) and int8 quantization (predictions close to fp32; the tuner's AUC
guard holds and returns the damaged layer to fp32), from sharded checkpoints of real 2-rank runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from disttrain import config as config_mod
from disttrain.collectives import SingleProcess
from disttrain.planning.build import open_data
from disttrain.serving.export import plain_model
from tests.launch_helpers import cli

MODELS = ("wide_deep", "deepfm", "dlrm")


@pytest.fixture(scope="module")
def checkpoints(trained, tmp_path_factory):
    """(a scratch directory, the session's checkpoint of each model)."""
    return tmp_path_factory.mktemp("onnx_int8"), {model: trained(model).ck for model in MODELS}


def _session(path):
    from disttrain.serving.onnx_export import session

    return session(path, threads=1)


@pytest.mark.parametrize("model", MODELS)
def test_onnx_matches_pytorch_for_any_batch_and_bag_width(checkpoints, model):
    from disttrain.serving.onnx_export import padded_ids

    root, ck = checkpoints
    path = root / f"{model}.onnx"
    result = cli("export-onnx", str(ck[model]), "--out", str(path), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["max_abs_logit_diff"] <= 1e-5 and report["verified_rows"] == 1024
    # Other batch sizes and multi-hot bags (the export saw one id per bag): the same graph, still within 1e-5.
    plain, cfg, _ = plain_model(ck[model])
    session = _session(path)
    for batch_size, multi_hot in ((1, 1), (7, 3), (300, 2)):
        cfg.train.batch_size, cfg.data.multi_hot_max = batch_size, multi_hot
        batch = open_data(cfg, plain.tables, comm=SingleProcess(), rank=0).batch(1, split="eval")
        ids = padded_ids(batch.sparse, len(plain.tables))
        assert ids.shape[:2] == (batch_size, len(plain.tables))
        logit, prob = session.run(None, {"dense": batch.dense.numpy(), "sparse": ids.numpy()})
        with torch.no_grad():
            expected = plain(batch.dense, batch.sparse).numpy()
        assert np.abs(logit - expected).max() <= 1e-5, (batch_size, multi_hot)
        assert np.allclose(prob, 1 / (1 + np.exp(-expected)), atol=1e-6)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["disttrain.model"] == model and meta["disttrain.step"] == "60"


def test_infer_on_onnxruntime_equals_pytorch(checkpoints):
    root, ck = checkpoints
    torch_run = json.loads(cli("infer", "--checkpoint", str(ck["wide_deep"]), "--mode", "accuracy",
                                     "--json").stdout)
    # A checkpoint is exported on the fly; an exported file is used as it is.
    for checkpoint in (str(ck["wide_deep"]), str(root / "wide_deep.onnx")):
        if checkpoint.endswith(".onnx") and not (root / "wide_deep.onnx").exists():
            cli("export-onnx", str(ck["wide_deep"]), "--out", checkpoint)
        result = cli("infer", "--checkpoint", checkpoint, "--runtime", "onnxruntime", "--mode", "accuracy",
                           "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        ort = json.loads(result.stdout)
        assert ort["runtime"] == "onnxruntime" and ort["samples"] == torch_run["samples"]
        assert abs(ort["auc"] - torch_run["auc"]) < 1e-6 and abs(ort["logloss"] - torch_run["logloss"]) < 1e-6
    result = cli("infer", "--checkpoint", str(ck["wide_deep"]), "--runtime", "onnxruntime", "--mode",
                       "throughput", "--batch-size", "1024", "--iterations", "3")
    assert result.returncode == 0 and "on onnxruntime, batch 1024" in result.stdout, result.stderr[-2000:]
    assert "recommendations/second" in result.stdout


@pytest.mark.parametrize("model", ["dlrm", "deepfm"])
def test_quantize_report_and_int8_inference(checkpoints, model):
    root, ck = checkpoints
    out = root / f"int8_{model}"
    result = cli("quantize", "--checkpoint", str(ck[model]), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "quant_report.json").read_text())
    assert report["max_relative_auc_loss"] == 0.01
    assert report["tuning"]["relative_auc_loss"] <= 0.01
    names = [layer["name"] for layer in report["layers"]]
    assert [n for n in names if n.startswith("embeddings.")] == ["embeddings.t0", "embeddings.t1", "embeddings.t2",
                                                                  "embeddings.t3"]
    assert all(layer["precision"] in ("int8", "fp32") for layer in report["layers"])
    assert report["int8_layers"] == sum(layer["precision"] == "int8" for layer in report["layers"]) > 0
    assert report["bytes"]["int8"] < report["bytes"]["fp32"]
    # The saved model reproduces the report's int8 figures, and stays close to fp32 sample by sample.
    int8 = json.loads(cli("infer", "--checkpoint", str(out), "--precision", "int8", "--mode", "accuracy",
                                "--json").stdout)
    assert abs(int8["auc"] - report["final"]["int8"]["auc"]) < 1e-9
    from disttrain.serving.int8 import Int8Linear, load_quantized

    quantized, stored, _, _ = load_quantized(out)
    # Reloaded as built: fused ReLUs gone, consecutive int8 layers handing uint8 to each other.
    for module in quantized.modules():
        if isinstance(module, torch.nn.Sequential):
            kids = [k for k in module.children() if not isinstance(k, torch.nn.Identity)]
            for a, b in zip(kids, kids[1:]):
                assert not (isinstance(a, Int8Linear) and a.relu and isinstance(b, torch.nn.ReLU))
                if isinstance(a, Int8Linear):
                    assert (a.out_q is not None) == isinstance(b, Int8Linear)
    plain, cfg, _ = plain_model(ck[model])
    batch = open_data(config_mod.config_from_yaml(stored), plain.tables, comm=SingleProcess(), rank=0).batch(
        0, split="eval")
    with torch.no_grad():
        diff = (torch.sigmoid(quantized(batch.dense, batch.sparse)) - torch.sigmoid(plain(batch.dense, batch.sparse))).abs()
    assert float(diff.max()) < 0.03 and float(diff.mean()) < 0.005, (float(diff.max()), float(diff.mean()))


def test_tuner_returns_a_damaged_layer_to_fp32(checkpoints):
    """A layer calibrated to a range 1000x too small clips its inputs: the guard must catch the AUC loss and the
    tuner must hand that layer (first) back to fp32, leaving the rest int8."""
    from disttrain.serving.int8 import Int8Model, calibrate, quantizable_layers
    from disttrain.serving.quantize import tune

    _, ck = checkpoints
    model, cfg, _ = plain_model(ck["dlrm"])
    source = open_data(cfg, model.tables, comm=SingleProcess(), rank=0)
    batches = [source.batch(i, split="eval") for i in range(8)]
    layers = quantizable_layers(model)
    ranges = calibrate(model, layers, batches[:2])
    assert set(ranges) == {"bottom.0", "bottom.2", "top.0", "top.2"}
    lo, hi = ranges["top.0"]
    ranges["top.0"] = (lo / 1000, hi / 1000)
    plan, trace = tune(Int8Model(model, layers, ranges), batches, 0.01)
    assert (trace["fp32_auc"] - trace["all_int8_auc"]) / trace["fp32_auc"] > 0.01
    assert trace["steps"][0]["fallback"] == "top.0" and plan["top.0"] == "fp32"
    assert trace["steps"][-1]["relative_loss"] <= 0.01
    assert sum(p == "int8" for p in plan.values()) >= len(plan) - 2


def test_bad_input_is_one_line(checkpoints):
    root, ck = checkpoints
    for args, message in (
        (["infer", "--checkpoint", str(ck["dlrm"]), "--precision", "int8", "--mode", "accuracy"],
         "expected a `disttrain quantize --out DIR` directory"),
        (["infer", "--checkpoint", str(root / "int8_dlrm"), "--mode", "accuracy"], "expected --precision int8"),
        (["infer", "--checkpoint", str(ck["dlrm"]), "--runtime", "onnxruntime", "--precision", "bf16", "--mode",
          "accuracy"], "expected fp32"),
        (["quantize", "--checkpoint", str(ck["dlrm"]), "--out", str(root / "q"), "quant.max_relative_auc_loss=2"],
         "quant.max_relative_auc_loss: got 2"),
        (["export-onnx", str(ck["dlrm"]) + "/nope", "--out", str(root / "x.onnx")], "nope"),
    ):
        if "int8_dlrm" in args[2] and not (root / "int8_dlrm").exists():
            cli("quantize", "--checkpoint", str(ck["dlrm"]), "--out", str(root / "int8_dlrm"))
        result = cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (root / "x.onnx").exists() and not (root / "q" / "model_int8.pt").exists()
