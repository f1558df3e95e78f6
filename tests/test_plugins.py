"""Bring your own model and data: a model package written by the test outside the repository trains sharded on
2 ranks exactly like one process under the local launcher and torchrun, `plan`, `export` and `infer` serve it, a
data source of one's own feeds it, and bad plugins are one line each. (Under `ray job submit`: tests/test_ray.py.)"""

from __future__ import annotations

import json

import pytest

from tests.launch_helpers import assert_same_training, cli, disttrain, summary

JOB = ["model.name=mymodels.tower:SPEC", "train.batch_size=64", "train.steps=16", "train.log_every=8",
       "data.eval_batches=2", "run.progress=false", "run.tensorboard=false", "sharding.strategy=row_wise"]


def _run(package, *args, out):
    result = disttrain(*args, f"run.output_dir={out}", cwd=package)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(out)


@pytest.mark.slow
def test_a_model_of_ones_own_trains_sharded_like_one_process(user_package, tmp_path):
    package, local = user_package
    single = _run(package, "train", *JOB, out=tmp_path / "single")
    torchrun = _run(package, "launch", *JOB, "launch.launcher=torchrun", "launch.nproc_per_node=2",
                    out=tmp_path / "torchrun")
    assert single["model"] == "mymodels.tower:SPEC" and local["world_size"] == 2
    for run in (local, torchrun):
        assert abs(run["train_loss"] - single["train_loss"]) < 1e-5
        assert abs(run["eval_auc"] - single["eval_auc"]) < 1e-4
        assert [t["name"] for t in run["plan"]["tables"]] == ["user_id", "item_id", "item_tag"]
    assert_same_training(torchrun, local)


def test_plan_export_and_infer_serve_it(user_package, tmp_path, monkeypatch):
    package, local = user_package
    monkeypatch.chdir(package)  # where the module is, as for the job itself
    plan = json.loads(cli("plan", *JOB, "--world-size", "4", "--json").stdout)
    assert [t["type"] for t in plan["tables"]] == ["row_wise"] * 3 and plan["memory"]["fits"]
    ck = local["config"]["checkpoint"]["dir"]
    # A checkpoint never makes disttrain import the code it names: the user says so on the command line.
    refused = cli("export", ck, "--out", str(tmp_path / "m.pt"))
    assert refused.returncode == 2 and "pass model.name=mymodels.tower:SPEC" in refused.stderr
    exported = cli("export", ck, "--out", str(tmp_path / "m.pt"), "model.name=mymodels.tower:SPEC")
    assert exported.returncode == 0, exported.stderr
    accuracy = json.loads(cli("infer", "--checkpoint", ck, "--mode", "accuracy", "--json",
                              "model.name=mymodels.tower:SPEC").stdout)
    assert abs(accuracy["auc"] - local["eval_auc"]) < 1e-6 and accuracy["model"] == "mymodels.tower:SPEC"
    onnx = cli("export-onnx", ck, "--out", str(tmp_path / "m.onnx"), "model.name=mymodels.tower:SPEC")
    assert onnx.returncode == 2 and "its spec says it has no ONNX form" in onnx.stderr
    quantized = cli("quantize", "--checkpoint", ck, "--out", str(tmp_path / "int8"), "--json",
                    "model.name=mymodels.tower:SPEC")
    assert quantized.returncode == 0, quantized.stderr
    assert json.loads(quantized.stdout)["final"]["fp32"]["auc"] == pytest.approx(local["eval_auc"], abs=1e-6)
    int8 = cli("infer", "--checkpoint", str(tmp_path / "int8"), "--precision", "int8", "--mode", "accuracy")
    assert int8.returncode == 2 and "pass model.name=mymodels.tower:SPEC" in int8.stderr  # the int8 file too


def test_a_data_source_of_ones_own(user_package, tmp_path):
    package, _ = user_package
    run = _run(package, "train", *JOB, "data.source=mymodels.data:SPEC", "train.steps=4", out=tmp_path / "own")
    assert run["data"]["source"] == "mymodels.data" and run["eval_samples"] == 2 * 64


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.name=nope:build"], "model.name: got 'nope:build', but nope cannot be imported"),
    (["model.name=mymodels.tower:nothing"], "mymodels.tower has no attribute 'nothing'"),
    (["model.name=mymodels.tower:broken"], "'mymodels.tower:broken' is an int, expected a model spec"),
    (["model.name=mymodels.tower:NO_TABLES"], "its build returned a Linear without `tables`"),
    (["model.name=mymodels.tower:SPEC", "model.flavor=huge"],
     "model.flavor: got 'huge', expected one of debug for model.name=tiny_tower"),
    (["data.source=mymodels.data:nothing"], "data.source: got 'mymodels.data:nothing', but mymodels.data has no"),
])
def test_bad_plugins_are_one_line(user_package, monkeypatch, overrides, message):
    package, _ = user_package
    monkeypatch.chdir(package)
    result = cli("plan", *JOB, *overrides, "--world-size", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_installed_entry_point_is_found_by_name(user_package, monkeypatch):
    package, _ = user_package
    monkeypatch.chdir(package)
    monkeypatch.syspath_prepend(str(package))  # the dist-info of the "installed" package lies there
    result = cli("plan", *[j for j in JOB if not j.startswith("model.name")], "model.name=tiny_tower",
                 "--world-size", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert [t["name"] for t in json.loads(result.stdout)["tables"]] == ["user_id", "item_id", "item_tag"]


def test_a_spec_of_ones_own_may_bring_its_own_loss(user_package, monkeypatch):
    """`ModelSpec.loss(logits, labels)`, summed over the samples, replaces the log loss in training (and is
    divided by the global batch like it, so N ranks' gradients add up to one process's)."""
    import dataclasses

    import torch

    from disttrain.config import load_config
    from disttrain.data.synthetic import SyntheticCTR
    from disttrain.models import model_spec
    from disttrain.models.loss import training_loss
    from disttrain.planning.build import build_model

    package, _ = user_package
    monkeypatch.chdir(package)
    cfg = load_config(None, ["model.name=mymodels.tower:SPEC", "train.batch_size=64"])
    model = build_model(cfg)
    batch = SyntheticCTR(model.tables, num_dense=cfg.data.num_dense, global_batch=64, seed=0).batch(0, rank=0,
                                                                                                    world_size=2)
    squared = dataclasses.replace(model_spec(cfg.model.name),
                                  loss=lambda logits, labels: ((torch.sigmoid(logits) - labels) ** 2).sum())
    loss, logits = training_loss(model, batch, 64, squared)
    assert len(logits) == 32
    assert torch.allclose(loss, ((torch.sigmoid(logits) - batch.labels) ** 2).sum() / 64)
    bce, _ = training_loss(model, batch, 64, model_spec(cfg.model.name))
    assert not torch.allclose(loss, bce)
