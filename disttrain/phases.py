"""Where a training step's time goes, measured cheaply: timers around the phases, not a profiler.

Every phase is timed *exclusively*: entering a nested phase pauses the one around it, so the phases of a step
add up to the time spent inside them and nothing is counted twice. The phases:

    data_wait         waiting for the next batch (the prefetcher's queue)
    embedding_lookup  the sharded embedding layer's own work, forward and backward: routing ids, lookups, pooling,
                      combining shards, turning bag gradients into row gradients
    dynamic_ids       dynamic tables: raw ids to rows (hash map lookups, admission, eviction, new rows)
    all_to_all        the embedding exchange: the forward all-to-alls and the wait for the backward one, and the
                      all-gather of replicated tables' row gradients
    dense_forward     the model's forward and the loss outside the embedding layer (MLPs, interactions, ...)
    dense_backward    backward outside the embedding layer
    all_reduce        the dense gradients' all-reduce (launching the buckets, waiting for them) and the global
                      BatchNorm/Dice statistics
    optimizer         sparse row updates and the dense optimizer step

One worker is one process, so the timer is process-wide (`TIMER`). Cost: two `perf_counter` calls per phase
entry, about twenty per step. On a GPU the phases are host-side times (kernels run asynchronously).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("data_wait", "embedding_lookup", "dynamic_ids", "all_to_all", "dense_forward", "dense_backward", "all_reduce",
          "optimizer")


class PhaseTimer:
    def __init__(self):
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list] = []  # [phase, time it (re)started]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            outer = self._stack[-1]
            self.totals[outer[0]] += now - outer[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            inner = self._stack.pop()
            self.totals[inner[0]] += end - inner[1]
            if self._stack:
                self._stack[-1][1] = end

    def snapshot(self) -> dict[str, float]:
        """Seconds per phase so far (the phase currently open counts up to its last pause)."""
        return dict(self.totals)


TIMER = PhaseTimer()
phase = TIMER


def since(before: dict[str, float]) -> dict[str, float]:
    """Seconds per phase since `before` (a `snapshot()`)."""
    now = TIMER.snapshot()
    return {name: now[name] - before[name] for name in PHASES}


def per_step_ms(step_seconds: float, phase_seconds: dict[str, float], steps: int) -> dict:
    """One rank's {"step_ms", "phases"}: mean milliseconds per step over `steps` steps."""
    steps = max(steps, 1)
    return {"step_ms": step_seconds / steps * 1e3, "phases": {k: v / steps * 1e3 for k, v in phase_seconds.items()}}


def aggregate(per_rank: list[dict]) -> dict:
    """`summary.json` `breakdown` from each rank's {"step_ms": ..., "phases": {phase: ms per step}}: min / median /
    max over ranks per phase, and the slowest rank: the one with the most time outside communication and data
    waits (its peers spend that difference waiting for it in the collectives)."""
    import statistics

    def stats(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    waiting = ("all_to_all", "all_reduce", "data_wait")
    busy = [r["step_ms"] - sum(r["phases"][p] for p in waiting) for r in per_rank]
    slowest = max(range(len(per_rank)), key=lambda i: busy[i])
    per_rank = [{**r, "busy_ms": b} for r, b in zip(per_rank, busy)]
    return {
        "unit": "ms per step",
        "step_ms": stats([r["step_ms"] for r in per_rank]),
        "phases": {p: stats([r["phases"][p] for r in per_rank]) for p in PHASES},
        "covered": stats([sum(r["phases"].values()) / r["step_ms"] if r["step_ms"] else 0.0 for r in per_rank]),
        "slowest_rank": slowest,
        "busy_ms": stats(busy),
        "per_rank": per_rank,
    }


def describe(breakdown: dict) -> str:
    lines = [f"step-time breakdown, ms per step over ranks (min / median / max); the phases cover "
             f"{breakdown['covered']['median']:.1%} of the step"]
    for name in PHASES:
        s = breakdown["phases"][name]
        lines.append(f"  {name:<17}{s['min']:>9.2f}{s['median']:>9.2f}{s['max']:>9.2f}")
    s = breakdown["step_ms"]
    lines.append(f"  {'step':<17}{s['min']:>9.2f}{s['median']:>9.2f}{s['max']:>9.2f}")
    busy = breakdown["busy_ms"]
    if len(breakdown["per_rank"]) > 1:
        rank = breakdown["slowest_rank"]
        lines.append(f"  slowest rank: {rank} (busy {breakdown['per_rank'][rank]['busy_ms']:.2f} ms per step outside "
                     f"communication and data waits; median {busy['median']:.2f}): the others wait for it")
    return "\n".join(lines)
