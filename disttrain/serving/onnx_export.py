"""`disttrain export-onnx`: Wide&Deep, DeepFM and DLRM as ONNX graphs, checked against PyTorch with onnxruntime.

The graph (opset 17, dynamic batch):

    inputs   dense   [B, num_dense]  float32   the numeric features as the model sees them (log1p for Criteo)
             sparse  [B, T, H]       int64     table t's ids of each sample, H ids per bag, -1 = padding
                                               (H = 1 for Criteo; H is dynamic too)
    outputs  logit        [B] float32
             probability  [B] float32          sigmoid(logit)

A bag's ids are summed (or averaged, for mean-pooled tables) as in training. DeepFM's BatchNorm keeps its
training-time behaviour (statistics of the request's batch) with float64 statistics, exactly as PyTorch
serves it (`disttrain.layers.batch_stats_norm`). The run's config travels in
the graph's metadata (`disttrain.config`), so `disttrain infer --runtime onnxruntime` needs nothing else.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from disttrain import config as config_mod
from disttrain.batch import KeyedBags
from disttrain.collectives import SingleProcess
from disttrain.errors import ConfigError, DataError, DisttrainError, missing
from disttrain.models import MODELS, model_spec
from disttrain.planning.build import open_data
from disttrain.serving.open import CHECKPOINT, open_model

OPSET = 17
TOLERANCE = 1e-5  # largest |logit difference| accepted between onnxruntime and PyTorch (fp32)


def padded_ids(sparse: KeyedBags, tables: int) -> torch.Tensor:
    """A batch's bags as the graph's `sparse` input: [B, T, H] ids, -1 where a bag has fewer than H."""
    if any(b != 1 for b in sparse.bags_per_key):
        raise ConfigError("export-onnx: sequence features (several bags per sample) have no ONNX input here; "
                          "expected pooled features (one bag per table and sample)")
    batch = sparse.batch_size
    lengths = sparse.lengths.view(tables, batch)  # key-major: table t's bags are contiguous
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    out = torch.full((tables, batch, width), -1, dtype=torch.int64)
    rows = torch.arange(tables * batch).repeat_interleave(lengths.flatten())
    starts = torch.cumsum(lengths.flatten(), 0) - lengths.flatten()
    cols = torch.arange(sparse.values.numel()) - starts.repeat_interleave(lengths.flatten())
    out.view(tables * batch, width)[rows, cols] = sparse.values
    return out.transpose(0, 1).contiguous()


class _PaddedLookup(nn.Module):
    """The tables of an `EmbeddingBagCollection`, looked up from padded ids (`padded_ids`)."""

    def __init__(self, collection):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(bag.weight.detach(), requires_grad=False)
                                         for bag in collection.bags])
        self.mean = [spec.pooling == "mean" for spec in collection.tables]

    def forward(self, ids_BTH: torch.Tensor) -> list[torch.Tensor]:
        valid_BTH = (ids_BTH >= 0).to(torch.float32)
        safe = ids_BTH.clamp(min=0)
        out = []
        for t, weight in enumerate(self.weights):
            rows_BHD = nn.functional.embedding(safe[:, t], weight) * valid_BTH[:, t].unsqueeze(-1)
            pooled = rows_BHD.sum(dim=1, keepdim=True)
            if self.mean[t]:
                pooled = pooled / valid_BTH[:, t].sum(dim=1).clamp(min=1.0).view(-1, 1, 1)
            out.append(pooled)
        return out


class Serving(nn.Module):
    """A plain model with tensor inputs: what the ONNX graph computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # BatchNorm in eval mode is already plain ops (`disttrain.layers.batch_stats_norm`).
        self.model = copy.deepcopy(model).eval()
        self.model.embeddings = _PaddedLookup(model.embeddings)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor):
        logit = self.model(dense, sparse)
        return logit, torch.sigmoid(logit)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise missing("onnx", "export-onnx") from None
    return onnx


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise missing("onnxruntime", "onnxruntime serving and export-onnx's check") from None
    return onnxruntime


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session with `threads` intra-op threads (0: torch's thread count)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DataError(f"{path}: onnxruntime cannot load it ({str(exc).strip().splitlines()[0]})") from None


def read_metadata(sess, path: str | Path) -> dict[str, str]:
    """The disttrain.* metadata (config, model, step) of the graph `sess` (an onnxruntime session of `path`)."""
    meta = sess.get_modelmeta().custom_metadata_map
    if "disttrain.config" not in meta:
        raise DataError(f"{path}: an ONNX graph without disttrain.config metadata; expected a file written by "
                        "`disttrain export-onnx`")
    return meta


def export_onnx(checkpoint: str | Path, out: str | Path, *, overrides: list[str] | None = None,
                verify_batch: int = 1024) -> dict:
    """Write `out` (only once it matches PyTorch within TOLERANCE on a real batch) and return what was checked."""
    opened = open_model(checkpoint, overrides, kinds=(CHECKPOINT,))
    model, cfg, step = opened.model, opened.config, opened.step
    dynamic = [spec.name for i, spec in enumerate(model.tables) if getattr(model.embeddings, "ids_of", None)
               and model.embeddings.ids_of(i) is not None]
    if dynamic:
        raise ConfigError(f"export-onnx: table(s) {', '.join(dynamic)} are dynamic (model.dynamic_tables) and ONNX "
                          "has no id -> row lookup for raw 64-bit ids; expected a model with fixed tables only "
                          "(serve this one with disttrain infer, export or quantize)")
    if not model_spec(cfg.model.name).onnx:
        supported = ", ".join(name for name, spec in MODELS.items() if spec.onnx)
        raise ConfigError(f"model.name: got {cfg.model.name!r}, but its spec says it has no ONNX form "
                          f"(ModelSpec.onnx=False); export-onnx supports {supported} and models whose spec allows it")
    onnx = _onnx()
    stored = config_mod.to_yaml(cfg)  # the metadata keeps the run's own batch size
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = verify_batch
    source = open_data(cfg, model.tables, comm=SingleProcess(), rank=0)
    batch = source.batch(0, split=source.held_out[1])
    serving = Serving(model)
    sparse = padded_ids(batch.sparse, len(model.tables))
    example = torch.cat([sparse, torch.full_like(sparse[:, :, :1], -1)], dim=2)  # H >= 2 so H stays symbolic
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(serving, (batch.dense, example), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["dense", "sparse"], output_names=["logit", "probability"],
                          dynamic_axes={"dense": {0: "batch"}, "sparse": {0: "batch", 2: "ids_per_bag"},
                                        "logit": {0: "batch"}, "probability": {0: "batch"}})
        expected = model(batch.dense, batch.sparse)
    graph = onnx.load(str(tmp))
    for key, value in (("disttrain.config", stored), ("disttrain.model", cfg.model.name),
                       ("disttrain.flavor", cfg.model.flavor), ("disttrain.step", str(step))):
        graph.metadata_props.add(key=key, value=value)
    # Protobuf stops at 2 GiB: bigger graphs keep their weights beside them (`<out>.data`).
    large = sum(t.nbytes for t in serving.state_dict().values()) > 1.5 * 2**30
    onnx.save(graph, str(tmp), save_as_external_data=large, location=out.name + ".data")
    got = session(tmp).run(["logit"], {"dense": batch.dense.numpy(), "sparse": sparse.numpy()})[0]
    diff = float(np.abs(got - expected.numpy()).max())
    if not diff <= TOLERANCE:
        os.unlink(tmp)
        raise DisttrainError(f"{out}: onnxruntime's logits differ from PyTorch's by {diff:.3g} on {verify_batch} "
                             f"rows; expected at most {TOLERANCE:g} (nothing written)")
    tmp.replace(out)
    return {"onnx": str(out), "model": cfg.model.name, "flavor": cfg.model.flavor, "step": step, "opset": OPSET,
            "verified_rows": int(batch.dense.shape[0]), "max_abs_logit_diff": diff,
            "bytes": out.stat().st_size}
