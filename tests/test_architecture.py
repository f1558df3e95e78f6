"""The house rules the import contracts cannot see: no code outside a model's (or data source's) own module asks
which model (or source) it has, models never touch torch.distributed, files stay small, and every registry holds
what the config and the docs say. (`make test` runs `lint-imports` for the layer and cycle contracts.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from disttrain.data.sources import SOURCES
from disttrain.launchers import LAUNCHERS
from disttrain.models import MODELS
from disttrain.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = [p for d in ("disttrain", "models", "launchers") for p in sorted((ROOT / d).rglob("*.py"))]
MAX_LINES = 400
# A branch on which model, data source, optimizer or launcher a run has, outside that thing's own module.
BRANCH = re.compile(r"""(model\.name|data\.source|\.optimizer|\.launcher|self\.kind)\s*[!=]=\s*["']""")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_branch_on_which_model_source_optimizer_or_launcher():
    found = [f"{_rel(p)}:{n}: {line.strip()}" for p in PACKAGE for n, line in enumerate(p.read_text().splitlines(), 1)
             if BRANCH.search(line) and not line.lstrip().startswith("#")]
    found = [f for f in found if not f.startswith("disttrain/engine/faults.py")]  # fault kinds are no registry
    assert not found, "a registry fact branched on outside its home:\n" + "\n".join(found)


def test_models_are_plain_modules():
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("torch.distributed") for n in names), f"{_rel(path)} imports {names}"


def test_files_stay_small():
    long = {_rel(p): n for p in PACKAGE if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern (at most {MAX_LINES} lines each): {long}"


def test_registries_are_complete_and_consistent():
    for name, spec in MODELS.items():
        assert spec.name == name and "debug" in spec.flavors
        assert set(spec.data_sources.values()) <= set(SOURCES), (name, spec.data_sources)
    assert set(LAUNCHERS) == {"local", "torchrun", "ray", "horovod"}
    for name, spec in OPTIMIZERS.items():
        assert spec.name == name and spec.state_words[0] + spec.state_words[1] == len(spec.state)
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert all(word in page for word in ("MODELS", "SOURCES", "OPTIMIZERS", "LAUNCHERS"))
