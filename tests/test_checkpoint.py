"""Sharded checkpoints: resume == uninterrupted, resharding to other world sizes and plans, restarts after a
SIGKILL under the local launcher and torchrun, a crash while writing, corrupted input, export, and import of
Facebook's reference DLRM checkpoint layout."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from disttrain.export import load_exported, unsharded_state
from tests.launch_helpers import clean_env, cli, disttrain, summary

BASE = ["model.flavor=debug", "train.batch_size=96", "train.log_every=10", "data.eval_batches=2",
        "run.progress=false", "data.multi_hot_max=2", "run.tensorboard=false"]
# Uninterrupted 30-step runs, a checkpoint and an evaluation every 10 steps: what the resumed, resharded,
# restarted and crashed runs below must reproduce. Evaluations do not change training (no RNG, no BatchNorm).
PAIRS = {"table_wise": "adagrad", "row_wise": "rowwise_adagrad", "column_wise": "adam"}


def _common(strategy: str) -> list[str]:
    return [f"sharding.strategy={strategy}", f"train.optimizer={PAIRS[strategy]}", "train.lr=0.02", "train.steps=30",
            "train.eval_every=10"]


def _launch(tmp_path, name: str, *overrides: str, env: dict | None = None) -> dict:
    out = tmp_path / name
    result = disttrain("launch", *BASE, f"run.output_dir={out}", *overrides, env=env)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return summary(out) | {"_stdout": result.stdout, "_stderr": result.stderr}


def _same_state(a, b, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=tol), (name, (a[name] - b[name]).abs().max())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(strategy)`: (summary, checkpoint.dir) of the 30-step run (trained on first use)."""
    done = {}

    def get(strategy: str):
        if strategy not in done:
            root = tmp_path_factory.mktemp(f"full-{strategy}")
            run = _launch(root, "run", *_common(strategy), f"checkpoint.dir={root}/ck", "checkpoint.every_steps=10",
                          "checkpoint.keep_last=0")
            done[strategy] = (run, root / "ck")
        return done[strategy]

    return get


def _eval_at(run: dict, step: int) -> dict:
    return next(h for h in run["history"] if h["step"] == step and "split" in h)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(PAIRS))
def test_resume_equals_uninterrupted(tmp_path, uninterrupted, strategy):
    full, ck = uninterrupted(strategy)
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000010", "step_00000020", "step_00000030"]
    resumed = _launch(tmp_path, "resumed", *_common(strategy), f"train.resume={ck}/step_00000010",
                      f"checkpoint.dir={tmp_path}/ck2")
    assert "resumed from" in resumed["_stdout"] and "at step 10" in resumed["_stdout"]
    for key in ("train_loss", "eval_auc", "eval_logloss"):
        assert resumed[key] == full[key], key  # bitwise: same shards, same order of operations
    assert resumed["steps"] == 30 and [h["step"] for h in resumed["history"] if "loss" in h] == [10, 20, 30]
    assert resumed["history"] == full["history"][:2] + resumed["history"][2:]  # the saved history carried over
    _same_state(unsharded_state(ck / "step_00000030")[1], unsharded_state(tmp_path / "ck2")[1])


@pytest.mark.slow
@pytest.mark.parametrize(("source", "world", "strategy"),
                         [("table_wise", 1, "table_wise"), ("table_wise", 3, "row_wise"), ("column_wise", 2, "table_wise")])
def test_reshard_to_other_world_sizes_and_plans(tmp_path, uninterrupted, source, world, strategy):
    """Saved by 2 ranks under one plan at step 10, loaded by 1, 2 or 3 ranks under another: the same
    predictions, and training goes on to step 30 as it went on without the move (optimizer state moved too)."""
    full, ck = uninterrupted(source)
    moved = [*_common(source), f"train.resume={ck}/step_00000010", f"launch.nproc_per_node={world}",
             f"sharding.strategy={strategy}", "launch.allow_oversubscribe=true"]
    # No training: the loaded model's predictions on the held-out batches are the saved model's at step 10.
    evaluated = _launch(tmp_path, "evaluated", *moved, "train.steps=0")
    assert evaluated["eval_logloss"] == pytest.approx(_eval_at(full, 10)["logloss"], abs=1e-6)
    assert evaluated["eval_auc"] == pytest.approx(_eval_at(full, 10)["auc"], abs=1e-6)
    assert [t["type"] for t in evaluated["plan"]["tables"]] == [strategy] * 4
    assert evaluated["world_size"] == world
    # Twenty more steps after the move == the same steps on the original layout.
    went_on = _launch(tmp_path, "went_on", *moved)
    assert went_on["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    assert went_on["eval_logloss"] == pytest.approx(full["eval_logloss"], abs=1e-5)
    assert _eval_at(went_on, 20)["logloss"] == pytest.approx(_eval_at(full, 20)["logloss"], abs=1e-5)


@pytest.mark.slow
def test_reshard_to_and_from_table_row_wise(tmp_path, uninterrupted):
    """Table-wise on 2 ranks at step 10 -> table-row-wise on 3 ranks in nodes of 2 (every table on ranks {0, 1} or
    on rank 2) for twenty steps, as the original went on -> one rank, table-wise: the same predictions."""
    full, ck = uninterrupted("table_wise")
    moved = [*_common("table_wise"), f"train.resume={ck}/step_00000010", "launch.nproc_per_node=3",
             "sharding.strategy=table_row_wise", "cluster.ranks_per_node=2", "launch.allow_oversubscribe=true",
             f"checkpoint.dir={tmp_path}/twrw"]
    went_on = _launch(tmp_path, "went_on", *moved)
    tables = went_on["plan"]["tables"]
    assert {t["type"] for t in tables} == {"table_row_wise"}
    assert all(set(t["ranks"]) in ({0, 1}, {2}) for t in tables) and any(len(t["ranks"]) == 2 for t in tables)
    assert went_on["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    assert went_on["eval_logloss"] == pytest.approx(full["eval_logloss"], abs=1e-5)
    back = _launch(tmp_path, "back", *_common("table_wise"), f"train.resume={tmp_path}/twrw/step_00000030",
                   "launch.nproc_per_node=1", "train.steps=0")
    assert back["eval_logloss"] == pytest.approx(went_on["eval_logloss"], abs=1e-6)
    assert back["eval_auc"] == pytest.approx(went_on["eval_auc"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "torchrun"])
def test_sigkilled_rank_restarts_and_finishes_like_an_uninterrupted_run(tmp_path, uninterrupted, launcher):
    full, ck = uninterrupted("row_wise")
    killed = _launch(tmp_path, "killed", *_common("row_wise"), f"checkpoint.dir={tmp_path}/killed",
                     "checkpoint.every_steps=10", f"launch.launcher={launcher}", "launch.timeout_s=120",
                     "launch.max_restarts=2",
                     env=clean_env(DISTTRAIN_FAULT="1:25:kill"))  # rank 1: SIGKILL at step 25, first attempt only
    log = killed["_stdout"] + killed["_stderr"]
    assert "resumed from" in log and "step_00000020 at step 20" in log
    if launcher == "local":
        assert "restarting all workers (1/2)" in killed["_stderr"]
    assert killed["train_loss"] == full["train_loss"] and killed["eval_auc"] == full["eval_auc"]
    _same_state(unsharded_state(ck)[1], unsharded_state(tmp_path / "killed")[1])


@pytest.mark.slow
def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, uninterrupted):
    full, _ = uninterrupted("column_wise")
    common = [*_common("column_wise"), "checkpoint.every_steps=10", f"checkpoint.dir={tmp_path}/ck"]
    crashed = disttrain("launch", *BASE, *common, f"run.output_dir={tmp_path}/crashed",
                        env=clean_env(DISTTRAIN_FAULT="0:20:checkpoint"))
    assert crashed.returncode == 19, crashed.stderr[-2000:]
    entries = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert "step_00000010" in entries and "step_00000020" not in entries
    assert any(name.startswith(".tmp-step_00000020") for name in entries)  # the partial one, never listed
    resumed = _launch(tmp_path, "resumed", *common, "train.resume=auto")
    assert "at step 10" in resumed["_stdout"]
    assert resumed["train_loss"] == full["train_loss"]
    # The partial one was cleaned by the next save; checkpoint.keep_last=2 (default) pruned step 10.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000020", "step_00000030"]


@pytest.fixture(scope="module")
def saved(trained):
    """The session's 2-rank DLRM checkpoint (conftest `trained`): read only; damaged copies are made."""
    return trained("dlrm").step_dir


def _broken_copy(saved, tmp_path, how: str):
    copy = tmp_path / "ck" / saved.name
    shutil.copytree(saved, copy)
    victim = next((copy / "rank_00001").glob("*.distcp"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    return copy


@pytest.mark.parametrize(
    ("how", "extra", "message"),
    [
        ("truncate", [], "rank_00001/__1_0.distcp is truncated or altered"),
        ("corrupt", [], "rank_00001/__1_0.distcp is corrupted (sha256 differs from manifest.json)"),
        ("shapes", ["model.table_sizes=[50,101,8,40]"],
         "does not fit this model: table t2 is 7x8 in the checkpoint, 8x8 here; table t3 is 33x8 in the checkpoint, 40x8 here"),
        ("missing", [], "train.resume: {tmp}/nowhere: checkpoint directory not found"),
    ],
)
def test_bad_checkpoints_are_one_line_and_change_nothing(saved, tmp_path, how, extra, message):
    if how in ("truncate", "corrupt"):
        target = _broken_copy(saved, tmp_path, how)
    elif how == "shapes":
        target = saved
    else:
        target = tmp_path / "nowhere"
    before = {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    result = cli("launch", *BASE, "train.steps=8", f"train.resume={target}", *extra,
                 f"run.output_dir={tmp_path}/out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    if victim := (message.split(" is ")[0] if how in ("truncate", "corrupt") else None):
        assert victim.startswith("rank_00001/__")
        message = message.replace("__1_0", next((target / "rank_00001").glob("*.distcp")).stem)
    assert len(lines) == 1 and message.format(tmp=tmp_path) in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing written, and the saved checkpoint is untouched
    assert before == {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()}


def test_export_gives_the_sharded_models_predictions(saved, tmp_path):
    result = cli("export", str(saved), "--out", str(tmp_path / "model.pt"))
    assert result.returncode == 0, result.stderr
    model, cfg = load_exported(tmp_path / "model.pt")
    _, state, step = unsharded_state(saved)
    assert step == 60
    _same_state({k: v for k, v in model.state_dict().items() if k in state}, state)
    raw = torch.load(tmp_path / "model.pt", weights_only=True)  # plain tensors and strings only
    assert raw["format"] == "disttrain-export-v1" and raw["step"] == 60


# ----- Facebook's reference DLRM checkpoint layout ------------------------------------------------------------
def _reference_file(path, tables, dim, bottom, top, seed=0):
    """A `dlrm_s_pytorch.py --save-model` file built from its documented layout: state_dict with emb_l.N.weight,
    bot_l.2k.weight/bias, top_l.2k.weight/bias (Linear/ReLU Sequentials), plus numpy training metadata."""
    g = torch.Generator().manual_seed(seed)
    state = {f"emb_l.{i}.weight": torch.rand(rows, dim, generator=g) * 0.2 - 0.1 for i, rows in enumerate(tables)}
    for prefix, sizes in (("bot_l", bottom), ("top_l", top)):
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            state[f"{prefix}.{2 * k}.weight"] = torch.randn(n_out, n_in, generator=g) * (2 / (n_in + n_out)) ** 0.5
            state[f"{prefix}.{2 * k}.bias"] = torch.randn(n_out, generator=g) * 0.1
    torch.save({"epoch": 0, "nepochs": 1, "nbatches": 100, "nbatches_test": 10, "iter": 100, "state_dict": state,
                "train_acc": np.float64(0.78), "train_loss": np.float64(0.46), "test_acc": 0.77,
                "opt_state_dict": {"state": {}, "param_groups": []}}, path)
    return state


def _reference_forward(state, dense, ids, num_tables):
    """The reference's forward, written from its description: bottom MLP, sum-pooled bags, pairwise dots of
    [bottom output, embeddings] (i > j, row-major), concatenated with the bottom output, top MLP, sigmoid."""
    def mlp(prefix, x):
        layers = sorted({int(k.split(".")[1]) for k in state if k.startswith(prefix)})
        for n, i in enumerate(layers):
            x = x @ state[f"{prefix}.{i}.weight"].T + state[f"{prefix}.{i}.bias"]
            x = torch.relu(x) if n < len(layers) - 1 or prefix == "bot_l" else torch.sigmoid(x)
        return x

    x = mlp("bot_l", dense)
    ly = [state[f"emb_l.{t}.weight"][ids[:, t]] for t in range(num_tables)]
    T = torch.stack([x, *ly], dim=1)
    Z = T @ T.transpose(1, 2)
    li = [i for i in range(T.shape[1]) for _ in range(i)]
    lj = [j for i in range(T.shape[1]) for j in range(i)]
    return mlp("top_l", torch.cat([x, Z[:, li, lj]], dim=1)).squeeze(1)


def test_import_reference_checkpoint_reproduces_its_predictions(tmp_path):
    from disttrain.batch import KeyedBags

    tables, dim = [50, 101, 7, 33], 8
    state = _reference_file(tmp_path / "ref.pt", tables, dim, bottom=[13, 16, 8], top=[8 + 10, 16, 1])
    result = cli("import", str(tmp_path / "ref.pt"), "--out", str(tmp_path / "ck"), "model.flavor=debug")
    assert result.returncode == 0, result.stderr
    cfg, ours, _ = unsharded_state(tmp_path / "ck")
    from disttrain.models import build_dlrm

    model = build_dlrm(cfg).eval()
    model.load_state_dict(ours, strict=False)
    g = torch.Generator().manual_seed(1)
    dense = torch.rand(64, 13, generator=g)
    ids = torch.stack([torch.randint(0, rows, (64,), generator=g) for rows in tables], dim=1)
    bags = KeyedBags(tuple(f"t{i}" for i in range(4)), (1, 1, 1, 1), 64, torch.ones(4 * 64, dtype=torch.int64),
                     ids.T.reshape(-1).contiguous())
    with torch.no_grad():
        ours_p = torch.sigmoid(model(dense, bags))
    ref_p = _reference_forward(state, dense, ids, 4)
    assert torch.allclose(ours_p, ref_p, atol=1e-6), (ours_p - ref_p).abs().max()
    meta = json.loads((tmp_path / "ck" / "step_00000000" / "meta.json").read_text())
    assert meta["history"][0]["train_acc"] == pytest.approx(0.78)

    # ... and it trains sharded from there on 2 ranks.
    tuned = disttrain("launch", "model.flavor=debug", f"train.resume={tmp_path}/ck", "train.steps=4",
                      "train.batch_size=64", "run.progress=false", f"run.output_dir={tmp_path}/tuned",
                      f"model.table_sizes={tables}")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "resumed from" in tuned.stdout


def test_import_refuses_what_is_not_a_reference_checkpoint(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "extra": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    result = cli("import", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "ck"))
    assert result.returncode == 2 and "pwned" not in result.stdout
    assert "not a loadable reference DLRM checkpoint" in result.stderr.strip().splitlines()[-1]
    _reference_file(tmp_path / "wide.pt", [10, 20], 8, bottom=[13, 32, 8], top=[8 + 3, 4, 1])
    result = cli("import", str(tmp_path / "wide.pt"), "--out", str(tmp_path / "ck2"), "model.flavor=debug")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "does not fit the DLRM debug MLPs" in line and "bottom.0.weight is [32, 13] in the file, [16, 13]" in line
    assert not (tmp_path / "ck2").exists()


def _load_on_rank(comm, path: str) -> str:
    from disttrain.config import load_config
    from disttrain.engine.checkpoint import load_checkpoint
    from disttrain.errors import DataError
    from disttrain.parallelize import parallelize
    from disttrain.planning.build import build_plan

    cfg = load_config(None, [*BASE, "sharding.strategy=row_wise"])
    model, plan = build_plan(cfg, comm.world_size)
    par = parallelize(model, plan=plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=0)
    try:
        load_checkpoint(__import__("pathlib").Path(path), par=par, comm=comm, cfg=cfg)
    except DataError as exc:
        return str(exc)
    return "loaded"


def test_ranks_share_the_hashing_and_agree_on_a_corrupted_file(saved, tmp_path):
    """Without the launcher's pre-flight (torchrun by hand), the ranks hash the files between them; a file
    only one rank hashed still stops every rank with the same message."""
    from tests.dist_helpers import run_ranks

    broken = _broken_copy(saved, tmp_path, "corrupt")
    # One pair of ranks loads both (starting ranks costs more than loading): the intact one, then the broken one.
    results = run_ranks(2, _load_both_on_rank, str(saved), str(broken))
    assert [intact for intact, _ in results] == ["loaded", "loaded"]
    messages = [message for _, message in results]
    assert messages[0] == messages[1] and "is corrupted (sha256 differs from manifest.json)" in messages[0]


def _load_both_on_rank(comm, intact: str, broken: str) -> tuple[str, str]:
    return _load_on_rank(comm, intact), _load_on_rank(comm, broken)
