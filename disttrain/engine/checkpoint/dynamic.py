"""Dynamic tables in checkpoints: each rank writes its ids, rows, optimizer state, counts and ages; a loading rank
takes, from every saved part whose id buckets overlap its own, the ids whose bucket it owns (resharding by bucket).

Per saved part (`shard_key(table, bucket range, columns)`): `ids` [n] (id order), `weight` [n, dim] fp32,
`opt/<state>` ([n, dim] or [n]), `counts`, `last` (last-seen step), and the not yet admitted candidates
(`cand/ids`, `cand/counts`, `cand/last`). The record in meta.json says `dynamic: true`, `live`, `candidates`,
`step` and the part's counters.
"""

from __future__ import annotations

import torch

from disttrain.engine.checkpoint.layout import shard_key
from disttrain.errors import DataError
from disttrain.ranges import overlap
from disttrain.tables import bucket_of

ROW_FIELDS = ("counts", "last")


def write_parts(collection, sparse, rank: int, state_dict: dict, kinds: dict[str, bool]) -> list[dict]:
    """Add this rank's dynamic table parts to `state_dict`; returns their records."""
    records = []
    for table, shard, key, store in collection.dynamic_shards():
        name = shard_key(table.name, shard.rows, shard.cols)
        saved = store.export()
        index = saved["rows/index"]
        state_dict[f"{name}/ids"] = saved["rows/ids"].cpu()
        state_dict[f"{name}/weight"] = store.weight.index_select(0, index).float().cpu()
        opt_state = sparse.state_for(key, store.weight)
        for state_name in kinds:
            state_dict[f"{name}/opt/{state_name}"] = opt_state[state_name].index_select(0, index).cpu()
        for field in ROW_FIELDS:
            state_dict[f"{name}/{field}"] = saved[f"rows/{field}"].cpu()
            state_dict[f"{name}/cand/{field}"] = saved[f"candidates/{field}"].cpu()
        state_dict[f"{name}/cand/ids"] = saved["candidates/ids"].cpu()
        records.append({"table": table.name, "rows": list(shard.rows), "cols": list(shard.cols), "rank": rank,
                        "key": name, "dynamic": True, "live": int(index.numel()),
                        "candidates": int(saved["candidates/ids"].numel()), "step": store.step,
                        "stats": {"admitted": store.stats.admitted, "evicted": store.stats.evicted}})
    return records


def check_kinds(meta: dict, path, plan) -> None:
    """The tables dynamic here must be the tables saved dynamic, and the reverse; one line naming them."""
    saved = {r["table"] for r in meta["shards"] if r.get("dynamic")}
    here = {t.name for t in plan.tables if t.dynamic}
    if saved != here:
        only_saved, only_here = sorted(saved - here), sorted(here - saved)
        parts = ([f"dynamic in the checkpoint, fixed here: {', '.join(only_saved)}"] if only_saved else []) + \
                ([f"fixed in the checkpoint, dynamic here: {', '.join(only_here)}"] if only_here else [])
        raise DataError(f"checkpoint {path} does not fit this model: tables {'; '.join(parts)}; expected "
                        "model.dynamic_tables as when it was saved")


def needed_ranks(records: list[dict], collection) -> set[int]:
    """The saved ranks whose parts overlap this rank's dynamic buckets."""
    mine = {t.name: s.rows for t, s, _key, _store in collection.dynamic_shards()}
    return {r["rank"] for r in records if r.get("dynamic") and r["table"] in mine
            and overlap(tuple(r["rows"]), mine[r["table"]])}


def load_parts(reader, records_by_table: dict[str, list[dict]], collection, sparse, kinds: dict[str, bool],
               same_world: bool, rank: int) -> None:
    """Fill this rank's dynamic table parts from the saved parts overlapping their buckets."""
    for table, shard, key, store in collection.dynamic_shards():
        lo, hi = shard.rows
        saved = records_by_table.get(table.name, [])
        store.step = max((rec["step"] for rec in saved), default=0)
        for rec in saved:
            if not overlap(tuple(rec["rows"]), (lo, hi)):
                continue
            n, m, name = rec["live"], rec["candidates"], rec["key"]

            def get(field, count, shape=(), dtype=torch.int64, rec=rec, name=name):
                return reader.get(rec["rank"], f"{name}/{field}", [count, *shape], dtype=dtype)

            ids = get("ids", n)
            keep = _owned(ids, lo, hi)
            cand_ids = get("cand/ids", m)
            cand_keep = _owned(cand_ids, lo, hi)
            index = store.restore(
                ids=ids[keep], weights=get("weight", n, (table.dim,), torch.float32)[keep],
                counts=get("counts", n)[keep], last=get("last", n)[keep], cand_ids=cand_ids[cand_keep],
                cand_counts=get("cand/counts", m)[cand_keep], cand_last=get("cand/last", m)[cand_keep])
            opt_state = sparse.state_for(key, store.weight)
            for state_name, has_cols in kinds.items():
                piece = get(f"opt/{state_name}", n, (table.dim,) if has_cols else (), torch.float32)[keep]
                opt_state[state_name][index] = piece.to(store.weight.device)
            if same_world and rec["rank"] == rank and tuple(rec["rows"]) == (lo, hi):
                store.stats.admitted, store.stats.evicted = rec["stats"]["admitted"], rec["stats"]["evicted"]
        if not same_world and shard == table.shards[0]:  # resharded: the first part carries the table's totals
            store.stats.admitted = sum(rec["stats"]["admitted"] for rec in saved)
            store.stats.evicted = sum(rec["stats"]["evicted"] for rec in saved)


def _owned(ids: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    buckets = bucket_of(ids)
    return (buckets >= lo) & (buckets < hi)
