"""Every tensor the sharded layer, the gradient buffer and the optimizers create names its device (the
device of the shards: a rank's GPU under nccl). Checked on CPU: training steps run with torch's default
device set to `meta`, so any tensor made without an explicit device lands on `meta`, and the first op mixing
it with real tensors fails. The results must equal the same steps without that trap."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from disttrain.config import load_config
from disttrain.parallelize import parallelize
from disttrain.planning.build import build_plan
from tests.dist_helpers import make_data, run_ranks

CASES = [
    ["sharding.tables={t0: table_wise, t1: row_wise, t2: column_wise, t3: data_parallel}", "train.optimizer=adam",
     "train.lr=0.005", "data.multi_hot_max=3", "model.pooling=mean"],
    ["sharding.strategy=row_wise", "train.optimizer=rowwise_adagrad", "train.lr=0.05"],
]


def _train(comm, overrides: list[str], trap: bool) -> dict[str, torch.Tensor]:
    cfg = load_config(None, ["model.flavor=debug", "train.batch_size=32", *overrides])
    model, plan = build_plan(cfg, comm.world_size)
    par = parallelize(model, plan=plan, comm=comm, optimizer=cfg.train.optimizer, lr=cfg.train.lr,
                      seed=cfg.train.seed, device=torch.device("cpu"))
    data = make_data(cfg, model.tables)
    batches = [data.batch(step, rank=comm.rank, world_size=comm.world_size) for step in range(3)]
    for batch in batches:
        with torch.device("meta") if trap else torch.device("cpu"):
            par.zero_grad()
            logits = par.model(batch.dense, batch.sparse)
            loss = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="sum") / cfg.train.batch_size
            loss.backward()
            par.step()
    return {name: t.detach().clone() for name, t in par.model.state_dict().items()}


def _both(comm, overrides):
    return _train(comm, overrides, trap=False), _train(comm, overrides, trap=True)


def test_no_tensor_is_created_on_an_implicit_device():
    for overrides in CASES:
        for plain, trapped in run_ranks(2, _both, overrides):
            assert plain.keys() == trapped.keys()
            for name in plain:
                assert trapped[name].device.type == "cpu", name
                assert torch.equal(plain[name], trapped[name]), name
