"""Making an int8 model (`disttrain quantize`): calibration, every layer in both forms switched by a plan, and
the saved format `disttrain infer --precision int8` serves. The layers and reading a saved model back are
`disttrain.serving.int8_layers`; opening one, `disttrain.serving.open`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from disttrain import config as config_mod
from disttrain.serving.int8_layers import (
    FORMAT,
    MODEL_FILE,
    Int8Linear,
    QuantizedTables,
    _Layer,
    is_quantized,
    link,
    quantizable_layers,
)
from disttrain.serving.open import INT8, open_model

REPORT_FILE = "quant_report.json"

__all__ = ["FORMAT", "MODEL_FILE", "REPORT_FILE", "Int8Linear", "Int8Model", "QuantizedTables", "calibrate",
           "flat_tensors", "is_quantized", "link", "load_quantized", "quantizable_layers", "state_of"]


def calibrate(model: nn.Module, layers: list[_Layer], batches) -> dict[str, tuple[float, float]]:
    """min/max of every linear layer's input over `batches` (the fp32 model)."""
    ranges: dict[str, list[float]] = {}
    hooks = []
    for layer in layers:
        if layer.kind != "linear":
            continue

        def record(_module, args, name=layer.name):
            x = args[0].detach()
            lo, hi = ranges.setdefault(name, [float("inf"), float("-inf")])
            ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]

        hooks.append(model.get_submodule(layer.name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.dense, batch.sparse)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}


class Int8Model:
    """The fp32 model plus every layer's int8 form; `apply(plan)` switches layers between the two in place."""

    def __init__(self, model: nn.Module, layers: list[_Layer], ranges: dict[str, tuple[float, float]]):
        self.model, self.layers = model, layers
        self.fp32 = {layer.name: model.get_submodule(layer.name) for layer in layers if layer.kind == "linear"}
        self.relus = {layer.relu_after: model.get_submodule(layer.relu_after) for layer in layers if layer.relu_after}
        self.int8 = {layer.name: Int8Linear.from_float(self.fp32[layer.name], *ranges.get(layer.name, (0.0, 0.0)),
                                                       relu=bool(layer.relu_after))
                     for layer in layers if layer.kind == "linear"}
        self.tables = QuantizedTables.from_collection(model.embeddings)

    def apply(self, plan: dict[str, str]) -> nn.Module:
        for layer in self.layers:
            if layer.kind != "linear":
                continue
            int8 = plan[layer.name] == "int8"
            self.model.set_submodule(layer.name, self.int8[layer.name] if int8 else self.fp32[layer.name])
            if layer.relu_after:
                self.model.set_submodule(layer.relu_after, nn.Identity() if int8 else self.relus[layer.relu_after])
        self.model.embeddings = self.tables.use([plan[f"embeddings.{s.name}"] == "int8" for s in self.tables.tables])
        return link(self.model)


def state_of(model: nn.Module, int8: Int8Model, plan: dict[str, str], cfg, step: int) -> dict:
    linears = {name: int8.int8[name].state() for name in int8.int8 if plan[name] == "int8"}
    skip = tuple(f"{name}." for name in linears) + ("embeddings.",)
    dense = {name: t.detach() for name, t in model.state_dict().items() if not name.startswith(skip)}
    tables = {}
    for spec, weight, packed, ids in zip(int8.tables.tables, int8.tables.weights, int8.tables.packed, int8.tables.ids):
        tables[spec.name] = {"int8": packed} if plan[f"embeddings.{spec.name}"] == "int8" else {"fp32": weight}
        if ids is not None:
            tables[spec.name]["ids"] = ids
    return {"format": FORMAT, "config": config_mod.to_yaml(cfg), "model": cfg.model.name, "step": step,
            "plan": plan, "dense": dense, "linears": linears, "tables": tables}


def flat_tensors(saved: dict):
    yield from saved["dense"].values()
    for state in saved["linears"].values():
        yield from (state["weight_q"], state["w_scale"], state["bias"])
    for table in saved["tables"].values():
        yield from table.values()


def load_quantized(path: str | Path, overrides: list[str] | None = None):
    """(the int8 model, its config's YAML as saved, step, file) of a `disttrain quantize` output directory or file
    (`overrides` on top of its config; those naming code vouch for it): `open_model` on an int8 output."""
    opened = open_model(path, overrides, kinds=(INT8,))
    return opened.model, opened.stored, opened.step, Path(opened.path)
