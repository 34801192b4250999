"""Command-line options built from a dataclass's fields: each default, help and choice is written once, on the field.

    @dataclass(frozen=True, kw_only=True)
    class Options:
        runs: int = field(default=10, metadata=cli_field("timed runs"))

    add_field_options(parser, Options)      # --runs RUNS  timed runs [10]
    Options(**vars(parser.parse_args()))    # unset options keep the field's default

``m2f benchmark`` (``benchmarks.harness.BenchmarkOptions``) and ``m2f batch`` (``sdk.batch.BatchOptions``) build
their parsers this way.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

OptionsT = TypeVar("OptionsT")  # a dataclass of options (StreamOptions, BatchOptions)


def cli_field(help: str, **argparse_options: Any) -> dict[str, Any]:
    """A field's option (the metadata ``add_field_options`` reads): its help and what the field's type and default
    do not say (``flag``, ``type``, ``choices``, ``metavar``, ``nargs``, ``const``, ``shown``: the default as the
    help names it). A field without one is not on the command line."""
    return {"help": help, **argparse_options}


def add_field_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the dataclass ``cls`` that has ``cli_field`` metadata."""
    hints = typing.get_type_hints(cls)
    for option in dataclasses.fields(cls):
        if "help" in option.metadata:
            add_field_option(parser, option, hints[option.name])


def add_field_option(parser: argparse.ArgumentParser, option: dataclasses.Field, hint: Any) -> None:
    """The option of one field: ``--name-with-dashes`` (or its ``flag``); a bool is a switch away from its default,
    a sequence takes one or more values, any other type converts the value. Unset, it stays unset (the field's
    default applies)."""
    meta = dict(option.metadata)
    help_text, flag = meta.pop("help"), meta.pop("flag", "--" + option.name.replace("_", "-"))
    default = option.default if option.default is not dataclasses.MISSING else None
    shown = meta.pop("shown", None) or shown_default(default)
    kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)] if isinstance(hint, types.UnionType) else []
    kind = kinds[0] if len(kinds) == 1 else hint
    if kind is bool:
        meta["action"] = "store_false" if default else "store_true"
    elif typing.get_origin(kind) is Sequence:
        meta["nargs"] = "+"
    else:
        meta.setdefault("type", kind)
        meta.setdefault("metavar", flag.removeprefix("--").replace("-", "_").upper())
    required = option.default is dataclasses.MISSING and option.default_factory is dataclasses.MISSING
    parser.add_argument(
        flag,
        dest=option.name,
        default=argparse.SUPPRESS,
        required=required,
        help=help_text + (f" [{shown}]" if shown else ""),
        **meta,
    )


def shown_default(default: Any) -> str | None:
    """A default as the help names it: ``512x512``, ``3600``, ``val``; None where it goes without saying."""
    if default is None or isinstance(default, bool):
        return None
    if isinstance(default, tuple):
        return "x".join(map(str, default))
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def replaced(cls: type[OptionsT], options: OptionsT | None, overrides: dict[str, Any], what: str) -> OptionsT:
    """``options`` (default: ``cls()``) with ``overrides`` by field name; an unknown name raises a TypeError listing
    the ``what`` options there are (``StreamOptions.of``, ``BatchOptions.of``)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unknown {what} option(s) {', '.join(unknown)}; the options are: {', '.join(names)}")
    return dataclasses.replace(options or cls(), **overrides)  # type: ignore[type-var]
