"""The training loss every run (and every equivalence test's reference) uses."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn import functional as F

from disttrain.batch import Batch
from disttrain.models import ModelSpec


def training_loss(model, batch: Batch, global_batch: int, spec: ModelSpec,
                  forward_context=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, fp32 logits): this rank's log loss times the spec's `loss_scale` (or the spec's own `loss`), plus the auxiliary loss a spec
    with `auxiliary_loss` returns beside its logits, divided by the *global* batch so that the ranks' gradients
    add up to the single-process gradient. `forward_context` wraps the forward pass (autocast)."""
    with forward_context():
        out = model(batch.dense, batch.sparse)
    logits, auxiliary = out if spec.auxiliary_loss else (out, None)
    logits = logits.float()
    if spec.loss is not None:  # the model's own loss, summed over this rank's samples
        loss = spec.loss(logits, batch.labels)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") * spec.loss_scale
    if auxiliary is not None:
        loss = loss + auxiliary
    return loss / global_batch, logits
