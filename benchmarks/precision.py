"""fp32 vs bf16 training (train.precision; plus bf16 tables, model.embedding_dtype=bf16), interleaved rounds,
medians: samples/s and eval AUC.

    python benchmarks/precision.py [--rounds 3]

- kaggle: `disttrain bench` (DLRM kaggle shapes, tables capped at 1M rows, batch 2048, 2 ranks pinned one per core)
- deepfm: DeepRec's DeepFM, 26 x 100k tables, batch 2048, Adam, one process (the deepctr comparison's shape)
- dien: DIEN ai_matrix, batch 128, Adam, one pass over 12,800 generated samples, one process
"""

from __future__ import annotations

import argparse
import statistics
import sys

from models_vs_deepctr import DEEPFM, DIEN, ours

VARIANTS = {"fp32": [], "bf16": ["train.precision=bf16"],
            "bf16+tables": ["train.precision=bf16", "model.embedding_dtype=bf16"]}
CASES = {  # (verb, overrides, evaluation batches)
    "kaggle": ("bench", [], 8),
    "deepfm": ("train", DEEPFM + ["train.steps=40"], 8),
    "dien": ("train", DIEN + ["data.synthetic_samples=13056", "train.epochs=1"], -1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for case, (verb, overrides, evals) in CASES.items():
            for variant, extra in VARIANTS.items():
                runs.setdefault((case, variant), []).append(ours(overrides + extra, verb=verb, eval_batches=evals))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"medians of {args.rounds} interleaved rounds")
    print(f"{'case':8} {'variant':12} {'samples/s':>10} {'vs fp32':>8} {'eval AUC':>9}")
    for case in CASES:
        fp32 = statistics.median(x["samples_per_s"] for x in runs[(case, "fp32")])
        for variant in VARIANTS:
            rate = statistics.median(x["samples_per_s"] for x in runs[(case, variant)])
            print(f"{case:8} {variant:12} {rate:>10,.0f} {rate / fp32:>7.2f}x {runs[(case, variant)][0]['eval_auc']:>9.4f}")


if __name__ == "__main__":
    main()
