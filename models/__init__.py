"""Plain model definitions (installed as `disttrain.models`). They never import torch.distributed."""

from disttrain.models.deepfm import DEEPFM_FLAVORS, DeepFM, build_deepfm
from disttrain.models.dien import DIEN, DIEN_FLAVORS, build_dien
from disttrain.models.dlrm import DLRM, DLRM_FLAVORS, build_dlrm
from disttrain.models.wide_deep import WIDE_DEEP_FLAVORS, WideDeep, build_wide_deep

MODELS = {"dlrm": build_dlrm, "wide_deep": build_wide_deep, "deepfm": build_deepfm, "dien": build_dien}
FLAVORS = {"dlrm": DLRM_FLAVORS, "wide_deep": WIDE_DEEP_FLAVORS, "deepfm": DEEPFM_FLAVORS, "dien": DIEN_FLAVORS}

__all__ = ["DEEPFM_FLAVORS", "DIEN", "DIEN_FLAVORS", "DLRM", "DLRM_FLAVORS", "FLAVORS", "MODELS", "WIDE_DEEP_FLAVORS",
           "DeepFM", "WideDeep", "build_deepfm", "build_dien", "build_dlrm", "build_wide_deep"]
