"""deepctr-torch 0.3.0 on disttrain's benchmark shapes (run with a Python that has deepctr-torch and requests).

    python deepctr_models.py --model deepfm --samples 40960
    python deepctr_models.py --model dien --samples 6400

Trains with the library's own `model.fit` (Adam, log loss, no metrics) after a short warm-up fit, and prints one
line: `DEEPCTR model=... samples_per_s=... samples_per_cpu_s=...` (CPU seconds of this process, all threads).
DIEN's inputs are disttrain's generated Amazon-Books-shaped samples (same vocabulary sizes, same history lengths).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from deepctr_torch.models import DIEN, DeepFM

ROOT = Path(__file__).resolve().parents[2]


def deepfm(args):
    rng = np.random.default_rng(0)
    n = args.samples + args.warmup_samples
    features = [SparseFeat(f"C{i}", args.rows, embedding_dim=16) for i in range(1, 27)]
    features += [DenseFeat(f"I{i}", 1) for i in range(1, 14)]
    x = {f"C{i}": rng.integers(0, args.rows, n) for i in range(1, 27)}
    x |= {f"I{i}": rng.random(n).astype(np.float32) for i in range(1, 14)}
    y = rng.integers(0, 2, n).astype(np.float32)
    model = DeepFM(features, features, dnn_hidden_units=(1024, 256, 32), task="binary", device="cpu")
    return model, x, y, 2048


def dien(args):
    sys.path.insert(0, str(ROOT))
    from disttrain.data.dien_generate import generate

    users, items, cats, maxlen = 543060, 367983, 1601, 100
    data = generate(users=users, items=items, cats=cats, train_samples=args.samples + args.warmup_samples, seed=0,
                    max_history=maxlen).train
    n = len(data)
    lengths = np.minimum(data.history_lengths, maxlen)
    hist_item = np.zeros((n, maxlen), dtype=np.int64)
    hist_cat = np.zeros((n, maxlen), dtype=np.int64)
    for i in range(n):
        lo, hi = data.offsets[i + 1] - lengths[i], data.offsets[i + 1]
        hist_item[i, : lengths[i]] = data.hist_mid[lo:hi]
        hist_cat[i, : lengths[i]] = data.hist_cat[lo:hi]
    rng = np.random.default_rng(1)
    pick = rng.integers(0, data.hist_mid.size, (n, maxlen))
    present = np.arange(maxlen)[None, :] < lengths[:, None]
    neg_item = np.where(present, data.hist_mid[pick], 0)
    neg_cat = np.where(present, data.hist_cat[pick], 0)
    features = [SparseFeat("user", users, embedding_dim=18), SparseFeat("item_id", items, embedding_dim=18),
                SparseFeat("cate_id", cats, embedding_dim=18)]
    for name, vocab, emb in (("hist_item_id", items, "item_id"), ("hist_cate_id", cats, "cate_id"),
                             ("neg_hist_item_id", items, "item_id"), ("neg_hist_cate_id", cats, "cate_id")):
        features.append(VarLenSparseFeat(SparseFeat(name, vocab, embedding_dim=18, embedding_name=emb), maxlen=maxlen,
                                         length_name="seq_length"))
    x = {"user": data.uid, "item_id": data.mid, "cate_id": data.cat, "hist_item_id": hist_item,
         "hist_cate_id": hist_cat, "neg_hist_item_id": neg_item, "neg_hist_cate_id": neg_cat, "seq_length": lengths}
    x = {name: x[name] for name in get_feature_names(features)}
    model = DIEN(features, ["item_id", "cate_id"], gru_type="AUGRU", use_negsampling=True, alpha=1.0,
                 dnn_hidden_units=(200, 80), dnn_activation="relu", att_hidden_units=(80, 40),
                 att_activation="sigmoid", device="cpu")
    return model, x, data.labels.astype(np.float32), 128


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("deepfm", "dien"), required=True)
    parser.add_argument("--samples", type=int, default=20480)
    parser.add_argument("--warmup-samples", type=int, default=0)
    parser.add_argument("--rows", type=int, default=100000)
    args = parser.parse_args()
    args.warmup_samples = args.warmup_samples or 2 * (2048 if args.model == "deepfm" else 128)
    model, x, y, batch = (deepfm if args.model == "deepfm" else dien)(args)
    model.compile("adam", "binary_crossentropy")
    warm = {k: v[: args.warmup_samples] for k, v in x.items()}
    model.fit(warm, y[: args.warmup_samples], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    rest = {k: v[args.warmup_samples :] for k, v in x.items()}
    n = y.size - args.warmup_samples
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(rest, y[args.warmup_samples :], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"DEEPCTR model={args.model} samples={n} threads={torch.get_num_threads()} samples_per_s={n / wall:.1f} "
          f"samples_per_cpu_s={n / cpu:.1f}", flush=True)


if __name__ == "__main__":
    main()
