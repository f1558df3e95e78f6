"""The planner's cost model against measured runs: predicted vs measured step time (`make scale-model`).

For each layout: `disttrain probe` measures the machine's rates with that layout's own workers (so ranks that
share cores measure shared cores), `disttrain plan --simulate` predicts the step from them, and a `disttrain
launch` of the same config measures it. Layouts:
- 1, 2 and 3 ranks on this host (3 ranks on 2 cores share them; the probe measures that too);
- two "nodes": network namespaces joined by a veth pair whose both ends are limited by a token bucket
  (`tc qdisc ... tbf rate RATE`), one torchrun node of one rank in each (needs root and `ip`; skipped otherwise).
Kaggle DLRM shapes (`bench_kaggle`: tables capped at 1M rows, table-wise, SGD), 1024 samples per rank.

    python benchmarks/scale_model.py [--rate 1gbit] [--steps 60] [--worlds 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_two_node_netns import Namespaces  # noqa: E402 - the veth pair the two-node test builds

PER_RANK = 1024


def _cli(*args: str, prefix: list[str] | None = None, env: dict | None = None, wait: bool = True):
    cmd = [*(prefix or []), sys.executable, "-m", "disttrain.cli", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("OMP_NUM_THREADS", None)
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT)
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:6])} ... failed:\n{out.stderr[-3000:]}")
    return out.stdout


def _common(world: int, steps: int) -> list[str]:
    return ["bench_kaggle", f"train.batch_size={PER_RANK * world}", f"train.steps={steps}", "train.warmup_steps=10",
            "data.eval_batches=1", "launch.allow_oversubscribe=true", "run.progress=false", "run.tensorboard=false"]


def predicted(common: list[str], probe: Path, world: int, local: int) -> dict:
    text = _cli("plan", *common, f"cluster.probe={probe}", f"cluster.ranks_per_node={local}", "--simulate",
                str(world), "--batch-per-rank", str(PER_RANK), "--json")
    return json.loads(text)["worlds"][0]


def local_layout(world: int, steps: int, tmp: Path) -> tuple[dict, float]:
    common = _common(world, steps) + [f"launch.nproc_per_node={world}"]
    _cli("probe", *common, f"run.output_dir={tmp}/probe{world}")
    pred = predicted(common, tmp / f"probe{world}" / "probe.json", world, world)
    _cli("launch", *common, f"run.output_dir={tmp}/run{world}")
    summary = json.loads((tmp / f"run{world}" / "summary.json").read_text())
    return pred, summary["global_batch_size"] / summary["samples_per_s"] * 1e3


def two_nodes(steps: int, rate: str, tmp: Path) -> tuple[dict, float, str] | None:
    if os.geteuid() != 0:
        return None
    netns = Namespaces().__enter__()
    try:
        for node in (0, 1):
            subprocess.run([*netns.prefix(node), "tc", "qdisc", "add", "dev", netns.ifaces[node], "root", "tbf",
                            "rate", rate, "burst", "32kbit", "latency", "400ms"], check=True)
        common = _common(2, steps) + ["launch.launcher=torchrun", "launch.nnodes=2", "launch.nproc_per_node=1",
                                      "launch.timeout_s=300"]

        def both(verb: str, out: str, env: dict | None = None) -> None:
            procs = []
            for node in (0, 1):
                cpus = f"[{node % len(os.sched_getaffinity(0))}]"
                procs.append(_cli(verb, *common, f"launch.rdzv_endpoint={netns.addrs[0]}:29411",
                                  f"launch.node_rank={node}", f"launch.rdzv_is_host={'true' if node == 0 else 'false'}",
                                  f"launch.local_addr={netns.addrs[node]}", f"launch.socket_ifname={netns.ifaces[node]}",
                                  "launch.affinity=explicit", f"launch.cpu_lists={cpus}", f"run.output_dir={tmp}/{out}{node}",
                                  prefix=netns.prefix(node), env=env, wait=False))
            for p in procs:
                stdout, stderr = p.communicate(timeout=900)
                if p.returncode != 0:
                    raise RuntimeError(f"{verb} on two nodes failed:\n{stderr[-3000:]}")

        both("probe", "probe")
        probe = next(p for p in (tmp / "probe0" / "probe.json", tmp / "probe1" / "probe.json") if p.is_file())
        pred = predicted(common, probe, 2, 1)
        both("launch", "run")
        summary = next(json.loads(p.read_text()) for p in (tmp / "run0" / "summary.json", tmp / "run1" / "summary.json")
                       if p.is_file())
        return pred, summary["global_batch_size"] / summary["samples_per_s"] * 1e3, json.loads(probe.read_text())
    finally:
        netns.__exit__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="1,2,3")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rate", default="1gbit", help="the veth pair's token-bucket rate (tc tbf)")
    parser.add_argument("--out", default="", help="also write the rows as simulate.json here (disttrain report)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in map(int, args.worlds.split(",")):
            pred, measured = local_layout(world, args.steps, Path(tmp))
            rows.append((f"{world} rank(s), one host", pred, measured))
            print(f"done: {rows[-1][0]}", file=sys.stderr, flush=True)
        netns = two_nodes(args.steps, args.rate, Path(tmp))
        if netns:
            pred, measured, probe = netns
            m = probe["machine"]
            rows.append((f"2 nodes x 1 rank, veth at {args.rate} (probed {m.get('inter_gbs', 0):.3f} GB/s, "
                         f"{m.get('inter_latency_us', 0):.0f} us)", pred, measured))
        else:
            print("two-node layout skipped: network namespaces need root", file=sys.stderr)
    print(f"{'layout':<62}{'predicted ms':>13}{'(compute':>10}{'exchange':>9}{'allred)':>8}{'measured ms':>12}"
          f"{'error':>8}")
    for name, pred, measured in rows:
        error = pred["step_ms"] / measured - 1
        print(f"{name:<62}{pred['step_ms']:>13.2f}{pred['compute_ms']:>10.2f}{pred['exchange_ms']:>9.2f}"
              f"{pred['allreduce_ms']:>8.2f}{measured:>12.2f}{error:>+8.1%}")
        pred["measured_step_ms"] = measured
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "simulate.json").write_text(json.dumps(
            {"model": "dlrm/kaggle", "batch_per_rank": PER_RANK, "machine": {}, "worlds": [r[1] for r in rows]},
            indent=2))


if __name__ == "__main__":
    main()
