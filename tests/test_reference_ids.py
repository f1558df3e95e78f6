"""Ids the reference understands: `disttrain data criteo --id-order first-seen` numbers values as Facebook's
`dlrm_s_pytorch.py` (`data_utils`) does, `--vocab-dicts` takes its own dictionaries, and a model imported from the
reference scores disttrain-prepared rows as the reference scores its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disttrain.batch import KeyedBags
from disttrain.export import unsharded_state
from tests.criteo_helpers import python_parse, raw_rows, read_processed, write_raw
from tests.launch_helpers import cli
from tests.test_checkpoint import _reference_file, _reference_forward

CATS = 4  # categorical columns of the small files (label, 13 integers, 4 categoricals)
COLUMNS = ["--label-column", "0", "--dense-columns", "1-13", "--sparse-columns", "14-17", "--header", "no"]


def reference_numbering(values: np.ndarray, modulo: int) -> tuple[np.ndarray, list[dict[int, int]]]:
    """The reference's rule, one value at a time: per column, (value % modulo when given) numbered 0, 1, ... in
    order of first appearance over all rows in file order; no id is reserved."""
    ids = np.zeros(values.shape, dtype=np.int64)
    dicts = []
    for t in range(values.shape[1]):
        seen: dict[int, int] = {}
        for r, v in enumerate(values[:, t].tolist()):
            v = v % modulo if modulo else v
            ids[r, t] = seen.setdefault(v, len(seen))
        dicts.append(seen)
    return ids, dicts


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    rows = [r[:14] + r[14:14 + CATS] for r in raw_rows(3000, seed=7)]
    path = write_raw(tmp_path_factory.mktemp("raw") / "train.txt", rows)
    return path, python_parse(rows)


@pytest.mark.parametrize("modulo", [0, 97])
def test_first_seen_ids_are_the_references(raw, tmp_path, modulo):
    path, (_, _, values) = raw
    hashing = ["--hash-rows", str(modulo)] if modulo else []
    result = cli("data", "criteo", str(path), "--out", str(tmp_path / "p"), "--id-order", "first-seen", *COLUMNS,
                 *hashing, "--quiet")
    assert result.returncode == 0, result.stderr
    meta, _, _, ids = read_processed(tmp_path / "p")
    expected, dicts = reference_numbering(values, modulo)
    assert np.array_equal(ids, expected)
    assert [t["rows"] for t in meta["tables"]] == [len(d) for d in dicts]
    assert meta["options"]["id_order"] == "first-seen"
    # The default numbering (sorted hashes / frequency) is a different one: the flag is what makes them agree.
    default = cli("data", "criteo", str(path), "--out", str(tmp_path / "d"), *COLUMNS, *hashing, "--quiet")
    assert default.returncode == 0, default.stderr
    assert (read_processed(tmp_path / "d")[3] == expected).mean() < 0.5


def test_reference_dictionaries_give_an_imported_model_its_own_scores(raw, tmp_path):
    path, (_, dense, values) = raw
    modulo = 1000
    ref_ids, dicts = reference_numbering(values, modulo)
    # The reference's dictionary files; one value left out of column 2 (a later day's unseen value -> id 0).
    folder = tmp_path / "ref"
    folder.mkdir()
    left_out = next(iter(dicts[2]))
    for t, d in enumerate(dicts):
        unique = [v for v in d if not (t == 2 and v == left_out)]
        np.savez_compressed(folder / f"train_fea_dict_{t}.npz", unique=np.array(unique, dtype=np.int32))
    result = cli("data", "criteo", str(path), "--out", str(tmp_path / "p"), "--vocab-dicts", str(folder),
                 "--hash-rows", str(modulo), *COLUMNS, "--quiet")
    assert result.returncode == 0, result.stderr
    meta, _, prepared_dense, ids = read_processed(tmp_path / "p")
    expected = ref_ids.copy()
    kept = {v: i for i, v in enumerate(v for v in dicts[2] if v != left_out)}
    expected[:, 2] = [kept.get(v, 0) for v in (values[:, 2] % modulo).tolist()]
    assert np.array_equal(ids, expected)
    assert meta["tables"][2]["unseen_rows"] == int((values[:, 2] % modulo == left_out).sum()) > 0
    assert "unseen values -> 0" in result.stdout

    # A model trained by the reference on these ids, imported, scores the prepared rows as the reference does.
    sizes = [len(d) for d in dicts]
    sizes[2] -= 1
    state = _reference_file(tmp_path / "ref.pt", sizes, 8, bottom=[13, 16, 8], top=[8 + 10, 16, 1])
    imported = cli("import", str(tmp_path / "ref.pt"), "--out", str(tmp_path / "ck"), "model.flavor=debug")
    assert imported.returncode == 0, imported.stderr
    cfg, ours, _ = unsharded_state(tmp_path / "ck")
    from disttrain.models import build_dlrm

    model = build_dlrm(cfg).eval()
    model.load_state_dict(ours, strict=False)
    n = ids.shape[0]
    bags = KeyedBags(tuple(f"t{i}" for i in range(CATS)), (1,) * CATS, n, torch.ones(CATS * n, dtype=torch.int64),
                     torch.from_numpy(ids.T.reshape(-1).astype(np.int64)))
    with torch.no_grad():
        ours_p = torch.sigmoid(model(torch.from_numpy(prepared_dense), bags))
    ref_p = _reference_forward(state, torch.from_numpy(dense), torch.from_numpy(expected), CATS)
    assert torch.allclose(ours_p, ref_p, atol=1e-5), (ours_p - ref_p).abs().max()


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--id-order", "first-seen", "--vocab-threshold", "2"], "--vocab-threshold: got 2, expected 1 with"),
    (None, ["--vocab-dicts", "{tmp}/none"], "is not a directory"),
    ("missing", ["--vocab-dicts", "{tmp}/ref"], "has no train_fea_dict_3.npz"),
    ("pickle", ["--vocab-dicts", "{tmp}/ref"], "train_fea_dict_0.npz: not a readable .npz dictionary"),
    ("key", ["--vocab-dicts", "{tmp}/ref"], "train_fea_dict_0.npz: no array 'unique' (has counts)"),
])
def test_bad_reference_input_is_one_line(raw, tmp_path, setup, args, message):
    path, _ = raw
    folder = tmp_path / "ref"
    folder.mkdir()
    for t in range(CATS if setup else 0):
        if setup == "missing" and t == 3:
            continue
        arrays = {"counts" if setup == "key" else "unique": np.arange(5, dtype=np.int32)}
        np.savez(folder / f"train_fea_dict_{t}.npz", **arrays)
    if setup == "pickle":
        np.savez(folder / "train_fea_dict_0.npz", unique=np.array([object()], dtype=object))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("data", "criteo", str(path), "--out", str(tmp_path / "p"), *COLUMNS, *args, "--quiet")
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p").exists()
