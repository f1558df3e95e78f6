"""Evaluation: the sharded pass over a held-out split, the single-process one serving uses, and the periodic
evaluation during training (with the MLPerf-style target AUC stop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch

from disttrain.batch import Batch
from disttrain.engine.state import RunState
from disttrain.metrics import evaluate as metrics_of


@torch.no_grad()
def evaluate_sharded(model, batches: Iterable[Batch], comm, *, autocast=nullcontext) -> dict[str, float]:
    """AUC, log loss and accuracy over `batches` (every rank its part of each global batch; padding of a last
    partial batch masked out); with synthetic data also the planted model's (oracle) AUC. Collective."""
    model.eval()
    preds, labels, oracle, valid = [], [], [], []
    for batch in batches:
        with autocast():
            preds.append(torch.sigmoid(model(batch.dense, batch.sparse).float()))
        labels.append(batch.labels)
        if batch.probabilities is not None:
            oracle.append(batch.probabilities)
        # As float: Horovod's allgather has no bool tensors.
        valid.append(batch.valid.float() if batch.valid is not None else torch.ones_like(batch.labels))
    model.train()
    if not preds:
        return {}
    parts = [preds, labels, valid] + ([oracle] if oracle else [])
    gathered = [torch.cat(comm.all_gather(torch.cat(x))).cpu().numpy() for x in parts]
    keep = gathered[2] > 0.5
    metrics = metrics_of(gathered[1][keep], gathered[0][keep])
    if oracle:
        metrics["oracle_auc"] = metrics_of(gathered[1][keep], gathered[3][keep])["auc"]
    metrics["samples"] = int(keep.sum())
    return metrics


def held_out_metrics(predict: Callable[[Batch], torch.Tensor], batches: Iterable[Batch]) -> dict:
    """One process: AUC, log loss, accuracy and the sample count over `batches` (padding rows of a last partial
    batch masked out); `predict(batch)` gives the logits (or a tuple led by them)."""
    preds, labels, valid = [], [], []
    for batch in batches:
        out = predict(batch)
        preds.append(torch.sigmoid((out[0] if isinstance(out, tuple) else out).float()))
        labels.append(batch.labels)
        valid.append(batch.valid if batch.valid is not None else torch.ones_like(batch.labels, dtype=torch.bool))
    keep = torch.cat(valid).numpy()
    return metrics_of(torch.cat(labels).numpy()[keep], torch.cat(preds).numpy()[keep]) | {"samples": int(keep.sum())}


class PeriodicEvaluation:
    """Evaluates the validation split every `train.eval_every` steps (once per epoch with a target AUC and no
    interval), records it in the history and stops the run once `train.target_auc` is reached."""

    def __init__(self, trainer):
        self.trainer = trainer
        cfg = trainer.cfg
        self.every = cfg.train.eval_every
        if cfg.train.target_auc and not self.every:  # a target needs evaluations: once per epoch
            self.every = trainer.data.steps_per_epoch or cfg.train.log_every
        self.target, self.last_step = cfg.train.target_auc, trainer.last_step

    def before(self, step: int) -> None:
        return None

    def after(self, state: RunState) -> bool:
        # Counted from where this run's data started (an epoch of the next day's data ends there, not at a
        # multiple of the global step).
        if not self.every or (state.step - self.trainer.data_start) % self.every or state.step == self.last_step:
            return False
        split = self.trainer.val_split
        metrics = self.trainer.evaluate(split)
        self.trainer.report_evaluation(state, metrics, split)
        if metrics:
            state.history.append({"step": state.step, "split": split,
                                  **{k: metrics[k] for k in ("auc", "logloss", "accuracy")}})
        state.restart_interval()
        if self.target and metrics and metrics["auc"] >= self.target:
            state.reached_target_at = state.step
            self.trainer.log.line(f"target AUC {self.target} reached at step {state.step} ({split} AUC "
                                  f"{metrics['auc']:.4f}): stopping")
            return True
        return False

    def close(self) -> None:
        return None
