from __future__ import annotations

import pytest

from tests.launch_helpers import PARITY, disttrain, summary


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory) -> dict:
    """The parity job under the local launcher: what every other launcher must reproduce."""
    out = tmp_path_factory.mktemp("local-reference")
    result = disttrain("launch", *PARITY, f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr
    return summary(out)
