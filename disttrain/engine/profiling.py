"""`train.profile_steps`: record N steps after the warm-up with torch.profiler; each rank writes a Chrome trace
(`<run.output_dir>/trace_rank<R>.json`, like DeepRec's `--timeline`). Profiled steps are left out of samples/s:
the profiler slows them down."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from disttrain.engine.state import RunState


class ProfileWindow:
    def __init__(self, *, first_step: int, warmup: int, count: int, last_step: int, device: torch.device,
                 out_dir: str, rank: int, log):
        self.first = first_step + warmup if count else -1
        self.last = min(self.first + count, last_step) - 1
        self.device, self.path, self.log = device, Path(out_dir) / f"trace_rank{rank}.json", log
        self.profiler = None
        self.trace: str | None = None

    def covers(self, step: int) -> bool:
        """Whether `step` is profiled (and so not timed)."""
        return self.first >= 0 and self.first <= step <= self.last

    def record(self, step: int):
        """The context a profiled step runs in (its name in the trace: `step N`, 1-based)."""
        return torch.profiler.record_function(f"step {step + 1}") if self.profiler else nullcontext()

    def before(self, step: int) -> None:
        if step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()

    def after(self, state: RunState) -> bool:
        if self.profiler is not None and state.step - 1 == self.last:
            profiler, self.profiler = self.profiler, None
            profiler.__exit__(None, None, None)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            profiler.export_chrome_trace(str(self.path))
            self.trace = str(self.path)
            self.log.line(f"profiled steps {self.first + 1}-{self.last + 1}: {self.path} (each rank its own; open "
                          "in ui.perfetto.dev)")
        return False

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.profiler = None
