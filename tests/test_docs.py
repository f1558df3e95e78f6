"""The manual (docs/, mkdocs.yml) builds in MkDocs' strict mode (no broken link, anchor or page left out of the nav),
the cheap command lines it shows run as written, and every relative link of the README leads to a file."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys

import pytest

from tests.launch_helpers import ROOT, cli

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDERS = ("CONFIG", "...", "$", "<", "RUN_DIR", "CHECKPOINT", "FILE")
FILE_NAME = re.compile(r"^[\w.-]+\.(txt|yaml|yml|json|pt|onnx|csv|tsv|parquet|gz)$")


def test_the_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the `test` extra: pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()


def bash_lines(text: str) -> list[str]:
    """The command lines of a page's ```bash blocks, continuation lines joined."""
    lines = []
    for block in BASH_BLOCK.findall(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def is_cheap(argv: list[str]) -> bool:
    """`config keys|list|show demo`, `plan ... --world-size N` and `topology`: verbs that start no process."""
    verb = argv[1:3]
    return (verb in (["config", "keys"], ["config", "list"]) or argv[1:4] == ["config", "show", "demo"]
            or (argv[1] == "plan" and "--world-size" in argv and "--simulate" not in argv)
            or argv[1] == "topology")


def runnable(argv: list[str]) -> bool:
    """No placeholder (CONFIG, ..., $VAR, [optional], N) and every path it names exists."""
    for token in argv[1:]:
        if any(mark in token for mark in PLACEHOLDERS) or token.startswith("[") or token.isupper():
            return False
        value = token.split("=", 1)[-1]
        looks_like_a_path = ("/" in value and "://" not in value) or FILE_NAME.match(value)
        if looks_like_a_path and not (ROOT / value).exists():
            return False
    return True


def doc_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for page in [ROOT / "README.md", *PAGES]:
        for line in bash_lines(page.read_text()):
            try:
                argv = shlex.split(line, comments=True)
            except ValueError:
                continue
            if len(argv) >= 2 and argv[0] == "disttrain" and is_cheap(argv) and runnable(argv):
                commands.append((page.relative_to(ROOT).as_posix(), argv))
    return commands


COMMANDS = doc_commands()


def test_the_docs_show_cheap_commands():
    verbs = {" ".join(argv[1:3]) if argv[1] == "config" else argv[1] for _, argv in COMMANDS}
    assert {"config keys", "config list", "config show", "plan", "topology"} <= verbs, verbs


@pytest.mark.parametrize(("page", "argv"), COMMANDS, ids=[f"{page}: {shlex.join(argv[1:])}" for page, argv in COMMANDS])
def test_a_command_of_the_docs_runs(page, argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = cli(*argv[1:])
    assert result.returncode == 0, f"{page}: `{shlex.join(argv)}` exited {result.returncode}: {result.stderr[-2000:]}"


def test_every_relative_link_of_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "the README links no page"
    missing = [t for t in relative if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links files that do not exist: {missing}"
