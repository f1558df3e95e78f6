"""Dynamic tables against fixed ones, in one run: speed on the kaggle benchmark, AUC on the Criteo sample.

    python benchmarks/dynamic_tables.py [--rounds 3] [--data ../shared/data/criteo-kaggle-8k] [--out runs/dyn]

0. The id -> row map alone: lookups of one step's ids, inserts (one thread).
1. Speed: `disttrain bench` (kaggle DLRM, global batch 2048, 2 pinned ranks, SGD) with the five 1M-row tables
   fixed, then the same five tables dynamic and fed raw 64-bit ids (`data.raw_ids=true`: ids spread over the whole
   int64 space, no modulo), interleaved in rounds; medians of samples/s and their ratio. Per-rank memory of the
   dynamic tables (weights, optimizer state, id maps) beside their live rows.
2. Quality: the Criteo sample's train/dev/test files through `disttrain data prepare --raw-ids` (each value's
   64-bit hash is its id). The same DLRM recipe trains on that one stream with every table dynamic, and with
   fixed tables reading the same raw ids hashed modulo a table size (2^10 and 2^14 rows per table), for several
   seeds; mean test AUC of each (dynamic tables also with admission at the second sighting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from quality_criteo import DLRM as QUALITY_DLRM
from quality_criteo import SEEDS, disttrain

ROOT = Path(__file__).resolve().parents[1]
LARGE = "[t2,t3,t11,t15,t20]"  # the kaggle tables capped at 1M rows
DYNAMIC = [f"model.dynamic_tables={LARGE}", "data.raw_ids=true"]
DLRM = [*QUALITY_DLRM, "run.tensorboard=false"]  # the quality benchmark's DLRM recipe on the Criteo sample
HASH_SIZES = (1 << 10, 1 << 14)


def bench(overrides: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        disttrain("bench", f"train.steps={steps}", f"run.output_dir={tmp}", *overrides)
        return json.loads((Path(tmp) / "summary.json").read_text())


def id_map_speed() -> None:
    """The id -> row map alone, one thread: lookups of a step's ids (hits and a few misses), inserts, a rehash."""
    import time

    import torch

    from disttrain.sharding.id_map import IdMap

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("id map (disttrain/sharding/id_map.py), one thread, ids drawn from the whole int64 space:")
    for live in (250_000, 1_000_000):
        ids_map = IdMap(2 * live)
        keys = torch.randint(-2**63, 2**63 - 1, (live,), generator=gen)
        start = time.perf_counter()
        ids_map.insert(keys, torch.arange(live))
        fill = time.perf_counter() - start
        for batch in (2048, 53_248):  # one kaggle table's ids per step; all 26 tables' ids per step
            query = torch.cat([keys[torch.randint(0, live, (batch - batch // 20,), generator=gen)],
                               torch.randint(-2**63, 2**63 - 1, (batch // 20,), generator=gen)])
            ids_map.find(query)
            start = time.perf_counter()
            for _ in range(20):
                ids_map.find(query)
            per = (time.perf_counter() - start) / 20
            print(f"  {live:>9,} live (load {ids_map.size / ids_map.capacity:.2f}): find {batch:>6,} ids "
                  f"{per * 1e3:6.2f} ms ({per / batch * 1e9:5.0f} ns per id)")
        new = torch.randint(-2**63, 2**63 - 1, (2048,), generator=gen)
        start = time.perf_counter()
        ids_map.insert(new, torch.arange(2048))
        print(f"  {live:>9,} live: insert 2,048 new ids {(time.perf_counter() - start) * 1e3:.2f} ms; building it "
              f"({live:,} inserts at once) {fill * 1e3:.0f} ms")


def speed(rounds: int, steps: int) -> None:
    runs: dict[str, list[dict]] = {"fixed": [], "dynamic": []}
    for r in range(rounds):
        for name, overrides in (("fixed", []), ("dynamic", DYNAMIC)):
            runs[name].append(bench(overrides, steps))
            print(f"round {r + 1}: {name}: {runs[name][-1]['samples_per_s']:,.0f} samples/s", flush=True)
    fixed = statistics.median(s["samples_per_s"] for s in runs["fixed"])
    dynamic = statistics.median(s["samples_per_s"] for s in runs["dynamic"])
    print(f"\nmedians over {rounds} interleaved rounds (kaggle DLRM, global batch 2048, 2 ranks x 1 core, {steps} "
          "steps):")
    print(f"  fixed tables (ids < 1M)                        {fixed:>9,.0f} samples/s")
    print(f"  5 large tables dynamic, raw 64-bit ids         {dynamic:>9,.0f} samples/s   dynamic / fixed = "
          f"{dynamic / fixed:.2f}x (target >= 0.70x)")
    last = runs["dynamic"][-1]
    phases = last["breakdown"]["phases"] if last.get("breakdown") else {}
    if "dynamic_ids" in phases:
        print(f"  dynamic_ids phase (id map, admission, new rows): {phases['dynamic_ids']['median']:.2f} ms of "
              f"{last['breakdown']['step_ms']['median']:.2f} ms per step (median rank)")
    print("\nper-rank memory of the dynamic tables at the end (weights + id maps + per-row counts):")
    per_rank: dict[int, list[int]] = {}
    for table in last["dynamic_tables"].values():
        for r in table["ranks"]:
            per_rank.setdefault(r["rank"], [0, 0])
            per_rank[r["rank"]][0] += r["live"]
            per_rank[r["rank"]][1] += r["bytes"]
    for rank, (live, nbytes) in sorted(per_rank.items()):
        print(f"  rank {rank}: {live:>9,} live ids  {nbytes / 2**20:>7.1f} MiB  ({nbytes / max(live, 1):.0f} bytes per "
              f"live id; a fixed 1M-row table of dim 16 holds 61 MiB whatever it sees)")


def quality(src: Path, out: Path) -> None:
    raws = [src / f for f in ("train.csv", "dev.csv", "test.csv")]
    if not all(p.is_file() for p in raws):
        print(f"\n{src}: no Criteo sample (train.csv, dev.csv, test.csv); AUC part skipped")
        return
    data = out / "criteo-raw"
    names = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    disttrain("data", "prepare", *map(str, raws), "--out", str(data), "--split", "files", "--header", "no",
              "--delimiter", "tab", "--column-names", ",".join(names), "--label-column", "label",
              "--dense-columns", ",".join(names[1:14]), "--sparse-columns", ",".join(names[14:]),
              "--dense-transform", "log1p", "--raw-ids", "--force", "--quiet")
    meta = json.loads((data / "meta.json").read_text())
    variants = {"dynamic tables (raw ids, a row per id)": ["model.dynamic_tables=[all]"],
                "dynamic tables, admitted at the 2nd sighting": ["model.dynamic_tables=[all]",
                                                                 "model.dynamic_min_count=2"]}
    for size in HASH_SIZES:
        variants[f"fixed tables, raw ids hashed modulo {size:,}"] = [f"model.table_sizes=[{','.join([str(size)] * 26)}]"]
    print(f"\nCriteo sample ({src}): {meta['splits']['train'][1]:,} training rows, "
          f"{sum(t['distinct_train'] for t in meta['tables']):,} distinct training values over 26 features")
    print(f"{'':<46}" + "".join(f"{'seed ' + str(s):>10}" for s in SEEDS) + f"{'mean AUC':>11}")
    for label, overrides in variants.items():
        aucs = []
        for seed in SEEDS:
            run_dir = out / f"variant{list(variants).index(label)}_seed{seed}"
            disttrain("launch", "data.source=criteo", f"data.path={data}", *DLRM, *overrides, f"train.seed={seed}",
                      f"run.output_dir={run_dir}")
            aucs.append(json.loads((run_dir / "summary.json").read_text())["eval_auc"])
        print(f"{label:<46}" + "".join(f"{a:>10.4f}" for a in aucs) + f"{statistics.mean(aucs):>11.4f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "criteo-kaggle-8k"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "dynamic_tables"))
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--id-map-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    id_map_speed()
    if args.id_map_only:
        return 0
    if not args.skip_speed:
        speed(args.rounds, args.steps)
    quality(Path(args.data), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
