"""fp32 vs bf16 training (train.precision), interleaved rounds, medians: samples/s and eval AUC.

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
            for precision in ("fp32", "bf16"):
                runs.setdefault((case, precision), []).append(
                    ours(overrides + [f"train.precision={precision}"], verb=verb, eval_batches=evals))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"medians of {args.rounds} interleaved rounds")
    print(f"{'case':8} {'fp32 samples/s':>15} {'bf16 samples/s':>15} {'speed-up':>9} {'fp32 AUC':>9} {'bf16 AUC':>9}")
    for case in CASES:
        fp32 = statistics.median(x["samples_per_s"] for x in runs[(case, "fp32")])
        bf16 = statistics.median(x["samples_per_s"] for x in runs[(case, "bf16")])
        auc32, auc16 = (runs[(case, p)][0]["eval_auc"] for p in ("fp32", "bf16"))
        print(f"{case:8} {fp32:>15,.0f} {bf16:>15,.0f} {bf16 / fp32:>8.2f}x {auc32:>9.4f} {auc16:>9.4f}")


if __name__ == "__main__":
    main()
