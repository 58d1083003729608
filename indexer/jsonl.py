"""The one JSONL reader: every bad line is reported as `line N: reason`, never as a bare traceback.

Catalogs, queries, runs, click logs, feature logs and patch files all read through it; each passes the function
that validates one decoded object (raising ValueError, KeyError or TypeError with the reason).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# What a parser may raise for a malformed object; anything else is a bug and propagates.
PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError)


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _identity(obj: Any) -> Any:
    return obj


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    return str(exc)


def parse_jsonl_lines(lines: Iterable[str], parse: Callable[[Any], T] = _identity) -> Iterator[tuple[int, T | LineError]]:
    """Yields (line number, parsed value or LineError) for every non-blank line; line numbers start at 1."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, LineError(lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            yield lineno, parse(obj)
        except PARSE_ERRORS as exc:
            yield lineno, LineError(lineno, _reason(exc))


def iter_jsonl(path: str | Path, parse: Callable[[Any], T] = _identity) -> Iterator[tuple[int, T | LineError]]:
    """Streams a JSONL file through `parse`; bad lines come back as LineError and reading goes on."""
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from parse_jsonl_lines(f, parse)


def read_jsonl(path: str | Path, parse: Callable[[Any], T] = _identity) -> list[T]:
    """Reads a whole JSONL file; the first bad line raises ValueError("PATH: line N: reason")."""
    out: list[T] = []
    for _, value in iter_jsonl(path, parse):
        if isinstance(value, LineError):
            raise ValueError(f"{path}: {value}")
        out.append(value)
    return out
