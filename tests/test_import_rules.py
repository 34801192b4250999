"""The house rules of ../shared/DESIGN.md: which top-level package may import which, and an edge install
(sdk + runtimes) that works with torch absent."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

OURS = {"plugins", "train", "compile", "runtimes", "sdk", "benchmarks", "tools"}
ALLOWED = {
    "plugins": {"plugins"},
    "train": {"plugins", "train"},
    # the compiler checks artifacts with the runtimes; it does not need the SDK
    "compile": {"plugins", "train", "compile", "runtimes"},
    "runtimes": {"plugins", "runtimes"},
    "sdk": {"plugins", "runtimes", "sdk"},
    "benchmarks": OURS - {"tools"},  # benchmarks ship in the wheel; tools stay in the checkout
    "tools": OURS,  # operations scripts (make gpu-check): anything of ours, and nothing imports them
}
TORCH_FREE = {"sdk", "runtimes"}  # except runtimes/torch_backend.py, the torch runtime
# Leaves every package (plugins: LEAVES_FOR) may import: they import no torch and nothing of ours but each other.
# runtimes.geometry is how a frame is placed into the model input, one definition for the SDK, the compiler's gate
# and the evaluation (train); runtimes.errors holds the base class of every error we explain, runtimes.vocabulary
# the words, runtimes.cache the cache's identity (root, file hash, graph-code key).
SHARED_LEAVES = {"runtimes.geometry", "runtimes.errors", "runtimes.vocabulary", "runtimes.cache"}
# plugins imports nothing of ours but the two leaves its native libraries need: where the cache is (their build
# folders) and the base of the errors we explain (ExtensionUnavailable is an sdk.M2FError); no words, no geometry,
# no checkout paths (the TensorRT plugin library is found from plugins/msda itself)
LEAVES_FOR = {"plugins": {"runtimes.cache", "runtimes.errors"}}


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
    leaves = LEAVES_FOR.get(package, SHARED_LEAVES)
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in OURS and top not in ALLOWED[package] and module not in leaves:
                violations.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
            if package in TORCH_FREE and top == "torch" and path.name != "torch_backend.py":
                violations.append(f"{path.relative_to(REPO_ROOT)} imports torch")
    assert violations == []


@pytest.mark.parametrize("module", sorted(SHARED_LEAVES))
def test_shared_leaves_import_nothing_of_ours_and_no_torch(module):
    path = REPO_ROOT / (module.replace(".", "/") + ".py")
    imported = {name.split(".")[0] for name in imported_modules(path) - SHARED_LEAVES}  # leaves may use leaves
    assert imported & (OURS | {"torch"}) == set()


def test_compile_does_not_import_sdk():
    code = "import sys, compile.export, compile.gate\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'sdk'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_msda_plugin_package_imports_with_torch_blocked():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import plugins.msda\n"
        "from plugins.msda import tensorrt_plugin\n"
        "print(tensorrt_plugin.PLUGIN_NAME)\n"
        "try:\n"
        "    plugins.msda.ms_deform_attn_reference\n"
        "except ImportError:\n"
        "    print('reference needs torch')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["M2F_MultiscaleDeformableAttn", "reference", "needs", "torch"]


def test_msda_dispatch_still_works_for_torch_users():
    import torch

    from plugins import msda
    from plugins.msda.reference import ms_deform_attn_reference

    assert msda.ms_deform_attn_reference is ms_deform_attn_reference
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    value = torch.randn(1, sum(h * w for h, w in shapes), 2, 8, generator=g)  # (N, S, M, D)
    locations = torch.rand(1, 5, 2, len(shapes), 3, 2, generator=g)  # (N, Lq, M, L, P, 2)
    weights = torch.rand(1, 5, 2, len(shapes), 3, generator=g).softmax(-1)  # (N, Lq, M, L, P)
    got = msda.ms_deform_attn(value, shapes, None, locations, weights)
    assert got.shape == (1, 5, 16)
    torch.testing.assert_close(got, ms_deform_attn_reference(value, shapes, None, locations, weights), rtol=0, atol=0)


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


def _module_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (``if TYPE_CHECKING:`` blocks included: they are a cycle in disguise)."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        blocks = [node] + (node.body if isinstance(node, ast.If) else [])
        for stmt in blocks:
            if isinstance(stmt, ast.Import):
                names.update(alias.name for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                names.add(stmt.module)
    return names


def test_no_import_cycles_between_modules():
    """Modules of ours import each other one way (the streaming options got a leaf module for this)."""
    graph = {}
    for package in OURS:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = {m for m in _module_level_imports(path) if m.split(".")[0] in OURS}
    cycles = set()

    def visit(node: str, trail: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == node:
                continue  # a package importing its own name
            if dep in trail:
                cycle = trail[trail.index(dep) :]
                if not any(m.startswith(c + ".") for c in cycle for m in cycle):  # a package and its own modules
                    cycles.add(" -> ".join([*cycle, dep]))
            elif len(trail) < 12:
                visit(dep, [*trail, dep])

    for start in sorted(graph):
        visit(start, [start])
    assert sorted(cycles) == []


HOST_PACKAGES = ("compile", "train", "benchmarks", "tools")  # and runtimes.torch_backend: what an edge device lacks


def _names_host_code(text: str) -> bool:
    """A dotted module path (``compile.export``, ``train.cli:train_main``) into host code."""
    module = text.split(":")[0]
    return ("." in module and module.split(".")[0] in HOST_PACKAGES) or module == "runtimes.torch_backend"


def test_sdk_reaches_host_code_only_through_its_seam():
    """``sdk/host.py`` is the one place that names host modules (as strings, imported when used); any other SDK
    module doing it, or calling ``importlib.import_module`` on our code, is an import the direction test misses."""
    from sdk.cli import OPTIONAL_PACKAGES
    from sdk.host import HOST_COMMANDS, HOST_MODULES

    detours = []
    for path in sorted((REPO_ROOT / "sdk").rglob("*.py")):
        if path.name == "host.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_host_code(node.value):
                detours.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} names {node.value!r}")
    assert detours == []
    assert not {name.split(".")[0] for name in OPTIONAL_PACKAGES} & OURS  # the version lookup is third-party only
    seam_targets = [*HOST_MODULES, *(entry.split(":")[0] for entry, _, _ in HOST_COMMANDS.values())]
    assert all(importlib.util.find_spec(name) for name in seam_targets)  # no stale name in the seam
