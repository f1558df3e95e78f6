"""The compiled dot interaction (`interaction_kernels.c`): each product is a chain of fused multiply-adds in a fixed
order (checked exactly against rational arithmetic), the AVX-512 build and the portable build give the same bits,
and against torch's ops (bmm + gather + cat, autograd) it agrees within the error bound of a change of summation
order - bitwise at DLRM's width 16 on the CPUs measured here, where torch's batched GEMM runs the same chains -
for strided views, any vector count and batch; a DLRM run
with it is the run without it."""

from __future__ import annotations

import ctypes
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disttrain import api
from disttrain.layers import row_kernels
from disttrain.layers.interaction import _CompiledDotInteraction, dot_interaction_cat


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    saved = row_kernels.CACHE, dict(row_kernels._loaded)
    row_kernels.CACHE, row_kernels._loaded = tmp_path_factory.mktemp("kernels"), {}
    try:
        yield row_kernels.library("compiled")
    finally:
        row_kernels.CACHE, row_kernels._loaded = saved[0], saved[1]


@pytest.fixture(scope="module")
def portable(tmp_path_factory, lib):
    """The same source built without AVX-512 (the lane-at-a-time fallback)."""
    out = tmp_path_factory.mktemp("portable") / "k.so"
    flags = [f for f in row_kernels.FLAGS if not f.startswith(("-march", "-mprefer"))] + ["-march=x86-64-v3"]
    if subprocess.run([row_kernels._compiler(), *flags, "-o", str(out), *map(str, row_kernels.SOURCES), "-lm"],
                      capture_output=True).returncode != 0:
        pytest.skip("the compiler cannot build for x86-64-v3 here")
    built = ctypes.CDLL(str(out))
    for name in ("forward_f32", "backward_f32", "forward_bf16", "backward_bf16"):
        getattr(built, f"disttrain_dot_{name}").argtypes = getattr(lib, f"disttrain_dot_{name}").argtypes
    return built


def _fma_chain(pairs: list[tuple[float, float]]) -> np.float32:
    """acc = fma(x, y, acc) from 0, each step rounded once to fp32 (exact rational arithmetic)."""
    acc = np.float32(0.0)
    for x, y in pairs:
        acc = np.float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(acc)))
    return acc


def _vectors(batch, count, dim, seed, strided):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, dim, generator=gen).requires_grad_()
    if strided:  # pooled vectors as views of one exchange buffer, as the sharded collection hands them out
        buf = torch.randn(batch, (count - 1) * dim, generator=gen)
        pooled = [buf[:, k * dim : (k + 1) * dim].view(batch, 1, dim).detach().requires_grad_() for k in range(count - 1)]
    else:
        pooled = [torch.randn(batch, 1, dim, generator=gen).requires_grad_() for _ in range(count - 1)]
    return dense, pooled


def _run(lib_or_none, dense, pooled, grad_out):
    pairs = _tril(len(pooled) + 1)
    for t in (dense, *pooled):
        t.grad = None
    if lib_or_none is None:
        vectors = torch.cat([dense.unsqueeze(1), *pooled], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1).index_select(1, pairs)
        out = torch.cat([dense, dots], dim=1)
    else:
        out = _CompiledDotInteraction.apply(lib_or_none, dense, *pooled)
    out.backward(grad_out)
    return out.detach().clone(), [t.grad.clone() for t in (dense, *pooled)]


def _tril(count):
    rows, cols = torch.tril_indices(count, count, offset=-1)
    return rows * count + cols


def test_each_product_is_one_fma_chain_in_order(lib, portable):
    dense, pooled = _vectors(2, 5, 16, seed=3, strided=True)
    vectors = torch.cat([dense.unsqueeze(1), *pooled], dim=1).detach()
    grad_out = torch.randn(2, 16 + 10, generator=torch.Generator().manual_seed(4))
    for built in (lib, portable):
        out, grads = _run(built, dense, pooled, grad_out)
        at = 16
        for i in range(1, 5):
            for j in range(i):
                assert out[1, at].item() == _fma_chain(list(zip(vectors[1, i].tolist(), vectors[1, j].tolist())))
                at += 1
        # the gradient of vector 2 of sample 0, lane 7: (sum over k<2 of g(2,k) v_k) + (sum over k>2 of g(k,2) v_k)
        g = grad_out[0, 16:].tolist()

        def pair(i, j, g=g):
            return g[i * (i - 1) // 2 + j]

        first = _fma_chain([(pair(2, k), vectors[0, k, 7].item()) for k in range(2)])
        second = _fma_chain([(pair(k, 2), vectors[0, k, 7].item()) for k in range(3, 5)])
        assert grads[2][0, 0, 7].item() == np.float32(first + second)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 70), count=st.integers(2, 40), dim=st.sampled_from([16, 32, 48, 128]),
       strided=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_the_kernel_agrees_with_torchs_ops(lib, portable, batch, count, dim, strided, seed):
    dense, pooled = _vectors(batch, count, dim, seed, strided)
    width = dim + count * (count - 1) // 2
    grad_out = torch.randn(batch, width + 1, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out[:, :width] if strided else grad_out[:, :width].contiguous()  # rows apart, as a padded GEMM's
    ref_out, ref_grads = _run(None, dense, pooled, grad_out)
    out, grads = _run(lib, dense, pooled, grad_out)
    port_out, port_grads = _run(portable, dense, pooled, grad_out)
    assert torch.equal(out, port_out) and all(torch.equal(a, b) for a, b in zip(grads, port_grads))
    # Two summation orders of n terms differ by at most 2 n u sum|terms| (u = 2^-24): the sums of |terms| are the
    # same computation on absolute values. (Dim 16 is bitwise here; wider GEMMs block their sums differently.)
    plain = [t.detach().abs().requires_grad_() for t in (dense, *pooled)]
    abs_out, abs_grads = _run(None, plain[0], plain[1:], grad_out.abs())
    slack = 2 * (max(dim, count) + 1) * 2.0**-24
    assert bool(((out - ref_out).abs() <= slack * abs_out).all())
    for a, b, bound in zip(grads, ref_grads, abs_grads):
        assert bool(((a - b).abs() <= slack * bound).all())


def test_the_torch_path_serves_what_the_kernel_does_not_take(lib):
    """A width that is not a multiple of 16, an fp16 autocast and other pairs go through torch's ops."""
    dense, pooled = _vectors(8, 4, 8, seed=0, strided=False)
    out = dot_interaction_cat(dense, pooled, _tril(4))
    assert out.grad_fn.name() == "CatBackward0"
    dense, pooled = _vectors(8, 4, 16, seed=0, strided=False)
    assert dot_interaction_cat(dense, pooled, _tril(4)).grad_fn.name() == "_CompiledDotInteractionBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 tables' vectors: rounded to bf16, as torch's path does
        mixed = dot_interaction_cat(dense.to(torch.bfloat16), pooled, _tril(4))
        assert mixed.grad_fn.name() == "_CompiledDotInteractionBackward" and mixed.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert dot_interaction_cat(dense, pooled, _tril(4)).grad_fn.name() == "CatBackward0"
    other_pairs = torch.tensor([1 * 4 + 0, 3 * 4 + 2])  # not the whole triangle
    assert dot_interaction_cat(dense, pooled, other_pairs).grad_fn.name() == "CatBackward0"


@pytest.mark.parametrize(("precision", "rel"), [("fp32", 1e-6), ("bf16", 2e-3)])
def test_a_dlrm_run_with_the_kernel_is_the_run_without(tmp_path, lib, precision, rel):
    """Embedding dim 16 (the kernel's case): torch's ops vs the library, fp32 (the same to 1e-6; bitwise here) and
    bf16 autocast (each product rounded once instead of after oneDNN's own order)."""
    losses = {}
    for kernel in ("torch", "auto"):
        cfg = api.load_config(None, ["model.flavor=debug", "model.embedding_dim=16", "train.batch_size=64",
                                     f"train.precision={precision}",
                                     "train.steps=8", f"train.sparse_kernel={kernel}", "run.progress=false",
                                     "run.tensorboard=false", "data.eval_batches=1", "launch.affinity=none",
                                     f"run.output_dir={tmp_path / kernel}"])
        losses[kernel] = api.train(cfg)["train_loss"]
        assert (row_kernels.loaded() is not None) == (kernel == "auto")  # the run turned it on or off
    assert losses["auto"] == pytest.approx(losses["torch"], rel=rel)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 40), count=st.integers(2, 30), dim=st.sampled_from([16, 32]), seed=st.integers(0, 2**31 - 1))
def test_bf16_is_the_fp32_chain_rounded_once_and_near_torchs_autocast_path(lib, portable, batch, count, dim, seed):
    """bf16 vectors: each result is the fp32 kernel's on the same (exactly widened) values, rounded to bf16 once;
    torch's bf16 path (bmm in bf16, two GEMM roundings in the backward) is within 3 bf16 units of the sum of |terms|."""
    dense, pooled = _vectors(batch, count, dim, seed, strided=False)
    half = [t.detach().to(torch.bfloat16).requires_grad_() for t in (dense, *pooled)]
    wide = [t.detach().float().requires_grad_() for t in half]
    grad_out = torch.randn(batch, dim + count * (count - 1) // 2,
                           generator=torch.Generator().manual_seed(seed + 1)).to(torch.bfloat16)
    out, grads = _run(lib, half[0], half[1:], grad_out)
    port_out, port_grads = _run(portable, half[0], half[1:], grad_out)
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.bfloat16
    assert torch.equal(out, port_out) and all(torch.equal(a, b) for a, b in zip(grads, port_grads))
    wide_out, wide_grads = _run(lib, wide[0], wide[1:], grad_out.float())
    assert torch.equal(out, wide_out.to(torch.bfloat16))
    for a, b in zip(grads[1:], wide_grads[1:]):  # the pooled vectors' gradients: one rounding of the fp32 sums
        assert torch.equal(a, b.to(torch.bfloat16))
    plain = [t.detach().abs().requires_grad_() for t in wide]
    abs_out, abs_grads = _run(None, plain[0], plain[1:], grad_out.float().abs())
    pairs = _tril(count)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for t in half:
            t.grad = None
        ref = torch.cat([half[0], _torch_dots(half, pairs)], dim=1)
    ref.backward(grad_out)
    slack = 3 * 2.0**-8
    assert bool(((out.float() - ref.float()).abs() <= slack * abs_out + 1e-30).all())
    for t, mine, bound in zip(half, grads, abs_grads):
        assert bool(((mine.float() - t.grad.float()).abs() <= slack * bound + 1e-30).all())


def _torch_dots(vectors, pairs):
    from disttrain.layers.interaction import dot_interaction

    return dot_interaction(torch.cat([vectors[0].unsqueeze(1), *vectors[1:]], dim=1), pairs)
