"""Dynamic tables: the id map, admission and eviction rules, dynamic == fixed, 2 and 3 ranks == one process
(pooled bags and DIEN's sequences), resume and reshard 2 -> 3 -> 1, serving unknown ids, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disttrain.collectives import SingleProcess
from disttrain.config import load_config
from disttrain.errors import ConfigError, DataError, PlanError
from disttrain.parallelize import parallelize
from disttrain.planning.build import build_plan
from disttrain.sharding.dynamic_table import DynamicShard
from disttrain.sharding.id_map import IdMap
from disttrain.tables import bucket_of, dynamic_init_rows, mix64
from tests.dist_helpers import loss_sum, make_data, run_ranks
from tests.launch_helpers import cli, disttrain, summary

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "adagraddecay"]


def test_mix64_is_murmur_fmix64_on_uint64():
    x = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 12345678901234567], dtype=np.uint64)
    ref = x.copy()
    with np.errstate(over="ignore"):
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            ref ^= ref >> np.uint64(33)
            ref *= np.uint64(mult)
        ref ^= ref >> np.uint64(33)
    assert mix64(torch.from_numpy(x.view(np.int64))).numpy().view(np.uint64).tolist() == ref.tolist()
    assert bucket_of(torch.from_numpy(x.view(np.int64))).tolist() == (ref >> np.uint64(52)).astype(np.int64).tolist()


def test_id_map_agrees_with_a_dict_through_inserts_removals_and_rehashes():
    gen = torch.Generator().manual_seed(0)
    ids_map, ref = IdMap(16), {}
    for step in range(120):
        fresh = torch.randint(-2**63, 2**63 - 1, (int(torch.randint(0, 200, (1,), generator=gen)),), generator=gen)
        small = torch.randint(0, 30, (20,), generator=gen)  # neighbouring keys: long probe clusters
        keys = torch.unique(torch.cat([fresh, small, torch.tensor(list(ref)[:40], dtype=torch.int64)]))
        found = ids_map.find(keys)
        assert found.tolist() == [ref.get(k, -1) for k in keys.tolist()], step
        new = keys[found < 0]
        values = torch.arange(new.numel()) + 1000 * step
        ids_map.insert(new, values)
        ref.update(zip(new.tolist(), values.tolist()))
        gone = list(ref)[step % 3:: 4]
        ids_map.remove(torch.tensor(gone, dtype=torch.int64))
        for k in gone:
            del ref[k]
        assert ids_map.size == len(ref)
    keys, values = ids_map.items()
    assert dict(zip(keys.tolist(), values.tolist())) == ref and keys.tolist() == sorted(ref)


def _shard(**rules) -> DynamicShard:
    return DynamicShard(table="users", table_index=0, dim=2, num_rows=100, seed=0, dtype=torch.float32,
                        device="cpu", **{"min_count": 1, "ttl_steps": 0, "capacity": 0, **rules})


def _step(shard: DynamicShard, ids: list[int]) -> list[int]:
    rows = shard.rows_of(torch.tensor(ids, dtype=torch.int64), train=True)
    shard.pop_fresh()
    shard.step += 1
    return rows.tolist()


def _live(shard: DynamicShard) -> list[int]:
    return shard.rows.map.items()[0].tolist()


def test_admission_after_min_count_sightings_reads_the_zero_row_before():
    shard = _shard(min_count=3)
    assert _step(shard, [7, 7, 9]) == [0, 0, 0] and _live(shard) == []  # 7 seen twice, 9 once
    rows = _step(shard, [7, 9, 11])  # 7's third sighting: admitted in this step, its row read at once
    assert rows[0] > 0 and rows[1:] == [0, 0] and _live(shard) == [7]
    assert _step(shard, [9]) != [0] and _live(shard) == [7, 9]
    assert shard.candidates.map.items()[0].tolist() == [11]
    assert shard.weight[0].abs().sum() == 0 and shard.stats.admitted == 2


def test_time_to_live_evicts_rows_unseen_for_that_many_steps():
    shard = _shard(ttl_steps=2)
    _step(shard, [1, 2])  # step 0
    _step(shard, [1])  # step 1
    _step(shard, [1])  # step 2: 2 last seen at 0, unseen for steps 1 and 2 -> still there (2 steps)
    assert _live(shard) == [1, 2]
    _step(shard, [3])  # step 3: 2 is unseen for 3 steps -> gone before the lookups
    assert _live(shard) == [1, 3] and shard.stats.evicted == 1
    _step(shard, [])  # step 4
    _step(shard, [])  # step 5: 1 (last seen at 2) is unseen for 3 steps
    assert _live(shard) == [3]


def test_capacity_evicts_the_least_frequently_used_then_the_oldest_then_the_smallest_id():
    shard = _shard(capacity=3)
    _step(shard, [10, 10, 10, 20, 30])  # counts 10:3, 20:1, 30:1
    _step(shard, [20])  # 20:2 (seen at 1)
    _step(shard, [40])  # full: the least used is 30 (count 1)
    assert _live(shard) == [10, 20, 40]
    _step(shard, [50, 60])  # 40 (count 1, seen at 2) and then 20 (count 2) go; 10 (3) stays
    assert _live(shard) == [10, 50, 60] and shard.stats.evicted == 3
    _step(shard, [70, 80])
    assert _live(shard) == [10, 70, 80]
    # 70 and 80 tie (count 1, both seen at step 4): the smaller id goes. Its row is reused, with 90's own weights.
    rows = _step(shard, [90])
    assert _live(shard) == [10, 80, 90]
    expected = dynamic_init_rows(seed=0, table_index=0, ids=torch.tensor([90]), dim=2, num_rows=100)
    assert torch.equal(shard.weight[rows[0]], expected[0]) and shard.rows.top == 4  # 3 rows ever + the default


def test_a_capacity_below_one_batch_of_distinct_ids_is_one_line_naming_the_table():
    shard = _shard(capacity=2)
    with pytest.raises(DataError, match=r"table users: one step brings 3 distinct ids .*dynamic_capacity=2"):
        _step(shard, [1, 2, 3])


def test_memory_grows_with_live_ids_not_with_the_id_space():
    small, wide = _shard(), _shard()
    _step(small, list(range(5000)))
    _step(wide, torch.randint(-2**63, 2**63 - 1, (5000,), generator=torch.Generator().manual_seed(1)).tolist())
    assert small.nbytes() == wide.nbytes()
    more = _shard()
    _step(more, list(range(50_000)))
    assert 5 <= more.nbytes() / small.nbytes() <= 20  # ~10x the ids: ~10x the bytes (arrays grow by doubling)
    assert more.nbytes() < 200 * 50_000


def _train(overrides: list[str], steps: int, comm=None, fixed_like_dynamic: bool = False):
    comm = comm or SingleProcess()
    cfg = load_config(None, ["model.flavor=debug", "train.batch_size=48", "data.multi_hot_max=3", *overrides])
    model, plan = build_plan(cfg, comm.world_size)
    par = parallelize(model, plan=plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=0)
    if fixed_like_dynamic:  # a fixed table starting from the rows a dynamic one gives ids 0..rows-1
        for table, _shard, weight in par.embeddings.local_shards():
            weight.copy_(dynamic_init_rows(seed=0, table_index=table.index, ids=torch.arange(table.num_rows),
                                           dim=table.dim, num_rows=table.num_rows))
    data = make_data(cfg, model.tables, comm if comm.world_size > 1 else None)
    for step in range(steps):
        batch = data.batch(step, rank=comm.rank, world_size=comm.world_size)
        par.zero_grad()
        loss_sum(par.model, batch, cfg.train.batch_size, cfg.model.name).backward()
        par.step()
    return par


def _dynamic_rows(par) -> dict[str, dict[int, torch.Tensor]]:
    out = {}
    for table, _shard, _key, store in par.embeddings.dynamic_shards():
        ids, rows = store.rows.map.items()
        out.setdefault(table.name, {}).update(zip(ids.tolist(), store.weight[rows].float()))
    return out


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_dynamic_equals_fixed_when_the_ids_fit(optimizer):
    """Same rows, same updates: a dynamic table holding ids 0..rows-1 trains exactly like the fixed table."""
    common = [f"train.optimizer={optimizer}", "train.lr=0.05"]
    fixed = _train(common, 6, fixed_like_dynamic=True)
    dynamic = _train([*common, "model.dynamic_tables=[all]"], 6)
    fixed_tables = {t.name: w for t, _s, w in fixed.embeddings.local_shards()}
    moved = 0.0
    for name, rows in _dynamic_rows(dynamic).items():
        ids = torch.tensor(sorted(rows))
        got = torch.stack([rows[i] for i in ids.tolist()])
        assert torch.equal(got, fixed_tables[name][ids]), name
        start = dynamic_init_rows(seed=0, table_index=int(name[1:]), ids=ids, dim=got.shape[1],
                                  num_rows=fixed_tables[name].shape[0])
        moved = max(moved, (got - start).abs().max().item())
    assert moved > 1e-4  # the rows trained
    dense = dict(fixed.model.named_parameters())
    for name, p in dynamic.model.named_parameters():
        assert torch.equal(p, dense[name]), name


def _ranks_rows(comm, overrides, steps):
    return _dynamic_rows(_train(overrides, steps, comm))


CASES = {
    "dlrm-bf16": ["model.dynamic_tables=[all]", "data.raw_ids=true", "train.optimizer=sgd",
                  "model.embedding_dtype=bf16"],
    "dien": ["model.name=dien", "model.dynamic_tables=[all]", "data.raw_ids=true", "train.optimizer=adam",
             "train.lr=0.01", "model.table_sizes=[41,67,9]", "data.synthetic_samples=2000"],
}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_two_and_three_ranks_equal_one_process(case, world):
    """Rows live on the rank owning the id's bucket; together they are the one-process table (fp32 rows
    bitwise except the rounding noise of bf16 updates, drawn per rank: within one bf16 step)."""
    overrides = [*CASES[case], "model.dynamic_capacity=0"]
    alone = _dynamic_rows(_train(overrides, 4))
    parts = run_ranks(world, _ranks_rows, overrides, 4)
    tol = 2e-2 if "bf16" in case else 1e-5
    assert sum(len(rows) for rows in alone.values()) > 100
    if "raw_ids" in " ".join(overrides):
        assert max(abs(i) for rows in alone.values() for i in rows) > 2**40
    for name, rows in alone.items():
        merged = {}
        for part in parts:
            assert not set(merged) & set(part.get(name, {}))  # each id on one rank
            merged.update(part.get(name, {}))
        assert merged.keys() == rows.keys(), name
        diff = max((merged[i] - rows[i]).abs().max().item() for i in rows)
        assert diff <= tol, (name, diff)


def test_bad_dynamic_configs_are_one_line_naming_the_table():
    for argv, message in [
        (["model.dynamic_tables=[t1]", "sharding.tables.t1=column_wise"],
         "sharding.tables.t1: table t1 is dynamic .* cannot be column_wise"),
        (["model.dynamic_tables=[all]", "sharding.strategy=data_parallel"], "table t0 is dynamic"),
        (["model.dynamic_tables=[users]"], "model.dynamic_tables: no table named 'users'"),
        (["data.raw_ids=true"], "data.raw_ids: true, but no table is dynamic"),
        (["model.dynamic_min_count=0"], "model.dynamic_min_count: got 0"),
    ]:
        result = cli("plan", "model.flavor=debug", *argv, "--world-size", "2")
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert __import__("re").search(message, result.stderr), result.stderr
    with pytest.raises((PlanError, ConfigError)):
        build_plan(load_config(None, ["model.dynamic_tables=[t0]", "sharding.tables.t0=data_parallel"]), 2)


def test_plan_shows_capacity_and_expected_live_rows():
    result = cli("plan", "model.flavor=kaggle", "model.dynamic_tables=[t2,t3]", "model.dynamic_capacity=300000",
                 "--world-size", "2", "--json")
    assert result.returncode == 0, result.stderr
    import json

    plan = json.loads(result.stdout)
    t2 = next(t for t in plan["tables"] if t["name"] == "t2")
    assert t2["dynamic"] and t2["capacity_per_rank"] == 300000 and t2["type"] == "row_wise"
    assert [s["expected_live_rows"] for s in t2["shards"]] == [300000, 300000]  # 1M declared, capped per rank
    assert plan["dynamic"]["buckets"] == 4096
    text = cli("plan", "model.flavor=kaggle", "model.max_rows=1000000", "model.dynamic_tables=[t2]", "--world-size",
               "2").stdout
    assert "2048 buckets, ~500000 rows" in text


# ----- end to end: resume, reshard 2 -> 3 -> 1, export, infer, quantize ----------------------------------------
BASE = ["model.flavor=debug", "model.table_sizes=[20000,3000,40,100]", "model.dynamic_tables=[all]", "data.raw_ids=true",
        "train.batch_size=96",
        "data.multi_hot_max=2", "train.optimizer=rowwise_adagrad", "train.lr=0.05", "model.dynamic_min_count=2",
        "model.dynamic_ttl_steps=8", "train.steps=30", "train.eval_every=10", "data.eval_batches=2",
        "run.progress=false", "run.tensorboard=false", "train.log_every=10"]


def _launch(tmp_path, name, *overrides):
    out = tmp_path / name
    result = disttrain("launch", *BASE, f"run.output_dir={out}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(out) | {"_stdout": result.stdout}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamic")
    run = _launch(root, "full", f"checkpoint.dir={root}/ck", "checkpoint.every_steps=10", "checkpoint.keep_last=0")
    return run, root / "ck"


def _tables(checkpoint) -> dict:
    from disttrain.export import unsharded_state

    return unsharded_state(checkpoint)[1]


@pytest.mark.slow
def test_resume_and_reshard_2_3_1_equal_the_uninterrupted_run(tmp_path, full):
    run, ck = full
    dyn = run["dynamic_tables"]
    assert set(dyn) == {"t0", "t1", "t2", "t3"} and all(len(t["ranks"]) == 2 for t in dyn.values())
    assert sum(t["evicted"] for t in dyn.values()) > 0 and sum(t["candidates"] for t in dyn.values()) > 0
    assert all(t["live"] == sum(r["live"] for r in t["ranks"]) for t in dyn.values())
    assert "dynamic tables: t0" in run["_stdout"] and "dynamic rows" in run["_stdout"]
    resumed = _launch(tmp_path, "resumed", f"train.resume={ck}/step_00000010", f"checkpoint.dir={tmp_path}/r")
    assert resumed["train_loss"] == run["train_loss"] and resumed["eval_auc"] == run["eval_auc"]
    # Every count carried over; not the bytes (arrays restored at their exact size) nor the unknown ids (lookups
    # by this process's evaluations).
    counts = lambda report: {name: {k: v if k != "ranks" else [{**r, "bytes": 0, "unknown": 0} for r in v]  # noqa: E731
                                    for k, v in t.items() if k != "unknown"} for name, t in report.items()}
    assert counts(resumed["dynamic_tables"]) == counts(dyn)
    three = _launch(tmp_path, "three", f"train.resume={ck}/step_00000010", "train.steps=20",
                    "launch.nproc_per_node=3", "launch.allow_oversubscribe=true", f"checkpoint.dir={tmp_path}/three")
    assert [len(t["ranks"]) for t in three["dynamic_tables"].values()] == [3] * 4
    one = _launch(tmp_path, "one", f"train.resume={tmp_path}/three/step_00000020", "launch.nproc_per_node=1",
                  f"checkpoint.dir={tmp_path}/one")
    assert one["eval_logloss"] == pytest.approx(run["eval_logloss"], abs=1e-5)
    want, got = _tables(ck / "step_00000030"), _tables(tmp_path / "one")
    assert want.keys() == got.keys()
    for name in want:
        if name.startswith("embeddings.dynamic_ids"):
            assert torch.equal(want[name], got[name]), name  # the same ids admitted and evicted
        else:
            assert torch.allclose(want[name], got[name], atol=1e-5), name
    assert {k: (t["live"], t["admitted"], t["evicted"]) for k, t in one["dynamic_tables"].items()} == \
           {k: (t["live"], t["admitted"], t["evicted"]) for k, t in dyn.items()}


@pytest.mark.slow
def test_export_infer_and_quantize_serve_unknown_ids_from_the_default_row(tmp_path, full):
    run, ck = full
    from disttrain.export import load_exported

    result = cli("infer", "--checkpoint", str(ck / "step_00000030"), "--mode", "accuracy")
    assert result.returncode == 0, result.stderr
    assert f"AUC {run['eval_auc']:.4f}" in result.stdout
    assert cli("export", str(ck / "step_00000030"), "--out", str(tmp_path / "m.pt")).returncode == 0
    model, cfg = load_exported(tmp_path / "m.pt")
    from disttrain.data.synthetic import SyntheticCTR

    data = SyntheticCTR(model.tables, num_dense=cfg.data.num_dense, global_batch=64, raw_ids=(0, 1, 2, 3),
                        multi_hot_max=2)
    batch = data.batch(0, split="eval")
    known = model(batch.dense, batch.sparse)
    unknown_before = dict(model.embeddings.unknown)
    assert sum(unknown_before.values()) > 0  # rare ids were never admitted (min_count 2) or expired
    lengths, values = batch.sparse.lengths, batch.sparse.values.clone()
    values[:] = 12345  # an id no table has seen
    from disttrain.batch import KeyedBags

    unseen = KeyedBags(batch.sparse.keys, batch.sparse.bags_per_key, 64, lengths, values)
    zeros_in = model(batch.dense, unseen)
    assert sum(model.embeddings.unknown.values()) == sum(unknown_before.values()) + values.numel()
    assert not torch.equal(known, zeros_in)
    # Every table reads zeros for the unknown id: the same logits as with empty bags.
    empty = KeyedBags(batch.sparse.keys, batch.sparse.bags_per_key, 64, torch.zeros_like(lengths),
                      values[:0])
    assert torch.allclose(zeros_in, model(batch.dense, empty), atol=1e-6)
    quantized = cli("quantize", "--checkpoint", str(ck / "step_00000030"), "--out", str(tmp_path / "q"))
    assert quantized.returncode == 0, quantized.stderr
    served = cli("infer", "--checkpoint", str(tmp_path / "q"), "--precision", "int8", "--mode", "accuracy")
    assert served.returncode == 0 and "ids without a row" in served.stdout, served.stderr
    onnx = cli("export-onnx", str(ck / "step_00000030"), "--out", str(tmp_path / "m.onnx"))
    assert onnx.returncode != 0 and "are dynamic (model.dynamic_tables) and ONNX" in onnx.stderr
    assert len(onnx.stderr.strip().splitlines()) == 1


def test_ids_outside_int64_and_prepared_raw_features(tmp_path):
    """`raw: true` keeps a value's 64-bit hash as the id (a dynamic table's input); a fixed table reading it folds
    it by modulo (hashing), a dynamic one takes it whole. uint64 ids past int64 are refused, naming the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 4000
    users = rng.integers(0, 300, n)
    table = pa.table({"label": (users % 3 == 0).astype(np.int8), "x": rng.random(n),
                      "user": [f"u{u}" for u in users], "item": [f"i{i}" for i in rng.integers(0, 50, n)]})
    pq.write_table(table, tmp_path / "d.parquet")
    done = cli("data", "prepare", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "p"), "--label-column", "label",
               "--dense-columns", "x", "--sparse-columns", "user,item", "--raw-ids", "--quiet")
    assert done.returncode == 0, done.stderr
    from disttrain.data.prepared import open_dataset

    info = open_dataset(tmp_path / "p")
    assert [t["mode"] for t in info.meta["tables"]] == ["raw", "raw"] and info.table_rows[0] == 300
    ids = info.columns().ids.take(np.arange(5))
    assert ids.dtype == np.int64 and np.abs(ids).max() > 2**40  # 64-bit hashes, not small ids
    common = ["data.source=criteo", f"data.path={tmp_path / 'p'}", "train.batch_size=64", "train.steps=3",
              "model.flavor=debug"]
    dyn = _train([*common, "model.dynamic_tables=[user,item]"], 3)
    assert sum(s.live for *_x, s in dyn.embeddings.dynamic_shards()) > 50
    hashed = _train([*common, "model.table_sizes=[64,16]"], 3)  # fixed tables: raw ids folded modulo 64 and 16
    assert [t.num_rows for t in hashed.plan.tables] == [64, 16]
    from disttrain.batch import KeyedBags

    bad = KeyedBags(("t0", "t1", "t2", "t3"), (1, 1, 1, 1), 1, torch.ones(4, dtype=torch.int64),
                    torch.tensor([1, 2, 3, 2**63 + 5], dtype=torch.uint64))
    par = _train(["model.dynamic_tables=[all]"], 0)
    with pytest.raises(DataError, match=r"table t3: id 9223372036854775813 is outside int64"):
        par.embeddings(bad)
