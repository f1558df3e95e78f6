"""Quality on real Criteo rows: DLRM, Wide&Deep and DeepFM (sharded over 2 ranks) against logistic regression.

    python benchmarks/quality_criteo.py [--data ../shared/data/criteo-kaggle-8k] [--out runs/quality]

The sample's train/dev/test files go through `disttrain data criteo --split files`; both models read the same
processed ids (LR: the dense features standardised plus a one-hot column per id). Each model trains one
epoch for several seeds; the gate is each model's mean test AUC against the logistic regression with
scikit-learn's defaults (C=1). The LR with C chosen on the validation split is printed too. Seed 0 of each model
is then served: int8 (`disttrain quantize`, tuned on the validation split) and ONNX (onnxruntime), test AUC
beside fp32. Exit 1 if any model is worse than the gate, or onnxruntime's AUC differs from PyTorch's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DLRM = ["model.flavor=debug", "model.embedding_dim=16", "train.optimizer=adagrad", "train.lr=0.05",
        "train.batch_size=128", "train.epochs=1", "launch.nproc_per_node=2", "run.progress=false",
        "train.log_every=1000"]
WIDE_DEEP = ["model.name=wide_deep", *DLRM]  # the same recipe
DEEPFM = ["model.name=deepfm", *DLRM, "model.embedding_dim=8"]  # its debug flavor's dim (16 overfits here)
MODELS = {"DLRM": ("dlrm", DLRM), "Wide&Deep": ("wide_deep", WIDE_DEEP), "DeepFM": ("deepfm", DEEPFM)}
SEEDS = (0, 1, 2)


def disttrain(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "disttrain.cli", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"disttrain {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train_seeds(data: Path, out: Path, name: str, overrides: list[str]) -> list[dict]:
    """One sharded training run per seed; their summaries."""
    summaries = []
    for seed in SEEDS:
        run_dir = out / f"{name}_seed{seed}"
        disttrain("launch", "data.source=criteo", f"data.path={data}", *overrides, f"train.seed={seed}",
                  f"run.output_dir={run_dir}", f"checkpoint.dir={run_dir / 'ck'}")
        summaries.append(json.loads((run_dir / "summary.json").read_text()))
    return summaries


def deployed(run_dir: Path) -> dict[str, float]:
    """Seed 0's checkpoint as it would be served: int8 (`disttrain quantize`, tuned on val) and ONNX, on test."""
    ck = run_dir / "ck"
    disttrain("quantize", "--checkpoint", str(ck), "--out", str(run_dir / "int8"))
    report = json.loads((run_dir / "int8" / "quant_report.json").read_text())
    onnx = json.loads(disttrain("infer", "--checkpoint", str(ck), "--runtime", "onnxruntime", "--mode", "accuracy",
                                "--json"))
    return {"fp32": report["final"]["fp32"]["auc"], "int8": report["final"]["int8"]["auc"],
            "int8_layers": f"{report['int8_layers']}/{report['total_layers']}",
            "int8_val_loss": report["tuning"]["relative_auc_loss"],
            "int8_test_loss": report["final"]["relative_auc_loss"], "onnx": onnx["auc"]}


def logistic_regression(data: Path) -> dict[str, float]:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    meta = json.loads((data / "meta.json").read_text())
    n = meta["rows"]
    labels = np.fromfile(data / "labels.u8", dtype=np.uint8)
    dense = np.fromfile(data / "dense.f32", dtype=np.float32).reshape(n, meta["num_dense"])
    ids = np.fromfile(data / "sparse.i32", dtype=np.int32).reshape(len(meta["tables"]), n)
    offsets = np.cumsum([0] + [t["rows"] for t in meta["tables"]])
    cols = (ids + offsets[:-1, None]).T
    onehot = sparse.csr_matrix((np.ones(cols.size), cols.ravel(), np.arange(0, cols.size + 1, cols.shape[1])),
                               shape=(n, int(offsets[-1])))
    split = {k: slice(*v) for k, v in meta["splits"].items()}
    train = dense[split["train"]]
    features = sparse.hstack([sparse.csr_matrix((dense - train.mean(0)) / (train.std(0) + 1e-6)), onehot]).tocsr()

    def fit(c: float):
        model = LogisticRegression(C=c, max_iter=5000).fit(features[split["train"]], labels[split["train"]])
        return {s: model.predict_proba(features[split[s]])[:, 1] for s in ("val", "test")}

    out = {}
    default = fit(1.0)
    out["default_test_auc"] = roc_auc_score(labels[split["test"]], default["test"])
    out["default_test_logloss"] = log_loss(labels[split["test"]], default["test"])
    tuned = {c: fit(c) for c in (0.01, 0.03, 0.1, 0.3, 1.0)}
    best = max(tuned, key=lambda c: roc_auc_score(labels[split["val"]], tuned[c]["val"]))
    out["tuned_c"] = best
    out["tuned_test_auc"] = roc_auc_score(labels[split["test"]], tuned[best]["test"])
    out["test_rows"] = int(split["test"].stop - split["test"].start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "criteo-kaggle-8k"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    args = parser.parse_args()
    src, out = Path(args.data), Path(args.out)
    raws = [src / f for f in ("train.csv", "dev.csv", "test.csv")]
    if not all(p.is_file() for p in raws):
        sys.exit(f"{src}: expected train.csv, dev.csv and test.csv (Criteo Kaggle rows)")
    data = out / "criteo-kaggle-8k"
    print(disttrain("data", "criteo", *map(str, raws), "--split", "files", "--out", str(data), "--force", "--quiet"))
    runs = {name: train_seeds(data, out, key, overrides) for name, (key, overrides) in MODELS.items()}
    lr = logistic_regression(data)
    gate = lr["default_test_auc"]
    print(f"Criteo Kaggle sample ({src}): test split of {lr['test_rows']} rows\n")
    print(f"{'model':<58}{'test AUC':>10}{'test logloss':>14}")
    means = {}
    for name, summaries in runs.items():
        for seed, r in zip(SEEDS, summaries):
            label = f"{name}, 2 ranks sharded, seed {seed} (val AUC {r['val_auc']:.4f})"
            print(f"{label:<58}{r['eval_auc']:>10.4f}{r['eval_logloss']:>14.4f}")
        means[name] = float(np.mean([r["eval_auc"] for r in summaries]))
        print(f"{name + ', mean of the seeds':<58}{means[name]:>10.4f}")
    print(f"{'logistic regression, scikit-learn defaults (C=1) [gate]':<58}{gate:>10.4f}"
          f"{lr['default_test_logloss']:>14.4f}")
    label = f"logistic regression, C={lr['tuned_c']} chosen on validation"
    print(f"{label:<58}{lr['tuned_test_auc']:>10.4f}")
    failed = [name for name, mean in means.items() if mean < gate]
    print(f"\nseed 0 served (test AUC): {'fp32':>8}{'int8':>8}{'layers int8':>13}{'val loss':>10}{'test loss':>11}"
          f"{'onnxruntime':>13}")
    served = {}
    for name, (key, _) in MODELS.items():
        served[name] = d = deployed(out / f"{key}_seed0")
        print(f"{name:<25}{d['fp32']:>8.4f}{d['int8']:>8.4f}{d['int8_layers']:>13}{d['int8_val_loss']:>+10.2%}"
              f"{d['int8_test_loss']:>+11.2%}{d['onnx']:>13.4f}")
        if abs(d["onnx"] - d["fp32"]) > 1e-5:
            failed.append(f"{name} on onnxruntime")
    print()
    for name in [f for f in failed if f not in means]:
        print(f"QUALITY FAIL: {name}: test AUC differs from PyTorch's by more than 1e-5")
    for name, mean in means.items():
        print(f"QUALITY {'FAIL' if name in failed else 'PASS'}: {name} mean test AUC {mean:.4f} "
              f"{'<' if name in failed else '>='} logistic regression {gate:.4f}")
    (out / "quality.json").write_text(json.dumps({
        "dlrm_test_auc": [r["eval_auc"] for r in runs["DLRM"]], "dlrm_mean": means["DLRM"],
        "wide_deep_mean": means["Wide&Deep"], "deepfm_test_auc": [r["eval_auc"] for r in runs["DeepFM"]],
        "deepfm_mean": means["DeepFM"], "served_seed0": served, **lr}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
