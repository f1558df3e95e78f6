"""Plain model definitions (installed as `disttrain.models`). They never import torch.distributed.

`MODELS` is the registry of built-in models: `model.name` -> the model's spec (`disttrain.models.spec.ModelSpec`),
which each model module declares once as `SPEC`. `model_spec` also finds users' models: an installed package's
`disttrain.models` entry point, or an import path `package.module:attribute` naming a spec (or a function
returning one).
"""

from disttrain.models import deepfm, dien, dlrm, dlrm_dcnv2, wide_deep
from disttrain.models.deepfm import DEEPFM_FLAVORS, DeepFM, build_deepfm
from disttrain.models.dien import DIEN, DIEN_FLAVORS, build_dien
from disttrain.models.dlrm import DLRM, DLRM_FLAVORS, build_dlrm
from disttrain.models.dlrm_dcnv2 import DCNV2_FLAVORS, DLRMDCNv2, build_dlrm_dcnv2
from disttrain.models.spec import ModelSpec
from disttrain.models.wide_deep import WIDE_DEEP_FLAVORS, WideDeep, build_wide_deep
from disttrain.plugins import MODEL_GROUP, resolve

MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (dlrm.SPEC, dlrm_dcnv2.SPEC, wide_deep.SPEC, deepfm.SPEC, dien.SPEC)
}


def model_spec(name: str) -> ModelSpec:
    """The spec `model.name` names: built in, an installed entry point, or an import path; a one-line error
    naming the choices otherwise."""
    return resolve(name, key="model.name", group=MODEL_GROUP, kind=ModelSpec, what="a model spec", builtin=MODELS)


__all__ = ["DCNV2_FLAVORS", "DEEPFM_FLAVORS", "DIEN", "DIEN_FLAVORS", "DLRM", "DLRMDCNv2", "DLRM_FLAVORS", "MODELS",
           "WIDE_DEEP_FLAVORS", "DeepFM", "ModelSpec", "WideDeep", "build_deepfm", "build_dien", "build_dlrm",
           "build_dlrm_dcnv2", "build_wide_deep", "model_spec"]
