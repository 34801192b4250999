"""One definition per fact (the house rule of issue 24, kept by a test like the import rules): a public upper-case
name is bound at module level in one module only, a module-level collection or string constant is written out in
one module only, and every argparse ``choices`` reads a constant instead of spelling the list out."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("sdk", "runtimes", "compile", "train", "benchmarks", "plugins")
MIN_STRING = 4  # shorter string constants ("cpu", "f32") are words, not facts


def _modules(root: Path = REPO_ROOT) -> list[tuple[str, ast.Module]]:
    """(path, syntax tree) of every non-test module of our packages."""
    return [
        (str(path.relative_to(root)), ast.parse(path.read_text(), filename=str(path)))
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        if not path.name.startswith("test_")
    ]


def _constant(node: ast.expr) -> object | None:
    """The literal a constant is written as (a collection of >= 2 items, or a string of >= MIN_STRING), else None."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("frozenset", "tuple") and node.args:
        node = node.args[0]
    if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict | ast.Constant):
        return None
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    if isinstance(value, str):
        return value if len(value) >= MIN_STRING else None
    if isinstance(value, tuple | list | set | frozenset | dict) and len(value) >= 2:
        return repr(sorted(map(repr, value.items() if isinstance(value, dict) else value)))
    return None


def violations(modules: list[tuple[str, ast.Module]]) -> list[str]:
    names, values, choices = defaultdict(set), defaultdict(set), []
    for path, tree in modules:
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets, value = [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                targets, value = [node.target.id], node.value
            else:
                continue
            for name in targets:
                if name.isupper() and not name.startswith("_"):
                    names[name].add(path)
                literal = _constant(value)
                if literal is not None and name.lstrip("_").isupper():
                    values[literal].add(f"{path}:{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for keyword in node.keywords:
                    if keyword.arg == "choices" and _constant(keyword.value) is not None:
                        choices.append(f"{path}:{node.lineno} spells out choices={ast.unparse(keyword.value)}")
    found = [f"{name} bound in {sorted(paths)}" for name, paths in names.items() if len(paths) > 1]
    found += [f"one value in {sorted(where)}" for where in values.values() if len({w.split(":")[0] for w in where}) > 1]
    return found + choices


def test_each_fact_is_defined_once() -> None:
    assert violations(_modules()) == []


def test_the_rule_catches_a_copied_tuple_a_rebound_name_and_spelled_out_choices(tmp_path: Path) -> None:
    """The check above can fail: a TASKS-like tuple copied into a second module, under its own name or another."""
    (tmp_path / "sdk").mkdir()
    (tmp_path / "runtimes").mkdir()
    (tmp_path / "runtimes" / "words.py").write_text('TASKS = ("semantic", "instance", "panoptic")\n')
    (tmp_path / "sdk" / "a.py").write_text('KINDS = ("panoptic", "semantic", "instance")\nLIMIT = 3\n')
    (tmp_path / "sdk" / "b.py").write_text(
        'import argparse\nLIMIT = 4\nargparse.ArgumentParser().add_argument("--x", choices=("a", "b"))\n'
    )
    found = violations(_modules(tmp_path))
    assert any("one value in" in v and "runtimes/words.py:TASKS" in v and "sdk/a.py:KINDS" in v for v in found)
    assert any(v.startswith("LIMIT bound in") for v in found)
    assert any("spells out choices=('a', 'b')" in v for v in found)
    assert len(found) == 3


def test_only_the_checkpoint_module_reads_checkpoints() -> None:
    """Our ``.pt`` layout has one reader (``train.model.checkpoint.read_checkpoint``): no other ``torch.load``."""
    readers = [
        path
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
    ]
    assert sorted(set(readers)) == ["train/model/checkpoint.py"]


def _method_names(modules: list[tuple[str, ast.Module]]) -> dict[str, set[str]]:
    """method name -> the modules whose classes define it (deprecated shims, docstring "Deprecated", left out)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path, tree in modules:
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            for item in cls.body:
                if isinstance(item, ast.FunctionDef) and not (ast.get_docstring(item) or "").startswith("Deprecated"):
                    found[item.name].add(path)
    return found


def test_one_serialiser_name() -> None:
    """Results, stats and reports serialise with ``to_dict``; no second spelling of the same method."""
    methods = _method_names(_modules())
    assert {"as_dict", "asdict", "to_json_dict", "as_json", "to_json"} & set(methods) == set()
    assert {"sdk/results.py", "sdk/stream_stats.py", "sdk/stability.py"} <= methods["to_dict"]


def test_one_set_of_step_names() -> None:
    """predict's timings and a stream's per-stage figures use the same step names, which the model methods bear."""
    import numpy as np

    import sdk
    from sdk.stream_stats import STAGES

    with sdk.Segmenter("cpu", precision="fp32") as seg:
        timings = seg.predict(np.zeros((48, 64, 3), np.uint8)).timings
    steps = [key.removesuffix("_ms") for key in timings if key.endswith("_ms")]
    assert steps and set(steps) <= set(STAGES), steps
    assert all(callable(getattr(seg, step)) for step in steps)  # Segmenter.preprocess / inference / postprocess
