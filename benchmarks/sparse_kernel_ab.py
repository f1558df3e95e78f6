"""`train.sparse_kernel` A/B: `disttrain bench` (bench_kaggle) with torch's row updates and with the compiled
ones (`auto`: SGD compiled), fp32 and bf16, interleaved rounds; samples/s, the optimizer and lookup phases, and
whether the losses are equal (they must be: SGD's kernel is bitwise torch's).

    python benchmarks/sparse_kernel_ab.py [ROUNDS]     (results_2026-12-03_compare.txt holds a run)
"""
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PY = sys.executable
OUT = Path(tempfile.mkdtemp(prefix="sparse-kernel-ab-"))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
res = {}
for r in range(rounds):
    for precision in ("fp32", "bf16"):
        for kernel in ("torch", "auto"):
            out = OUT / f"{precision}-{kernel}"
            p = subprocess.run([PY, "-m", "disttrain", "bench", f"train.precision={precision}", f"train.sparse_kernel={kernel}",
                                f"run.output_dir={out}"], capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-2000:]
            s = json.loads((out / "summary.json").read_text())
            ph = {k: round(v["median"], 2) for k, v in s["breakdown"]["phases"].items()}
            res.setdefault((precision, kernel), []).append((s["samples_per_s"], ph, s["train_loss"]))
            print(f"round {r+1} {precision} {kernel}: {s['samples_per_s']:,.0f} samples/s opt {ph['optimizer']} ms lookup {ph['embedding_lookup']} dense fwd {ph['dense_forward']} bwd {ph['dense_backward']} a2a {ph['all_to_all']} loss {s['train_loss']}", flush=True)
for precision in ("fp32", "bf16"):
    t = [x[0] for x in res[(precision, "torch")]]
    a = [x[0] for x in res[(precision, "auto")]]
    to = statistics.median(x[1]["optimizer"] for x in res[(precision, "torch")])
    ao = statistics.median(x[1]["optimizer"] for x in res[(precision, "auto")])
    print(f"{precision}: torch median {statistics.median(t):,.0f} best {max(t):,.0f}; compiled median {statistics.median(a):,.0f} best {max(a):,.0f}; "
          f"ratio medians {statistics.median(a)/statistics.median(t):.3f} best {max(a)/max(t):.3f}; optimizer phase {to} -> {ao} ms; "
          f"losses equal: {res[(precision,'torch')][0][2] == res[(precision,'auto')][0][2]}")
