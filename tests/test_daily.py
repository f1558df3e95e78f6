"""The daily job of docs/data.md: day 1 prepared and trained with a checkpoint, day 2 prepared with day 1's vocabularies and
trained from day 1's checkpoint with the documented command. Day 2 is read from its first row, the step counter goes
on, a day-2 run stopped half-way resumes in day 2 exactly, and a resume with nothing left to train is one line."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from tests.launch_helpers import disttrain, summary

BATCH = 64
COMMON = [f"train.batch_size={BATCH}", "train.log_every=5", "run.progress=false", "run.tensorboard=false",
          "data.source=prepared", "train.optimizer=adagrad", "sharding.strategy=row_wise"]


def _write_day(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["clicked", "price", "country", "user_id", "item_id"])
        for _ in range(rows):
            user, item = rng.randrange(200), rng.randrange(60)
            out.writerow([int((user * 3 + item) % 5 < 2), round(rng.uniform(1, 99), 2), rng.choice("abcdef"),
                          f"u{user}", f"i{item}"])


def _ok(*args: str) -> None:
    result = disttrain(*args)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1 trained (1 epoch, a checkpoint at its end), day 2 prepared through day 1's vocabularies."""
    root = tmp_path_factory.mktemp("daily")
    _write_day(root / "day1.csv", 1500, seed=1)
    _write_day(root / "day2.csv", 1300, seed=2)
    columns = ["--label-column", "clicked", "--dense-columns", "price", "--sparse-columns", "country,user_id,item_id"]
    _ok("data", "prepare", str(root / "day1.csv"), *columns, "--out", str(root / "data/day1"))
    _ok("data", "prepare", str(root / "day2.csv"), *columns, "--vocab-from", str(root / "data/day1"),
        "--out", str(root / "data/day2"))
    _ok("train", *COMMON, f"data.path={root}/data/day1", "train.epochs=1", f"checkpoint.dir={root}/runs/day1/ck",
        f"run.output_dir={root}/runs/day1")
    return root


def _day2(root: Path, out: str, *extra: str, command: str = "train") -> dict:
    _ok(command, *COMMON, f"data.path={root}/data/day2", "train.epochs=1", f"checkpoint.dir={root}/{out}/ck",
        f"run.output_dir={root}/{out}", *extra)
    return summary(root / out)


def test_day_2_trains_from_its_first_row_after_day_1(days):
    day1 = summary(days / "runs/day1")
    day1_steps = day1["steps"]
    assert day1_steps == int(1500 * 0.9) // BATCH  # one epoch of day 1's training split (90%)
    day2 = _day2(days, "runs/day2", f"train.resume={days}/runs/day1/ck", "launch.nproc_per_node=2", command="launch")
    day2_steps = int(1300 * 0.9) // BATCH
    assert day2["first_step"] == day1_steps and day2["steps"] == day1_steps + day2_steps
    data = day2["data"]
    assert data["path"].endswith("data/day2") and data["data_start_step"] == day1_steps
    assert data["rows_consumed"] == day2_steps * BATCH and (data["epoch"], data["batch_in_epoch"]) == (1, 0)
    trained = [h for h in day2["history"] if "loss" in h and h["step"] > day1_steps]
    assert trained and all(0 < h["loss"] < 1 for h in trained)  # it trained on day 2: finite losses, new steps
    assert day2["eval_auc"] != day1["eval_auc"]


def test_a_day_2_run_stopped_half_way_resumes_in_day_2(days):
    whole = _day2(days, "runs/whole", f"train.resume={days}/runs/day1/ck", "checkpoint.every_steps=4",
                 "checkpoint.keep_last=0")
    start = whole["first_step"]
    mid = next(s for s in range(start + 1, whole["steps"]) if s % 4 == 0)
    resumed = _day2(days, "runs/resumed", f"train.resume={days}/runs/whole/ck/step_{mid:08d}")
    assert resumed["first_step"] == mid and resumed["steps"] == whole["steps"]
    assert resumed["data"] == whole["data"]
    assert resumed["train_loss"] == whole["train_loss"] and resumed["eval_auc"] == whole["eval_auc"]


@pytest.mark.parametrize("extra", [["train.resume_data=continue"], []])
def test_a_resume_with_nothing_to_train_is_one_line(days, tmp_path, extra):
    # Day 1's own data again, same epochs (auto: the same data, so it goes on where day 1 ended: at its end) -
    # or day 2 forced to continue from where day 1 stood.
    data = "day1" if not extra else "day2"
    result = disttrain("train", *COMMON, f"data.path={days}/data/{data}", "train.epochs=1", *extra,
                       f"train.resume={days}/runs/day1/ck", f"run.output_dir={tmp_path}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("disttrain: error")]
    assert len(errors) == 1 and "nothing to train; expected train.steps >" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "summary.json").exists()
