"""What rank 0 prints: one line per interval, evaluation and checkpoint, the workers' placement table."""

from __future__ import annotations

import sys

from disttrain.runtime.topology import format_cpus


class Logger:
    """Rank 0 prints; other ranks stay quiet. A progress line is drawn on interactive terminals."""

    def __init__(self, rank: int, *, progress: bool):
        self.active = rank == 0
        self.progress = progress and self.active and sys.stdout.isatty()

    def line(self, text: str) -> None:
        if self.active:
            print(("\r\x1b[K" if self.progress else "") + text, flush=True)

    def bar(self, step: int, total: int) -> None:
        if self.progress:
            filled = int(30 * step / max(total, 1))
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] step {step}/{total}", end="", flush=True)


def workers_table(workers: list[dict]) -> list[str]:
    """Each rank's host, pid, CPUs, NUMA node, memory policy, threads and allocator."""
    lines = [f"{'rank':<5}{'host':<14}{'pid':>8}  {'cpus':<12}{'numa':<6}{'memory':<12}{'threads':>7}  allocator"]
    for w in workers:
        numa = w["numa_node"] if not isinstance(w["numa_node"], list) else format_cpus(w["numa_node"])
        lines.append(f"{w['rank']:<5}{w['host'][:13]:<14}{w['pid']:>8}  {format_cpus(w['cpus']):<12}{numa!s:<6}"
                     f"{w['memory_policy']:<12}{w['threads']:>7}  {w['allocator']}")
    return lines


def evaluation_line(split: str, step: int, metrics: dict[str, float]) -> str:
    oracle = f" (planted-model oracle {metrics['oracle_auc']:.4f})" if "oracle_auc" in metrics else ""
    return (f"{split} @ step {step}: auc {metrics['auc']:.4f}{oracle}"
            f"  logloss {metrics['logloss']:.5f}  accuracy {metrics['accuracy']:.4f}  on {metrics['samples']} samples")
