"""Reading detectron2 model-zoo pickles (``model_final_*.pkl``) without running code from the file.

A pickle names Python callables (``GLOBAL module name``) and calls them while it loads, so ``pickle.load`` of a
stranger's file runs whatever the file asks for. Official Mask2Former weights are such pickles, a dict of numpy
arrays under ``"model"``, so :func:`load_detectron2_pickle` admits only what those files need (the idea of
``torch/_weights_only_unpickler.py``), each callable replaced by a stand-in that checks its arguments first:

- numpy arrays: ``_reconstruct`` (an empty array, filled by its ``__setstate__`` from bytes in the file),
  ``_frombuffer`` (protocol 5), ``numpy.dtype`` of a type code, ``scalar``; ``numpy.ndarray`` only as the type
  handed to ``_reconstruct``, never called (it would allocate any shape the file claims). No object dtypes: their
  items would be arbitrary Python objects, and a dtype's state may not make a plain type hold objects;
- builtin containers and scalars (the opcodes themselves), ``collections.OrderedDict``, ``set``, ``frozenset``,
  ``bytes``/``bytearray`` of bytes, and ``_codecs.encode(text, "latin1")`` (how protocol 2 spells bytes);
- ``BUILD`` (``__setstate__``) only on those arrays and dtypes, with their state checked.

Anything else raises :class:`UnsafePickleError` naming the global, before it is called. No array holds more bytes
than the file gives it, so memory stays within a small multiple of the file's size.
"""

from __future__ import annotations

import codecs
import collections
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_numpy_scalar = np.dtype("f4").type(0).__reduce__()[0]  # numpy's own scalar reconstructor, whatever its module


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something a weights file never holds; nothing it named was called."""


def _refuse(name: str, why: str = "") -> UnsafePickleError:
    return UnsafePickleError(
        f"it asks for the Python global {name}{f' ({why})' if why else ''}, which a detectron2 weights file never "
        "holds; m2f refused it without running anything"
    )


class _NdarrayType:
    """``numpy.ndarray`` as the pickle names it: an argument of ``_reconstruct`` only."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("numpy.ndarray", "called directly")


_NDARRAY = _NdarrayType()


def _plain(dtype: Any, name: str) -> np.dtype:
    """``dtype`` if it is a dtype without Python objects, else the refusal."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _refuse(name, f"with {dtype!r:.40}, not a numeric dtype")
    return dtype


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise _refuse("numpy _reconstruct", f"of {type(subtype).__name__}, not numpy.ndarray")
    if not _is_shape(shape) or np.prod(shape) != 0:
        raise _refuse("numpy _reconstruct", "with a non-empty shape: numpy pickles an empty array and fills it")
    return np.ndarray(shape, _dtype(dtype) if isinstance(dtype, str | bytes) else _plain(dtype, "numpy _reconstruct"))


def _dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(obj, str | bytes) or type(align) is not bool or type(copy) is not bool:
        raise _refuse("numpy.dtype", "with arguments other than a type code")
    code = obj.decode("latin1") if isinstance(obj, bytes) else obj
    if "O" in code:
        raise _refuse("numpy.dtype", f"{code!r:.20} holds Python objects")
    return _plain(np.dtype(code, align, copy), "numpy.dtype")


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(data, bytes):
        raise _refuse("numpy scalar", "without its bytes")
    return _numpy_scalar(_plain(dtype, "numpy scalar"), data)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _plain(dtype, "numpy _frombuffer")
    if not isinstance(buffer, bytes | bytearray) or not _is_shape(shape) or order not in ("C", "F"):
        raise _refuse("numpy _frombuffer", "without bytes in the file, or with a bad shape or order")
    if int(np.prod(shape)) * dtype.itemsize != len(buffer):
        raise _refuse("numpy _frombuffer", f"shape {shape} does not match its {len(buffer)} bytes")
    return np.frombuffer(buffer, dtype).reshape(shape, order=order)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse("_codecs.encode", "other than text to latin1 bytes")
    return codecs.encode(text, "latin1")


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(data: Any = b"") -> Any:
        if not isinstance(data, bytes | bytearray):  # bytes(10**12) would allocate a terabyte
            raise _refuse(f"builtins.{kind.__name__}", "of anything but bytes")
        return kind(data)

    return build


def _container(kind: type) -> Callable[..., Any]:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, list | tuple | dict | set | frozenset):
            raise _refuse(f"{kind.__module__}.{kind.__name__}", "of anything but a container")
        return kind(items)

    return build


_BUILTINS = ("builtins", "__builtin__")  # Python 3's and Python 2's name

# (module, name) -> the checked stand-in the pickle gets instead
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): _container(collections.OrderedDict),
    **{(module, kind.__name__): _container(kind) for module in _BUILTINS for kind in (set, frozenset)},
    **{(module, kind.__name__): _bytes_like(kind) for module in _BUILTINS for kind in (bytes, bytearray)},
}


def _check_array_state(state: Any) -> None:
    """ndarray.__setstate__'s (version, shape, dtype, fortran, raw bytes); numpy checks the byte count itself."""
    if not (isinstance(state, tuple) and len(state) == 5 and _is_shape(state[1]) and isinstance(state[4], bytes)):
        raise _refuse("numpy.ndarray.__setstate__", "with a state that is not a shape and raw bytes")
    _plain(state[2], "numpy.ndarray.__setstate__")


def _check_dtype_state(state: Any) -> None:
    """dtype.__setstate__'s (version, byte order, subarray, names, fields, size, alignment, flags), for a plain
    numeric type only: no fields or subarrays, and no flag saying it holds Python objects."""
    if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")):
        raise _refuse("numpy.dtype.__setstate__", "with a state that is not a plain numeric type's")
    if state[2:5] != (None, None, None) or not all(type(v) is int for v in state[5:]) or state[7] != 0:
        raise _refuse("numpy.dtype.__setstate__", "with fields, a subarray or flags: not a plain numeric type")


class _WeightsUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be replaced, the C one's cannot
    """``_ALLOWED``'s stand-ins for globals; ``BUILD`` on arrays and dtypes only; no persistent ids."""

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _refuse(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it holds a persistent id (a torch.save file named .pkl?), which m2f refused")

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, np.ndarray):
            _check_array_state(state)
        elif isinstance(target, np.dtype):
            _check_dtype_state(state)
        else:
            raise _refuse(f"{type(target).__name__}.__setstate__")
        target.__setstate__(state)
        _plain(target if isinstance(target, np.dtype) else target.dtype, f"{type(target).__name__}.__setstate__")

    dispatch[pickle.BUILD[0]] = load_build


def load_detectron2_pickle(path: str | Path) -> Any:
    """The object in a detectron2 ``.pkl``, read with ``_ALLOWED``'s globals only (``encoding="latin1"`` for
    Python 2 pickles, as detectron2 reads them). :class:`UnsafePickleError` for anything else; the pickle module's
    own errors for a damaged file."""
    with Path(path).open("rb") as file:
        return _WeightsUnpickler(file, encoding="latin1").load()
