"""train.precision=bf16 tracks fp32 on every model, and train.profile_steps writes one trace per rank."""

from __future__ import annotations

import json

import pytest

from tests.launch_helpers import disttrain, summary

MODELS = {
    "dlrm": ["train.batch_size=256", "train.lr=0.1"],
    "deepfm": ["train.batch_size=256", "train.optimizer=adagrad", "train.lr=0.05"],
    "dien": ["train.batch_size=64", "train.optimizer=adam", "train.lr=0.003", "data.synthetic_samples=6400"],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_bf16_training_tracks_fp32(tmp_path, model):
    """Tolerance: every logged interval loss within 2% of fp32's, final eval AUC within 0.01. bf16 must also
    actually differ from fp32 (else autocast was not applied)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = disttrain("train", f"model.name={model}", *MODELS[model], "train.steps=100", "train.log_every=20",
                           f"train.precision={precision}", "run.progress=false", f"run.output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[precision] = summary(out)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16["precision"] == "bf16"
    losses = [(a["loss"], b["loss"]) for a, b in zip(fp32["history"], bf16["history"]) if "loss" in a]
    assert len(losses) == 5
    for a, b in losses:
        assert abs(a - b) <= 0.02 * abs(a), losses
    assert any(a != b for a, b in losses), "bf16 gave bit-identical losses: autocast not applied"
    assert abs(fp32["eval_auc"] - bf16["eval_auc"]) < 0.01, (fp32["eval_auc"], bf16["eval_auc"])


def test_profile_steps_write_a_trace_per_rank(tmp_path):
    out = tmp_path / "run"
    result = disttrain("launch", "model.flavor=debug", "train.steps=12", "train.warmup_steps=2",
                       "train.profile_steps=3", "launch.nproc_per_node=2", "run.progress=false",
                       f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "profiled steps 3-5" in result.stdout
    run = summary(out)
    assert run["traces"] == [str(out / "trace_rank0.json"), str(out / "trace_rank1.json")]
    assert run["timed_steps"] == 12 - 2 - 3  # warm-up and profiled steps are not timed
    for rank in range(2):
        events = json.loads((out / f"trace_rank{rank}.json").read_text())["traceEvents"]
        names = {e.get("name") for e in events}
        assert {"step 3", "step 4", "step 5"} <= names and "step 6" not in names
        assert any(n and n.startswith("aten::") for n in names)
        # ops carry their input shapes (how slow GEMM shapes are found)
        assert any(e.get("name") == "aten::addmm" and e.get("args", {}).get("Input Dims") for e in events)


def test_stochastic_rounding_is_unbiased_and_keeps_small_updates():
    import torch

    from disttrain.optim import stochastic_round_bf16

    gen = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 1.0 + 2.0**-12)  # 1/16 of a bf16 step above 1.0
    rounded = stochastic_round_bf16(x, gen).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert abs(float(rounded.mean()) - (1.0 + 2.0**-12)) < 2e-5
    assert float(x.to(torch.bfloat16).float().mean()) == 1.0  # round-to-nearest drops the update
    neg = stochastic_round_bf16(-x, gen).float()
    assert abs(float(neg.mean()) + (1.0 + 2.0**-12)) < 2e-5
    # 1,000 updates of 1/64 bf16 step each: stochastic rounding tracks the fp32 sum; nearest rounding stalls.
    w_sr = torch.ones(20_000, dtype=torch.bfloat16)
    w_rn = torch.ones(20_000, dtype=torch.bfloat16)
    for _ in range(1000):
        w_sr = stochastic_round_bf16(w_sr.float() + 2.0**-13, gen)
        w_rn = (w_rn.float() + 2.0**-13).to(torch.bfloat16)
    expected = 1.0 + 1000 * 2.0**-13
    assert abs(float(w_sr.float().mean()) - expected) < 0.01 * (expected - 1.0) + 1e-3
    assert float(w_rn.float().mean()) == 1.0


@pytest.mark.slow
def test_bf16_embeddings_train_like_fp32_and_resume_exactly(tmp_path):
    """model.embedding_dtype=bf16 on 2 ranks row-wise (fp32 partial sums) and table-wise: loss within 2% and eval
    AUC within 0.01 of fp32 tables; half the weight bytes in the plan; fp32 on disk; a resume from its
    checkpoint equals the uninterrupted run; an fp32 run resumes the bf16 checkpoint."""
    common = ["model.flavor=debug", "train.batch_size=256", "train.optimizer=adagrad", "train.lr=0.1",
              "train.log_every=20", "launch.nproc_per_node=2", "sharding.tables={t0: row_wise, t1: row_wise}",
              "run.progress=false"]
    runs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        result = disttrain("launch", *common, "train.steps=100", f"model.embedding_dtype={dtype}",
                           f"run.output_dir={out}", f"checkpoint.dir={out}/ck", "checkpoint.every_steps=60")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[dtype] = summary(out)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16["plan"]["embedding_dtype"] == "bf16"
    for a, b in zip(fp32["plan"]["ranks"], bf16["plan"]["ranks"]):
        assert b["weight_bytes"] * 2 == a["weight_bytes"] and b["optimizer_bytes"] == a["optimizer_bytes"]
    losses = [(a["loss"], b["loss"]) for a, b in zip(fp32["history"], bf16["history"]) if "loss" in a]
    assert len(losses) == 5 and all(abs(a - b) <= 0.02 * a for a, b in losses), losses
    assert any(a != b for a, b in losses)
    assert abs(fp32["eval_auc"] - bf16["eval_auc"]) < 0.01
    # Resume the bf16 run at step 60: the same steps 61-100 (stochastic rounding is seeded per step).
    out = tmp_path / "resumed"
    result = disttrain("launch", *common, "train.steps=100", "model.embedding_dtype=bf16",
                       f"train.resume={tmp_path}/bf16/ck/step_00000060", f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = summary(out)
    assert abs(resumed["train_loss"] - bf16["train_loss"]) < 1e-6
    assert abs(resumed["eval_auc"] - bf16["eval_auc"]) < 1e-6
    # fp32 tables resume the bf16 checkpoint (fp32 on disk) and evaluate it the same way to bf16 rounding.
    out = tmp_path / "as_fp32"
    result = disttrain("launch", *common, "train.steps=0", f"train.resume={tmp_path}/bf16/ck",
                       f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert abs(summary(out)["eval_auc"] - bf16["eval_auc"]) < 1e-3
