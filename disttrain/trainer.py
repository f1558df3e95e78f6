"""The training loop every launcher ends in: build, shard, train, evaluate, write `summary.json`."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
from contextlib import nullcontext as _nothing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F

from disttrain import config as config_mod
from disttrain.board import Board
from disttrain.collectives import Collectives, SingleProcess, TorchCollectives
from disttrain.data.prefetch import Prefetcher
from disttrain.data.sources import apply_data_shapes, eval_batches, eval_splits, make_source
from disttrain.data.synthetic import Batch
from disttrain.errors import ConfigError
from disttrain.metrics import evaluate
from disttrain.models import MODELS
from disttrain.parallelize import Parallelized, parallelize
from disttrain.phases import PHASES, TIMER, aggregate, per_step_ms, phase, since
from disttrain.phases import describe as describe_breakdown
from disttrain.runtime.allocator import loaded_allocator
from disttrain.runtime.env import RUN_ID, WorkerEnv
from disttrain.sharding.planner import plan_sharding


@dataclass
class RunState:
    step: int = 0
    timed_steps: int = 0
    timed_seconds: float = 0.0
    timed_cpu_seconds: float = 0.0  # this process's CPU time (all threads) in the timed steps
    interval_loss: float = 0.0
    interval_samples: int = 0
    interval_start: float = field(default_factory=time.perf_counter)
    interval_preds: list[torch.Tensor] = field(default_factory=list)
    interval_labels: list[torch.Tensor] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    last_loss: float = float("nan")
    last_local_loss: float = 0.0
    reached_target_at: int | None = None
    final_val: dict = field(default_factory=dict)
    # Seconds per phase (disttrain.phases) in the timed steps, and in this log interval's steps.
    timed_phases: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    interval_phases: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    interval_step_seconds: float = 0.0


def training_loss(model, batch: Batch, global_batch: int, forward_context=_nothing) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, fp32 logits): this rank's log loss (scaled by the model's `ctr_loss_scale`) plus any loss term the
    model returns beside its logits (DIEN's auxiliary loss), divided by the *global* batch so that the ranks'
    gradients add up to the single-process gradient. `forward_context` wraps the forward pass (autocast)."""
    with forward_context():
        out = model(batch.dense, batch.sparse)
    logits, extra = out if isinstance(out, tuple) else (out, None)
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") * getattr(
        model, "ctr_loss_scale", 1.0)
    if extra is not None:
        loss = loss + extra
    return loss / global_batch, logits


def check_world(cfg: config_mod.Config, world_size: int) -> None:
    if cfg.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: got {cfg.train.batch_size}, expected a multiple of the world size {world_size}"
        )


def build_plan(cfg: config_mod.Config, world_size: int):
    """The plan for this config and world size, without building the model's weights."""
    check_world(cfg, world_size)
    apply_data_shapes(cfg)
    model = MODELS[cfg.model.name](cfg, embedding_device="meta")
    plan = plan_sharding(
        model.tables,
        world_size=world_size,
        strategy=cfg.sharding.strategy,
        overrides=cfg.sharding.tables,
        num_column_shards=cfg.sharding.num_column_shards,
        optimizer=cfg.train.optimizer,
        embedding_dtype=cfg.model.embedding_dtype,
    )
    return model, plan


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


class Trainer:
    def __init__(
        self,
        cfg: config_mod.Config,
        env: WorkerEnv,
        comm: Collectives,
        *,
        launcher: str,
        placement: dict,
        device: torch.device | None = None,
    ):
        self.cfg, self.env, self.comm, self.launcher, self.placement = cfg, env, comm, launcher, placement
        self.device = device or torch.device("cpu")
        self.log = Logger(env.rank, progress=cfg.run.progress)
        model, self.plan = build_plan(cfg, env.world_size)
        self.par: Parallelized = parallelize(
            model, plan=self.plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=cfg.train.seed,
            device=self.device,
        )
        self.model = self.par.model
        self.data = make_source(cfg, model.tables, comm=comm, rank=env.rank)
        self.val_split, self.test_split = eval_splits(cfg)
        self.eval_every = cfg.train.eval_every
        if cfg.train.target_auc and not self.eval_every:  # a target needs evaluations: once per epoch
            self.eval_every = getattr(self.data, "steps_per_epoch", 0) or cfg.train.log_every
        self.global_batch = cfg.train.batch_size
        self.autocast = lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,  # noqa: E731
                                               enabled=cfg.train.precision == "bf16")
        self._pool: dict[int, Batch] = {}
        self.board = Board(cfg.run.output_dir, enabled=cfg.run.tensorboard and env.rank == 0)
        self.started = time.perf_counter()
        steps = cfg.train.steps
        self.warmup = cfg.train.warmup_steps if cfg.train.warmup_steps >= 0 else min(5, steps // 5)

    def _batch(self, step: int, split: str = "train") -> Batch:
        cycle = self.cfg.data.cycle_batches
        if split == "train" and cycle:
            if step % cycle not in self._pool:
                self._pool[step % cycle] = self.data.batch(
                    step % cycle, rank=self.env.rank, world_size=self.env.world_size
                ).to(self.device)
            return self._pool[step % cycle]
        return self.data.batch(step, rank=self.env.rank, world_size=self.env.world_size, split=split).to(self.device)

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; the loss is the local sum over the *global* batch size, so gradients add up across ranks."""
        with phase("optimizer"):
            self.par.zero_grad()
        with phase("dense_forward"):
            loss, logits = training_loss(self.model, batch, self.global_batch, self.autocast)
        with phase("dense_backward"):
            loss.backward()
        with phase("optimizer"):
            self.par.step()
        return loss.detach(), logits.detach()

    def run(self) -> dict | None:
        cfg, state = self.cfg, RunState()
        self.log.line(f"model {cfg.model.name}/{cfg.model.flavor}: {len(self.model.tables)} tables, "
                      f"world size {self.env.world_size}, launcher {self.launcher}")
        self.log.line(self.plan.describe())
        for note in getattr(self.data, "notes", []):
            self.log.line(f"data: {note}")
        self._log_workers(self.comm.all_gather_object(self.worker_info()))
        first = self._resume(state)
        batches = Prefetcher(self._batch, first, cfg.train.steps, depth=3)
        # Injected faults (tests of restarts) fire in a fresh run only, never after a resume.
        fault_step, fault_kind = _injected_fault(self.env.rank) if first == 0 else (-1, "")
        profile_first = first + self.warmup if cfg.train.profile_steps else -1
        profile_last = min(profile_first + cfg.train.profile_steps, cfg.train.steps) - 1
        profiler = None
        try:
            for step in range(first, cfg.train.steps):
                if step == fault_step and fault_kind != "checkpoint":
                    _die(fault_kind)
                if step == profile_first:
                    profiler = self._start_profiler()
                phases_before = TIMER.snapshot()
                start, cpu_start = time.perf_counter(), time.process_time()
                with phase("data_wait"):
                    batch = next(batches)
                with torch.profiler.record_function(f"step {step + 1}") if profiler else _nothing():
                    loss, logits = self.train_step(batch)
                elapsed = time.perf_counter() - start
                step_phases = since(phases_before)
                for name, seconds in step_phases.items():
                    state.interval_phases[name] += seconds
                state.interval_step_seconds += elapsed
                state.step = step + 1
                if profiler is not None and step == profile_last:
                    self._write_trace(profiler, profile_first, step)
                    profiler = None
                elif profiler is None and step - first >= self.warmup and not profile_first <= step <= profile_last:
                    state.timed_steps += 1
                    state.timed_seconds += elapsed
                    for name, seconds in step_phases.items():
                        state.timed_phases[name] += seconds
                    state.timed_cpu_seconds += time.process_time() - cpu_start
                state.last_local_loss = float(loss)
                state.interval_loss += state.last_local_loss
                state.interval_samples += batch.labels.numel()
                state.interval_preds.append(torch.sigmoid(logits))
                state.interval_labels.append(batch.labels)
                self.log.bar(state.step, cfg.train.steps)
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                    self._log_interval(state)
                reached = False
                if self.eval_every and state.step % self.eval_every == 0 and state.step != cfg.train.steps:
                    metrics = self.evaluate(self.val_split)
                    self._log_eval(state, metrics, self.val_split)
                    reached = self._record_eval(state, metrics)
                    state.interval_start = time.perf_counter()
                every = cfg.checkpoint.every_steps
                if cfg.checkpoint.dir and (state.step == cfg.train.steps or reached or every and state.step % every == 0):
                    self._save(state, crash=fault_kind == "checkpoint" and state.step == fault_step)
                    state.interval_start = time.perf_counter()
                if reached:
                    break
        finally:
            batches.close()
            if profiler is not None:
                profiler.__exit__(None, None, None)
        if self.val_split != self.test_split:
            state.final_val = self.evaluate(self.val_split)
            self._log_eval(state, state.final_val, self.val_split)
        final = self.evaluate(self.test_split)
        self._log_eval(state, final, self.test_split)
        return self._summary(state, final)

    @torch.no_grad()
    def serve(self, mode: str, iterations: int, exact_max_length: int = 0) -> dict | None:
        """`disttrain infer --nproc N`: the checkpoint in `train.resume`, sharded by this run's plan, in one of
        the inference modes; every rank takes its part of each global batch. Returns the figures on rank 0.

        throughput: back-to-back global batches, recommendations/second from the slowest rank's wall time;
        latency: global batches of one request per rank, started together, each timed to the slowest rank;
        accuracy: the final split's AUC, log loss and accuracy (the training run's final evaluation)."""
        state = RunState()
        self._resume(state)
        if exact_max_length:
            self.data.exact_history = exact_max_length
        out = {"step": state.step, "world_size": self.env.world_size, "plan": self.plan.to_json(),
               "workers": self.comm.all_gather_object(self.worker_info())}
        if mode == "accuracy":
            metrics = self.evaluate(self.test_split)
            keys = ("auc", "logloss", "accuracy", "samples")
            return out | {"split": self.test_split, **{k: metrics[k] for k in keys}} if self.env.rank == 0 else None
        from disttrain.infer import WARMUP, timing_figures

        self.model.eval()
        batches = [self._batch(i) for i in range(min(iterations + WARMUP, 64))]
        times = []
        for i in range(iterations + WARMUP):
            if mode == "latency" or i == WARMUP:
                self.comm.barrier()
            start = time.perf_counter()
            with self.autocast():
                self.model(batches[i % len(batches)].dense, batches[i % len(batches)].sparse)
            times.append(time.perf_counter() - start)
        self.comm.barrier()
        per_rank = np.asarray(self.comm.all_gather_object(times[WARMUP:]))  # [ranks, iterations]
        if self.env.rank != 0:
            return None
        # throughput: the slowest rank's batches; latency: each request as long as its slowest rank took
        seconds = per_rank[per_rank.sum(axis=1).argmax()] if mode == "throughput" else per_rank.max(axis=0)
        return out | timing_figures(mode, seconds, self.global_batch)

    def _start_profiler(self):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        profiler = torch.profiler.profile(activities=activities)
        profiler.__enter__()
        return profiler

    def _write_trace(self, profiler, first: int, last: int) -> None:
        """Stop `profiler` and write this rank's Chrome-format trace (the profiled steps are left out of
        samples/s: the profiler slows them down)."""
        profiler.__exit__(None, None, None)
        path = Path(self.cfg.run.output_dir) / f"trace_rank{self.env.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(path))
        self.trace = str(path)
        self.log.line(f"profiled steps {first + 1}-{last + 1}: {path} (each rank its own; open in ui.perfetto.dev)")

    def _record_eval(self, state: RunState, metrics: dict[str, float]) -> bool:
        """Put a validation pass into the history; True when it reaches train.target_auc (MLPerf-style stop)."""
        target = self.cfg.train.target_auc
        if metrics:
            state.history.append({"step": state.step, "split": self.val_split,
                                  **{k: metrics[k] for k in ("auc", "logloss", "accuracy")}})
        if target and metrics and metrics["auc"] >= target:
            state.reached_target_at = state.step
            self.log.line(f"target AUC {target} reached at step {state.step} ({self.val_split} AUC "
                          f"{metrics['auc']:.4f}): stopping")
            return True
        return False

    def _resume(self, state: RunState) -> int:
        """Load `train.resume` (or, after a restart, this run's newest checkpoint); returns the first step."""
        from disttrain.checkpoint import find_checkpoint, load_checkpoint

        cfg = self.cfg
        target = None
        if self.env.rank == 0:  # one decision for all ranks, even if a checkpoint lands meanwhile
            if cfg.train.resume:
                target = find_checkpoint(cfg.train.resume, cfg.checkpoint.dir)
            elif cfg.launch.max_restarts and cfg.checkpoint.dir and os.environ.get(RUN_ID):
                target = find_checkpoint("auto", cfg.checkpoint.dir, run_id=os.environ[RUN_ID])
        target = self.comm.all_gather_object(str(target) if target else None)[0]
        if target is None:
            if cfg.train.resume == "auto":
                self.log.line(f"resume: no checkpoint in {cfg.checkpoint.dir} yet; starting at step 0")
            return 0
        start = time.perf_counter()
        loaded = load_checkpoint(Path(target), par=self.par, comm=self.comm, cfg=cfg)
        seconds = max(self.comm.all_gather_object(time.perf_counter() - start))
        state.step, state.history = loaded.step, list(loaded.history)
        saved, now = loaded.data or {}, self.data.position(loaded.step)
        if saved.get("fingerprint") != now.get("fingerprint") or saved.get("source") != now.get("source"):
            self.log.line(f"resume: the checkpoint was trained on {saved.get('path') or saved.get('source')} "
                          f"(fingerprint {saved.get('fingerprint')}); this run reads {now.get('path') or now.get('source')} "
                          f"(fingerprint {now.get('fingerprint')}) from its epoch {now.get('epoch', 0)}, "
                          f"batch {now.get('batch_in_epoch', loaded.step)}")
        note = "" if loaded.optimizer_restored else " (optimizer changed: its state starts fresh)"
        self.log.line(f"resumed from {loaded.path} at step {loaded.step} ({seconds:.2f} s){note}")
        return min(loaded.step, cfg.train.steps)

    def _save(self, state: RunState, *, crash: bool = False) -> None:
        from disttrain.checkpoint import save_checkpoint

        start = time.perf_counter()
        path = save_checkpoint(
            self.cfg.checkpoint.dir, step=state.step, par=self.par, comm=self.comm, cfg=self.cfg,
            history=state.history, run_id=os.environ.get(RUN_ID, ""), keep_last=self.cfg.checkpoint.keep_last,
            fault_before_commit=crash, data=self.data.position(state.step),
        )
        self.log.line(f"checkpoint: {path} ({time.perf_counter() - start:.2f} s)")

    def _log_interval(self, state: RunState) -> None:
        steps_in_interval = len(state.interval_preds)
        totals = torch.tensor([state.interval_loss, state.last_local_loss], dtype=torch.float64, device=self.device)
        self.comm.all_reduce_sum(totals)
        preds = torch.cat(self.comm.all_gather(torch.cat(state.interval_preds))).cpu()
        labels = torch.cat(self.comm.all_gather(torch.cat(state.interval_labels))).cpu()
        now = time.perf_counter()
        rate = steps_in_interval * self.global_batch / max(now - state.interval_start, 1e-9)
        # Each rank's loss is its share of the global mean; the sum over ranks is the global mean per step.
        mean_loss = float(totals[0]) / steps_in_interval
        state.last_loss = float(totals[1])
        train_auc = evaluate(labels.numpy(), preds.numpy())["auc"]
        # Each rank's mean step time and phases over the interval (the report's per-rank curves).
        per_rank = self.comm.all_gather_object(
            per_step_ms(state.interval_step_seconds, state.interval_phases, steps_in_interval))
        record = {"step": state.step, "loss": mean_loss, "train_auc": train_auc, "samples_per_s": rate,
                  "lr": self.cfg.train.lr, "time_s": now - self.started,
                  "rank_step_ms": [r["step_ms"] for r in per_rank],
                  "rank_phase_ms": [r["phases"] for r in per_rank]}
        state.history.append(record)
        self.board.interval(record)
        state.interval_phases, state.interval_step_seconds = dict.fromkeys(PHASES, 0.0), 0.0
        self.log.line(
            f"step {state.step:>6}  loss {mean_loss:.5f}  train_auc {train_auc:.4f}  samples/s {rate:,.0f}"
        )
        state.interval_loss, state.interval_preds, state.interval_labels = 0.0, [], []
        state.interval_start = time.perf_counter()

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """AUC, log loss and accuracy over `split` (every rank its part of each global batch; padding of a last
        partial batch masked out); with synthetic data also the planted model's (oracle) AUC."""
        self.model.eval()
        preds, labels, oracle, valid = [], [], [], []
        for i in range(eval_batches(self.cfg, self.data, split)):
            batch = self._batch(i, split=split)
            with self.autocast():
                preds.append(torch.sigmoid(self.model(batch.dense, batch.sparse).float()))
            labels.append(batch.labels)
            if batch.probabilities is not None:
                oracle.append(batch.probabilities)
            # As float: Horovod's allgather has no bool tensors.
            valid.append(batch.valid.float() if batch.valid is not None else torch.ones_like(batch.labels))
        self.model.train()
        if not preds:
            return {}
        parts = [preds, labels, valid] + ([oracle] if oracle else [])
        gathered = [torch.cat(self.comm.all_gather(torch.cat(x))).cpu().numpy() for x in parts]
        keep = gathered[2] > 0.5
        metrics = evaluate(gathered[1][keep], gathered[0][keep])
        if oracle:
            metrics["oracle_auc"] = evaluate(gathered[1][keep], gathered[3][keep])["auc"]
        metrics["samples"] = int(keep.sum())
        return metrics

    def _log_eval(self, state: RunState, metrics: dict[str, float], split: str) -> None:
        self.board.evaluation(state.step, split, metrics)
        if metrics:
            oracle = f" (planted-model oracle {metrics['oracle_auc']:.4f})" if "oracle_auc" in metrics else ""
            self.log.line(
                f"{split} @ step {state.step}: auc {metrics['auc']:.4f}{oracle}"
                f"  logloss {metrics['logloss']:.5f}  accuracy {metrics['accuracy']:.4f}  on {metrics['samples']} samples"
            )

    def _log_workers(self, workers: list[dict]) -> None:
        from disttrain.runtime.topology import format_cpus

        self.log.line(f"{'rank':<5}{'host':<14}{'pid':>8}  {'cpus':<12}{'numa':<6}{'memory':<12}{'threads':>7}  allocator")
        for w in workers:
            numa = w["numa_node"] if not isinstance(w["numa_node"], list) else format_cpus(w["numa_node"])
            self.log.line(f"{w['rank']:<5}{w['host'][:13]:<14}{w['pid']:>8}  {format_cpus(w['cpus']):<12}{numa!s:<6}"
                          f"{w['memory_policy']:<12}{w['threads']:>7}  {w['allocator']}")

    def worker_info(self) -> dict:
        return {
            "rank": self.env.rank,
            "local_rank": self.env.local_rank,
            "host": socket.gethostname(),
            "addr": _route_addr(self.env.master_addr) if self.env.distributed else None,
            "socket_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
            "pid": os.getpid(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "planned_cpus": self.placement["plan"]["cpus"],
            "numa_node": self.placement["plan"]["numa_node"],
            "memory_policy": self.placement["memory_policy"],
            "gpu": self.placement["plan"]["gpu"],
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "env": self.placement["set_env"],
            "user_env": self.placement["user_env"],
            "allocator": loaded_allocator(),
            "max_rss_mib": _max_rss_mib(),
        }

    def _summary(self, state: RunState, final: dict[str, float]) -> dict | None:
        workers = self.comm.all_gather_object(self.worker_info())
        per_rank = self.comm.all_gather_object(
            {"rank": self.env.rank, **per_step_ms(state.timed_seconds, state.timed_phases, state.timed_steps)})
        self.board.close()
        cpu_seconds = sum(self.comm.all_gather_object(state.timed_cpu_seconds))
        traces = [t for t in self.comm.all_gather_object(getattr(self, "trace", None)) if t]
        if self.env.rank != 0:
            return None
        rate = state.timed_steps * self.global_batch / state.timed_seconds if state.timed_seconds else float("nan")
        per_cpu = state.timed_steps * self.global_batch / cpu_seconds if cpu_seconds else float("nan")
        plan = self.plan.to_json()
        summary = {
            "model": self.cfg.model.name,
            "flavor": self.cfg.model.flavor,
            "world_size": self.env.world_size,
            "launcher": self.launcher,
            "steps": state.step,
            "global_batch_size": self.global_batch,
            "samples_per_s": rate,
            # samples per CPU-second: all ranks' CPU time (every thread) in the timed steps
            "samples_per_cpu_s": per_cpu,
            "timed_steps": state.timed_steps,
            "warmup_steps": self.warmup,
            "train_loss": state.last_loss,
            "eval_auc": final.get("auc", float("nan")),
            "eval_logloss": final.get("logloss", float("nan")),
            "eval_accuracy": final.get("accuracy", float("nan")),
            "oracle_auc": final.get("oracle_auc", float("nan")),
            "eval_split": self.test_split,
            "val_auc": state.final_val.get("auc"),
            "val_logloss": state.final_val.get("logloss"),
            "val_accuracy": state.final_val.get("accuracy"),
            "eval_samples": final.get("samples", 0),
            "target_auc": self.cfg.train.target_auc or None,
            "reached_target_at_step": state.reached_target_at,
            "data": self.data.position(state.step),
            "precision": self.cfg.train.precision,
            "traces": traces,
            "breakdown": aggregate(per_rank) if state.timed_steps else None,
            "plan": {"tables": [{k: t[k] for k in ("name", "type", "ranks", "rows", "dim", "shards")} for t in plan["tables"]],
                     "ranks": plan["ranks"], "embedding_dtype": plan["embedding_dtype"]},
            "workers": workers,
            "history": state.history,
            "config": config_mod.to_dict(self.cfg),
        }
        self.log.line(
            f"done: {state.step} steps, {rate:,.0f} samples/s (global batch {self.global_batch}, "
            f"{self.env.world_size} ranks), {self.test_split} AUC {summary['eval_auc']:.4f} "
            + (f"(oracle {summary['oracle_auc']:.4f}), " if "oracle_auc" in final else ", ")
            + f"train loss {state.last_loss:.5f}"
        )
        if summary["breakdown"]:
            self.log.line(describe_breakdown(summary["breakdown"]))
        write_json(Path(self.cfg.run.output_dir) / "summary.json", summary)
        self.log.line(f"summary: {Path(self.cfg.run.output_dir) / 'summary.json'}")
        return summary


def _injected_fault(rank: int) -> tuple[int, str]:
    """DISTTRAIN_FAULT=RANK:STEP[:KIND] makes that rank die at that step: exit (code 17, default), kill
    (SIGKILL), or checkpoint (rank 0 dies while writing the checkpoint of that step, before it commits)."""
    parts = os.environ.get("DISTTRAIN_FAULT", "").split(":")
    if len(parts) >= 2 and int(parts[0]) == rank:
        return int(parts[1]), parts[2] if len(parts) > 2 else "exit"
    return -1, ""


def _die(kind: str) -> None:
    sys.stdout.flush()
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(17)


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


def training_device(cfg: config_mod.Config, placement: dict) -> torch.device:
    """CPU, or with nccl this rank's GPU (its placement's; the only visible one where a scheduler such as Ray
    narrowed CUDA_VISIBLE_DEVICES). Set as the current device before the process group starts."""
    from disttrain.runtime.backend import resolve_backend

    if resolve_backend(cfg.launch.backend) != "nccl":
        return torch.device("cpu")
    gpu = placement.get("plan", {}).get("gpu")
    index = gpu if gpu is not None and gpu < torch.cuda.device_count() else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def make_collectives(env: WorkerEnv, cfg: config_mod.Config, *, launcher: str = "none") -> Collectives:
    if not env.distributed:
        return SingleProcess()
    if launcher == "horovod":
        from disttrain.collectives import HorovodCollectives

        return HorovodCollectives()
    from datetime import timedelta

    from disttrain.runtime.backend import CCL_MODULE, resolve_backend

    backend = resolve_backend(cfg.launch.backend)
    if backend == "ccl":
        __import__(CCL_MODULE)  # registers the ccl backend with torch.distributed
    timeout = timedelta(seconds=cfg.launch.timeout_s)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and attempt != "0":
        # A restarted torchrun worker: the agent's store may still hold the previous attempt's gloo
        # addresses (dead ports), and a peer that reads one waits for a connection that never comes. Keys of
        # this attempt go under their own prefix.
        store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False, timeout=timeout)
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"disttrain/attempt_{attempt}", store),
                                rank=env.rank, world_size=env.world_size, timeout=timeout)
    else:
        dist.init_process_group(
            backend=backend,
            init_method="env://",  # MASTER_ADDR/PORT, RANK, WORLD_SIZE; honours torchrun's agent store
            timeout=timeout,
        )
    return TorchCollectives()
