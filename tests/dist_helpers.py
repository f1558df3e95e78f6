"""Spawn real gloo ranks for tests, and the unsharded reference they are compared against."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from disttrain.collectives import SingleProcess, TorchCollectives
from disttrain.config import load_config
from disttrain.data.synthetic import SyntheticCTR
from disttrain.models import model_spec
from disttrain.models.loss import training_loss
from disttrain.optim import ADAGRAD_EPS, ADAM_BETAS, ADAM_EPS, DECAY_INITIAL
from disttrain.parallelize import parallelize
from disttrain.planning.build import build_model, build_plan, open_data
from disttrain.runtime.env import free_port
from disttrain.tables import raw_id_tables


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    ok = False
    try:
        result = fn(TorchCollectives(), *args)
        torch.save({"ok": True, "result": result}, os.path.join(out_dir, f"rank{rank}.pt"))
        ok = True
    except BaseException:
        torch.save({"ok": False, "error": traceback.format_exc()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # Leave like the real workers do, without interpreter teardown: tearing down C++ statics while gloo
    # threads exist can abort ("terminate called without an active exception") after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if ok else 1)


def run_ranks(world: int, fn: Callable, *args) -> list:
    """Run `fn(comm, *args)` on `world` real processes joined by gloo; return each rank's result."""
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.start_processes(_entry, args=(world, free_port(), out_dir, fn, args), nprocs=world,
                               start_method="spawn")
        except mp.ProcessExitedException:
            pass  # each rank's file says what happened
        results = []
        for r in range(world):
            path = os.path.join(out_dir, f"rank{r}.pt")
            results.append(torch.load(path, weights_only=False) if os.path.exists(path)
                           else {"ok": False, "error": "wrote no result (killed, or stopped after another rank failed)"})
    failed = sorted(((r, res["error"]) for r, res in enumerate(results) if not res["ok"]),
                    key=lambda item: item[1].startswith("wrote no result"))  # real tracebacks first
    assert not failed, "\n".join(f"rank {r} failed:\n{error}" for r, error in failed)
    return [res["result"] for res in results]


# ----- the unsharded reference: plain DLRM, torch's own (sparse) optimizers ------------------------------------
class _RowwiseAdagrad:
    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr
        self.state = [torch.zeros(p.shape[0]) for p in self.params]

    @torch.no_grad()
    def step(self):
        for p, state in zip(self.params, self.state):
            g = p.grad.coalesce()
            rows, values = g.indices()[0], g.values()
            state.index_add_(0, rows, (values * values).mean(1))
            p.index_add_(0, rows, values / (state[rows].sqrt() + ADAGRAD_EPS).unsqueeze(1), alpha=-self.lr)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def reference_optimizers(model, kind: str, lr: float):
    emb = list(model.embeddings.parameters())
    dense = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    if kind == "sgd":
        return [torch.optim.SGD(emb + dense, lr=lr)]
    if kind == "adagrad":
        return [torch.optim.Adagrad(emb + dense, lr=lr, eps=ADAGRAD_EPS)]
    if kind == "adam":
        return [torch.optim.SparseAdam(emb, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS),
                torch.optim.Adam(dense, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)]
    if kind == "adagraddecay":  # before its first decay (100k steps) it is Adagrad whose accumulators start at 0.1
        return [torch.optim.Adagrad(emb + dense, lr=lr, eps=ADAGRAD_EPS, initial_accumulator_value=DECAY_INITIAL)]
    return [_RowwiseAdagrad(emb, lr), torch.optim.Adagrad(dense, lr=lr, eps=ADAGRAD_EPS)]


def make_data(cfg, tables, comm=None):
    if cfg.model.name == "dien":  # generated sequences (the planted-signal generator)
        return open_data(cfg, tables, comm=comm or SingleProcess(), rank=comm.rank if comm else 0)
    return SyntheticCTR(tables, num_dense=cfg.data.num_dense, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                        distribution=cfg.data.distribution, multi_hot_max=cfg.data.multi_hot_max,
                        raw_ids=raw_id_tables(cfg, tables))


def loss_sum(model, batch, global_batch: int, name: str) -> torch.Tensor:
    """The trainer's loss (the same function) for a plain or a parallelized model of `model.name=name`."""
    return training_loss(model, batch, global_batch, model_spec(name))[0]


def first_logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(batch.dense, batch.sparse).clone()
    model.train()
    return out


def reference_run(overrides: list[str], steps: int):
    """Logits of batch 0 before training, then parameters after `steps` steps, on one process."""
    cfg = load_config(None, overrides)
    model = build_model(cfg)
    data = make_data(cfg, model.tables)
    optimizers = reference_optimizers(model, cfg.train.optimizer, cfg.train.lr)
    logits0 = first_logits(model, data.batch(0))
    for step in range(steps):
        batch = data.batch(step)
        for opt in optimizers:
            opt.zero_grad()
        loss_sum(model, batch, cfg.train.batch_size, cfg.model.name).backward()
        for opt in optimizers:
            opt.step()
    return logits0, model


def sharded_run(comm, overrides: list[str], steps: int):
    """The same on this rank of a sharded run: local logits of batch 0, then the trained model."""
    cfg = load_config(None, overrides)
    model, plan = build_plan(cfg, comm.world_size)
    par = parallelize(model, plan=plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=cfg.train.seed)
    data = make_data(cfg, model.tables, comm)
    logits0 = first_logits(par.model, data.batch(0, rank=comm.rank, world_size=comm.world_size))
    for step in range(steps):
        batch = data.batch(step, rank=comm.rank, world_size=comm.world_size)
        par.zero_grad()
        loss_sum(par.model, batch, cfg.train.batch_size, cfg.model.name).backward()
        par.step()
    return logits0, par, plan


def compare_with_reference(comm, cases: list[tuple[list[str], int]]) -> list[dict]:
    """For each (overrides, steps): max abs differences of logits, dense parameters and embedding shards."""
    report = []
    for overrides, steps in cases:
        ref_logits, ref_model = reference_run(overrides, steps)
        logits, par, plan = sharded_run(comm, overrides, steps)
        local = logits.numel()
        ref_slice = ref_logits[comm.rank * local : (comm.rank + 1) * local]
        dense_diff = max(
            (p - dict(ref_model.named_parameters())[n]).abs().max().item()
            for n, p in par.model.named_parameters()
            if not n.startswith("embeddings.")
        )
        ref_tables = [bag.weight.detach() for bag in ref_model.embeddings.bags]
        emb_diff, shards = 0.0, 0
        for table, shard, weight in par.embeddings.local_shards():
            (r0, r1), (c0, c1) = shard.rows, shard.cols
            emb_diff = max(emb_diff, (weight - ref_tables[table.index][r0:r1, c0:c1]).abs().max().item())
            shards += 1
        moved = max((ref_tables[i] - w).abs().max().item() for i, w in enumerate(_initial_tables(overrides)))
        report.append({
            "overrides": overrides, "plan": [t.type.value for t in plan.tables], "logits": (logits - ref_slice).abs().max().item(),
            "dense": dense_diff, "embeddings": emb_diff, "shards": shards, "tables_moved": moved,
        })
    return report


def _initial_tables(overrides):
    cfg = load_config(None, overrides)
    return [bag.weight.detach() for bag in build_model(cfg).embeddings.bags]
