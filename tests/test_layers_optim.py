"""AdagradDecay (DeepRec's schedule, sparse rows and dense parameters alike), the sharded layer with shorter
sequences than its tables allow, and the global-batch BatchNorm's gradient."""

from __future__ import annotations

import pytest
import torch

from disttrain import optim
from disttrain.batch import KeyedBags
from disttrain.collectives import SingleProcess
from disttrain.errors import DataError
from disttrain.layers import EmbeddingBagCollection
from disttrain.layers.batch_stats import BatchNorm, _GlobalBatchNorm
from disttrain.sharding.planner import plan_sharding
from disttrain.sharding.sharded_embedding_bags import ShardedEmbeddingBagCollection
from disttrain.tables import EmbeddingTableSpec


def test_adagraddecay_decays_every_period_and_floors_at_the_initial_value(monkeypatch):
    monkeypatch.setattr(optim, "DECAY_STEPS", 3)
    tables = [EmbeddingTableSpec("t", 5, 2)]
    sharded = ShardedEmbeddingBagCollection(tables, plan_sharding(tables, world_size=1, strategy="table_wise"),
                                         SingleProcess(), seed=0)
    sparse = optim.SparseRowOptimizer(sharded, kind="adagraddecay", lr=0.1)
    dense_param = torch.nn.Parameter(torch.zeros(2))
    dense = optim.dense_optimizer([dense_param], kind="adagraddecay", lr=0.1)
    feats = KeyedBags(("t",), (1,), 1, torch.ones(1, dtype=torch.long), torch.tensor([3]))
    expected, rows = 0.1, []
    for step in range(1, 8):
        sparse.zero_grad()
        sharded(feats)[0].sum().backward()  # gradient 1 on row 3, every column
        dense_param.grad = torch.ones(2)
        sparse.step()
        dense.step()
        if step % 3 == 0:
            expected = max(expected * 0.9, 0.1)
        expected += 1.0
        rows.append(expected)
        torch.testing.assert_close(sparse.state["mp2"]["sum"][3], torch.full((2,), expected))
        torch.testing.assert_close(dense.state[dense_param]["sum"], torch.full((2,), expected))
    torch.testing.assert_close(sparse.state["mp2"]["sum"][0], torch.full((2,), 0.1))  # untouched: floored at 0.1
    assert rows[2] < rows[1] + 1.0  # the decay at step 3 is visible


def test_sequences_shorter_than_the_table_allows_and_longer_ones_refused():
    tables = [EmbeddingTableSpec("seq", 9, 3, pooling="none", bags_per_sample=7)]
    sharded = ShardedEmbeddingBagCollection(tables, plan_sharding(tables, world_size=1, strategy="row_wise"),
                                         SingleProcess(), seed=0)
    reference = EmbeddingBagCollection(tables, seed=0)
    lengths = torch.tensor([1, 1, 0, 1, 0, 0])  # 2 samples x 3 positions
    feats = KeyedBags(("seq",), (3,), 2, lengths, torch.tensor([4, 8, 2]))
    out = sharded(feats)[0]
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out, reference(feats)[0])
    too_long = KeyedBags(("seq",), (8,), 1, torch.zeros(8, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match=r"features carry \(8,\) bags per sample; expected at most \(seq: 7\)"):
        sharded(too_long)


class _OneRank(SingleProcess):
    """A world of one that still takes the collective code path of the global BatchNorm."""


def test_global_batchnorm_gradient_equals_torch_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.double, requires_grad=True)
    weight = torch.randn(5, dtype=torch.double, requires_grad=True)
    bias = torch.randn(5, dtype=torch.double, requires_grad=True)
    torch.autograd.gradcheck(lambda a, w, b: _GlobalBatchNorm.apply(a, w, b, 1e-3, _OneRank()), (x, weight, bias))
    bn = BatchNorm(5).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    grads = [torch.autograd.grad((f(x) ** 3).sum(), [x, w])
             for f, w in ((bn, bn.weight), (lambda a: _GlobalBatchNorm.apply(a, weight, bias, 1e-3, _OneRank()), weight))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dot_interaction_matches_autograd_of_the_plain_formula(dtype):
    """The hand-written backward (and bf16's row-slice path) against autograd of bmm + gather."""
    from disttrain.layers.interaction import dot_interaction

    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(16, 7, 5, generator=gen).to(dtype)
    rows, cols = torch.tril_indices(7, 7, offset=-1)
    pairs = rows * 7 + cols
    mine = vectors.clone().requires_grad_(True)
    plain = vectors.clone().requires_grad_(True)
    out = dot_interaction(mine, pairs)
    ref = torch.bmm(plain, plain.transpose(1, 2)).flatten(1)[:, pairs]
    weights = torch.randn(out.shape, generator=gen).to(dtype)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert torch.allclose(out.float(), ref.float(), atol=tol) and torch.allclose(mine.grad.float(), plain.grad.float(),
                                                                                  atol=tol)
    # Twice: the gradient buffer is reused (off-pair entries must stay zero).
    mine.grad = None
    (dot_interaction(mine, pairs) * weights).sum().backward()
    assert torch.allclose(mine.grad.float(), plain.grad.float(), atol=tol)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(("lead", "width", "out"), [((64,), 13, 40), ((64,), 71, 40), ((64,), 96, 40),
                                                    ((6, 5), 71, 9)])
def test_aligned_linear_equals_nn_linear(lead, width, out, bf16):
    """Thin inputs (transposed weight gradient), ragged widths (zero-padded GEMMs), aligned widths and 3-D inputs,
    fp32 and bf16 autocast, followed by an in-place ReLU: outputs and every gradient as nn.Linear's; the swapped
    layer keeps the same Parameter objects and state_dict keys."""
    import copy

    from disttrain.layers import AlignedLinear, align_linears

    gen = torch.Generator().manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(width, out), torch.nn.ReLU(inplace=True))
    aligned = copy.deepcopy(plain)
    weight, bias = aligned[0].weight, aligned[0].bias
    assert align_linears(aligned) == 1 and type(aligned[0]) is AlignedLinear
    assert aligned[0].weight is weight and aligned[0].bias is bias
    assert aligned[0].reshaped == (width % 16 != 0)  # the custom backward runs where it pays
    assert aligned.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(*lead, width, generator=gen)
    grads = []
    for model in (plain, aligned):
        inp = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(inp)
        (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        grads.append([y, inp.grad, model[0].weight.grad, model[0].bias.grad])
    for a, b in zip(*grads):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference is F.linear
        torch.testing.assert_close(aligned(x), plain(x))
