"""`disttrain infer`: a trained checkpoint in the seeds' three inference modes, in one process.

- throughput: batches of `--batch-size` (default: the training batch) back to back, "recommendations/second";
- latency: one request (batch 1) at a time, per-request milliseconds p50 / p90 / p99;
- accuracy: AUC, log loss and accuracy over the held-out split (test for Criteo and DIEN).

`--precision bf16` runs the dense layers under bf16 autocast (AMX on Xeon); `--exact-max-length N` pads every DIEN
history to exactly N positions (Intel's flag for its latency runs). Any world size's checkpoint loads: its shards
are assembled on this process (the same path as `disttrain export`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch

from disttrain import config as config_mod
from disttrain.checkpoint import META, find_checkpoint, load_checkpoint, verify
from disttrain.collectives import SingleProcess
from disttrain.errors import ConfigError

MODES = ("throughput", "latency", "accuracy")
PRECISIONS = ("fp32", "bf16")
WARMUP = 3


def _open(checkpoint: str, config: str | None, overrides: list[str], batch_size: int, exact_max_length: int):
    from disttrain.data.sources import make_source
    from disttrain.export import _single_process

    path = find_checkpoint(str(checkpoint), "", key="--checkpoint")
    meta = verify(path)
    # The run's own config unless one is given (its model must match the checkpoint's), plus overrides.
    cfg = config_mod.load_config(config, overrides) if config else config_mod.config_from_yaml(
        meta["config"], overrides, source=f"{path / META}")
    if batch_size:
        cfg.train.batch_size = batch_size
    par = _single_process(cfg)
    load_checkpoint(path, par=par, comm=SingleProcess(), cfg=cfg)
    model = par.model.eval()
    source = make_source(cfg, model.tables, comm=SingleProcess(), rank=0)
    if exact_max_length:
        if cfg.model.name != "dien":
            raise ConfigError(f"--exact-max-length: got {exact_max_length}, but model.name={cfg.model.name} has no "
                              "behaviour history; expected it with DIEN only")
        if exact_max_length > source.max_history:
            raise ConfigError(f"--exact-max-length: got {exact_max_length}, more than the model's history of "
                              f"{source.max_history} positions (data.max_history); expected 1..{source.max_history}")
        source.exact_history = exact_max_length
    return cfg, model, source, meta["step"], path


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def run_inference(checkpoint: str, *, mode: str, config: str | None = None, precision: str = "fp32",
                  batch_size: int = 0, iterations: int = 0, exact_max_length: int = 0,
                  overrides: list[str] | None = None) -> dict:
    if mode not in MODES:
        raise ConfigError(f"--mode: got {mode!r}, expected one of {', '.join(MODES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: got {precision!r}, expected one of {', '.join(PRECISIONS)} (int8: not yet)")
    if mode == "latency":
        batch_size = 1
    cfg, model, source, step, path = _open(checkpoint, config, overrides or [], batch_size, exact_max_length)
    from disttrain.data.sources import eval_batches, eval_splits

    split = eval_splits(cfg)[1]
    result = {"checkpoint": str(path), "step": step, "model": cfg.model.name, "flavor": cfg.model.flavor,
              "mode": mode, "precision": precision, "batch_size": cfg.train.batch_size}
    with torch.no_grad(), _autocast(precision):
        if mode == "accuracy":
            preds, labels, valid = [], [], []
            for i in range(eval_batches(cfg, source, split)):
                batch = source.batch(i, split=split)
                preds.append(torch.sigmoid(model(batch.dense, batch.sparse).float()))
                labels.append(batch.labels)
                valid.append(batch.valid if batch.valid is not None else torch.ones_like(batch.labels, dtype=torch.bool))
            from disttrain.metrics import evaluate

            keep = torch.cat(valid).numpy()
            metrics = evaluate(torch.cat(labels).numpy()[keep], torch.cat(preds).numpy()[keep])
            result |= {"split": split, "samples": int(keep.sum()), **{k: metrics[k] for k in ("auc", "logloss", "accuracy")}}
            return result
        iterations = iterations or (200 if mode == "latency" else 20)
        # Requests drawn from the training order (distinct batches); built before timing.
        batches = [source.batch(i) for i in range(min(iterations + WARMUP, 64))]
        times = []
        for i in range(iterations + WARMUP):
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            model(batch.dense, batch.sparse)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    seconds = np.asarray(times)
    result["iterations"] = iterations
    if mode == "throughput":
        result["recommendations_per_s"] = cfg.train.batch_size * iterations / float(seconds.sum())
        result["ms_per_batch"] = float(seconds.mean() * 1e3)
    else:
        p50, p90, p99 = np.percentile(seconds * 1e3, [50, 90, 99])
        result |= {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
                   "recommendations_per_s": iterations / float(seconds.sum())}
    return result


def describe(result: dict) -> str:
    head = (f"{result['model']}/{result['flavor']} step {result['step']}, {result['precision']}, "
            f"batch {result['batch_size']}: ")
    if result["mode"] == "accuracy":
        return head + (f"{result['split']} AUC {result['auc']:.4f}  logloss {result['logloss']:.5f}  "
                       f"accuracy {result['accuracy']:.4f}  on {result['samples']} samples")
    if result["mode"] == "throughput":
        return head + (f"{result['recommendations_per_s']:,.0f} recommendations/second "
                       f"({result['ms_per_batch']:.2f} ms per batch, {result['iterations']} batches)")
    return head + (f"latency p50 {result['p50_ms']:.2f} ms  p90 {result['p90_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms "
                   f"per request ({result['iterations']} requests)")
