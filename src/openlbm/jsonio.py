"""JSON config I/O: frozen dataclass configs (and the stats dicts beside them) to JSON and back.

One mechanism for every config file openlbm writes or reads (a run's ``config.json``, a policy's ``config.json``
and ``stats.json``): :func:`to_jsonable` turns nested dataclasses, paths, tuples, enums and arrays into plain JSON
values; :func:`from_jsonable` rebuilds a dataclass from them, checking every field against its annotation and
naming the field (``policy.trunk.dim: expected int, got 'sixteen'``) when a file does not match;
:func:`changed_fields` lists what differs between two configs; :func:`write_json` / :func:`read_json` write
atomically and name the file in errors.

A leaf module (standard library only) so that every package can use it without depending on another.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses -> dicts, paths -> str, tuples -> lists, enums -> values, arrays -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if hasattr(obj, "tolist"):  # numpy arrays / scalars and torch tensors, without importing either
        return obj.tolist()
    return obj


def from_jsonable(cls: type[T], d: Any, where: str) -> T:
    """The dataclass ``cls`` from :func:`to_jsonable` output; ``where`` names it in errors (``"policy"``).

    Unknown keys, and values that do not fit a field's annotation, raise ``ValueError`` naming the field.
    Missing keys take the field's default (a dataclass without one raises ``ValueError`` naming the field).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown} (known: {sorted(fields)})")
    missing = [n for n, f in fields.items() if n not in d and f.init and _no_default(f)]
    if missing:
        raise ValueError(f"{where}: missing config keys {missing}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check across fields
        raise ValueError(f"{where}: {e}") from None


def changed_fields(old: Any, new: Any, keys: Iterable[str] | None = None, prefix: str = "") -> list[str]:
    """``"field: old -> new"`` for every field whose JSON value differs, nested objects compared field by field and
    equal-length lists item by item (``optim.lr: 0.001 -> 0.0003``, ``data.sources[0].root: 'a' -> 'b'``): what a
    resumed run, dataset or evaluation reports when its settings changed.

    ``old`` and ``new`` are configs or their JSON dicts; ``keys`` limits the comparison to those top-level fields.
    """
    old, new = to_jsonable(old), to_jsonable(new)
    names = list(keys) if keys is not None else list(dict.fromkeys([*new, *old]))
    out = []
    for k in names:
        out += _changes(old.get(k), new.get(k), f"{prefix}{k}")
    return out


def _changes(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return changed_fields(a, b, prefix=f"{path}.")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [c for i, (x, y) in enumerate(zip(a, b, strict=True)) for c in _changes(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def write_json(path: Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``to_jsonable(obj)`` to ``path`` atomically (a crash leaves the old file or the new one, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=indent) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a missing or malformed file raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        return tuple(_convert(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value))
    if tp is float:
        # JSON writes 1.0 as 1: an int is a valid float; a bool is not a number here.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value
