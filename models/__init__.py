"""Plain model definitions (installed as `disttrain.models`). They never import torch.distributed."""

from disttrain.models.dlrm import DLRM, DLRM_FLAVORS, build_dlrm

MODELS = {"dlrm": build_dlrm}

__all__ = ["DLRM", "DLRM_FLAVORS", "MODELS", "build_dlrm"]
