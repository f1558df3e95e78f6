"""What a run reports about itself: each worker's placement and resources, and `summary.json`."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import torch

from disttrain import config as config_mod
from disttrain.engine.outputs import publish, run_dir
from disttrain.engine.state import RunState
from disttrain.phases import aggregate, per_step_ms
from disttrain.phases import describe as describe_breakdown
from disttrain.runtime.allocator import loaded_allocator
from disttrain.runtime.env import socket_ifname
from disttrain.storage import join


def worker_info(env, placement: dict, device: torch.device) -> dict:
    """This worker: where it runs, how it was placed, what it uses (the launcher's report, checked here)."""
    return {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "host": socket.gethostname(),
        "addr": _route_addr(env.master_addr) if env.distributed else None,
        "socket_ifname": socket_ifname(),
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "planned_cpus": placement["plan"]["cpus"],
        "numa_node": placement["plan"]["numa_node"],
        "memory_policy": placement["memory_policy"],
        "gpu": placement["plan"]["gpu"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "env": placement["set_env"],
        "user_env": placement["user_env"],
        "allocator": loaded_allocator(),
        "max_rss_mib": _max_rss_mib(),
    }


def finish(trainer, state: RunState, final: dict[str, float]) -> dict | None:
    """Gather every rank's figures; rank 0 prints the last lines, writes `summary.json` and returns it."""
    comm = trainer.comm
    workers = comm.all_gather_object(trainer.worker_info())
    per_rank = comm.all_gather_object(
        {"rank": comm.rank, **per_step_ms(state.timed_seconds, state.timed_phases, state.timed_steps)})
    trainer.board.close()
    cpu_seconds = sum(comm.all_gather_object(state.timed_cpu_seconds))
    traces = [t for t in comm.all_gather_object(trainer.profile.trace) if t]
    dynamic = dynamic_report(comm, trainer.par.embeddings)
    if comm.rank != 0:
        return None
    if dynamic:
        trainer.log.line(describe_dynamic(dynamic))
    summary = _summary(trainer, state, final, workers=workers, per_rank=per_rank, cpu_seconds=cpu_seconds,
                       traces=traces, dynamic=dynamic)
    trained = state.step - state.first_step
    rate = (f"{summary['samples_per_s']:,.0f} samples/s" if state.timed_steps else
            f"no timed steps (all {trained} within train.warmup_steps={trainer.warmup})" if trained else
            "no step trained (train.steps=0: evaluation only)")
    trainer.log.line(
        f"done: {state.step} steps, {rate} (global batch {trainer.global_batch}, "
        f"{comm.world_size} ranks), {trainer.test_split} AUC {summary['eval_auc']:.4f} "
        + (f"(oracle {summary['oracle_auc']:.4f})" if "oracle_auc" in final else "")
        + (f", train loss {state.last_loss:.5f}" if trained else "")
    )
    if summary["breakdown"]:
        trainer.log.line(describe_breakdown(summary["breakdown"]))
    path = run_dir(trainer.cfg) / "summary.json"
    write_json(path, summary)
    publish(trainer.cfg)
    trainer.log.line(f"summary: {join(trainer.cfg.run.output_dir, 'summary.json')}")
    return summary


def _summary(trainer, state: RunState, final: dict, *, workers, per_rank, cpu_seconds, traces, dynamic) -> dict:
    cfg, batch = trainer.cfg, trainer.global_batch
    rate = state.timed_steps * batch / state.timed_seconds if state.timed_seconds else float("nan")
    plan = trainer.plan.to_json()
    return {
        "model": cfg.model.name,
        "flavor": cfg.model.flavor,
        "world_size": trainer.comm.world_size,
        "launcher": trainer.launcher,
        "steps": state.step,
        "global_batch_size": batch,
        "samples_per_s": rate,
        # samples per CPU-second: all ranks' CPU time (every thread) in the timed steps
        "samples_per_cpu_s": state.timed_steps * batch / cpu_seconds if cpu_seconds else float("nan"),
        "timed_steps": state.timed_steps,
        "skipped_steps": state.skipped_steps,
        "warmup_steps": trainer.warmup,
        "train_loss": state.last_loss,
        "eval_auc": final.get("auc", float("nan")),
        "eval_logloss": final.get("logloss", float("nan")),
        "eval_accuracy": final.get("accuracy", float("nan")),
        "oracle_auc": final.get("oracle_auc", float("nan")),
        "eval_split": trainer.test_split,
        "val_auc": state.final_val.get("auc"),
        "val_logloss": state.final_val.get("logloss"),
        "val_accuracy": state.final_val.get("accuracy"),
        "eval_samples": final.get("samples", 0),
        "target_auc": cfg.train.target_auc or None,
        "reached_target_at_step": state.reached_target_at,
        "first_step": state.first_step,  # where this run started (a resume's step; 0 when fresh)
        "data": trainer.data_position(state.step),
        "precision": cfg.train.precision,
        "traces": traces,
        "breakdown": aggregate(per_rank) if state.timed_steps else None,
        "plan": {"tables": [{k: t[k] for k in ("name", "type", "ranks", "rows", "dim", "shards")} for t in plan["tables"]],
                 "ranks": plan["ranks"], "embedding_dtype": plan["embedding_dtype"]},
        "workers": workers,
        "dynamic_tables": dynamic or None,
        "history": state.history,
        "config": config_mod.to_dict(cfg),
    }


def dynamic_report(comm, embeddings) -> dict:
    """Collective: per dynamic table, the totals over ranks (live, admitted, evicted, candidates, unknown) and each
    rank's own figures with its bytes; {} without dynamic tables (then nothing is exchanged)."""
    if not embeddings.plan_has_dynamic:
        return {}
    per_rank = comm.all_gather_object(embeddings.dynamic_stats())
    out: dict[str, dict] = {}
    for rank, tables in enumerate(per_rank):
        for name, figures in tables.items():
            entry = out.setdefault(name, {"live": 0, "admitted": 0, "evicted": 0, "candidates": 0, "unknown": 0,
                                          "capacity_per_rank": figures["capacity"], "ranks": []})
            for key in ("live", "admitted", "evicted", "candidates", "unknown"):
                entry[key] += figures[key]
            entry["ranks"].append({"rank": rank, **{k: v for k, v in figures.items() if k != "capacity"}})
    return out


def describe_dynamic(report: dict) -> str:
    return "dynamic tables: " + "; ".join(
        f"{name} {t['live']:,} live ({t['admitted']:,} admitted, {t['evicted']:,} evicted"
        + (f", {t['candidates']:,} candidates" if t["candidates"] else "") + ")" for name, t in report.items())


def _route_addr(master_addr: str) -> str | None:
    """This host's address on the route to the master (the one the other ranks see); no packet is sent."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((master_addr, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    os.replace(tmp, path)
