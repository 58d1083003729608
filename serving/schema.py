"""How every section of `vitrine.toml` is read: `config_from_dict` builds a frozen dataclass from a TOML table.

A neutral leaf (it imports no Vitrine module), so every package may use it: unknown keys and values of the wrong
type get one wording everywhere, "Field 'section.name' must be …, got …". A dataclass's own `from_dict` adds only
the range checks its fields need, with `check`.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def check(ok: bool, field: str, expectation: str, value: Any) -> None:
    """Raises the one wording of a bad config value: "Field 'search.max_k' must be a positive integer, got 0."."""
    if not ok:
        raise ValueError(f"Field '{field}' must be {expectation}, got {value!r}.")


def check_positive_ints(cfg: Any, section: str, names: typing.Iterable[str], minimum: int = 1) -> None:
    for name in names:
        value = getattr(cfg, name)
        check(value >= minimum, f"{section}.{name}", "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}",
              value)


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Checks a TOML value against a dataclass field's annotation and converts it (int→float, list→tuple, str→enum)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], field) if len(inner) == 1 else value
    if tp is typing.Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"Field '{field}' must be {_describe(tp)}, got {value!r}.") from None
    if tp is bool:
        check(isinstance(value, bool), field, _describe(tp), value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), field, _describe(tp), value)
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), field, _describe(tp), value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), field, _describe(tp), value)
        return value
    if origin is tuple:
        check(isinstance(value, (list, tuple)), field, "a list", value)
        item = args[0] if args else typing.Any
        return tuple(coerce(v, item, f"{field}[{n}]") for n, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        check(isinstance(value, Mapping), field, "a table", value)
        return dict(value)
    return value


def config_from_dict(cls: type[T], d: Any, section: str) -> T:
    """Builds the frozen dataclass `cls` from the TOML table [section], checking names and types of every key."""
    if not isinstance(d, Mapping):
        raise ValueError(f"Section [{section}] must be a table, got {d!r}.")
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"Unknown key(s) in [{section}]: {', '.join(unknown)}; known keys are {', '.join(names)}.")
    hints = typing.get_type_hints(cls)
    return cls(**{name: coerce(value, hints[name], f"{section}.{name}") for name, value in d.items()})
