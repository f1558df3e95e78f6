"""The old name of `disttrain.data.prepared` (the reader of every prepared directory), kept so that imports of
`disttrain.data.criteo` keep working."""

from disttrain.data.prepared import (  # noqa: F401
    BLOCK_ROWS,
    SPEC,
    SPLITS,
    CriteoData,
    DatasetInfo,
    ShuffleOrder,
    open_data,
    open_dataset,
    torchrec_days,
    verify_for_launch,
)
