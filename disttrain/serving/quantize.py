"""`disttrain quantize`: int8 post-training quantization guarded by AUC, as in the DLRM INT8 tuning recipe.

- Tables: row-wise int8 (each row's own scale and offset, FBGEMM's fused 8-bit layout), looked up and pooled by
  `quantized::embedding_bag_byte_rowwise_offsets`.
- Linear layers: int8 weights (one symmetric scale per output channel) and int8 activations with a static
  scale and zero point calibrated on held-out batches (min/max of each layer's input); the matmul is oneDNN's
  int8 kernel (`onednn::qlinear_pointwise`, AMX-int8 / VNNI on Xeon) with the following ReLU fused.
- Tuning (the recipe's accuracy-aware loop): quantize every layer; while the relative AUC loss on the held-out
  split exceeds `quant.max_relative_auc_loss`, return to fp32 the layer whose fallback alone recovers the most
  AUC, then the next, ... Calibration and tuning use the split evaluated during training (Criteo: val; DIEN,
  which has no validation split: test); the report adds the final split's figures (Criteo: test).

Output directory: `model_int8.pt` (int8 tensors, fp32 for the rest, the config; `torch.load(weights_only=True)`
reads it) and `quant_report.json` (per-layer precision, every evaluation the tuner made, sizes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from disttrain.collectives import SingleProcess
from disttrain.engine.evaluation import held_out_metrics
from disttrain.errors import ConfigError
from disttrain.models import model_spec
from disttrain.planning.build import open_data
from disttrain.serving.int8 import (
    MODEL_FILE,
    REPORT_FILE,
    Int8Linear,
    Int8Model,
    calibrate,
    flat_tensors,
    quantizable_layers,
    state_of,
)
from disttrain.serving.open import CHECKPOINT, open_model


def _evaluate(model, batches) -> dict:
    with torch.no_grad():
        return held_out_metrics(lambda batch: model(batch.dense, batch.sparse), batches)


def tune(int8: Int8Model, batches, max_relative_auc_loss: float) -> tuple[dict[str, str], dict]:
    """The accuracy-aware loop. Returns (plan, what it measured)."""
    names = [layer.name for layer in int8.layers]
    baseline = _evaluate(int8.apply(dict.fromkeys(names, "fp32")), batches)["auc"]

    def loss(auc: float) -> float:
        return (baseline - auc) / baseline

    plan = dict.fromkeys(names, "int8")
    all_int8 = _evaluate(int8.apply(plan), batches)["auc"]
    trace = {"fp32_auc": baseline, "all_int8_auc": all_int8, "fallback_alone_auc": {}, "steps": []}
    if loss(all_int8) <= max_relative_auc_loss:
        return plan, trace
    # Sensitivity: the AUC with only this layer back in fp32.
    for name in names:
        alone = _evaluate(int8.apply(plan | {name: "fp32"}), batches)["auc"]
        trace["fallback_alone_auc"][name] = alone
    current = all_int8
    for name in sorted(names, key=lambda n: -trace["fallback_alone_auc"][n]):
        if loss(current) <= max_relative_auc_loss:
            break
        plan[name] = "fp32"
        current = _evaluate(int8.apply(plan), batches)["auc"]
        trace["steps"].append({"fallback": name, "auc": current, "relative_loss": loss(current)})
    return plan, trace


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def quantize(checkpoint: str, out: str | Path, *, overrides: list[str] | None = None,
             max_relative_auc_loss: float | None = None) -> dict:
    started = time.perf_counter()
    opened = open_model(checkpoint, overrides, kinds=(CHECKPOINT,))
    model, cfg, step = opened.model, opened.config, opened.step
    limit = cfg.quant.max_relative_auc_loss if max_relative_auc_loss is None else max_relative_auc_loss
    if not 0.0 <= limit < 1.0:
        raise ConfigError(f"quant.max_relative_auc_loss: got {limit}, expected a fraction in [0, 1) (0.01 = 1%)")
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise ConfigError("this torch build has no oneDNN int8 kernels (onednn::qlinear_pointwise); expected an x86 build")
    source = open_data(cfg, model.tables, comm=SingleProcess(), rank=0)
    tune_split, final_split = source.held_out
    count = source.eval_batches(tune_split, cfg.data.eval_batches)
    if count == 0:
        raise ConfigError("data.eval_batches: 0 leaves nothing to calibrate and tune on; expected -1 or a count")
    tune_batches = [source.batch(i, split=tune_split) for i in range(count)]
    calibration = tune_batches[: cfg.quant.calibration_batches]
    layers = quantizable_layers(model, model_spec(cfg.model.name).weights_read_directly)
    ranges = calibrate(model, layers, calibration)
    # Layers inference never runs (DIEN's auxiliary net) stay as they are.
    layers = [layer for layer in layers if layer.kind == "table" or layer.name in ranges]
    fp32_bytes = _nbytes(model.state_dict().values())
    int8 = Int8Model(model, layers, ranges)
    plan, trace = tune(int8, tune_batches, limit)

    final = [source.batch(i, split=final_split) for i in range(source.eval_batches(final_split, cfg.data.eval_batches))]
    fp32_final = _evaluate(int8.apply(dict.fromkeys(plan, "fp32")), final)
    quantized = int8.apply(plan)
    int8_final = _evaluate(quantized, final)
    saved = state_of(quantized, int8, plan, cfg, step)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MODEL_FILE + ".tmp")
    torch.save(saved, tmp)
    tmp.replace(out / MODEL_FILE)
    tuned = trace["steps"][-1]["auc"] if trace["steps"] else trace["all_int8_auc"]
    report = {
        "checkpoint": str(checkpoint), "model": cfg.model.name, "flavor": cfg.model.flavor, "step": step,
        "max_relative_auc_loss": limit,
        "calibration": {"split": tune_split, "batches": len(calibration),
                        "samples": sum(int(b.labels.numel()) for b in calibration)},
        "tuning": {"split": tune_split, "batches": len(tune_batches), **trace, "int8_auc": tuned,
                   "relative_auc_loss": (trace["fp32_auc"] - tuned) / trace["fp32_auc"]},
        "final": {"split": final_split, "fp32": fp32_final, "int8": int8_final,
                  "relative_auc_loss": (fp32_final["auc"] - int8_final["auc"]) / fp32_final["auc"]},
        "layers": [{"name": layer.name, "kind": layer.kind, "precision": plan[layer.name],
                    **({"input_range": _input_range(int8.int8[layer.name])} if layer.kind == "linear" else {})}
                   for layer in layers],
        "int8_layers": sum(p == "int8" for p in plan.values()), "total_layers": len(plan),
        "bytes": {"fp32": fp32_bytes, "int8": _nbytes(flat_tensors(saved))},
        "seconds": time.perf_counter() - started,
        "model_file": str(out / MODEL_FILE),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _input_range(layer: Int8Linear) -> list[float]:
    """The calibrated range an int8 input represents."""
    return [layer.x_scale * -layer.x_zero_point, layer.x_scale * (255 - layer.x_zero_point)]


def describe(report: dict) -> str:
    tuning, final = report["tuning"], report["final"]
    lines = [
        f"{report['model']}/{report['flavor']} step {report['step']}: {report['int8_layers']} of "
        f"{report['total_layers']} layers int8 (limit: {report['max_relative_auc_loss']:.2%} relative AUC loss)",
        f"  calibration: {report['calibration']['samples']} {report['calibration']['split']} samples; tuning on "
        f"{tuning['split']}: fp32 AUC {tuning['fp32_auc']:.4f}, all int8 {tuning['all_int8_auc']:.4f}, "
        f"chosen {tuning['int8_auc']:.4f} ({tuning['relative_auc_loss']:+.3%})",
        f"  {final['split']}: fp32 AUC {final['fp32']['auc']:.4f} logloss {final['fp32']['logloss']:.5f}; int8 AUC "
        f"{final['int8']['auc']:.4f} logloss {final['int8']['logloss']:.5f} ({final['relative_auc_loss']:+.3%})",
    ]
    kept = [layer["name"] for layer in report["layers"] if layer["precision"] != "int8"]
    lines.append(f"  kept in fp32: {', '.join(kept) if kept else 'none'}")
    lines.append(f"  size {report['bytes']['fp32'] / 2**20:.1f} MiB -> {report['bytes']['int8'] / 2**20:.1f} MiB; "
                 f"wrote {report['model_file']} and {REPORT_FILE}")
    return "\n".join(lines)
