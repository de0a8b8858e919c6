"""Strict conversion of plain dicts (from YAML) into nested dataclasses.

Every error names the dotted key and, for unknown keys, suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range. `key` is the dotted path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


# Beyond these, a number is a typo or an overflow (`1e400` reads as inf), never a setting.
SANE_INT = 2**53
SANE_FLOAT = 1e15


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, **kwargs):
    """A dataclass field whose numeric value must lie in a range; `from_dict` checks it and says
    which, e.g. `train.epochs: must be in [1, 100000], got 0`."""
    metadata = {"bounds": (ge, gt, le, lt), **kwargs.pop("metadata", {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _range_text(ge, gt, le, lt) -> str:
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else "(-inf"
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else "inf)"
    return f"{low}, {high}"


def check_bounds(value: Any, bounds: tuple, key: str) -> None:
    """ConfigError unless every number in `value` (a number, or a list/tuple of them) is in range."""
    ge, gt, le, lt = bounds
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if ((ge is not None and item < ge) or (gt is not None and item <= gt)
                or (le is not None and item > le) or (lt is not None and item >= lt)):
            raise ConfigError(key, f"must be in {_range_text(ge, gt, le, lt)}, got {item!r}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message ("must be a finite number", a range)
            return _convert(value, options[0], key)
        errors = []
        for arg in options:
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(key, f"expected {_describe(hint)}, got {_show(value)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}{hint_text}")
        return value
    if isinstance(hint, type) and hasattr(hint, "from_plain"):
        # A section with its own reading (e.g. `model:`, a registry name plus overrides).
        return value if isinstance(value, hint) else hint.from_plain(value, key)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(hint, value, prefix=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) <= SANE_INT:
            value = int(value)  # `1e3` in YAML is a float; a whole number is what was meant
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_show(value)}")
        if abs(value) > SANE_INT:
            raise ConfigError(key, f"{value} is beyond any sane setting (|x| <= 2**53)")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_show(value)}")
        if isinstance(value, int) and abs(value) > SANE_FLOAT:
            raise ConfigError(key, f"{value} is beyond any sane setting (|x| <= {SANE_FLOAT:g})")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r} (a value too large for a float reads as inf)")
        if abs(value) > SANE_FLOAT:
            raise ConfigError(key, f"{value:g} is beyond any sane setting (|x| <= {SANE_FLOAT:g})")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_show(value)}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(key, f"expected {hint.__name__}, got {value!r}")
    return value


def _show(value: Any) -> str:
    """A value as the user wrote it, in YAML's words rather than Python's."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return " or ".join(getattr(a, "__name__", str(a)) for a in args)


def from_dict(cls: type, data: dict, prefix: str = ""):
    """Build dataclass `cls` from `data`, strictly. Raises ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint_text = f"; did you mean {_join(prefix, close[0])!r}?" if close else ""
            raise ConfigError(_join(prefix, str(key)), f"unknown key{hint_text}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(prefix, name))
            if "bounds" in f.metadata:
                check_bounds(kwargs[name], f.metadata["bounds"], _join(prefix, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(prefix, name), "is required")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # Errors raised in __post_init__ name the field; qualify them with where it sits.
        message = str(err)[len(err.key) + 2 :] if err.key else str(err)
        raise ConfigError(_join(prefix, err.key) if err.key else prefix, message) from None
    except (ValueError, TypeError) as err:
        # Component configs say "ClassName.field ..." in __post_init__: point at that key.
        match = re.match(r"^\w+\.(\w+)\b", str(err))
        key = _join(prefix, match.group(1)) if match and match.group(1) in fields else prefix
        raise ConfigError(key, str(err)) from err


def to_dict(obj) -> dict:
    """Dataclass -> plain dict of YAML/JSON-safe values (tuples become lists)."""

    def plain(v):
        if hasattr(v, "to_plain"):
            return v.to_plain()
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)
