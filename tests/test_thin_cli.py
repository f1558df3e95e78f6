"""The command line is a client: a verb parses, calls `disttrain.api`, prints. The CLI's modules import nothing of
disttrain but the API, the errors and each other (import-linter sees the same as a forbidden contract in
pyproject.toml; this test also catches `from disttrain import ...` of the package itself)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from disttrain.cli.parser import VERBS, build_parser

CLI = Path(__file__).resolve().parents[1] / "disttrain" / "cli"
ALLOWED = ("disttrain.api", "disttrain.errors", "disttrain.cli")


def _disttrain_imports(path: Path) -> list[str]:
    """Every disttrain module a file imports, at any depth of its code (`from disttrain import x` -> disttrain.x)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [f"{node.module}.{a.name}" if node.module == "disttrain" else node.module for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append("disttrain.cli")  # relative: a module of its own
    return [name for name in found if name == "disttrain" or name.startswith("disttrain.")]


def test_cli_imports_only_the_api_and_the_errors():
    wrong = {f"cli/{p.name}": bad for p in sorted(CLI.glob("*.py"))
             if (bad := [m for m in _disttrain_imports(p) if not any(m == a or m.startswith(a + ".") for a in ALLOWED)])}
    assert not wrong, f"the CLI reaches past disttrain.api (grow the API instead): {wrong}"


def test_the_check_sees_every_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import disttrain.engine\nfrom disttrain import worker, api\nfrom disttrain.launch import x\n"
                      "def f():\n    from disttrain.runtime.env import this_rank\n")
    assert _disttrain_imports(sample) == ["disttrain.engine", "disttrain.worker", "disttrain.api", "disttrain.launch",
                                          "disttrain.runtime.env"]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def test_every_verb_of_the_table_is_in_the_parser():
    parser = build_parser()
    for verb in VERBS:
        found = parser
        for word in verb.name.split():
            found = _subparser(found, word)
        assert found.get_default("func") is verb.handler, verb.name
