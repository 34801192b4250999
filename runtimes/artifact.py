"""The artifact metadata contract: one ``.onnx`` whose ``metadata_props["m2f"]`` holds one JSON document.

The document's schema is :class:`ArtifactMetadata` (with :class:`InputSpec`, :class:`Normalization`,
:class:`Source`, :class:`Inference`): each field's check, what it expects and what it means live on the field,
so the writer (``compile.export`` builds an ``ArtifactMetadata``), the validator (:meth:`ArtifactMetadata.from_dict`)
and the description (:func:`describe_schema`, which ``m2f info --schema`` prints) cannot differ.
``ARTIFACT_FORMAT_VERSION`` is its version: a reader refuses a newer one with "upgrade m2f", an older one with
"re-export". Keys a reader does not know are kept (``extra``) and written back unchanged.

Reading needs no ``onnx`` package: ``runtimes.artifact_file`` reads the document from the protobuf wire format,
skipping the graph, and checks a file before an engine loads it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes.artifact_file import METADATA_KEY, read_document
from runtimes.errors import EXPORT_HINT, ArtifactError
from runtimes.geometry import RESIZE_POLICIES
from runtimes.registry import ARTIFACT_TARGETS
from runtimes.vocabulary import PRECISIONS, TASKS

ARTIFACT_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# the schema: one dataclass per JSON object, each field carrying its check


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _is_color_list(x: Any) -> bool:
    return isinstance(x, list) and all(
        isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c) for c in x
    )


def _is_shape(x: Any) -> bool:
    return (
        isinstance(x, list)
        and len(x) == 4
        and all(v is None or (_is_int(v) and v > 0) for v in x)
        and x[3] in (3, None)
    )


def _is_size(x: Any) -> bool:
    return x is None or (isinstance(x, list) and len(x) == 2 and all(_is_int(v) and v > 0 for v in x))


def _is_triple(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 3 and all(_is_number(v) for v in x)


def _one_of(*choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda x: x in choices), "one of " + ", ".join(map(repr, choices))


def _rule(check: tuple[Callable[[Any], bool], str] | Callable[[Any], bool], expected: str = "", doc: str = "",
          **more: Any) -> dict[str, Any]:  # fmt: skip
    """A field's ``metadata``: its check, what it expects (for error messages) and what it means."""
    if isinstance(check, tuple):
        check, expected = check
    return {"check": check, "expected": expected, "doc": doc, **more}


def _nested(cls: type, doc: str) -> dict[str, Any]:
    return _rule(lambda x: isinstance(x, dict), "an object", doc, nested=cls)


def _required(**rule: Any) -> Any:
    return field(metadata=_rule(**rule))


def _optional(**rule: Any) -> Any:
    return field(default=None, metadata=_rule(**rule))


def _unknown_keys() -> Any:
    """Every object's ``extra``: the keys this build does not know, kept as they are and written back."""
    return field(default_factory=dict)


@dataclass
class InputSpec:
    """``input``: the image tensor and how a frame is fitted into it (``runtimes.geometry``)."""

    name: str = _required(check=lambda x: isinstance(x, str) and x != "", expected="a non-empty str",
                          doc="the graph input the image goes into")  # fmt: skip
    shape: list = _required(check=_is_shape, expected="[B, H, W, 3] with positive ints or null for dynamic dims",
                            doc="null for a dynamic dim")  # fmt: skip
    dtype: str = _required(check=_one_of("uint8"))
    layout: str = _required(check=_one_of("NHWC"))
    channel_order: str = _required(check=_one_of("BGR"))
    resize_policy: str = _required(check=_one_of(*RESIZE_POLICIES))
    size: list | None = _required(check=_is_size, expected="[H, W] or null", doc="null when H or W is dynamic")
    pad_bgr: list | None = _optional(check=lambda x: _is_color_list([x]), expected="[b, g, r] ints in 0..255",
                                     doc="letterbox only: the padding colour")  # fmt: skip
    min_size: int | None = _optional(check=lambda x: _is_int(x) and x > 0, expected="a positive int",
                                     doc="shortest_edge only: the short side's target length")  # fmt: skip
    max_size: int | None = _optional(check=lambda x: _is_int(x) and x >= 0, expected="an int >= 0 (0: no cap)",
                                     doc="shortest_edge only: the long side's cap (0: none)")  # fmt: skip
    extra: dict = _unknown_keys()


@dataclass
class Normalization:
    """``normalization``: done inside the graph, so the input stays uint8."""

    mean: list = _required(check=_is_triple, expected="3 numbers")
    std: list = _required(check=lambda x: _is_triple(x) and all(v > 0 for v in x), expected="3 positive numbers")
    in_graph: bool = _required(check=lambda x: x is True, expected="true (uint8 in, normalisation in the graph)")
    extra: dict = _unknown_keys()


@dataclass
class Source:
    """``source``: the checkpoint the artifact was exported from."""

    checkpoint_sha256: str | None = _required(check=lambda x: x is None or isinstance(x, str), expected="a str or null")
    name: str = _required(check=lambda x: isinstance(x, str), expected="a str")
    extra: dict = _unknown_keys()


@dataclass
class Inference:
    """``inference``: the post-processing thresholds (official Mask2Former defaults in ``runtimes.vocabulary``)."""

    object_mask_threshold: float = _required(check=_is_number, expected="a number")
    overlap_threshold: float = _required(check=_is_number, expected="a number")
    topk_per_image: int = _required(check=lambda x: _is_int(x) and x > 0, expected="a positive int")
    extra: dict = _unknown_keys()


@dataclass
class ArtifactMetadata:
    """The m2f JSON document of an artifact, format ``ARTIFACT_FORMAT_VERSION``."""

    task: str = _required(check=_one_of(*TASKS))
    class_names: list = _required(check=lambda x: _is_str_list(x) and len(x) > 0, expected="a non-empty list of str")
    thing_ids: list = _required(
        check=lambda x: isinstance(x, list) and all(_is_int(v) for v in x),
        expected="a list of int",
        doc="indices into class_names of the countable classes",
    )
    colors: list = _required(check=_is_color_list, expected="a list of [r, g, b] with ints in 0..255",
                             doc="one per class")  # fmt: skip
    input: InputSpec = field(metadata=_nested(InputSpec, "the image tensor"))
    normalization: Normalization = field(metadata=_nested(Normalization, "in the graph"))
    precision: str = _required(check=_one_of(*PRECISIONS))
    target: str = _required(check=_one_of(*ARTIFACT_TARGETS), doc="the runtime it was compiled for")
    opset: int = _required(check=lambda x: _is_int(x) and x > 0, expected="a positive int")
    source: Source = field(metadata=_nested(Source, "where it came from"))
    outputs: dict = _required(
        check=lambda x: isinstance(x, dict) and len(x) > 0 and all(isinstance(v, str) for v in x.values()),
        expected="a non-empty object {output name: meaning}",
    )
    inference: Inference = field(metadata=_nested(Inference, "post-processing thresholds"))
    format_version: int = field(
        default=ARTIFACT_FORMAT_VERSION, metadata=_rule(_is_int, "an int", "this schema's version", required=True)
    )
    accuracy: dict | None = _optional(check=lambda x: isinstance(x, dict), expected="an object",
                                      doc="the compiler's parity/accuracy gate record; for int8 also int8_execution, "
                                      "the share of profiled kernel time in int8 kernels")  # fmt: skip
    weight_storage: str | None = _optional(check=_one_of("fp16", "int8", "fp32", "bf16"),
                                           doc="how weights are stored when it differs from precision")  # fmt: skip
    verified_precisions: dict | None = _optional(
        check=lambda x: isinstance(x, dict) and all(k in PRECISIONS and isinstance(v, dict) for k, v in x.items()),
        expected="an object {precision: gate record}",
        doc="lower precisions the gate verified the runtime running this artifact at (OpenVINO bf16: every op of an "
        "fp32 artifact, the float ops of an int8 one)",
    )
    native_ops: dict | None = _optional(
        check=lambda x: (
            isinstance(x, dict)
            and isinstance(x.get("library"), str)
            and _is_int(x.get("abi"))
            and isinstance(x.get("op"), str)
        ),
        expected="an object {library: str, abi: int, op: str}",
        doc="a native op library the graph needs (the fused MSDA node: plugins.msda.openvino_extension), loaded from "
        "the package's build cache or $M2F_MSDA_OPENVINO_EXTENSION, never from a path in the artifact",
    )
    graph_sha256: str | None = _optional(
        check=lambda x: isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) is not None,
        expected="64 lower-case hex digits",
        doc="SHA-256 of the serialized graph (weights included), written with the metadata; every runtime checks it "
        "before loading, so a damaged weight is an error instead of wrong masks",
    )
    rewrites: list | None = _optional(
        check=lambda x: isinstance(x, list) and all(isinstance(r, dict) and isinstance(r.get("by"), str) for r in x),
        expected="a list of {by: module, changes: [str]}",
        doc="graph rewrites made after export (compile.tensorrt_rules)",
    )
    extra: dict = _unknown_keys()

    @classmethod
    def from_dict(cls, meta: Any) -> ArtifactMetadata:
        """Validate ``meta`` (a parsed JSON document) and build it; :class:`ArtifactError` names every problem."""
        _validate(meta)
        return _build(cls, copy.deepcopy(meta))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (optional fields that are unset are left out)."""
        return _dump(self)


def _schema_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def _is_required(f: dataclasses.Field) -> bool:
    """Required in the document (the writer need not pass format_version: it defaults to this build's)."""
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default or f.metadata.get("required", False)


def _build(cls: type, data: dict) -> Any:
    known = {f.name: f for f in _schema_fields(cls)}
    values = {
        name: _build(known[name].metadata["nested"], value) if "nested" in known[name].metadata else value
        for name, value in data.items()
        if name in known
    }
    values["extra"] = {k: v for k, v in data.items() if k not in known}  # every level keeps what it does not know
    return cls(**values)


def _dump(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in _schema_fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None and not _is_required(f):
            continue
        out[f.name] = _dump(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return {**copy.deepcopy(getattr(obj, "extra", {})), **out}


def describe_schema(cls: type = ArtifactMetadata, indent: str = "") -> list[str]:
    """The schema as text lines, one per field: name, what it expects, what it means; nested objects indented."""
    lines = []
    for f in _schema_fields(cls):
        rule = f.metadata
        optional = "" if _is_required(f) else " (optional)"
        text = " - ".join(part for part in (rule["expected"], rule["doc"]) if part)
        lines.append(f"{indent}{f.name}{optional}: {text}")
        if "nested" in rule:
            lines += describe_schema(rule["nested"], indent + "    ")
    return lines


def _check_version(version: Any) -> None:
    if version == ARTIFACT_FORMAT_VERSION and _is_int(version):
        return
    if _is_int(version) and version > ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"artifact made by a newer m2f (format {version}); this build reads {ARTIFACT_FORMAT_VERSION}: "
            "upgrade m2f or re-export"
        )
    raise ArtifactError(
        f"artifact has unsupported format_version {version!r}; this build reads {ARTIFACT_FORMAT_VERSION}: "
        f"{EXPORT_HINT}"
    )


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a hostile document's value can be megabytes long."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    shortener.maxlist = shortener.maxdict = 8
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_problems(cls: type, data: dict, prefix: str = "") -> tuple[list[str], list[str]]:
    """(missing required fields, ill-typed fields) of ``data`` against ``cls``, as dotted names / messages."""
    missing, problems = [], []
    for f in _schema_fields(cls):
        dotted = prefix + f.name
        if f.name not in data:
            if _is_required(f):
                missing.append(dotted)  # a missing object already says its children are missing
            continue
        value, rule = data[f.name], f.metadata
        if not rule["check"](value):
            problems.append(f"{dotted}={_short(value)} (expected {rule['expected']})")
        elif "nested" in rule:
            more_missing, more_problems = _field_problems(rule["nested"], value, dotted + ".")
            missing += more_missing
            problems += more_problems
    return missing, problems


# resize policy -> the input fields it needs
_POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "letterbox": ("pad_bgr", "size"),
    "shortest_edge": ("min_size", "max_size"),
}


def _policy_problems(spec: dict) -> list[str]:
    policy = spec["resize_policy"]
    rules = {f.name: f.metadata for f in _schema_fields(InputSpec)}
    problems = []
    for name in _POLICY_FIELDS.get(policy, ()):
        needed = "[H, W] (letterbox needs a static size)" if name == "size" else rules[name]["expected"]
        if spec.get(name) is None:
            problems.append(f"input.{name} is {'null' if name in spec else 'missing'} (resize_policy {policy!r} "
                            f"needs {needed})")  # fmt: skip
    return problems


def _cross_field_problems(meta: dict) -> list[str]:
    """Checks between well-typed fields."""
    problems = []
    n = len(meta["class_names"])
    if len(meta["colors"]) != n:
        problems.append(f"colors has {len(meta['colors'])} entries for {n} class_names")
    bad = [i for i in meta["thing_ids"] if not 0 <= i < n]
    if bad:
        problems.append(f"thing_ids {bad} are not indices into the {n} class_names")
    shape, size = meta["input"]["shape"], meta["input"]["size"]
    if size is None and None not in shape[1:3]:
        problems.append(f"input.size is null but input.shape {shape} has a static H and W")
    if size is not None and None not in shape[1:3] and list(size) != list(shape[1:3]):
        problems.append(f"input.size {size} disagrees with input.shape {shape}")
    return problems + _policy_problems(meta["input"])


def _validate(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise ArtifactError(f"artifact metadata must be a JSON object, got {type(meta).__name__}: {EXPORT_HINT}")
    if "format_version" not in meta:
        raise ArtifactError(f"artifact metadata has no format_version: {EXPORT_HINT}")
    _check_version(meta["format_version"])
    missing, problems = _field_problems(ArtifactMetadata, meta)
    if missing:
        raise ArtifactError(f"artifact metadata is missing required fields {', '.join(missing)}: {EXPORT_HINT}")
    if not problems:  # cross-field checks only make sense on well-typed fields
        problems = _cross_field_problems(meta)
    if problems:
        raise ArtifactError(f"artifact metadata has invalid fields: {'; '.join(problems)}: {EXPORT_HINT}")


def validate_metadata(meta: dict | ArtifactMetadata) -> dict:
    """Check ``meta`` against :class:`ArtifactMetadata`; return the document as a new dict or raise
    :class:`ArtifactError`."""
    if isinstance(meta, ArtifactMetadata):
        meta = meta.to_dict()
    return ArtifactMetadata.from_dict(meta).to_dict()


def read_metadata(path: str | Path, *, validate: bool = True) -> dict:
    """The artifact's m2f JSON document, validated against the schema unless ``validate=False``."""
    meta = read_document(path)
    return validate_metadata(meta) if validate else meta


def write_metadata(model_proto: Any, meta: dict | ArtifactMetadata) -> None:
    """Validate ``meta`` and store it (keys sorted) as ``metadata_props["m2f"]`` of an ``onnx.ModelProto``, with
    ``graph_sha256`` of its graph as it is now: save the model right after, with no change to the graph between."""
    checked = validate_metadata(meta)
    checked["graph_sha256"] = hashlib.sha256(model_proto.graph.SerializeToString()).hexdigest()
    document = json.dumps(checked, sort_keys=True, allow_nan=False)
    props = model_proto.metadata_props
    others = [(p.key, p.value) for p in props if p.key != METADATA_KEY]
    del props[:]
    for key, value in [*others, (METADATA_KEY, document)]:
        entry = props.add()
        entry.key, entry.value = key, value


# ---------------------------------------------------------------------------------------------------------------
# identity of an artifact and of the engines derived from it


def engine_cache_key(sha256: str, target: str, precision: str, device: str, runtime_version: str) -> str:
    """Folder name for an engine derived from an artifact: (artifact hash, target, precision, device, version)."""
    parts = [sha256[:16], target, precision, device, runtime_version]
    return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part) for part in parts)
