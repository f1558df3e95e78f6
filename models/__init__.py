"""Plain model definitions (installed as `disttrain.models`). They never import torch.distributed."""

from disttrain.models.dlrm import DLRM, DLRM_FLAVORS, build_dlrm
from disttrain.models.wide_deep import WIDE_DEEP_FLAVORS, WideDeep, build_wide_deep

MODELS = {"dlrm": build_dlrm, "wide_deep": build_wide_deep}
FLAVORS = {"dlrm": DLRM_FLAVORS, "wide_deep": WIDE_DEEP_FLAVORS}

__all__ = ["DLRM", "DLRM_FLAVORS", "FLAVORS", "MODELS", "WIDE_DEEP_FLAVORS", "WideDeep", "build_dlrm",
           "build_wide_deep"]
