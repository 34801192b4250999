"""One definition per fact (the house rule of issue 24, kept by a test like the import rules): a public upper-case
name is bound at module level in one module only, a module-level collection or string constant is written out in
one module only, and every argparse ``choices`` reads a constant instead of spelling the list out. A dataclass's
defaults and fields are written once too (issue 37): a parser built for a dataclass neither repeats a field's
default (as its ``default`` or in its help) nor spells the fields out one option each, and no two dataclasses
declare the same fields."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("sdk", "runtimes", "compile", "train", "benchmarks", "plugins", "tools")
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


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _dataclasses(modules: list[tuple[str, ast.Module]]) -> dict[tuple[str, str], dict[str, ast.expr | None]]:
    """(module, class) -> {field: its default expression (None: no default, or a factory)} of every dataclass."""
    found = {}
    for path, tree in modules:
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            decorators = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in cls.decorator_list}
            if not {"dataclass", "dataclasses.dataclass"} & decorators:
                continue
            found[(_module_name(path), cls.name)] = {
                item.target.id: _field_default(item.value)
                for item in cls.body
                if isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and "ClassVar" not in ast.unparse(item.annotation)
            }
    return found


def _field_default(value: ast.expr | None) -> ast.expr | None:
    """The default a field is written with: ``x: int = 3`` and ``x: int = field(default=3, ...)`` both give 3."""
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field"):
        return next((k.value for k in value.keywords if k.arg == "default"), None)
    if isinstance(value, ast.Constant) and value.value is None:
        return None
    return value


def _options(tree: ast.Module) -> list[tuple[str, str, dict[str, ast.expr]]]:
    """(line and flag, dest, keywords) of every literal ``add_argument("--some-name", ...)`` call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if not flags:
                continue
            flag = ([f for f in flags if f.startswith("--")] or flags)[0]
            dest = keywords.get("dest")
            dest = dest.value if isinstance(dest, ast.Constant) else flag.lstrip("-").replace("-", "_")
            found.append((f"{node.lineno} {flag}", dest, keywords))
    return found


def _visible_dataclasses(path: str, tree: ast.Module, known: dict) -> list[tuple[str, str]]:
    """The dataclasses a module defines or imports by name."""
    module = _module_name(path)
    names = [(module, node.name) for node in tree.body if isinstance(node, ast.ClassDef)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [(node.module, alias.name) for alias in node.names]
    return [name for name in names if name in known]


def _same_option(dest: str, field: str) -> bool:
    """``--timeout`` is the option of ``timeout_s``: a unit suffix apart."""
    return dest == field or field.startswith(dest + "_")


def _shown(default: ast.expr) -> list[str]:
    """How a help text would spell ``default``: ``[10]``, ``[512x512]``, ``[{BENCH_CALIB_IMAGES}]``."""
    spelled = [f"[{{{ast.unparse(default)}}}]"]
    try:
        value = ast.literal_eval(default)
    except ValueError:
        return spelled
    if isinstance(value, tuple):
        return [*spelled, f"[{'x'.join(map(str, value))}]"]
    if isinstance(value, float):
        return [*spelled, f"[{value:g}]", f"[{value}]"]
    return [*spelled, f"[{value}]"]


def repeated_defaults_and_fields(modules: list[tuple[str, ast.Module]]) -> list[str]:
    """A parser built beside a dataclass that repeats a field's default (as ``default=`` or in the help) or spells
    at least half its fields (4 or more) out one option each; two dataclasses with the same fields."""
    known = _dataclasses(modules)
    found = []
    for path, tree in modules:
        options = _options(tree)
        for module, cls in _visible_dataclasses(path, tree, known):
            fields = known[(module, cls)]
            spelled = set()
            for where, dest, keywords in options:
                for name, default in fields.items():
                    if not _same_option(dest, name):
                        continue
                    spelled.add(name)
                    if default is None:
                        continue
                    if "default" in keywords and ast.unparse(keywords["default"]) == ast.unparse(default):
                        found.append(f"{path}:{where} repeats the default of {cls}.{name}")
                    help_text = ast.unparse(keywords["help"]) if "help" in keywords else ""
                    if any(shown in help_text for shown in _shown(default)):
                        found.append(f"{path}:{where}: its help spells the default of {cls}.{name}")
            if len(spelled) >= max(4, len(fields) / 2):
                found.append(f"{path} spells out {len(spelled)} fields of {cls} as options: build them from its fields")
    by_fields = defaultdict(list)
    for (module, cls), fields in known.items():
        if len(fields) >= 3:
            by_fields[frozenset(fields)].append(f"{module}.{cls}")
    found += [f"one field set in {sorted(classes)}" for classes in by_fields.values() if len(classes) > 1]
    return found


def test_each_default_and_field_set_is_written_once() -> None:
    assert repeated_defaults_and_fields(_modules()) == []


def test_the_rule_catches_repeated_defaults_spelled_out_options_and_a_copied_field_set(tmp_path: Path) -> None:
    """The shape of ``m2f benchmark`` before issue 37: options with defaults in a dataclass, and a parser in another
    module that spells every field out as an option with the same default (literal, or the same constant) and
    names it again in its help; a second dataclass with the same fields."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "harness.py").write_text(
        "from dataclasses import dataclass, field\nCALIB = 32\n\n\n@dataclass\nclass Options:\n"
        '    model: str = "swin-t"\n    runs: int = field(default=10)\n    calib_images: int = CALIB\n'
        "    timeout_s: float = 3600.0\n    seed: int = 0\n\n\n"
        "@dataclass(frozen=True)\nclass Copy:\n    model: str\n    runs: int\n    calib_images: int\n"
        "    timeout_s: float\n    seed: int\n"
    )
    (tmp_path / "benchmarks" / "cli.py").write_text(
        "import argparse\nfrom benchmarks.harness import CALIB, Options\np = argparse.ArgumentParser()\n"
        'p.add_argument("--model", default="swin-t")\np.add_argument("--runs", type=int, help="timed runs [10]")\n'
        'p.add_argument("--calib-images", default=CALIB, help=f"images [{CALIB}]")\n'
        'p.add_argument("--timeout", type=float, default=3600.0)\n'
    )
    (tmp_path / "benchmarks" / "other.py").write_text(  # no Options here: its own option, its own default
        'import argparse\nargparse.ArgumentParser().add_argument("--runs", default=10)\n'
    )
    found = repeated_defaults_and_fields(_modules(tmp_path))
    assert sorted(found) == sorted(
        [
            "benchmarks/cli.py:4 --model repeats the default of Options.model",
            "benchmarks/cli.py:5 --runs: its help spells the default of Options.runs",
            "benchmarks/cli.py:6 --calib-images repeats the default of Options.calib_images",
            "benchmarks/cli.py:6 --calib-images: its help spells the default of Options.calib_images",
            "benchmarks/cli.py:7 --timeout repeats the default of Options.timeout_s",
            "benchmarks/cli.py spells out 4 fields of Options as options: build them from its fields",
            "one field set in ['benchmarks.harness.Copy', 'benchmarks.harness.Options']",
        ]
    )


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
