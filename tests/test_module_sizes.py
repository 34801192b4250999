"""The house stays readable: no non-test module over 500 lines and no function over 80 (issue 37's limits)."""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

PACKAGES = ("plugins", "train", "compile", "runtimes", "sdk", "benchmarks", "tools")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80


def _sources() -> list[tuple[str, str]]:
    return [(str(path.relative_to(REPO_ROOT)), path.read_text())
            for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))]  # fmt: skip


def test_no_module_over_the_limit() -> None:
    sources = _sources()
    assert len(sources) > 100  # the walk finds the house
    long = [f"{name}: {text.count(chr(10))} lines" for name, text in sources if text.count("\n") > MAX_MODULE_LINES]
    assert long == []


def test_no_function_over_the_limit() -> None:
    long = []
    for name, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert long == []
