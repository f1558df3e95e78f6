"""The training run's side of checkpoints: which one to resume from, and when to save."""

from __future__ import annotations

import time
from pathlib import Path

from disttrain.data.contract import same_data
from disttrain.engine.checkpoint import find_checkpoint, load_checkpoint, remote, save_checkpoint
from disttrain.engine.outputs import publish
from disttrain.engine.state import RunState
from disttrain.errors import DisttrainError
from disttrain.runtime.env import run_id


def resume(trainer, state: RunState) -> int:
    """Load `train.resume` (or, after a restart, this run's newest checkpoint) into the trainer's model, optimizers
    and `state`; returns the first step to run (0 for a fresh run)."""
    cfg, comm = trainer.cfg, trainer.comm
    target = None
    if comm.rank == 0:  # one decision for all ranks, even if a checkpoint lands meanwhile
        if cfg.train.resume:
            target = find_checkpoint(cfg.train.resume, cfg.checkpoint.dir)
        elif cfg.launch.max_restarts and cfg.checkpoint.dir and run_id():
            target = find_checkpoint("auto", cfg.checkpoint.dir, run_id=run_id())
        if target is not None:  # on object storage every rank makes its own local copy of what it reads
            source = remote.source_of(target)
            remote.release(target)
            target = source
    target = comm.all_gather_object(str(target) if target else None)[0]
    if target is None:
        if cfg.train.resume == "auto":
            trainer.log.line(f"resume: no checkpoint in {cfg.checkpoint.dir} yet; starting at step 0")
        return 0
    start = time.perf_counter()
    loaded = load_checkpoint(remote.open_checkpoint(target), par=trainer.par, comm=comm, cfg=cfg,
                             verified=trainer.job.verified_checkpoint)
    seconds = max(comm.all_gather_object(time.perf_counter() - start))
    state.step, state.history = loaded.step, list(loaded.history)
    # The run's clock goes on from the checkpoint's (the report's throughput line continues, never goes back).
    trainer.started -= max((h.get("time_s", 0.0) for h in state.history if isinstance(h, dict)), default=0.0)
    fresh = "" if loaded.optimizer_restored else " (optimizer changed: its state starts fresh)"
    trainer.log.line(f"resumed from {loaded.path} at step {loaded.step} ({seconds:.2f} s){fresh}")
    note = _place_data(trainer, loaded.data or {}, loaded.step)
    if note:
        trainer.log.line(note)
    if trainer.last_step <= loaded.step and cfg.train.steps and cfg.train.resume:  # not a launcher's restart
        raise DisttrainError(_nothing_to_train(cfg, loaded.path, loaded.step, trainer.data_start))
    return min(loaded.step, trainer.last_step)


def _place_data(trainer, saved: dict, step: int) -> str | None:
    """Where this run's data starts (`trainer.data_start`) and where the run ends (`trainer.last_step`), after a
    resume at `step`; a line to print when the data is not the checkpoint's."""
    cfg = trainer.cfg
    now = trainer.data.position(0)
    mode = cfg.train.resume_data
    if mode == "auto":
        mode = "continue" if same_data(saved, now) else "restart"
    if mode == "restart":
        trainer.data_start, trainer.last_step = step, step + cfg.train.steps
        return (f"resume: {now.get('path') or now.get('source')} read from its first batch as steps {step + 1}.."
                f"{trainer.last_step} (train.resume_data={cfg.train.resume_data}: "
                + ("the checkpoint was trained on other data)" if cfg.train.resume_data == "auto" else "as asked)"))
    trainer.data_start = int(saved.get("data_start_step", 0))
    trainer.last_step = trainer.data_start + cfg.train.steps
    return trainer.data.restore(saved, step - trainer.data_start)


def _nothing_to_train(cfg, path, step: int, data_start: int) -> str:
    ends = f"step {data_start + cfg.train.steps}" + (f" ({data_start} + train.steps)" if data_start else "")
    return (f"train.steps: got {cfg.train.steps}, so the run ends at {ends}, but {path} is at step {step} already: "
            f"nothing to train; expected train.steps > {step - data_start}, train.resume_data=restart (train "
            "this run's data from its first batch, counting train.steps from the checkpoint's step), or "
            "train.steps=0 (evaluate only)")


class PeriodicCheckpoint:
    """Saves to `checkpoint.dir` every `checkpoint.every_steps` steps, at the last step and when the target AUC
    is reached (the run stops there)."""

    def __init__(self, trainer, faults):
        self.trainer, self.faults = trainer, faults
        cfg = trainer.cfg.checkpoint
        self.dir, self.every, self.keep_last = cfg.dir, cfg.every_steps, cfg.keep_last
        self.final_step = trainer.last_step
        self.last_step, self.last_path = -1, None  # the newest checkpoint this run wrote

    def before(self, step: int) -> None:
        return None

    def after(self, state: RunState) -> bool:
        due = (state.step == self.final_step or state.reached_target_at == state.step
               or self.every and state.step % self.every == 0)
        if self.dir and due:
            self.save(state)
            state.restart_interval()
        return False

    def save(self, state: RunState) -> Path:
        trainer = self.trainer
        trainer.check_replicas(f"at the checkpoint of step {state.step}")  # it holds rank 0's dense part only
        start = time.perf_counter()
        path = save_checkpoint(
            self.dir, step=state.step, par=trainer.par, comm=trainer.comm, cfg=trainer.cfg, history=state.history,
            run_id=run_id(), keep_last=self.keep_last,
            fault_before_commit=self.faults.crash_in_checkpoint(state.step), data=trainer.data_position(state.step),
        )
        trainer.log.line(f"checkpoint: {path} ({time.perf_counter() - start:.2f} s)")
        if trainer.comm.rank == 0:
            publish(trainer.cfg)  # a remote run.output_dir gets the run's files so far
        self.last_step, self.last_path = state.step, path
        return path

    def close(self) -> None:
        return None
