"""Plain model definitions (installed as `disttrain.models`). They never import torch.distributed.

`MODELS` is the registry: `model.name` -> the model's spec (`disttrain.models.spec.ModelSpec`), which each
model module declares once as `SPEC`.
"""

from disttrain.models import deepfm, dien, dlrm, wide_deep
from disttrain.models.deepfm import DEEPFM_FLAVORS, DeepFM, build_deepfm
from disttrain.models.dien import DIEN, DIEN_FLAVORS, build_dien
from disttrain.models.dlrm import DLRM, DLRM_FLAVORS, build_dlrm
from disttrain.models.spec import ModelSpec
from disttrain.models.wide_deep import WIDE_DEEP_FLAVORS, WideDeep, build_wide_deep

from disttrain.errors import ConfigError

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (dlrm.SPEC, wide_deep.SPEC, deepfm.SPEC, dien.SPEC)}


def model_spec(name: str) -> ModelSpec:
    """The registered spec for `model.name`; a one-line error naming the choices otherwise."""
    if name not in MODELS:
        raise ConfigError(f"model.name: got {name!r}, expected one of {', '.join(MODELS)}")
    return MODELS[name]


__all__ = ["DEEPFM_FLAVORS", "DIEN", "DIEN_FLAVORS", "DLRM", "DLRM_FLAVORS", "MODELS", "WIDE_DEEP_FLAVORS",
           "DeepFM", "ModelSpec", "WideDeep", "build_deepfm", "build_dien", "build_dlrm", "build_wide_deep",
           "model_spec"]
