"""The int8 model `disttrain infer --precision int8` runs: its layers (row-wise int8 tables, static int8 linears
on oneDNN) and its saved form, `model_int8.pt`, read back into a built model.

- Tables: row-wise int8 (each row's own scale and offset, FBGEMM's fused 8-bit layout), looked up and pooled by
  `quantized::embedding_bag_byte_rowwise_offsets`.
- Linear layers: int8 weights (one symmetric scale per output channel) and int8 activations with a static
  scale and zero point calibrated on held-out batches (min/max of each layer's input); the matmul is oneDNN's
  int8 kernel (`onednn::qlinear_pointwise`, AMX-int8 / VNNI on Xeon) with the following ReLU fused.

`model_int8.pt` holds int8 tensors, fp32 for the rest and the config; `torch.load(weights_only=True)` reads it
(`disttrain.serving.open`). Making one (calibration, tuning, saving) is `disttrain.serving.int8`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from disttrain.errors import DataError
from disttrain.layers.dynamic_lookup import rows_of

# torch 2.13 (pinned) deprecates the quantized dtypes; only their fused fp32 -> uint8 conversion is used here.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")

FORMAT = "disttrain-int8-v1"
MODEL_FILE = "model_int8.pt"
BAG_MODES = {"sum": 0, "mean": 1}


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 x (static per-tensor scale, zero point) and int8 W (per output channel)."""

    def __init__(self, weight_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 x_scale: float, x_zero_point: int, relu: bool):
        super().__init__()
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", bias)
        self.x_scale, self.x_zero_point, self.relu = float(x_scale), int(x_zero_point), bool(relu)
        self.out_q: tuple[float, int] | None = None  # set by `link`: hand uint8 straight to the next int8 layer
        self._w_zero_point = torch.zeros(weight_q.shape[0], dtype=torch.int32)
        self._packed = torch.ops.onednn.qlinear_prepack(weight_q, None)

    @classmethod
    def from_float(cls, linear: nn.Linear, x_min: float, x_max: float, relu: bool) -> Int8Linear:
        weight = linear.weight.detach().float()
        w_scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        weight_q = torch.round(weight / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
        lo, hi = min(x_min, 0.0), max(x_max, 0.0)
        x_scale = (hi - lo) / 255.0 if hi > lo else 1.0
        zero_point = int(min(max(round(-lo / x_scale), 0), 255))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(weight_q, w_scale, bias, x_scale, zero_point, relu)

    def state(self) -> dict:
        return {"weight_q": self.weight_q, "w_scale": self.w_scale, "bias": self.bias,
                "x_scale": self.x_scale, "x_zero_point": self.x_zero_point, "relu": self.relu}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.dtype != torch.uint8:  # else: already quantized to this layer's input scale by the previous one
            flat = torch.quantize_per_tensor(flat.float(), self.x_scale, self.x_zero_point, torch.quint8).int_repr()
        scale, zero_point = self.out_q or (1.0, 0)
        out = torch.ops.onednn.qlinear_pointwise(
            flat, self.x_scale, self.x_zero_point, self._packed, self.w_scale, self._w_zero_point, self.bias,
            scale, zero_point, torch.uint8 if self.out_q else torch.float32, "relu" if self.relu else "none", [], "")
        return out.view(*shape[:-1], out.shape[-1])


def link(model: nn.Module) -> nn.Module:
    """Within each nn.Sequential, let an int8 layer whose next step is another int8 layer (a fused ReLU between)
    write uint8 at that layer's input scale: one requantization inside the kernel instead of fp32 out and in."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = [c for c in module.children() if not isinstance(c, nn.Identity)]
        for child, after in zip(children, [*children[1:], None]):
            if isinstance(child, Int8Linear):
                child.out_q = (after.x_scale, after.x_zero_point) if isinstance(after, Int8Linear) else None
    return model


class QuantizedTables(nn.Module):
    """An `EmbeddingBagCollection` whose tables are each row-wise int8 (packed) or fp32; same forward."""

    def __init__(self, tables, weights: list[torch.Tensor | None], packed: list[torch.Tensor | None],
                 ids: list[torch.Tensor | None] | None = None):
        """`ids`: per table, a dynamic table's sorted ids (`disttrain.layers.dynamic_lookup`), else None."""
        super().__init__()
        self.tables = list(tables)
        self.weights, self.packed = weights, packed
        self.ids = ids or [None] * len(self.tables)
        self.unknown = {spec.name: 0 for spec, i in zip(self.tables, self.ids) if i is not None}

    @classmethod
    def from_collection(cls, collection) -> QuantizedTables:
        weights = [bag.weight.detach() for bag in collection.bags]
        ids = [collection.ids_of(i) if hasattr(collection, "ids_of") else None for i in range(len(weights))]
        return cls(collection.tables, weights, [torch.ops.quantized.embedding_bag_byte_prepack(w) for w in weights],
                   ids)

    def use(self, int8: list[bool]) -> QuantizedTables:
        """A view holding, per table, only the chosen form."""
        return QuantizedTables(self.tables, [None if q else w for q, w in zip(int8, self.weights)],
                               [p if q else None for q, p in zip(int8, self.packed)], self.ids)

    def forward(self, features) -> list[torch.Tensor]:
        out = []
        for spec, weight, packed, ids, bags, (lengths, values) in zip(
                self.tables, self.weights, self.packed, self.ids, features.bags_per_key, features.split()):
            if ids is not None:
                values, unknown = rows_of(ids, values)
                self.unknown[spec.name] += unknown
            offsets = torch.cumsum(lengths, 0) - lengths
            if packed is not None:
                pooled = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                    packed, values, offsets, False, BAG_MODES[spec.bag_mode], False, None, None, False)
            else:
                pooled = nn.functional.embedding_bag(values, weight, offsets, mode=spec.bag_mode)
            out.append(pooled.view(features.batch_size, bags, spec.dim))
        return out


@dataclass
class _Layer:
    name: str  # "embeddings.<table>" or the nn.Linear's module path
    kind: str  # "table" | "linear"
    relu_after: str = ""  # the nn.ReLU that follows a linear (fused into the int8 kernel)


def quantizable_layers(model: nn.Module, weights_read_directly: tuple[str, ...] = ()) -> list[_Layer]:
    """Every table and every nn.Linear, except those whose weights the model reads directly."""
    layers = [_Layer(f"embeddings.{spec.name}", "table") for spec in model.embeddings.tables]
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for i, (child_name, child) in enumerate(children):
                if isinstance(child, nn.Linear):
                    follows = i + 1 < len(children) and isinstance(children[i + 1][1], nn.ReLU)
                    prefix = f"{name}." if name else ""
                    layers.append(_Layer(prefix + child_name, "linear",
                                         prefix + children[i + 1][0] if follows else ""))
    listed = {layer.name for layer in layers}
    layers += [_Layer(name, "linear") for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name not in listed]
    return [layer for layer in layers if layer.name not in weights_read_directly]


def model_file(path: str | Path) -> Path:
    """The model file of a `disttrain quantize` output: `path` itself, or `MODEL_FILE` inside a directory."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def is_quantized(path: str | Path) -> bool:
    """A `disttrain quantize` output (its directory or its model file)?"""
    file = model_file(path)
    return file.name == MODEL_FILE and file.is_file()


def int8_model(model: nn.Module, saved: dict, *, file: Path, name: str) -> nn.Module:
    """`model` (`name`: model/flavor, built from the saved config, tables on meta) with the saved int8 layers,
    tables and fp32 rest, in eval mode; a file that does not fit it is one line naming `file`."""
    try:
        return _fill(model, saved, file, name)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise DataError(f"{file}: the file does not fit model {name} ({detail})") from None


def _fill(model: nn.Module, saved: dict, file: Path, name: str) -> nn.Module:
    missing = model.load_state_dict(saved["dense"], strict=False, assign=True).missing_keys
    fused_relu = {layer.name: layer.relu_after for layer in quantizable_layers(model) if layer.relu_after}
    for path, state in saved["linears"].items():
        layer = Int8Linear(state["weight_q"], state["w_scale"], state["bias"], state["x_scale"],
                           state["x_zero_point"], state["relu"])
        model.set_submodule(path, layer)
        if state["relu"]:
            model.set_submodule(fused_relu[path], nn.Identity())
    tables = [saved["tables"].get(spec.name) for spec in model.tables]
    absent = [spec.name for spec, table in zip(model.tables, tables) if table is None]
    if absent:
        raise DataError(f"{file}: no values for tables {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}; "
                        f"the file does not fit model {name}")
    model.embeddings = QuantizedTables(model.tables, [t.get("fp32") for t in tables], [t.get("int8") for t in tables],
                                       [t.get("ids") for t in tables])
    loaded = set(saved["dense"]) | {f"{n}.{p}" for n in saved["linears"] for p in ("weight", "bias")}
    unfilled = [k for k in missing if not k.startswith("embeddings.") and k not in loaded]
    if unfilled:
        raise DataError(f"{file}: no values for {', '.join(unfilled[:5])}; the file does not fit model {name}")
    return link(model).eval()
