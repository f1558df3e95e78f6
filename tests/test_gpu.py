"""The CUDA paths (skipped without a GPU; CI has none): training on a GPU equals training on the CPU for every
model, and bf16 autocast with bf16 tables tracks fp32 there. Run on a lent GPU machine for the notes."""

from __future__ import annotations

import pytest
import torch

from tests.launch_helpers import disttrain, summary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODELS = {
    "dlrm": ["train.batch_size=256", "train.lr=0.1"],
    "wide_deep": ["train.batch_size=256", "train.optimizer=adagrad", "train.lr=0.05"],
    "deepfm": ["train.batch_size=256", "train.optimizer=adagraddecay", "train.lr=0.05"],
    "dien": ["train.batch_size=64", "train.optimizer=adam", "train.lr=0.003", "data.synthetic_samples=3200"],
}


def _train(tmp_path, name: str, model: str, *extra: str) -> dict:
    out = tmp_path / name
    result = disttrain("train", f"model.name={model}", *MODELS[model], "train.steps=40", "train.log_every=10",
                       "run.progress=false", f"run.output_dir={out}", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(out)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_gpu_training_equals_cpu(tmp_path, model):
    """The same run on cuda:0 (nccl world of one) and on the CPU: every logged loss within 1e-4 relative, eval AUC
    within 1e-4 (GEMM and reduction order differ, nothing else)."""
    cpu = _train(tmp_path, "cpu", model, "launch.backend=gloo")
    gpu = _train(tmp_path, "gpu", model, "launch.backend=nccl")
    assert gpu["workers"][0]["device"].startswith("cuda")
    losses = [(a["loss"], b["loss"]) for a, b in zip(cpu["history"], gpu["history"]) if "loss" in a]
    assert len(losses) == 4 and all(abs(a - b) <= 1e-4 * abs(a) for a, b in losses), losses
    assert abs(cpu["eval_auc"] - gpu["eval_auc"]) < 1e-4


@pytest.mark.parametrize("model", ["dlrm", "deepfm"])
def test_gpu_bf16_with_bf16_tables_tracks_fp32(tmp_path, model):
    fp32 = _train(tmp_path, "fp32", model, "launch.backend=nccl")
    bf16 = _train(tmp_path, "bf16", model, "launch.backend=nccl", "train.precision=bf16",
                  "model.embedding_dtype=bf16")
    losses = [(a["loss"], b["loss"]) for a, b in zip(fp32["history"], bf16["history"]) if "loss" in a]
    assert all(abs(a - b) <= 0.02 * abs(a) for a, b in losses) and any(a != b for a, b in losses), losses
    assert abs(fp32["eval_auc"] - bf16["eval_auc"]) < 0.01
