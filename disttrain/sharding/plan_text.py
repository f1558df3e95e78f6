"""A plan as text that stays readable at any scale: one line per table (its type, its ranks as ranges, its rows
per shard), then the ranks (every rank up to `RANK_LINES`; beyond, min / median / max and the outliers).
`--json` (`ShardingPlan.to_json`) keeps every shard."""

from __future__ import annotations

from statistics import median

from disttrain.tables import NUM_BUCKETS

RANK_LINES = 16  # worlds up to this size list every rank
SHARD_LINES = 4  # tables with up to this many shards list each shard
OUTLIERS = 8


def ranges(ranks: list[int]) -> str:
    """Sorted ranks as ranges.

    >>> ranges([0, 1, 2, 3, 7, 9, 10])
    '0-3,7,9-10'
    """
    out, ranks = [], sorted(set(ranks))
    start = prev = None
    for r in ranks + [None]:
        if start is not None and (r is None or r != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if r is not None and start is None:
            start = r
        prev = r
    return ",".join(out)


def _sizes(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}..{hi:,}"


def table_line(table, capacity: int) -> str:
    shards = table.shards
    if table.dynamic:
        per = [table.expected_rows(s, capacity) for s in shards]
        where = (", ".join(f"{s.rank}: {s.num_rows} buckets, ~{n} rows" for s, n in zip(shards, per))
                 if len(shards) <= SHARD_LINES else
                 f"ranks {ranges(table.ranks)}: {_sizes([s.num_rows for s in shards])} of {NUM_BUCKETS} buckets, "
                 f"~{_sizes(per)} rows each")
        return f"{table.name:<10}{'dynamic':>12}{table.dim:>5}  {table.type.value:<15}{where}"
    if len(shards) <= SHARD_LINES:
        where = ", ".join(f"{s.rank}: {s.num_rows}x{s.num_cols}" for s in shards)
    else:
        where = (f"{len(shards)} shards on ranks {ranges(table.ranks)}: {_sizes([s.num_rows for s in shards])} rows"
                 f" x {_sizes([s.num_cols for s in shards])} cols")
    return f"{table.name:<10}{table.num_rows:>12}{table.dim:>5}  {table.type.value:<15}{where}"


def rank_lines(ranks: list[dict]) -> list[str]:
    header = f"{'rank':<6}{'weights MiB':>12}{'optimizer MiB':>15}{'total MiB':>11}{'shards':>8}"

    def line(r: dict, label: str | None = None) -> str:
        return (f"{label or r['rank']!s:<6}{r['weight_bytes'] / 2**20:>12.1f}{r['optimizer_bytes'] / 2**20:>15.1f}"
                f"{r['bytes'] / 2**20:>11.1f}{r['num_shards']:>8}")

    if len(ranks) <= RANK_LINES:
        return [header] + [line(r) for r in ranks]
    totals = [r["bytes"] for r in ranks]
    mid = median(totals)
    lines = [f"{len(ranks)} ranks, total MiB min {min(totals) / 2**20:,.1f} / median {mid / 2**20:,.1f} / max "
             f"{max(totals) / 2**20:,.1f} (max/min {max(totals) / max(min(totals), 1):.3f}); shards per rank "
             f"{_sizes([r['num_shards'] for r in ranks])}"]
    far = sorted(ranks, key=lambda r: -abs(r["bytes"] - mid))[:OUTLIERS]
    far = [r for r in far if abs(r["bytes"] - mid) > 0.02 * mid]
    if far:
        lines += ["outliers (more than 2% from the median):", header]
        lines += [line(r) for r in sorted(far, key=lambda r: r["rank"])]
    return lines


def describe(plan) -> str:
    lines = [f"sharding plan for {plan.world_size} rank(s), optimizer state: {plan.optimizer}"
             + (f", {plan.embedding_dtype} rows" if plan.embedding_dtype != "fp32" else "")]
    lines.append(f"{'table':<10}{'rows':>12}{'dim':>5}  {'type':<15}shards (rank: rows x cols)")
    lines += [table_line(t, plan.dynamic.capacity) for t in plan.tables]
    if any(t.dynamic for t in plan.tables):
        d = plan.dynamic
        lines.append(f"dynamic tables: raw 64-bit ids in {NUM_BUCKETS} buckets; rows expected = the declared "
                     f"rows; capacity {d.capacity or 'unbounded'} rows per rank, admitted after {d.min_count} "
                     f"sighting(s), " + (f"evicted after {d.ttl_steps} unseen steps" if d.ttl_steps
                                         else "no time-to-live"))
    lines += rank_lines(plan.rank_bytes())
    return "\n".join(lines)
