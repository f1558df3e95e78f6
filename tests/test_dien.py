"""DIEN: the TF-convention GRU/AUGRU kernel, the benchmark's file format (real tiny files too), bad input, the
batches every rank builds, and learning on the planted-signal data with and without the history."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from disttrain.config import load_config
from disttrain.data.dien import DienData
from disttrain.data.dien_files import load_vocab, open_dien, read_negative_pool, read_samples
from disttrain.data.dien_generate import generate
from disttrain.errors import DataError
from disttrain.layers import TFGRU
from disttrain.planning.build import build_model
from disttrain.prepare.dien_synthetic import write_files
from tests.launch_helpers import disttrain, summary

SHARED_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-books-dien"


# ----- the recurrent kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [False, True])
def test_tf_gru_matches_autograd_reference(attention):
    """The hand-written BPTT over length-sorted rows equals a masked step-by-step autograd GRU (float64)."""
    torch.manual_seed(0)
    gru = TFGRU(6, 5).double()
    x = torch.randn(7, 9, 6, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([3, 9, 0, 5, 5, 1, 9])  # unsorted, ties, an empty sequence
    att = torch.rand(7, 9, dtype=torch.double, requires_grad=True) if attention else None
    weights = torch.randn(7, 9, 5, dtype=torch.double)
    results = []
    for reference in (False, True):
        out, final = gru(x, lengths, att, reference=reference)
        loss = (out * weights).sum() + (final**2).sum()
        inputs = [x, gru.gate_kernel, gru.cand_kernel, gru.gate_bias, gru.cand_bias] + ([att] if attention else [])
        results.append([out, final, *torch.autograd.grad(loss, inputs)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    out, final = results[0][:2]
    assert out[0, 3:].abs().max() == 0 and final[2].abs().max() == 0  # zero past the end, as TF's dynamic_rnn
    torch.testing.assert_close(final[0], out[0, 2])


# ----- the file format --------------------------------------------------------------------------------------

CRLF_SAMPLES = (
    "0\tA1\tM1\tBooks\tM2\x02M3\tdefault_cat\x02Books\r\n"
    "1\tA1\tM9\tBooks\tM2\x02M3\x02M1\tdefault_cat\x02Books\x02Books\r\n"
    "1\tNEWUSER\tNEWITEM\tBooks\t\t\r\n"
)


def _vocabs():
    return {"A1": 0, "A2": 1}, {"default_mid": 0, "M1": 1, "M2": 2, "M3": 3, "M9": 4}, {"default_cat": 0, "Books": 1}


def test_reader_parses_the_benchmark_format(tmp_path):
    path = tmp_path / "local_test_splitByUser"
    path.write_bytes(CRLF_SAMPLES.encode())
    samples = read_samples(path, _vocabs())
    assert samples.labels.tolist() == [0, 1, 1]
    assert samples.uid.tolist() == [0, 0, 0] and samples.mid.tolist() == [1, 4, 0] and samples.cat.tolist() == [1, 1, 1]
    assert samples.offsets.tolist() == [0, 2, 5, 5]
    assert samples.hist_mid.tolist() == [2, 3, 2, 3, 1] and samples.hist_cat.tolist() == [0, 1, 0, 1, 1]
    assert samples.unknown == {"uid": 1, "mid": 1, "cat": 0}  # mapped to 0 as the benchmark, and counted


@pytest.mark.skipif(not SHARED_TINY.exists(), reason="../shared/data/amazon-books-dien is not beside this clone")
def test_reader_parses_the_real_tiny_files(tmp_path):
    """Real Amazon Books rows (CRLF) through the original DIEN preprocessing, with the real category vocabulary."""
    tiny = SHARED_TINY / "tiny-pipeline"
    cat_voc = load_vocab(SHARED_TINY / "vocab" / "cat_voc.pkl")
    assert len(cat_voc) == 1601 and cat_voc["default_cat"] == 0 and cat_voc["Books"] == 1
    lines = [line.split("\t") for line in (tiny / "local_test").read_text().splitlines()]
    # the vocabularies as the benchmark's generate_voc.py builds them: uid no default, mid/cat default 0
    mids = {"default_mid": 0}
    for f in lines:
        for m in [f[2], *f[4].split("\x02")]:
            mids.setdefault(m, len(mids))
    uids = {u: i for i, u in enumerate(dict.fromkeys(f[1] for f in lines))}
    samples = read_samples(tiny / "local_test", (uids, mids, cat_voc))
    assert len(samples) == 38 and int(samples.labels.sum()) == 19
    assert samples.history_lengths.sum() == sum(len(f[4].split("\x02")) for f in lines)
    assert samples.hist_cat.tolist().count(0) == sum(f[5].split("\x02").count("default_cat") for f in lines)
    assert samples.unknown == {"uid": 0, "mid": 0, "cat": 0}
    pool_mid, pool_cat, _ = read_negative_pool(tiny, mids, cat_voc)
    assert pool_mid.size == 1000 and set(pool_cat.tolist()) <= set(cat_voc.values())


@pytest.mark.parametrize("line, reason", [
    ("1\tA1\tM1\tBooks\tM2\x02M3\tBooks\n", "2 history items but 1 history categories"),
    ("1\tA1\tM1\tBooks\tM2\n", "5 tab-separated fields; expected 6"),
    ("yes\tA1\tM1\tBooks\tM2\tBooks\n", "label 'yes'; expected 0 or 1"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "f"
    path.write_text("0\tA1\tM1\tBooks\tM2\tBooks\n" + line)
    with pytest.raises(DataError, match=f"{path}:2: {reason}"):
        read_samples(path, _vocabs())


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_vocab_pickles_must_be_plain_dicts_and_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"a": _Exploit(str(marker))}))
    with pytest.raises(DataError, match="not a plain pickled dict .*refers to pathlib"):
        load_vocab(evil)
    assert not marker.exists()
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps(["a", "b"]))
    with pytest.raises(DataError, match="holds a list; expected a dict of str to int"):
        load_vocab(listed)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"a": -1}))
    with pytest.raises(DataError, match="entry 'a': -1; expected str keys and int ids >= 0"):
        load_vocab(wrong)
    legacy = tmp_path / "py2.pkl"
    legacy.write_bytes(pickle.dumps({b"default_mid": 0, b"x": 1}, protocol=2))
    assert load_vocab(legacy) == {"default_mid": 0, "x": 1}


def test_written_files_read_back_as_generated(tmp_path):
    data = generate(users=50, items=80, cats=9, train_samples=400, seed=3, max_history=10)
    write_files(data, tmp_path)
    back = open_dien(tmp_path)
    for split in ("train", "test"):
        a, b = getattr(data, split), getattr(back, split)
        for name in ("labels", "uid", "mid", "cat", "offsets", "hist_mid", "hist_cat"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{split}.{name}")
    np.testing.assert_array_equal(back.pool_mid, data.pool_mid)
    np.testing.assert_array_equal(back.pool_cat, data.pool_cat)
    assert back.table_rows == (50, 80, 9) and not back.notes


# ----- batches ----------------------------------------------------------------------------------------------


def _source(world_batch=32, **overrides):
    cfg = load_config(None, ["model.name=dien", "model.table_sizes=[50,80,9]", "data.max_history=6",
                             f"train.batch_size={world_batch}"])
    tables = build_model(cfg, embedding_device="meta").tables
    data = generate(users=50, items=80, cats=9, train_samples=600, seed=1, max_history=20)
    return DienData(data, tables, global_batch=world_batch, seed=5, **overrides), data


def test_ranks_slice_identical_global_batches_padded_to_the_longest_history():
    source, data = _source()
    for step in (0, 7, 25):  # 25: a second epoch
        whole = source.batch(step)
        parts = [source.batch(step, rank=r, world_size=2) for r in range(2)]
        steps = (whole.sparse.bags_per_key[1] - 1) // 2
        assert all(p.sparse.bags_per_key == whole.sparse.bags_per_key for p in parts)
        assert 1 <= steps <= 6
        joined = [torch.cat([p.sparse.split()[k][0].view(p.sparse.batch_size, -1) for p in parts]) for k in range(3)]
        for k in range(3):
            torch.testing.assert_close(joined[k].reshape(-1), whole.sparse.split()[k][0])
        torch.testing.assert_close(torch.cat([p.sparse.values for p in parts]).sort()[0],
                                   whole.sparse.values.sort()[0])
        torch.testing.assert_close(torch.cat([p.labels for p in parts]), whole.labels)
        lengths = whole.sparse.split()[1][0].view(32, -1)
        history = lengths[:, 1 : 1 + steps].sum(1)
        assert int(history.max()) == steps and torch.equal(history, lengths[:, 1 + steps :].sum(1))
    # buffers sorted longest first, epochs reshuffled, histories truncated to the last 6
    order = source.epoch_order(0)
    first = np.minimum(data.train.history_lengths[order[: 20 * 32]], 6)
    assert (np.diff(first) <= 0).all()
    assert not np.array_equal(source.epoch_order(0), source.epoch_order(1))


def test_padding_the_history_to_few_lengths_changes_nothing(monkeypatch):
    """Under bf16 autocast DIEN rounds this rank's longest history up (few matmul shapes: disttrain/layers/shapes.py);
    the extra positions are masked: logits and auxiliary loss equal the unpadded model's (fp32, padded 3x)."""
    import disttrain.models.dien as dien_module

    source, _ = _source()
    cfg = load_config(None, ["model.name=dien", "model.table_sizes=[50,80,9]", "data.max_history=6"])
    model = build_model(cfg)
    batch = source.batch(3)
    results = []
    for pad in (lambda n, device_type="cpu": n, lambda n, device_type="cpu": 3 * n + 2):
        monkeypatch.setattr(dien_module, "padded_length", pad)
        logits, aux = model(batch.dense, batch.sparse)
        results.append((logits.detach(), aux.detach()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)


def test_negatives_come_from_the_pool_and_differ_from_the_clicked_item():
    source, data = _source()
    batch = source.batch(3)
    mid_lengths, mid_values = batch.sparse.split()[1]
    steps = (batch.sparse.bags_per_key[1] - 1) // 2
    lengths = mid_lengths.view(32, -1)
    cursor = 0
    pool = set(data.pool_mid.tolist())
    for row in lengths:
        n = int(row[1 : 1 + steps].sum())
        values = mid_values[cursor : cursor + 1 + 2 * n]
        cursor += 1 + 2 * n
        history, negatives = values[1 : 1 + n], values[1 + n :]
        assert set(negatives.tolist()) <= pool and bool((history != negatives).all())
    assert cursor == mid_values.numel()


def test_no_history_feeds_empty_sequences():
    source, _ = _source(use_history=False)
    batch = source.batch(0)
    assert batch.sparse.bags_per_key == (1, 1, 1)


def test_unknown_ids_are_reported_in_the_run(tmp_path):
    data = generate(users=30, items=40, cats=5, train_samples=300, seed=0, max_history=8)
    write_files(data, tmp_path / "d")
    path = tmp_path / "d" / "local_test_splitByUser"
    path.write_text(path.read_text() + "1\tUNEW\tMNEW\tC1\tM1\x02MX\tC1\x02C1\n")
    result = disttrain("train", "model.name=dien", "data.source=dien", f"data.path={tmp_path}/d", "train.steps=3",
                       "train.batch_size=32", "run.progress=false", f"run.output_dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data: test: ids not in the vocabularies mapped to 0 as the benchmark does: 1 uid, 2 mid" in result.stdout
    path.write_text(path.read_text() + "1\tU1\tM1\tC1\tM1\x02M2\tC1\n")
    line = path.read_text().count("\n")
    bad = disttrain("train", "model.name=dien", "data.source=dien", f"data.path={tmp_path}/d", "train.steps=3",
                    "train.batch_size=32", "run.progress=false", f"run.output_dir={tmp_path}/run2")
    assert bad.returncode == 2 and f"local_test_splitByUser:{line}: 2 history items but 1 history categories" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0, bad.stderr


# ----- learning ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_history_carries_the_planted_signal(tmp_path):
    """On data whose clicks follow the latest behaviours, DIEN clearly beats the same model without history;
    2 sharded ranks reproduce one process."""
    runs = {}
    for name, extra in (("history", []), ("none", ["data.use_history=false"]),
                        ("two", ["launch.nproc_per_node=2", "sharding.strategy=row_wise", f"checkpoint.dir={tmp_path}/ck",
                                 "checkpoint.every_steps=30", "checkpoint.keep_last=0"]),
                        ("resumed", [f"train.resume={tmp_path}/ck/step_00000030"])):
        out = tmp_path / name
        result = disttrain("launch", "model.name=dien", "data.synthetic_samples=16000", "train.epochs=1",
                           "train.batch_size=128", "train.optimizer=adam", "train.lr=0.003", "train.log_every=50",
                           "launch.nproc_per_node=1", "run.progress=false", f"run.output_dir={out}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = summary(out)
    assert runs["history"]["eval_auc"] > 0.75, runs["history"]["eval_auc"]
    assert runs["none"]["eval_auc"] < 0.6, runs["none"]["eval_auc"]
    assert runs["history"]["eval_samples"] == 1600
    assert abs(runs["two"]["eval_auc"] - runs["history"]["eval_auc"]) < 1e-4
    assert abs(runs["two"]["train_loss"] - runs["history"]["train_loss"]) < 1e-4
    # resumed on one rank from the 2-rank checkpoint: the same run (reader position, negatives, optimizer)
    assert abs(runs["resumed"]["eval_auc"] - runs["two"]["eval_auc"]) < 1e-4
    assert abs(runs["resumed"]["train_loss"] - runs["two"]["train_loss"]) < 1e-4
