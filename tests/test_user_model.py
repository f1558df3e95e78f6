"""A model written exactly as docs/models.md's "Bring your own model" shows it (it seeds nothing): one config gives one
model, on one process run twice (bitwise) and on 2 and 3 ranks (the sum order of the sharded layer aside); it
trains unchanged on generated data and on a prepared directory; every rank holds rank 0's dense weights even when
the build draws different ones per rank, and a replica that drifts stops the run in one line."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from disttrain.replicas import broadcast_dense, check_replicas, first_difference, replica_checksums
from tests.dist_helpers import run_ranks
from tests.launch_helpers import ROOT, clean_env, disttrain, summary

JOB = ["model.name=mymodel:SPEC", "train.batch_size=96", "train.steps=12", "train.log_every=4",
       "data.eval_batches=2", "run.progress=false", "run.tensorboard=false"]


def readme_model() -> str:
    """The model snippet of docs/models.md ("Bring your own model"), as a user would paste it into mymodel.py."""
    text = (ROOT / "docs" / "models.md").read_text()
    start = text.index("```python\n# mymodel.py")
    return text[start + len("```python\n") : text.index("```", start + 10)]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme-model")
    (root / "mymodel.py").write_text(readme_model())
    return root


def _train(package: Path, out: Path, *args: str, command: str = "launch", env=None) -> dict:
    result = disttrain(command, *JOB, *args, f"run.output_dir={out}", cwd=package, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(out)


def _losses(run: dict) -> list[float]:
    return [h["loss"] for h in run["history"] if "loss" in h]


def test_the_readme_model_is_one_model_on_any_number_of_ranks(package, tmp_path):
    first = _train(package, tmp_path / "a", command="train")
    again = _train(package, tmp_path / "b", command="train")
    assert _losses(first) == _losses(again) and first["eval_auc"] == again["eval_auc"]  # bitwise
    two = _train(package, tmp_path / "two", "launch.nproc_per_node=2")
    three = _train(package, tmp_path / "three", "launch.nproc_per_node=3", "launch.allow_oversubscribe=true")
    for run in (two, three):
        assert run["world_size"] in (2, 3)
        assert _losses(run) == pytest.approx(_losses(first), abs=1e-6)
        assert run["eval_auc"] == pytest.approx(first["eval_auc"], abs=1e-6)
    assert [t["name"] for t in first["plan"]["tables"]] == ["user_id", "item_id"]
    other_seed = _train(package, tmp_path / "c", "train.seed=1", command="train")
    assert _losses(other_seed) != _losses(first)


def _write_events(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["clicked", "age", "country", "user_id", "item_id"])
        for _ in range(rows):
            user, item = rng.randrange(300), rng.randrange(90)
            out.writerow([int((user + item) % 7 < 2), rng.randrange(18, 70), rng.choice("abcde"), f"u{user}",
                          f"i{item}"])


def test_the_readme_model_trains_unchanged_on_a_prepared_directory(package, tmp_path):
    _write_events(tmp_path / "events.csv", 3000, seed=1)
    prepared = disttrain("data", "prepare", str(tmp_path / "events.csv"), "--label-column", "clicked",
                         "--dense-columns", "age", "--sparse-columns", "country,user_id,item_id",
                         "--out", str(tmp_path / "events"))
    assert prepared.returncode == 0, prepared.stderr
    run = _train(package, tmp_path / "run", "data.source=prepared", f"data.path={tmp_path / 'events'}",
                 "launch.nproc_per_node=2")
    assert [t["name"] for t in run["plan"]["tables"]] == ["country", "user_id", "item_id"]
    assert run["steps"] == 12 and run["eval_auc"] > 0.5


def test_a_drifting_replica_stops_the_run_in_one_line(package, tmp_path):
    result = disttrain("launch", *JOB, "launch.nproc_per_node=2", "train.check_replicas_every=2",
                       f"run.output_dir={tmp_path}", cwd=package, env=clean_env(DISTTRAIN_FAULT="1:3:diverge"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "replicas differ" in line]
    assert lines and "replicas differ after step 4: rank 1 differs from rank 0 first at parameter mlp.0.weight" \
        in lines[0], result.stderr[-2000:]


def test_running_statistics_are_rank_0s_in_evaluation_checkpoint_and_export(package, tmp_path, monkeypatch):
    """A BatchNorm1d's running statistics come from each rank's own batches: every rank evaluates with rank 0's,
    the checkpoint and the export hold them, so serving the checkpoint gives the run's own evaluation."""
    import json

    from disttrain.api import export, load_exported
    from tests.launch_helpers import cli

    (package / "bnmodel.py").write_text(readme_model().replace(
        "nn.Linear(width, 64), nn.ReLU()", "nn.Linear(width, 64), nn.BatchNorm1d(64), nn.ReLU()"))
    job = [j.replace("mymodel:SPEC", "bnmodel:SPEC") for j in JOB]
    result = disttrain("launch", *job, "launch.nproc_per_node=2", f"checkpoint.dir={tmp_path}/ck",
                       f"run.output_dir={tmp_path}/run", cwd=package)
    assert result.returncode == 0, result.stderr[-3000:]
    run = summary(tmp_path / "run")
    monkeypatch.chdir(package)
    monkeypatch.syspath_prepend(str(package))
    served = json.loads(cli("infer", "--checkpoint", f"{tmp_path}/ck", "--mode", "accuracy", "--json",
                            "model.name=bnmodel:SPEC").stdout)
    assert served["auc"] == pytest.approx(run["eval_auc"], abs=1e-6)
    assert served["logloss"] == pytest.approx(run["eval_logloss"], abs=1e-6)
    export(f"{tmp_path}/ck", tmp_path / "m.pt", overrides=["model.name=bnmodel:SPEC"])
    model, _ = load_exported(tmp_path / "m.pt", overrides=["model.name=bnmodel:SPEC"])
    norm = model.mlp[1]
    assert int(norm.num_batches_tracked) == 12 and float(norm.running_var.mean()) != 1.0  # trained, not as built


# ----- the pieces, on real gloo ranks ----------------------------------------------------------------------------
class _Drawn(torch.nn.Module):
    """A model whose dense part is drawn differently on every rank, with buffers of three dtypes."""

    def __init__(self, rank: int):
        super().__init__()
        torch.manual_seed(100 + rank)
        self.embeddings = torch.nn.EmbeddingBag(4 + rank, 2)  # sharded in real runs: never broadcast
        self.mlp = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1))
        self.register_buffer("mask", torch.rand(7) > 0.5)
        self.mlp[0].weight.data[0, 0] = -0.0 if rank == 0 else 1.0


def _broadcast(comm):
    model = _Drawn(comm.rank)
    model.mlp[1].num_batches_tracked.fill_(10 + comm.rank)
    before = replica_checksums(model)[1].tolist()
    sent = broadcast_dense(model, comm)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_replicas(model, comm, when="after the broadcast")
    return before, sent, state


def test_broadcast_makes_every_rank_rank_0_bit_for_bit():
    results = run_ranks(3, _broadcast)
    assert len({tuple(before) for before, _, _ in results}) == 3  # they started different
    reference = results[0][2]
    for _, sent, state in results:
        assert sent > 0
        for name, value in reference.items():
            if name.startswith("embeddings."):
                continue
            assert torch.equal(state[name].view(-1).view(torch.uint8) if value.dtype != torch.bool else state[name],
                               value.view(-1).view(torch.uint8) if value.dtype != torch.bool else value), name
    assert torch.equal(results[2][2]["mlp.1.num_batches_tracked"], torch.tensor(10))
    assert str(results[1][2]["mlp.0.weight"][0, 0].item()) == "-0.0"  # the sign of rank 0's zero too
    assert results[1][2]["embeddings.weight"].shape[0] == 5  # the tables are the sharded layer's business


def test_the_first_difference_names_ranks_and_parameter():
    names = ["a", "b", "c"]
    assert first_difference(names, [[1, 2, 3]] * 3) is None
    assert first_difference(names, [[1, 2, 3], [1, 2, 3], [1, 9, 8]]) == (
        "rank 2 differs from rank 0 first at parameter b (2 of 3 dense parameters differ)")
    assert first_difference(names, [[1, 2, 3], [0, 2, 3], [1, 2, 4]]).startswith(
        "rank 1 (and 2) differ from rank 0 first at parameter a (2 of 3")
    model = torch.nn.Linear(3, 2)
    sums = replica_checksums(model)[1]
    with torch.no_grad():
        model.weight[1, 2] += 1e-7
    assert (replica_checksums(model)[1] != sums).tolist() == [True, False]
