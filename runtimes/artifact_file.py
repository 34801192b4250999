"""An artifact file read in place, without the ``onnx`` package, and checked before an engine loads it.

:func:`read_metadata_props` walks the protobuf wire format of ``ModelProto`` and skips the graph, so an edge install
with only a runtime reads a large artifact's metadata in microseconds; :func:`read_document` is the m2f JSON document
unvalidated (``runtimes.artifact.read_metadata`` validates it against the schema). :func:`verify_artifact` and
:func:`engine_reads` make sure an engine is handed what was exported: the graph's recorded SHA-256, external data
only beside the file, and an engine's failure about the file named as an :class:`ArtifactError`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtimes.errors import EXPORT_HINT, ArtifactError, M2FError

METADATA_KEY = "m2f"  # the metadata_props entry holding the m2f JSON document
_METADATA_LIMIT = 4 << 20  # characters: 150 class names and colours take ~10 KB


# ---------------------------------------------------------------------------------------------------------------
# the protobuf wire format of ModelProto, just enough to find metadata_props and skip the rest

_MODEL_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1; value = 2}
_MODEL_GRAPH = 7


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: Any, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end) of each field; varints yield their value as start."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(buf, pos)
            stop = pos + length
        elif wire == 1:
            stop = pos + 8
        elif wire == 5:
            stop = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if stop > end:
            raise ValueError("truncated field")
        yield field, wire, pos, stop
        pos = stop


def read_metadata_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file as {key: value} (the last wins on duplicates), graph unread."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.onnx"))
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise ArtifactError(f"{path} is a directory, not an artifact file: pass an .onnx file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} does not exist")
    props: dict[str, str] = {}
    with path.open("rb") as file:
        if path.stat().st_size == 0:
            raise ArtifactError(f"{path} is empty, not an ONNX model: {EXPORT_HINT}")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                seen_graph = False
                for field, wire, start, stop in _fields(buf):
                    seen_graph |= field == _MODEL_GRAPH and wire == 2
                    if field != _MODEL_METADATA_PROPS or wire != 2:
                        continue
                    entry = {f: bytes(buf[s:e]) for f, w, s, e in _fields(buf, start, stop) if w == 2}
                    props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
            except (ValueError, UnicodeDecodeError) as err:
                raise ArtifactError(
                    f"{path} is not a valid ONNX model, or is corrupt or truncated ({err}): {EXPORT_HINT}"
                ) from err
    if not seen_graph:
        raise ArtifactError(f"{path} is not an ONNX model (no graph): {EXPORT_HINT}")
    return props


_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_INITIALIZER = 11, 12, 5  # GraphProto fields
_NAME_FIELD = {_GRAPH_INPUT: 1, _GRAPH_OUTPUT: 1, _GRAPH_INITIALIZER: 8}  # ValueInfoProto.name, TensorProto.name


def read_io_names(path: str | Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of the ONNX graph in graph order, initializers excluded, weights unread."""
    path = Path(path)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            names: dict[int, list[str]] = {_GRAPH_INPUT: [], _GRAPH_OUTPUT: [], _GRAPH_INITIALIZER: []}
            for field, wire, start, stop in _fields(buf):
                if field != _MODEL_GRAPH or wire != 2:
                    continue
                for graph_field, graph_wire, s, e in _fields(buf, start, stop):
                    if graph_field in names and graph_wire == 2:
                        name_field = _NAME_FIELD[graph_field]
                        value = next(
                            (bytes(buf[a:b]) for f, w, a, b in _fields(buf, s, e) if f == name_field and w == 2), b""
                        )
                        names[graph_field].append(value.decode())
        except (ValueError, UnicodeDecodeError) as err:
            raise ArtifactError(
                f"{path} is not a valid ONNX model, or is corrupt or truncated ({err}): {EXPORT_HINT}"
            ) from err
    initializers = set(names[_GRAPH_INITIALIZER])
    return [n for n in names[_GRAPH_INPUT] if n not in initializers], names[_GRAPH_OUTPUT]


# message type -> {field number: message type of that length-delimited field}; the structure find_damage walks
_MESSAGES: dict[str, dict[int, str]] = {
    "model": {_MODEL_GRAPH: "graph"},
    "graph": {1: "node", 5: "tensor", 11: "value_info", 12: "value_info", 13: "value_info", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph"},
    "tensor": {},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "value_info": {},
}


_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data: repeated StringStringEntryProto {key = 1; value = 2}


class _Damaged(Exception):
    """Internal: the walk found a broken message."""


def _messages(buf: Any, kind: str, start: int, end: int) -> Iterator[tuple[str, list[tuple[int, int, int, int]]]]:
    """Every message of the model, depth first: (its type in ``_MESSAGES``, its fields); ``_Damaged`` where the
    structure breaks or nests deeper than any model (a hostile file can nest graphs without end)."""
    fields, position = [], start
    try:
        for field in _fields(buf, start, end):
            fields.append(field)
            position = field[3]  # where the next field starts
    except ValueError as err:
        raise _Damaged(f"{err} at byte {position}, in a {kind} message") from err
    yield kind, fields
    children = _MESSAGES[kind]
    for field, wire, s, e in fields:
        if wire == 2 and field in children:
            yield from _messages(buf, children[field], s, e)


def _walk_model(path: Path, visit: Callable[[Any, str, list], None]) -> None:
    """``visit(buffer, type, fields)`` for every message of the ONNX file at ``path``; _Damaged where it breaks."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            for kind, fields in _messages(buf, "model", 0, len(buf)):
                visit(buf, kind, fields)
        except RecursionError:
            raise _Damaged("messages nested deeper than any model's") from None


def find_damage(path: str | Path) -> str | None:
    """Where the protobuf structure of an ONNX file breaks (model, graph, nodes, attributes, tensor headers), or
    None when it holds together. Tensor contents are not checked here (``graph_sha256`` covers them)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return "the file is empty"
    try:
        _walk_model(path, lambda buf, kind, fields: None)
    except _Damaged as damage:
        return str(damage)
    return None


def external_data(path: str | Path) -> list[str]:
    """The ``location`` of every tensor whose data lies outside the ONNX file (external data), in file order."""
    locations: list[str] = []

    def visit(buf: Any, kind: str, fields: list) -> None:
        if kind != "tensor":
            return
        for number, wire, s, e in fields:
            if number == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {f: bytes(buf[a:b]) for f, w, a, b in _fields(buf, s, e) if w == 2}
                if entry.get(1) == b"location":
                    locations.append(entry.get(2, b"").decode("utf-8", "replace"))

    _walk_model(Path(path), visit)
    return locations


def graph_sha256(path: str | Path) -> str:
    """SHA-256 of the bytes of the serialized graph (``ModelProto.graph``) of an ONNX file, read in place."""
    with Path(path).open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        digest = hashlib.sha256()
        with memoryview(buf) as view:
            for field, wire, start, stop in _fields(buf):
                if field == _MODEL_GRAPH and wire == 2:
                    digest.update(view[start:stop])
        return digest.hexdigest()


def read_document(path: str | Path) -> dict:
    """The artifact's m2f JSON document as it is stored, unvalidated (``runtimes.artifact.read_metadata`` checks it
    against the schema)."""
    props = read_metadata_props(path)
    if METADATA_KEY not in props:
        raise ArtifactError(f"{path} is not an m2f artifact: export it with `m2f export`")
    document = props[METADATA_KEY]
    if len(document) > _METADATA_LIMIT:
        raise ArtifactError(
            f"{path}: the m2f metadata is {len(document)} characters, more than any model's ({_METADATA_LIMIT} read): "
            f"{EXPORT_HINT}"
        )
    try:
        meta = json.loads(document)
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise ArtifactError(f"{path}: the m2f metadata is not valid JSON ({str(err)[:200]}): {EXPORT_HINT}") from err
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: the m2f metadata is a JSON {type(meta).__name__}, not an object: {EXPORT_HINT}")
    return meta


# ---------------------------------------------------------------------------------------------------------------
# what an engine is handed is what was exported


def verify_artifact(path: str | Path) -> None:
    """What an engine is handed is what was exported, and nothing beside it: ArtifactError when the graph's SHA-256
    differs from the one the metadata recorded (a bit flipped in a weight), or when a tensor's external data lies
    outside the artifact's folder (an absolute path or ``..``: a file the artifact has no business reading)."""
    path = Path(path)
    try:
        recorded = read_document(path).get("graph_sha256")
        folder = path.parent.resolve()
        for location in external_data(path):
            target = (folder / location).resolve()
            if Path(location).is_absolute() or not target.is_relative_to(folder):
                raise ArtifactError(
                    f"{path}: a tensor's external data points outside the artifact's folder ({location!r:.200}); "
                    "refused: an artifact reads no file but its own and files beside it"
                )
            if not target.is_file():
                raise ArtifactError(f"{path}: its external data file {location!r:.200} is missing beside it")
    except _Damaged as damage:
        raise ArtifactError(
            f"{path} is corrupt or truncated ({damage}): copy the file again or {EXPORT_HINT}"
        ) from None
    if recorded is not None and graph_sha256(path) != recorded:
        raise ArtifactError(
            f"{path} is damaged: its graph's SHA-256 differs from the one recorded at export (a changed weight or "
            f"node); copy the file again or {EXPORT_HINT}"
        )


# what an engine says when it cannot parse the protobuf at all
_ENGINE_PARSE_FAILURES = ("can't be parsed", "Protobuf parsing failed", "INVALID_PROTOBUF")
# what an engine says when the file parses but is not one it can load (an IR version or opset it does not know, an
# op it lacks): the file's problem, an ArtifactError; anything else (memory, devices) passes through
_ABOUT_THE_FILE = re.compile(r"(?i)load model|\bmodel\b|opset|ir version|onnx|graph|\bnode|operation|schema|pars")


@contextmanager
def engine_reads(path: str | Path, engine: str) -> Iterator[None]:
    """Around an engine's loading of an artifact: first :func:`verify_artifact`; then an engine's failure that is
    about the file becomes an ArtifactError naming the file, what the engine said, and whether the file is corrupt
    or truncated (``find_damage``) or whole but not loadable here (another runtime version, a hand-edited field
    outside the graph). Other failures (memory, a device) and our own errors pass through unchanged."""
    if Path(path).is_file():
        verify_artifact(path)
    try:
        yield
    except (M2FError, MemoryError):
        raise
    except Exception as err:
        damage = find_damage(path) if Path(path).is_file() else None
        said = str(err).strip().splitlines()
        detail = " ".join((said[-1] if said else type(err).__name__).split())[:300]
        if damage is not None or any(text in str(err) for text in _ENGINE_PARSE_FAILURES):
            raise ArtifactError(
                f"{path} is corrupt or truncated ({damage or f'{engine} says: {detail}'}); {engine} cannot load it: "
                f"copy the file again or {EXPORT_HINT}"
            ) from err
        if not _ABOUT_THE_FILE.search(str(err)):
            raise  # the machine's problem (memory, a device), not the file's
        raise ArtifactError(
            f"{engine} cannot load {path} ({engine} says: {detail}): a file from another m2f or {engine} version, "
            f"or edited outside its graph; {EXPORT_HINT}"
        ) from err
