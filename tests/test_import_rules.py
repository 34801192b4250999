"""The house rules of ../shared/DESIGN.md: which top-level package may import which, and an edge install
(sdk + runtimes) that works with torch absent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

OURS = {"plugins", "train", "compile", "runtimes", "sdk", "benchmarks"}
ALLOWED = {
    "plugins": {"plugins"},
    "train": {"plugins", "train"},
    # the compiler checks artifacts with the runtimes and the SDK's own pre-processing
    "compile": {"plugins", "train", "compile", "runtimes", "sdk"},
    "runtimes": {"plugins", "runtimes"},
    "sdk": {"plugins", "runtimes", "sdk"},
    "benchmarks": OURS,
}
TORCH_FREE = {"sdk", "runtimes"}  # except runtimes/torch_backend.py, the torch runtime


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package):
    violations = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in OURS and top not in ALLOWED[package]:
                violations.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
            if package in TORCH_FREE and top == "torch" and path.name != "torch_backend.py":
                violations.append(f"{path.relative_to(REPO_ROOT)} imports torch")
    assert violations == []


def test_sdk_and_runtimes_import_with_torch_blocked():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sdk, sdk.cli, runtimes\n"
        "print(sdk.cli.main(['info', '--json']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"torch"' in done.stdout


def test_host_command_without_torch_names_the_extra():
    code = "import sys; sys.modules['torch'] = None\nimport sdk.cli\nsys.exit(sdk.cli.main(['convert', '--list']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "[train] extra" in done.stderr
