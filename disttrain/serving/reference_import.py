"""`disttrain import`: a reference implementation's checkpoint -> a disttrain checkpoint (step 0), loadable
sharded on any world size. The model's spec says how a reference state_dict maps onto it
(`ModelSpec.reference_import`; DLRM: Facebook's `dlrm_s_pytorch.py --save-model`)."""

from __future__ import annotations

from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.collectives import SingleProcess
from disttrain.engine.checkpoint import save_checkpoint
from disttrain.errors import ConfigError, DataError
from disttrain.models import MODELS, model_spec
from disttrain.serving.open import single_process


def read_reference(path: str | Path) -> dict:
    """`dlrm_s_pytorch.py --save-model` output, read without unpickling arbitrary objects: tensors, plain
    containers and the numpy scalars its metadata holds are all the loader allows."""
    import numpy as np

    allowed = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:
        allowed.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a loadable reference DLRM checkpoint ({first})") from None
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a dict with 'state_dict' (dlrm_s_pytorch.py --save-model layout)")
    return data


def import_reference(ref: str | Path, out: str | Path, overrides: list[str] | None = None) -> Path:
    """Write a disttrain checkpoint (step 0) holding the reference model's weights."""
    data = read_reference(ref)
    spec = model_spec(config_mod.load_config(None, overrides).model.name)
    if spec.reference_import is None:
        importable = ", ".join(name for name, s in MODELS.items() if s.reference_import is not None)
        raise ConfigError(f"model.name: got {spec.name!r}, which has no reference checkpoint layout; expected "
                          f"{importable}")
    try:
        emb, mapped = spec.reference_import(data["state_dict"])
    except DataError as exc:
        raise DataError(f"{ref}: {exc}") from None
    dims = {w.shape[1] for w in emb}
    if len(dims) != 1:
        raise DataError(f"{ref}: tables of several widths {sorted(dims)}; {spec.name} expects one embedding dim")
    cfg = config_mod.load_config(None, [*(overrides or []), f"model.table_sizes={[int(w.shape[0]) for w in emb]}",
                                        f"model.embedding_dim={dims.pop()}"])
    par = single_process(cfg)
    dense = {name: p for name, p in par.model.named_parameters() if not name.startswith("embeddings.")}
    _check_fits(ref, cfg, dense, dict(mapped))
    with torch.no_grad():
        for name, param in dense.items():
            param.copy_(mapped[name])
        for table, _shard, weight in par.embeddings.local_shards():
            weight.copy_(emb[table.index])
    history = [{"imported_from": str(ref),
                **{k: _plain(v) for k, v in data.items() if k not in ("state_dict", "opt_state_dict")}}]
    return save_checkpoint(Path(out), step=0, par=par, comm=SingleProcess(), cfg=cfg, history=history, run_id="",
                           keep_last=0)


def _check_fits(ref, cfg, dense: dict, mapped: dict) -> None:
    """Every dense parameter of the model has its tensor, of its shape, and no tensor is left over."""
    problems = []
    for name, param in dense.items():
        got = mapped.pop(name, None)
        if got is None:
            problems.append(f"{name} {list(param.shape)} is missing")
        elif got.shape != param.shape:
            problems.append(f"{name} is {list(got.shape)} in the file, {list(param.shape)} in model.flavor="
                            f"{cfg.model.flavor}")
    problems += [f"{name} {list(t.shape)} has no place in model.flavor={cfg.model.flavor}" for name, t in mapped.items()]
    if problems:
        raise DataError(f"{ref}: does not fit the {cfg.model.name.upper()} {cfg.model.flavor} MLPs: "
                        + "; ".join(problems))


def _plain(value):
    """Reference metadata (numpy scalars, tensors) as JSON-friendly values."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
