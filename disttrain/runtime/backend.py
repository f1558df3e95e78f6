"""`launch.backend`: which collective library a run uses, checked before any process starts.

    auto   nccl where torch sees CUDA GPUs (one rank per GPU, training on them), else gloo (CPU training)
    gloo   torch.distributed's CPU transport (TCP); all-to-all with uneven splits works
    nccl   GPU training: shards, batches and exchange buffers on each rank's GPU; needs CUDA GPUs and a
           CUDA build of torch
    ccl    Intel oneCCL for CPUs; needs `oneccl_bindings_for_pytorch`, which is not on PyPI

Horovod (`launch.launcher=horovod`) brings its own transport; there the backend names the one its ops use.
"""

from __future__ import annotations

import importlib

from disttrain.errors import ConfigError

CCL_MODULE = "oneccl_bindings_for_pytorch"


def resolve_backend(requested: str, *, for_training: bool = True) -> str:
    """The concrete backend for `requested`; a one-line ConfigError when it cannot run here.

    `for_training=False` (planning, `disttrain topology`) accepts nccl without a GPU: a GPU node can be
    planned from anywhere."""
    if requested == "auto":
        import torch

        return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "gloo"
    if requested == "gloo":
        return "gloo"
    if requested == "ccl":
        try:
            importlib.import_module(CCL_MODULE)
        except ImportError:
            raise ConfigError(
                f"launch.backend: ccl needs the {CCL_MODULE} package, which is not installed; it is not on PyPI "
                "(Intel published it on its own wheel index for matching torch versions and has ended it); "
                "use launch.backend=gloo (or auto) on CPUs"
            ) from None
        return "ccl"
    if requested == "nccl":
        if not for_training:
            return "nccl"
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"launch.backend: nccl needs CUDA GPUs and a CUDA build of torch; this is torch "
                f"{torch.__version__} with no usable GPU; use launch.backend=gloo (or auto) on CPUs"
            )
        return "nccl"
    raise ConfigError(f"launch.backend: got {requested!r}, expected one of auto, gloo, nccl, ccl")


def training_device(backend: str, placement: dict):
    """CPU, or with nccl this rank's GPU (its placement's; the only visible one where a scheduler such as Ray
    narrowed CUDA_VISIBLE_DEVICES). Set as the current device before the process group starts."""
    import torch

    if resolve_backend(backend) != "nccl":
        return torch.device("cpu")
    gpu = placement.get("plan", {}).get("gpu")
    index = gpu if gpu is not None and gpu < torch.cuda.device_count() else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
