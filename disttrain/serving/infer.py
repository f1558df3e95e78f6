"""`disttrain infer`: a trained checkpoint in the seeds' three inference modes, in one process.

- throughput: batches of `--batch-size` (default: the training batch) back to back, "recommendations/second";
- latency: one request (batch 1) at a time, per-request milliseconds p50 / p90 / p99;
- accuracy: AUC, log loss and accuracy over the held-out split (test for Criteo and DIEN).

`--precision bf16` runs the dense layers under bf16 autocast (AMX on Xeon); `--exact-max-length N` pads every DIEN
history to exactly N positions (Intel's flag for its latency runs). The model is opened as every serving verb
opens one (`disttrain.serving.open.open_model`): a checkpoint of any world size is assembled on this process.
"""

from __future__ import annotations

import copy
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from disttrain.collectives import SingleProcess
from disttrain.engine.evaluation import held_out_metrics
from disttrain.errors import ConfigError
from disttrain.models import MODELS, model_spec
from disttrain.planning.build import build_model, open_data
from disttrain.serving.modes import MODES, WARMUP, default_iterations, timing_figures
from disttrain.serving.open import CHECKPOINT, INT8, open_model, run_config

PRECISIONS = ("fp32", "bf16", "int8")
RUNTIMES = ("torch", "onnxruntime")


class _Predictor:
    """What a mode times: `prepare(batch)` (request building, untimed) and `__call__(prepared)` -> logits."""

    def __init__(self, model=None, session=None, tables: int = 0):
        self.model, self.session = model, session
        self.tables = tables  # ONNX input width: the model's table count

    def prepare(self, batch):
        if self.session is None:
            return batch.dense, batch.sparse
        from disttrain.serving.onnx_export import padded_ids

        return {"dense": batch.dense.numpy(), "sparse": padded_ids(batch.sparse, self.tables).numpy()}

    def __call__(self, prepared) -> torch.Tensor:
        if self.session is None:
            return self.model(*prepared)
        return torch.from_numpy(self.session.run(["logit"], prepared)[0])


def _open(checkpoint: str, config: str | None, overrides: list[str], precision: str, runtime: str, scratch: str):
    """(config, predictor, step, path, tables) for a checkpoint, a `disttrain quantize` output or an ONNX file."""
    if runtime == "onnxruntime":
        from disttrain.serving.onnx_export import export_onnx, read_metadata, session

        if precision != "fp32":
            raise ConfigError(f"--precision: got {precision!r} with --runtime onnxruntime; expected fp32 (the "
                              "exported graph is fp32)")
        path = Path(checkpoint)
        if path.suffix != ".onnx":
            path = Path(export_onnx(checkpoint, Path(scratch) / "model.onnx", overrides=overrides)["onnx"])
        sess = session(path)
        meta = read_metadata(sess, path)
        cfg = run_config(meta["disttrain.config"], f"{path}: disttrain.config", config, overrides)
        tables = build_model(cfg, embedding_device="meta").tables  # the graph has no torch model to ask
        return cfg, _Predictor(session=sess, tables=len(tables)), int(meta.get("disttrain.step", 0)), path, tables
    opened = open_model(checkpoint, overrides, kinds=(INT8,) if precision == "int8" else (CHECKPOINT,),
                        config=config, key="--checkpoint")
    return opened.config, _Predictor(opened.model), opened.step, opened.path, opened.tables


def check_exact_length(cfg, tables, exact_max_length: int) -> None:
    """--exact-max-length fits the model: one with a behaviour history (its spec's `history_positions`), at most
    that history. `tables`: the model's, or a function giving them (called only for a model with a history)."""
    if not exact_max_length:
        return
    positions = model_spec(cfg.model.name).history_positions
    if positions is None:
        with_history = ", ".join(name for name, spec in MODELS.items() if spec.history_positions is not None)
        raise ConfigError(f"--exact-max-length: got {exact_max_length}, but model.name={cfg.model.name} has no "
                          f"behaviour history; expected it with {with_history} only")
    longest = positions(tables() if callable(tables) else tables)
    if exact_max_length > longest:
        raise ConfigError(f"--exact-max-length: got {exact_max_length}, more than the model's history of "
                          f"{longest} positions (data.max_history); expected 1..{longest}")


def _source(cfg, tables, batch_size: int, exact_max_length: int):
    """(the config served: a copy with `batch_size` when given, the batches' source)."""
    if batch_size:
        cfg = copy.deepcopy(cfg)
        cfg.train.batch_size = batch_size
    check_exact_length(cfg, tables, exact_max_length)
    source = open_data(cfg, tables, comm=SingleProcess(), rank=0)
    if exact_max_length:
        source.exact_history = exact_max_length
    return cfg, source


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def run_inference(checkpoint: str, *, mode: str, config: str | None = None, precision: str = "fp32",
                  runtime: str = "torch", batch_size: int = 0, iterations: int = 0, exact_max_length: int = 0,
                  overrides: list[str] | None = None) -> dict:
    if mode not in MODES:
        raise ConfigError(f"--mode: got {mode!r}, expected one of {', '.join(MODES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime: got {runtime!r}, expected one of {', '.join(RUNTIMES)}")
    if mode == "latency":
        batch_size = 1
    with tempfile.TemporaryDirectory(prefix="disttrain-infer-") as scratch:
        cfg, predictor, step, path, tables = _open(checkpoint, config, overrides or [], precision, runtime, scratch)
        cfg, source = _source(cfg, tables, batch_size, exact_max_length)
        result = {"checkpoint": str(path), "step": step, "model": cfg.model.name, "flavor": cfg.model.flavor,
                  "mode": mode, "precision": precision, "runtime": runtime, "batch_size": cfg.train.batch_size}
        with torch.no_grad(), _autocast(precision):
            if mode == "accuracy":
                return result | _accuracy(cfg, source, predictor) | unknown_ids(predictor.model)
            iterations = iterations or default_iterations(mode)
            # Requests drawn from the training order (distinct batches), built before timing.
            requests = [predictor.prepare(source.batch(i)) for i in range(min(iterations + WARMUP, 64))]
            times = []
            for i in range(iterations + WARMUP):
                start = time.perf_counter()
                predictor(requests[i % len(requests)])
                if i >= WARMUP:
                    times.append(time.perf_counter() - start)
    return result | timing_figures(mode, times, cfg.train.batch_size) | unknown_ids(predictor.model)


def unknown_ids(model) -> dict:
    """`{"unknown_ids": {table: count}}`: lookups of ids a dynamic table has no row for (they read its default
    row); empty without dynamic tables."""
    embeddings = getattr(model, "embeddings", None)
    if hasattr(embeddings, "dynamic_stats"):
        counts = {name: s["unknown"] for name, s in embeddings.dynamic_stats().items()}
    else:
        counts = dict(getattr(embeddings, "unknown", {}))
    return {"unknown_ids": counts} if counts else {}


def _accuracy(cfg, source, predictor) -> dict:
    split = source.held_out[1]
    batches = (source.batch(i, split=split) for i in range(source.eval_batches(split, cfg.data.eval_batches)))
    metrics = held_out_metrics(lambda batch: predictor(predictor.prepare(batch)), batches)
    return {"split": split, **{k: metrics[k] for k in ("samples", "auc", "logloss", "accuracy")}}


def describe(result: dict) -> str:
    runtime = "" if result.get("runtime", "torch") == "torch" else f" on {result['runtime']}"
    if result.get("world_size", 1) > 1:
        runtime += f", sharded over {result['world_size']} ranks"
    head = (f"{result['model']}/{result['flavor']} step {result['step']}, {result['precision']}{runtime}, "
            f"batch {result['batch_size']}: ")
    if result.get("unknown_ids"):
        head = head.rstrip(": ") + " (ids without a row, read as the default row: " + ", ".join(
            f"{t} {n:,}" for t, n in result["unknown_ids"].items()) + "): "
    if result["mode"] == "accuracy":
        return head + (f"{result['split']} AUC {result['auc']:.4f}  logloss {result['logloss']:.5f}  "
                       f"accuracy {result['accuracy']:.4f}  on {result['samples']} samples")
    if result["mode"] == "throughput":
        return head + (f"{result['recommendations_per_s']:,.0f} recommendations/second "
                       f"({result['ms_per_batch']:.2f} ms per batch, {result['iterations']} batches)")
    return head + (f"latency p50 {result['p50_ms']:.2f} ms  p90 {result['p90_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms "
                   f"per request ({result['iterations']} requests)")
