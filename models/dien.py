"""DIEN (Zhou et al. 2019) as in Alibaba's DIEN_TF2 benchmark (ai-matrix `macro_benchmark/DIEN_TF2`), a plain module.

Features: user, target item, target category, and the user's behaviour history (items and their categories,
the last `max_history` kept) with one sampled negative item per position for the auxiliary loss. Items and
categories are embedded in 18 dims; an item vector is [item; category] (36).

Three embedding tables, looked up once per step by the (sharded) embedding layer:
- `uid`: one bag per sample;
- `mid`, `cat`: a *sequence* feature of 1 + 2L positions per sample, each holding one id or none:
  [target, history_1..L, negative_1..L]. L is the longest history of the global batch (the data source
  pads to it, as the benchmark pads each batch to its longest history), so every rank exchanges the same
  shapes and the auxiliary loss is normalised as the benchmark normalises it.

Layers (all as the benchmark builds them):
- interest extractor: GRU(36) over the history (TF GRUCell convention, `disttrain.layers.TFGRU`);
- auxiliary loss: for each step t, the state h_t against the clicked next behaviour e_{t+1} and against the
  sampled negative, through BN -> 100 sigmoid -> 50 sigmoid -> 2 softmax; `mean(-log p(click) - log(1 -
  p(noclick)))` over the batch's [B, L - 1] positions with padding counted as zero, weight 1;
- attention: query = PReLU(Dense36(item)), [q, k, q - k, q * k] -> 80 sigmoid -> 40 sigmoid -> 1, padding
  scored -2^32 + 1, softmax over the history;
- interest evolution: AUGRU(36), the update gate scaled by the attention score;
- final: [user, item, sum of history, item * sum of history, final AUGRU state] (162) -> BN -> 200 Dice ->
  80 Dice -> 2 softmax. The BNs are TF's `batch_normalization` in inference mode with untouched moving
  statistics (an affine layer); Dice uses batch statistics (global across ranks when sharded).
The click logit returned is z_click - z_noclick (the 2-way softmax's log-odds); the benchmark's loss is the
2-class cross-entropy averaged over both classes, i.e. half the binary log loss (the spec's `loss_scale`).
Deviation, documented: the history sum here skips padding positions (the benchmark adds the embedding of
padding id 0 once per padded position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from disttrain.batch import KeyedBags
from disttrain.errors import ConfigError
from disttrain.layers import TFGRU, Dice, EmbeddingBagCollection, FrozenBatchNorm, padded_length, positions
from disttrain.models.spec import ModelSpec
from disttrain.tables import EmbeddingTableSpec

MASKED_SCORE = -(2.0**32) + 1.0
# Amazon Books vocabularies of the benchmark: uid_voc.pkl, mid_voc.pkl, cat_voc.pkl.
AMAZON_BOOKS_ROWS = (543060, 367983, 1601)


@dataclass(frozen=True)
class DIENFlavor:
    embedding_dim: int
    attention: tuple[int, ...]
    aux: tuple[int, ...]
    hidden: tuple[int, ...]
    table_rows: tuple[int, int, int]  # users, items, categories
    max_history: int


DIEN_FLAVORS = {
    "debug": DIENFlavor(4, (8, 4), (8, 4), (16, 8), (40, 60, 7), 10),
    "ai_matrix": DIENFlavor(18, (80, 40), (100, 50), (200, 80), AMAZON_BOOKS_ROWS, 100),
}
TABLE_NAMES = ("uid", "mid", "cat")


def dense(in_features: int, out_features: int) -> nn.Linear:
    """tf.layers.dense: Glorot-uniform kernel, zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sigmoid_mlp(in_features: int, sizes: tuple[int, ...], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [dense(in_features, size), nn.Sigmoid()]
        in_features = size
    return nn.Sequential(*layers, dense(in_features, out))


class DIEN(nn.Module):
    def __init__(self, *, tables: list[EmbeddingTableSpec], attention: tuple[int, ...], aux: tuple[int, ...],
                 hidden: tuple[int, ...], seed: int = 0, embedding_device: str = "cpu"):
        super().__init__()
        dim = tables[0].dim
        if [t.name for t in tables] != list(TABLE_NAMES) or any(t.dim != dim for t in tables):
            raise ValueError("DIEN needs the tables uid, mid, cat with one embedding dim")
        self.tables = list(tables)
        torch.manual_seed(seed)
        self.embeddings: nn.Module = EmbeddingBagCollection(tables, seed=seed, device=embedding_device)
        item = 2 * dim
        self.gru = TFGRU(item, item)
        self.aux_bn = FrozenBatchNorm(2 * item)
        self.aux_net = sigmoid_mlp(2 * item, aux, 2)
        self.query = dense(item, item)
        self.query_act = nn.PReLU(item, init=0.1)
        self.attention = sigmoid_mlp(4 * item, attention, 1)
        self.augru = TFGRU(item, item)
        final_in = dim + 4 * item
        self.bn = FrozenBatchNorm(final_in)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [dense(final_in, size), Dice(size)]
            final_in = size
        self.fcn = nn.Sequential(*layers, dense(final_in, 2))

    @staticmethod
    def history_lengths(sparse: KeyedBags) -> torch.Tensor:
        """Behaviours per sample: the history positions of the `mid` feature that hold an id."""
        lengths, _ = sparse.split()[1]
        steps = (sparse.bags_per_key[1] - 1) // 2
        return lengths.view(sparse.batch_size, -1)[:, 1 : 1 + steps].sum(1)

    def forward(self, dense_in: torch.Tensor, sparse: KeyedBags):
        """Training: (click logits [B], auxiliary loss summed over this rank's samples, per sample as the
        benchmark's per-batch mean); evaluation: the logits."""
        uid, mid, cat = self.embeddings(sparse)
        steps = (mid.shape[1] - 1) // 2  # the global batch's longest history
        lengths = self.history_lengths(sparse)
        longest = int(lengths.max()) if lengths.numel() else 0  # this rank's: later positions are all padding
        width = padded_length(longest, mid.device.type)  # bf16: a few matmul shapes, not one per batch (shapes.py)
        items = torch.cat([mid, cat], dim=2)  # [B, 1 + 2 * steps, 36]
        target = items[:, 0]
        history = positions(items, 1, longest, width)
        negatives = positions(items, 1 + steps, longest, width)
        mask = torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)

        states, _ = self.gru(history, lengths)
        history_sum = history.sum(dim=1)  # padding positions looked up nothing: zero vectors
        scores = self._attention(target, states, mask)
        _, final_state = self.augru(states, lengths, scores)
        features = torch.cat([uid[:, 0], target, history_sum, target * history_sum, final_state], dim=1)
        logits2 = self.fcn(self.bn(features))
        logits = logits2[:, 0] - logits2[:, 1]
        if not self.training:
            return logits
        return logits, self._aux_loss(states, history, negatives, mask, steps)

    def _attention(self, target: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[q, k, q - k, q * k] -> 80 -> 40 -> 1 with the first layer split by blocks: W [q, k, q - k, q*k] =
        (W_q + W_d) q + (W_k - W_d) k + W_p (q * k), so the query's share is computed once per sample."""
        query = self.query_act(self.query(target))  # [B, 36]
        first, rest = self.attention[0], self.attention[1:]
        w_q, w_k, w_d, w_p = first.weight.chunk(4, dim=1)
        per_sample = F.linear(query, w_q + w_d, first.bias).unsqueeze(1)  # [B, 1, 80]
        per_step = F.linear(torch.cat([keys, keys * query.unsqueeze(1)], dim=2), torch.cat([w_k - w_d, w_p], dim=1))
        scores = rest(per_step + per_sample).squeeze(2)
        return torch.softmax(scores.masked_fill(~mask, MASKED_SCORE), dim=1)

    def _aux_loss(self, states, history, negatives, mask, steps: int) -> torch.Tensor:
        """Sum over this rank's samples of each sample's share of the benchmark's mean over [B, steps - 1]."""
        # Also with fewer than two steps (empty tensors): every rank runs the same graph.
        h = states[:, :-1]
        valid = mask[:, 1:].to(h.dtype)
        # The clicked and the sampled next behaviour through the auxiliary net in one pass.
        pairs = torch.cat([torch.cat([h, history[:, 1:]], dim=2), torch.cat([h, negatives[:, 1:]], dim=2)])
        log_p = F.log_softmax(self.aux_net(self.aux_bn(pairs)), dim=2)
        batch = h.shape[0]
        click, noclick = log_p[:batch, :, 0], log_p[batch:, :, 1]
        return -((click + noclick) * valid).sum() / max(steps - 1, 1)


def dien_tables(cfg, flavor: DIENFlavor) -> list[EmbeddingTableSpec]:
    rows = list(cfg.model.table_sizes) or list(flavor.table_rows)
    if len(rows) != 3:
        raise ConfigError(f"model.table_sizes: got {len(rows)} sizes, expected 3 for DIEN (users, items, categories)")
    if cfg.model.max_rows:
        rows = [min(r, cfg.model.max_rows) for r in rows]
    dim = cfg.model.embedding_dim or flavor.embedding_dim
    positions = 1 + 2 * (cfg.data.max_history or flavor.max_history)
    return [
        EmbeddingTableSpec("uid", rows[0], dim),
        EmbeddingTableSpec("mid", rows[1], dim, pooling="none", bags_per_sample=positions),
        EmbeddingTableSpec("cat", rows[2], dim, pooling="none", bags_per_sample=positions),
    ]


def build_dien(cfg, *, embedding_device: str = "cpu") -> DIEN:
    base = DIEN_FLAVORS[cfg.model.flavor]
    return DIEN(tables=dien_tables(cfg, base), attention=base.attention, aux=base.aux, hidden=base.hidden,
                seed=cfg.train.seed, embedding_device=embedding_device)


def history_positions(tables: list[EmbeddingTableSpec]) -> int:
    """The longest history the model reads: the `mid` feature holds 1 + 2L positions (target, history,
    negatives)."""
    return (tables[1].bags_per_sample - 1) // 2


SPEC = ModelSpec(
    name="dien",
    flavors=DIEN_FLAVORS,
    build=build_dien,
    # The benchmark's files, or generated behaviour sequences with a planted signal.
    data_sources={"synthetic": "dien_synthetic", "dien": "dien"},
    description="DIEN as Alibaba's DIEN_TF2 benchmark (GRU, attention, AUGRU, auxiliary loss)",
    loss_scale=0.5,  # the benchmark averages its 2-class cross-entropy over both classes: half the log loss
    auxiliary_loss=True,
    weights_read_directly=("attention.0",),  # `_attention` splits this layer's weight by blocks itself
    onnx=False,
    history_positions=history_positions,
)
