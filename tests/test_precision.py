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
