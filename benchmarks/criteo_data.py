"""Criteo data path speed: preprocessing rows/s beside the reference DLRM's, and the loader against training.

    python benchmarks/criteo_data.py [--raw FILE] [--rows 1000000] [--dlrm-dir DIR] [--skip-reference]

1. A raw Kaggle-layout file: --raw, or `../shared/tools/criteo_gen.py --rows N` (cached under runs/).
2. `disttrain data criteo` on it: vocabulary mode, and hashing mode with --hash-rows 10000000.
3. The reference: facebookresearch/dlrm `data_utils.loadDataset("kaggle", max_ind_range=10000000, ...)` on a
   copy of the same file (its --max-ind-range path, which numpy 2 needs). Same machine, same run.
4. The loader: batches of the kaggle benchmark (global batch 2048) read by one process, as the trainer's
   prefetch thread reads them, against the samples/s that the kaggle benchmark trains at on this data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT.parent / "shared" / "tools" / "criteo_gen.py"
REFERENCE_DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import data_utils
start = time.perf_counter()
data_utils.loadDataset("kaggle", 10000000, 0.0, "total", "train", sys.argv[2], sys.argv[3], False)
print("SECONDS", time.perf_counter() - start)
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return result


def disttrain(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "disttrain.cli", *args])


def loader_rate(data: Path, batches: int = 200) -> float:
    """Samples/s one process reads in kaggle-benchmark batches (the whole global batch, shuffled)."""
    from disttrain.data.prepared import CriteoData, open_dataset
    from disttrain.tables import EmbeddingTableSpec

    info = open_dataset(data)
    tables = [EmbeddingTableSpec(t["name"], min(t["rows"], 1_000_000), 16) for t in info.meta["tables"]]
    reader = CriteoData(info, tables, global_batch=2048, seed=0)
    reader.batch(0)
    start = time.perf_counter()
    for step in range(1, batches + 1):
        reader.batch(step)
    return batches * 2048 / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", help="a raw Kaggle-layout file (default: generate one)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dlrm-dir", default="/work/peers/dlrm", help="a checkout of facebookresearch/dlrm")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_criteo"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = Path(args.raw) if args.raw else out / f"train_{args.rows}.txt"
    if not raw.exists():
        print(f"generating {raw} ({args.rows:,} rows) with {GEN}", flush=True)
        run([sys.executable, str(GEN), "--rows", str(args.rows), "--out", str(raw)])
    rows = sum(1 for _ in open(raw, "rb"))
    size = raw.stat().st_size
    print(f"raw file: {raw} ({rows:,} rows, {size / 2**20:.0f} MiB)\n", flush=True)

    results = {}
    for name, extra in (("vocabulary", []), ("hash 10M", ["--hash-rows", "10000000"])):
        data = out / ("data_vocab" if not extra else "data_hash")
        start = time.perf_counter()
        disttrain("data", "criteo", str(raw), "--out", str(data), "--force", "--quiet", *extra)
        results[name] = rows / (time.perf_counter() - start)
        print(f"disttrain data criteo ({name}): {results[name]:,.0f} rows/s", flush=True)

    if not args.skip_reference:
        with tempfile.TemporaryDirectory(dir=out) as scratch:
            copy = Path(scratch) / "train.txt"
            shutil.copyfile(raw, copy)
            start = time.perf_counter()
            run([sys.executable, "-c", REFERENCE_DRIVER, args.dlrm_dir, str(copy),
                str(Path(scratch) / "kaggle_processed.npz")], cwd=scratch)
            seconds = time.perf_counter() - start
        results["reference"] = rows / seconds
        print(f"reference data_utils.loadDataset (max_ind_range 10M): {results['reference']:,.0f} rows/s "
              f"({seconds:.0f} s)", flush=True)

    reading = loader_rate(out / "data_vocab")
    train_dir = out / "train_run"
    disttrain("bench", "data.source=criteo", f"data.path={out / 'data_vocab'}", "data.verify=size",
              f"run.output_dir={train_dir}")
    training = json.loads((train_dir / "summary.json").read_text())["samples_per_s"]
    print(f"\nloader, one process, global batches of 2048: {reading:,.0f} samples/s")
    print(f"kaggle benchmark training on this data (2 ranks): {training:,.0f} samples/s "
          f"-> the loader delivers {reading / training:.1f}x what training consumes")
    print("\nsummary")
    if "reference" in results:
        for name in ("vocabulary", "hash 10M"):
            print(f"  preprocessing {name}: {results[name]:,.0f} rows/s = {results[name] / results['reference']:.1f}x "
                  f"the reference's {results['reference']:,.0f}")
    print(f"  loader: {reading / training:.1f}x training consumption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
