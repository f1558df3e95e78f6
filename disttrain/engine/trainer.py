"""The training loop every launcher ends in.

`Trainer` builds the run (plan, parallelized model, data), and `run` is the loop only: each step is timed and
recorded, and everything that happens between steps is a hook with `before(step)`, `after(state) -> stop` and
`close()`, in this order:

    FaultInjection        injected faults (tests of restarts)                        disttrain.engine.faults
    ProfileWindow         torch.profiler over `train.profile_steps` steps            disttrain.engine.profiling
    IntervalLog           one line per `train.log_every` steps, TensorBoard          disttrain.engine.progress
    PeriodicEvaluation    `train.eval_every`, `train.target_auc`                     disttrain.engine.evaluation
    PeriodicCheckpoint    `checkpoint.every_steps`, the last step, a reached target  disttrain.engine.checkpointing

Every rank runs the same hooks in the same order, so their collectives match.
"""

from __future__ import annotations

import time

import torch

from disttrain import config as config_mod
from disttrain.collectives import Collectives
from disttrain.engine.board import Board
from disttrain.engine.checkpointing import PeriodicCheckpoint, resume
from disttrain.engine.console import Logger, evaluation_line, workers_table
from disttrain.engine.evaluation import PeriodicEvaluation, evaluate_sharded
from disttrain.engine.faults import FaultInjection
from disttrain.engine.guard import StepGuard, Verdict
from disttrain.engine.outputs import run_dir
from disttrain.engine.prefetch import Prefetcher
from disttrain.engine.profiling import ProfileWindow
from disttrain.engine.progress import IntervalLog, ReplicaCheck
from disttrain.engine.state import RunState
from disttrain.engine.summary import finish, worker_info
from disttrain.models.loss import training_loss
from disttrain.parallelize import Parallelized, parallelize
from disttrain.phases import TIMER, phase, since
from disttrain.planning.build import build_plan, check_config, open_data
from disttrain.planning.resources import check_resources_collectively
from disttrain.replicas import broadcast_dense, check_replicas, dense_tensors, seed_rngs
from disttrain.runtime.env import WorkerEnv
from disttrain.runtime.job import TRAIN, Job
from disttrain.runtime.signals import Preempted, StopSignals


class Trainer:
    def __init__(self, cfg: config_mod.Config, env: WorkerEnv, comm: Collectives, *, launcher: str, placement: dict,
                 device: torch.device | None = None, stops: StopSignals | None = None, job: Job = TRAIN):
        self.cfg, self.env, self.comm, self.launcher, self.placement = cfg, env, comm, launcher, placement
        self.job = job  # what the launch pre-flight checked already (disttrain.runtime.job)
        self.device = device or torch.device("cpu")
        self.log = Logger(env.rank, progress=cfg.run.progress)
        self.spec = check_config(cfg)
        seed_rngs(cfg.train.seed)  # before the build: a model that seeds nothing is still one model
        model, self.plan = build_plan(cfg, env.world_size)
        check_resources_collectively(cfg, model, self.plan, comm=comm, local_ranks=env.local_world_size,
                                     device=self.device, checked=job.resources_checked)
        self.par: Parallelized = parallelize(
            model, plan=self.plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=cfg.train.seed,
            device=self.device, sparse_kernel=cfg.train.sparse_kernel,
        )
        self.model = self.par.model
        self.has_buffers = bool(dense_tensors(self.model, parameters=False))
        self.data = open_data(cfg, model.tables, comm=comm, rank=env.rank, verified=job.verified_data)
        self.val_split, self.test_split = self.data.held_out
        self.global_batch = cfg.train.batch_size
        bf16 = cfg.train.precision == "bf16"
        self.autocast = lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
        self._pool: dict[int, object] = {}
        self.out_dir = str(run_dir(cfg)) if env.rank == 0 else cfg.run.output_dir  # where rank 0 writes (staged
        # when run.output_dir is on object storage; published after each checkpoint and at the end)
        self.board = Board(self.out_dir, enabled=cfg.run.tensorboard and env.rank == 0)
        self.started = time.perf_counter()
        steps = cfg.train.steps
        self.warmup = cfg.train.warmup()
        self.profile = ProfileWindow(first_step=0, warmup=self.warmup, count=0, last_step=steps, device=self.device,
                                     out_dir=str(run_dir(cfg)), rank=env.rank, log=self.log)
        self.guard = StepGuard(comm, stops, mode=cfg.train.nonfinite_loss, device=self.device)
        # This run's span: the data's batch 0 is global step `data_start` (0, or the resumed step when a resume
        # starts new data from its beginning: `train.resume_data`), and the run ends at data_start + train.steps.
        self.data_start, self.last_step = 0, cfg.train.steps

    def batch(self, step: int, split: str = "train"):
        """This rank's part of global batch `step` of `split`, on the training device (`data.cycle_batches`:
        the first N training batches, cycled)."""
        cycle = self.cfg.data.cycle_batches
        if split == "train":
            step -= self.data_start
        if split == "train" and cycle:
            if step % cycle not in self._pool:
                self._pool[step % cycle] = self.data.batch(
                    step % cycle, rank=self.env.rank, world_size=self.env.world_size).to(self.device)
            return self._pool[step % cycle]
        return self.data.batch(step, rank=self.env.rank, world_size=self.env.world_size, split=split).to(self.device)

    def train_step(self, batch, step: int = 0) -> tuple[torch.Tensor, torch.Tensor, Verdict]:
        """One step; the loss is the local sum over the *global* batch size, so gradients add up across ranks.
        The ranks agree, within the step, on a stop request and a non-finite loss (`disttrain.engine.guard`)."""
        with phase("optimizer"):
            self.par.zero_grad()
        with phase("dense_forward"):
            loss, logits = training_loss(self.model, batch, self.global_batch, self.spec, self.autocast)
            vote = self.guard.vote(loss, self.par.grads)
        with phase("dense_backward"):
            loss.backward()
        with phase("optimizer"):
            verdict = self.guard.verdict(vote)
        if verdict.nonfinite:
            self.log.line(self.guard.nonfinite_step(step, verdict, self.par))
            return loss.detach(), logits.detach(), verdict
        with phase("optimizer"):
            self.par.step()
        return loss.detach(), logits.detach(), verdict

    def data_position(self, step: int) -> dict:
        """Where the data stands after global step `step` (saved in checkpoints and `summary.json`)."""
        return {**self.data.position(step - self.data_start), "data_start_step": self.data_start}

    def check_replicas(self, when: str) -> None:
        """Collective: one line on every rank if any rank's dense parameters differ from rank 0's."""
        with phase("all_reduce"):
            check_replicas(self.model, self.comm, when=when)

    def run(self) -> dict | None:
        """Train up to step `data_start + train.steps` (from a resumed checkpoint's step), evaluate, write
        `summary.json`; returns the summary on rank 0."""
        cfg, state = self.cfg, RunState()
        self._announce()
        first = state.first_step = resume(self, state)
        faults = FaultInjection(self.env.rank, fresh=first == 0, model=self.model)
        self.profile = ProfileWindow(first_step=first, warmup=self.warmup, count=cfg.train.profile_steps,
                                     last_step=self.last_step, device=self.device, out_dir=str(run_dir(cfg)),
                                     rank=self.env.rank, log=self.log)
        checkpoints = PeriodicCheckpoint(self, faults)
        hooks = [faults, self.profile, IntervalLog(self), ReplicaCheck(self), PeriodicEvaluation(self), checkpoints]
        batches = Prefetcher(self.batch, first, self.last_step, depth=3)
        try:
            for step in range(first, self.last_step):
                for hook in hooks:
                    hook.before(step)
                verdict = self._step(state, step, batches)
                stop = [hook.after(state) for hook in hooks]
                if verdict.stop:
                    self._preempted(state, checkpoints)
                if any(stop):
                    break
        finally:
            batches.close()
            for hook in hooks:
                hook.close()
        if self.val_split != self.test_split:
            state.final_val = self.evaluate(self.val_split)
            self.report_evaluation(state, state.final_val, self.val_split)
        final = self.evaluate(self.test_split)
        self.report_evaluation(state, final, self.test_split)
        return finish(self, state, final)

    def _step(self, state: RunState, step: int, batches: Prefetcher) -> Verdict:
        phases_before = TIMER.snapshot()
        start, cpu_start = time.perf_counter(), time.process_time()
        with phase("data_wait"):
            batch = next(batches)
        with self.profile.record(step):
            loss, logits, verdict = self.train_step(batch, step)
        seconds = time.perf_counter() - start
        timed = step - state.first_step >= self.warmup and not self.profile.covers(step)
        state.record(step=step, seconds=seconds, cpu_seconds=time.process_time() - cpu_start, phases=since(phases_before),
                     timed=timed, loss=loss, logits=logits, labels=batch.labels, skipped=verdict.nonfinite)
        return verdict

    def _preempted(self, state: RunState, checkpoints: PeriodicCheckpoint) -> None:
        """A stop was requested during this step: its update is applied; save it, then stop (every rank)."""
        path = checkpoints.last_path if checkpoints.last_step == state.step else None
        if path is None and checkpoints.dir:
            path = checkpoints.save(state)
        self.board.close()
        where = (f"final checkpoint {path}; resume with train.resume=auto (or {path})" if path else
                 "no checkpoint.dir, nothing saved")
        raise Preempted(f"stopped after step {state.step} on request: {where}")

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of `split` over `data.eval_batches` global batches (the source's default: -1). Collective."""
        self.check_replicas(f"before evaluating {split}")
        if self.has_buffers:  # running statistics gathered from each rank's batches: all evaluate with rank 0's,
            broadcast_dense(self.model, self.comm, parameters=False)  # which checkpoints and exports hold
        count = self.data.eval_batches(split, self.cfg.data.eval_batches)
        batches = (self.batch(i, split=split) for i in range(count))
        return evaluate_sharded(self.model, batches, self.comm, autocast=self.autocast)

    def report_evaluation(self, state: RunState, metrics: dict[str, float], split: str) -> None:
        self.board.evaluation(state.step, split, metrics)
        if metrics:
            self.log.line(evaluation_line(split, state.step, metrics))

    def worker_info(self) -> dict:
        return worker_info(self.env, self.placement, self.device)

    def _announce(self) -> None:
        cfg = self.cfg
        self.log.line(f"model {cfg.model.name}/{cfg.model.flavor}: {len(self.model.tables)} tables, "
                      f"world size {self.env.world_size}, launcher {self.launcher}")
        self.log.line(self.plan.describe())
        for note in self.data.notes:
            self.log.line(f"data: {note}")
        for line in workers_table(self.comm.all_gather_object(self.worker_info())):
            self.log.line(line)
