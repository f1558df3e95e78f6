"""One log line per `train.log_every` steps from rank 0: the interval's mean loss over all ranks, train AUC,
samples/s; every rank's step time and phases go into the history and TensorBoard."""

from __future__ import annotations

import time

import torch

from disttrain.engine.state import RunState
from disttrain.engine.summary import dynamic_report
from disttrain.metrics import evaluate
from disttrain.phases import PHASES, per_step_ms


class IntervalLog:
    def __init__(self, trainer):
        self.trainer = trainer
        self.every, self.last_step = trainer.cfg.train.log_every, trainer.last_step

    def before(self, step: int) -> None:
        return None

    def after(self, state: RunState) -> bool:
        self.trainer.log.bar(state.step, self.last_step)
        if state.step % self.every == 0 or state.step == self.last_step:
            self._log(state)
        return False

    def close(self) -> None:
        return None

    def _log(self, state: RunState) -> None:
        if not state.interval_preds:  # every step of the interval was skipped (the same on every rank)
            return
        trainer, comm = self.trainer, self.trainer.comm
        steps_in_interval = len(state.interval_preds)
        totals = torch.tensor([state.interval_loss, state.last_local_loss], dtype=torch.float64,
                              device=trainer.device)
        comm.all_reduce_sum(totals)
        preds = torch.cat(comm.all_gather(torch.cat(state.interval_preds))).cpu()
        labels = torch.cat(comm.all_gather(torch.cat(state.interval_labels))).cpu()
        now = time.perf_counter()
        rate = steps_in_interval * trainer.global_batch / max(now - state.interval_start, 1e-9)
        # Each rank's loss is its share of the global mean; the sum over ranks is the global mean per step.
        mean_loss = float(totals[0]) / steps_in_interval
        state.last_loss = float(totals[1])
        train_auc = evaluate(labels.numpy(), preds.numpy())["auc"]
        # Each rank's mean step time and phases over the interval (the report's per-rank curves).
        per_rank = comm.all_gather_object(
            per_step_ms(state.interval_step_seconds, state.interval_phases, steps_in_interval))
        record = {"step": state.step, "loss": mean_loss, "train_auc": train_auc, "samples_per_s": rate,
                  "lr": trainer.cfg.train.lr, "time_s": now - trainer.started,
                  "rank_step_ms": [r["step_ms"] for r in per_rank],
                  "rank_phase_ms": [r["phases"] for r in per_rank]}
        dynamic = dynamic_report(comm, trainer.par.embeddings)
        if dynamic:
            record["dynamic"] = {name: {k: t[k] for k in ("live", "admitted", "evicted", "candidates")}
                                 for name, t in dynamic.items()}
        state.history.append(record)
        trainer.board.interval(record)
        state.interval_phases, state.interval_step_seconds = dict.fromkeys(PHASES, 0.0), 0.0
        live = f"  dynamic rows {sum(t['live'] for t in dynamic.values()):,}" if dynamic else ""
        trainer.log.line(f"step {state.step:>6}  loss {mean_loss:.5f}  train_auc {train_auc:.4f}  samples/s {rate:,.0f}"
                         + live)
        state.interval_loss, state.interval_preds, state.interval_labels = 0.0, [], []
        state.interval_start = time.perf_counter()


class ReplicaCheck:
    """Every `train.check_replicas_every` steps, the ranks compare checksums of their dense parameters (also
    before every evaluation and checkpoint, whatever the interval): a difference stops the run in one line."""

    def __init__(self, trainer):
        self.trainer, self.every = trainer, trainer.cfg.train.check_replicas_every

    def before(self, step: int) -> None:
        return None

    def after(self, state: RunState) -> bool:
        if self.every and state.step % self.every == 0:
            self.trainer.check_replicas(f"after step {state.step}")
        return False

    def close(self) -> None:
        return None
