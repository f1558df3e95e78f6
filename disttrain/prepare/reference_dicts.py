"""The reference DLRM's id dictionaries (`dlrm_s_pytorch.py`'s `data_utils`) as vocabularies of `disttrain data
criteo --vocab-dicts DIR`, so that rows prepared by disttrain carry the ids a model trained by the reference (and
brought in with `disttrain import`) was trained with.

The reference writes one file per categorical column, `{train|day}_fea_dict_{j}.npz`, whose array `unique` holds
the column's distinct values (hashed modulo `--max-ind-range` when that was given) in id order: value
`unique[i]` has id `i`, numbered in order of first appearance. The arrays are int32; values above 2**31 were
stored wrapped, so they are read back as unsigned 32-bit.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from disttrain.errors import DataError

PREFIXES = ("train", "day")  # Kaggle (train.txt) and Terabyte (day_N) runs of the reference


def dict_files(folder: str, num_tables: int) -> list[Path]:
    """The reference's dictionary file of each categorical column, in column order."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--vocab-dicts: {folder} is not a directory; expected the reference's output folder "
                        "holding train_fea_dict_0.npz ... (or day_fea_dict_0.npz ...)")
    for prefix in PREFIXES:
        files = [root / f"{prefix}_fea_dict_{j}.npz" for j in range(num_tables)]
        if files[0].is_file():
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise DataError(f"--vocab-dicts: {folder} has no {missing[0]}; expected one dictionary per "
                                f"categorical column ({num_tables})")
            return files
    raise DataError(f"--vocab-dicts: {folder} holds no train_fea_dict_0.npz or day_fea_dict_0.npz; expected the "
                    "dictionaries the reference's data_utils writes")


def load_dict(path: Path) -> np.ndarray:
    """One column's values in id order, as uint32 (never unpickles: `allow_pickle=False`)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "unique" not in npz.files:
                raise DataError(f"{path}: no array 'unique' (has {', '.join(npz.files) or 'none'}); expected the "
                                "reference's dictionary of one column")
            unique = npz["unique"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz dictionary ({exc})") from None
    if unique.ndim != 1 or unique.dtype.kind not in "iu":
        raise DataError(f"{path}: 'unique' is {unique.dtype}{list(unique.shape)}; expected a 1-d integer array")
    values = (unique.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    if np.unique(values).size != values.size:
        raise DataError(f"{path}: 'unique' repeats values; expected each value once (its index is its id)")
    return values
