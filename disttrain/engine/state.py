"""What the training loop carries from step to step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from disttrain.phases import PHASES


@dataclass
class RunState:
    step: int = 0
    first_step: int = 0  # where this run started (after a resume)
    timed_steps: int = 0
    timed_seconds: float = 0.0
    timed_cpu_seconds: float = 0.0  # this process's CPU time (all threads) in the timed steps
    interval_loss: float = 0.0
    interval_samples: int = 0
    interval_start: float = field(default_factory=time.perf_counter)
    interval_preds: list[torch.Tensor] = field(default_factory=list)
    interval_labels: list[torch.Tensor] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    last_loss: float = float("nan")
    last_local_loss: float = 0.0
    reached_target_at: int | None = None
    final_val: dict = field(default_factory=dict)
    # Seconds per phase (disttrain.phases) in the timed steps, and in this log interval's steps.
    timed_phases: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    interval_phases: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    interval_step_seconds: float = 0.0
    skipped_steps: int = 0  # steps whose update was dropped for a non-finite loss (train.nonfinite_loss=skip)

    def record(self, *, step: int, seconds: float, cpu_seconds: float, phases: dict[str, float], timed: bool,
               loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, skipped: bool = False) -> None:
        """One finished step: its time (counted in samples/s when `timed`), loss and predictions (none for a
        step skipped for a non-finite loss)."""
        self.step = step + 1
        for name, value in phases.items():
            self.interval_phases[name] += value
        self.interval_step_seconds += seconds
        if timed:
            self.timed_steps += 1
            self.timed_seconds += seconds
            self.timed_cpu_seconds += cpu_seconds
            for name, value in phases.items():
                self.timed_phases[name] += value
        if skipped:
            self.skipped_steps += 1
            return
        self.last_local_loss = float(loss)
        self.interval_loss += self.last_local_loss
        self.interval_samples += labels.numel()
        self.interval_preds.append(torch.sigmoid(logits))
        self.interval_labels.append(labels)

    def restart_interval(self) -> None:
        """After work that is not training (evaluation, a checkpoint): the interval's samples/s starts again."""
        self.interval_start = time.perf_counter()
