"""The job record: what `disttrain launch` asks its workers to do, resolved once by the driver, frozen, and
written beside the config the workers read (`<run dir>/job.json`, handed over as `python -m disttrain.worker
--config FILE --job FILE`).

It replaces flags the driver once set in its own environment for the workers to inherit (and never took back, so
a second launch in the same process inherited the first one's decisions). A worker started without `--job`
(`disttrain train`, torchrun by hand) runs the default job: train, nothing checked for it beforehand.

    Job(task="serve", serve={"mode": "latency", "iterations": 100, "exact_max_length": 0})
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

TASKS = ("train", "serve", "probe")
FILE_NAME = "job.json"


@dataclass(frozen=True)
class Job:
    # train; serve a checkpoint (`disttrain infer --nproc N`); probe the machine's rates (`disttrain probe`)
    task: str = "train"
    # task=serve: the request {mode, iterations, exact_max_length}
    serve: dict | None = field(default=None, hash=False)
    # The driver checked each rank's memory and the output/checkpoint directories: the workers need not (they
    # would race each other).
    resources_checked: bool = False
    # The resolved checkpoint directory the driver hashed: the workers check sizes, not hashes, of it.
    verified_checkpoint: str = ""
    # The `data.path` whose checksums the driver's data pre-flight checked: the workers check sizes only.
    verified_data: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"job task: got {self.task!r}, expected one of {', '.join(TASKS)}")
        if (self.task == "serve") != (self.serve is not None):
            raise ValueError("job serve: a serving request is expected with task=serve, and only then")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Job:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"job: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**data)


TRAIN = Job()  # the default job: train, checking everything in the workers


def job_path(config_path: str | Path) -> Path:
    """Where the driver writes the job of the config at `config_path`: beside it."""
    return Path(config_path).with_name(FILE_NAME)


def write_job(job: Job, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(job.to_json(), indent=2) + "\n")
    return path


def read_job(path: str | Path | None) -> Job:
    """The job at `path`; None: the default job (train, nothing checked beforehand)."""
    if path is None:
        return Job()
    return Job.from_json(json.loads(Path(path).read_text()))


def worker_arguments(config_path: str) -> list[str]:
    """`disttrain.worker`'s arguments for the config at `config_path` and the job beside it (when the driver
    wrote one: a launcher called without `disttrain launch`'s pre-flight starts the default job)."""
    job = job_path(config_path)
    return ["--config", config_path, *(["--job", str(job)] if job.is_file() else [])]
