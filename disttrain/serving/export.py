"""Sharded checkpoints as one plain model, in one file (`disttrain export`), and the plain model in Python.

    export_model(checkpoint, out)      one file, unsharded: the plain model's state_dict + its config
    load_exported(path)                -> (plain model in eval mode, config); never unpickles objects
    plain_model(checkpoint)            -> (the plain model in eval mode, config, step) of a sharded checkpoint
    unsharded_state(checkpoint)        -> (config, the plain model's state_dict, step), whatever world wrote it

Each opens its model with `disttrain.serving.open.open_model`. The export file is a dict of tensors, strings and
ints (`torch.load(weights_only=True)` reads it). A stored config that names a user's model or data source by
import path is built only when `overrides` name the same code (`disttrain.config.stored_config`): reading a file
never makes disttrain import code.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.engine.checkpoint.layout import EXPORT_FORMAT
from disttrain.serving.open import CHECKPOINT, EXPORT, open_model

__all__ = ["EXPORT_FORMAT", "export_model", "load_exported", "plain_model", "unsharded_state"]


def plain_model(checkpoint: str | Path, overrides: list[str] | None = None):
    """(the plain model in eval mode, its config, step) of a sharded checkpoint, whatever world wrote it;
    `overrides` adjust what does not change the weights (data.path, data.eval_batches, ...). The config is the
    caller's to change (a copy of the opened one, which stays frozen)."""
    opened = open_model(checkpoint, overrides, kinds=(CHECKPOINT,))
    return opened.model, copy.deepcopy(opened.config), opened.step


def unsharded_state(checkpoint: str | Path, overrides: list[str] | None = None,
                    ) -> tuple[config_mod.Config, dict[str, torch.Tensor], int]:
    """(config, the plain model's state_dict, step) of a sharded checkpoint, whatever world wrote it."""
    model, cfg, step = plain_model(checkpoint, overrides)
    return cfg, dict(model.state_dict()), step


def export_model(checkpoint: str | Path, out: str | Path, overrides: list[str] | None = None) -> Path:
    """`out`: the plain model's state_dict and config (with `overrides` on top: those that keep the weights'
    shapes, or the model is rebuilt and refused)."""
    model, cfg, step = plain_model(checkpoint, overrides)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"format": EXPORT_FORMAT, "model": cfg.model.name, "flavor": cfg.model.flavor, "step": step,
                "config": config_mod.to_yaml(cfg), "state_dict": state}, tmp)
    tmp.replace(out)
    return out


def load_exported(path: str | Path, overrides: list[str] | None = None):
    """The plain (unsharded) model of an export, in eval mode, and its config (`overrides` on top; the caller's
    to change)."""
    opened = open_model(path, overrides, kinds=(EXPORT,))
    return opened.model, copy.deepcopy(opened.config)
