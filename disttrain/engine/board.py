"""TensorBoard event files from rank 0 (`run.tensorboard`, on by default), written to `run.output_dir`.

Tags, per log interval (x axis: the step):
    train/loss, train/auc, train/samples_per_s, train/learning_rate
    step_time/rank<R>/<phase> and step_time/rank<R>/step   ms per step of every rank (disttrain.phases)
and per evaluation: <split>/auc, <split>/logloss, <split>/accuracy (split: val, test or eval).
"""

from __future__ import annotations

from pathlib import Path

from disttrain.errors import ConfigError


class Board:
    def __init__(self, out_dir: str | Path, *, enabled: bool):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("run.tensorboard: true, but the tensorboard package is not installed; expected "
                              "`pip install tensorboard` (a disttrain dependency) or run.tensorboard=false") from None
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(out_dir), flush_secs=10)

    def interval(self, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for tag, key in (("train/loss", "loss"), ("train/auc", "train_auc"), ("train/samples_per_s", "samples_per_s"),
                         ("train/learning_rate", "lr")):
            self.writer.add_scalar(tag, record[key], step)
        for rank, (step_ms, phases) in enumerate(zip(record["rank_step_ms"], record["rank_phase_ms"])):
            self.writer.add_scalar(f"step_time/rank{rank}/step", step_ms, step)
            for name, ms in phases.items():
                self.writer.add_scalar(f"step_time/rank{rank}/{name}", ms, step)

    def evaluation(self, step: int, split: str, metrics: dict) -> None:
        if self.writer is None or not metrics:
            return
        for key in ("auc", "logloss", "accuracy"):
            self.writer.add_scalar(f"{split}/{key}", metrics[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
