"""The docs: every code sample is a real example file, the site builds, the README holds."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from celery_claim import settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
README = (ROOT / "README.md").read_text()


def snippets() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        for line in page.read_text().splitlines():
            match = SNIPPET.match(line.strip())
            if match:
                found.append((page, match.group(1)))
    return found


def test_every_snippet_names_a_file_under_examples() -> None:
    found = snippets()
    assert len(found) >= 15
    for page, path in found:
        assert path.startswith("examples/"), (page.name, path)
        assert (ROOT / path).is_file(), (page.name, path)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_samples_are_included_not_pasted(page: Path) -> None:
    for language, body in FENCE.findall(page.read_text()):
        if language == "python":
            lines = [line for line in body.splitlines() if line.strip()]
            assert lines, page.name
            assert all(SNIPPET.match(line.strip()) for line in lines), (page.name, body)


def test_every_example_is_in_the_docs_and_exercised_by_a_test() -> None:
    included = {path for _, path in snippets()}
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    for path in sorted((ROOT / "examples").rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if path.suffix not in (".py", ".sql") or path.name == "__init__.py":
            continue
        assert relative in included, f"{relative} is not shown in the docs"
        under_examples = path.relative_to(ROOT / "examples").as_posix()
        # A package used as a whole (the billing app, run by a worker) counts too.
        package = ".".join(path.relative_to(ROOT).parts[:2]) + "."
        assert under_examples in tests_text or package in tests_text or \
            "examples/testing" in relative, f"{relative} is not exercised by a test"


def test_readme_quick_start_is_the_example_file() -> None:
    blocks = [body for language, body in FENCE.findall(README) if language == "python"]
    assert blocks == [(ROOT / "examples/quickstart/tasks.py").read_text()]


def test_readme_gives_the_two_commands() -> None:
    assert ("python3 -m venv .venv && .venv/bin/pip install -e . && "
            ".venv/bin/celery-claim demo") in README
    assert ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
            ".venv/bin/python -m pytest") in README


def test_every_page_is_in_the_nav_and_every_setting_documented() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def walk(items: object) -> list[str]:
        if isinstance(items, str):
            return [items]
        if isinstance(items, dict):
            return [p for v in items.values() for p in walk(v)]
        if isinstance(items, list):
            return [p for v in items for p in walk(v)]
        return []

    assert sorted(walk(config["nav"])) == sorted(p.name for p in PAGES)
    reference = (DOCS / "configuration.md").read_text()
    for option in settings.OPTIONS:
        assert f"| `{option}` |" in reference, option


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    built = (tmp_path / "site" / "quickstart" / "index.html").read_text()
    assert "claim_key=" in built  # the snippet was included
