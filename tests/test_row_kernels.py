"""The compiled row updates (`train.sparse_kernel`) compute bitwise what torch's ops compute, for any row count,
width and repeated rows; a run trained with them is the run trained without; and without a C compiler `auto`
falls back to torch's ops while `compiled` is a one-line error."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disttrain import api, optim
from disttrain.errors import ConfigError
from disttrain.layers import row_kernels


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    saved = row_kernels.CACHE, dict(row_kernels._loaded)
    row_kernels.CACHE, row_kernels._loaded = tmp_path_factory.mktemp("kernels"), {}
    try:
        yield row_kernels.library("compiled")
    finally:
        row_kernels.CACHE, row_kernels._loaded = saved[0], saved[1]


def ulp(x: torch.Tensor) -> torch.Tensor:
    return (torch.nextafter(x.abs(), torch.tensor(float("inf"))) - x.abs())


def _torch_opt(lr: float):
    opt = types.SimpleNamespace(lr=lr)
    opt.add = types.MethodType(optim.SparseRowOptimizer.add, opt)  # fp32 rows: index_add_ only
    return opt


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 300), dim=st.integers(1, 70), n=st.integers(0, 400), lr=st.floats(1e-4, 10.0),
       seed=st.integers(0, 2**31 - 1))
def test_sgd_and_adagrad_equal_the_torch_ops_bitwise(lib, rows, dim, n, lr, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=gen)
    ids = torch.randint(0, rows, (n,), generator=gen)  # repeats are common with few rows
    grads = torch.randn(n, dim, generator=gen) * 3
    expected, got = weight.clone(), weight.clone()
    optim._sgd(_torch_opt(lr), expected, {}, ids, grads.clone())
    assert row_kernels.sgd(lib, got, ids, grads.clone(), lr)
    assert torch.equal(expected.view(torch.int32), got.view(torch.int32))

    # Adagrad sees distinct rows (the optimizer coalesces first). Its accumulator is bitwise torch's; the update
    # differs by at most 2 ulp of the step (torch's vectorized sqrt is not correctly rounded; the kernel's is).
    distinct, summed = optim._coalesce(ids, grads)
    total = torch.rand(rows, dim, generator=gen)
    expected, got, total_expected, total_got = weight.clone(), weight.clone(), total.clone(), total.clone()
    optim._adagrad(_torch_opt(lr), expected, {"sum": total_expected}, distinct, summed.clone())
    assert row_kernels.adagrad(lib, got, total_got, distinct, summed.clone(), lr, optim.ADAGRAD_EPS)
    assert torch.equal(total_expected.view(torch.int32), total_got.view(torch.int32))
    step = (expected - weight).abs()
    bound = 2 * torch.finfo(torch.float32).eps * step + 2 * ulp(torch.maximum(expected.abs(), got.abs()))
    assert ((expected - got).abs() <= bound).all()


def test_tensors_the_kernel_cannot_walk_go_to_torch(lib):
    weight, ids, grads = torch.zeros(8, 4), torch.tensor([1, 2]), torch.ones(2, 4)
    assert not row_kernels.sgd(lib, weight.to(torch.bfloat16), ids, grads, 0.1)  # bf16 rows: stochastic rounding
    assert not row_kernels.sgd(lib, weight.t().contiguous().t(), ids, grads, 0.1)  # strided
    assert not row_kernels.sgd(lib, weight, ids.int(), grads, 0.1)
    assert not row_kernels.adagrad(lib, weight, torch.zeros(8, 5), ids, grads, 0.1, 1e-10)
    assert torch.equal(weight, torch.zeros(8, 4))


def _checkpoint_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted((out / "ck").rglob("*.distcp")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("optimizer", ["sgd", "adagraddecay"])
def test_a_run_with_compiled_updates_is_the_run_with_torchs(tmp_path, optimizer, lib, monkeypatch):
    """Multi-hot bags, rows repeated within and across bags: with SGD the trained tables and dense part are the
    same bits (`auto` = `compiled` there); with Adagrad `auto` is torch's run and `compiled` a run within 1e-5."""
    digests, losses, calls = {}, {}, []
    for name in ("sgd", "adagrad"):
        real = getattr(row_kernels, name)
        monkeypatch.setattr(row_kernels, name, lambda *a, _real=real, **k: calls.append(kernel) or _real(*a, **k))
    for kernel in ("torch", "auto", "compiled"):
        out = tmp_path / kernel
        cfg = api.load_config(None, ["model.flavor=debug", "train.batch_size=64", "train.steps=6",
                                     f"train.optimizer={optimizer}", f"train.sparse_kernel={kernel}",
                                     "data.multi_hot_max=3", "run.progress=false", "run.tensorboard=false",
                                     "data.eval_batches=1", "launch.affinity=none", f"run.output_dir={out}",
                                     f"checkpoint.dir={out}/ck", "checkpoint.every_steps=6"])
        summary = api.train(cfg)
        digests[kernel], losses[kernel] = _checkpoint_digest(out), summary["train_loss"]
    assert set(calls) == ({"auto", "compiled"} if optimizer == "sgd" else {"compiled"})  # the kernels ran
    assert digests["torch"] == digests["auto"] and losses["torch"] == losses["auto"]
    if optimizer == "sgd":
        assert digests["torch"] == digests["compiled"] and losses["torch"] == losses["compiled"]
    else:
        assert losses["compiled"] == pytest.approx(losses["torch"], rel=1e-5)


def test_without_a_compiler_auto_uses_torch_and_compiled_is_an_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(row_kernels, "CACHE", tmp_path)
    monkeypatch.setattr(row_kernels, "_loaded", {})
    monkeypatch.setattr(row_kernels, "_compiler", lambda: None)
    assert row_kernels.library("torch") is None
    assert row_kernels.library("auto") is None
    assert "compiled row updates unavailable (no C compiler" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^train\.sparse_kernel: compiled, but the row kernels could not be built "
                                          r"\(no C compiler .*\); expected a C compiler, or train\.sparse_kernel=auto"):
        row_kernels.library("compiled")
    with pytest.raises(ConfigError, match=r"train\.sparse_kernel: got 'fast', expected one of auto, compiled, torch"):
        row_kernels.library("fast")
