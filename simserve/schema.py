"""Strict loading of frozen dataclasses from YAML data: the schema behind every input file.

Scenario files and evaluation descriptions share it, so every input error reads the same way:
the dotted field, what was expected and what was found (DESIGN §9).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from simserve.errors import InputError

__all__ = ["build_dataclass"]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, dotted: str) -> Any:
    """Check/convert a YAML value to the annotated type; raise InputError naming `dotted`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, dotted)
            except InputError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise InputError(
                f"must be one of {', '.join(map(str, choices))}; got {value!r}", field=dotted
            )
        return value
    if origin in (dict, Mapping):
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise InputError(f"expected a mapping, got {value!r}", field=dotted)
        out = {}
        for key, item in value.items():
            _convert(key, key_tp, dotted)
            out[key] = _convert(item, value_tp, f"{dotted}.{key}")
        return types.MappingProxyType(out)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"expected a list, got {value!r}", field=dotted)
        return tuple(_convert(v, item_tp, f"{dotted}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise InputError(f"expected a mapping, got {value!r}", field=dotted)
        return build_dataclass(tp, value, dotted)
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"expected true/false, got {value!r}", field=dotted)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # A whole float is an integer where it is exact: 1e308 would print as 309 digits.
            if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
                return int(value)
            raise InputError(f"expected an integer, got {value!r}", field=dotted)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"expected a number, got {value!r}", field=dotted)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf  # an integer too large for a float
        if not math.isfinite(number):
            raise InputError(f"expected a finite number, got {value!r}", field=dotted)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {value!r}", field=dotted)
        return value
    raise TypeError(f"unsupported config type {_type_name(tp)} at {dotted}")  # programming error


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Build the frozen dataclass `cls` from a plain mapping, strictly: unknown keys, missing
    required keys and wrong types raise InputError naming the dotted field (`prefix.key`).

    Constructors validate their own values and name fields relative to their section; those
    names are made absolute here.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"expected a mapping, got {data!r}", field=prefix or None)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise InputError(f"unknown key (known: {', '.join(sorted(known))})", field=dotted)
        kwargs[key] = _convert(value, hints[key], dotted)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            raise InputError(
                "required key is missing", field=f"{prefix}.{f.name}" if prefix else f.name
            )
    try:
        return cls(**kwargs)
    except InputError as exc:
        raise InputError(exc.message, field=_absolute(exc.field or "", prefix)) from None


def _absolute(name: str, prefix: str) -> str:
    """A field name a constructor gave relative to its own section (`speculative.k`, `tp`)
    made absolute under `prefix` (`engine.speculative`, `cluster.groups[1]`): the longest
    trailing part of `prefix` that `name` starts with is where it attaches."""
    if not prefix:
        return name
    parts = prefix.split(".")
    for i in range(len(parts)):
        tail = ".".join(parts[i:])
        if name == tail or name.startswith(tail + "."):
            return ".".join([*parts[:i], name])
    return f"{prefix}.{name}"
