"""Click logs: the JSONL session format, a streaming validating reader and a thread-safe writer.

The server writes them (Feedback) and the trainers read them, so the format lives in the library.

One line per search session:
    {"query": {"text"?: str, "image"?: PATH_OR_URL}, "shown": [id, ...] (rank order), "clicked": [id, ...],
     "ts": ISO-8601, "session"?: str, "dwell_ms"?: {id: ms}}
A relative query image path is relative to the log file. Unknown keys are ignored, so logs can grow fields.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitrine.indexer.jsonl import LineError, parse_jsonl_lines

MAX_SHOWN = 1000
QUERY_IMAGE_DIR = "query-images"
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class ClickSession:
    """One search: what was asked, what was shown (best first), what was clicked (in click order)."""

    shown: tuple[str, ...]
    clicked: tuple[str, ...]
    ts: str
    text: str = ""
    image: str | None = None
    session: str | None = None
    dwell_ms: Mapping[str, float] = field(default_factory=dict)
    line: int = 0  # where it was read from; 0 when built in code

    @property
    def query_key(self) -> str:
        """Groups the sessions of one query (same text, same image)."""
        return f"{self.text}\x1f{self.image or ''}"

    def click_ranks(self) -> list[int]:
        """1-based ranks of the clicked ids that were shown, in rank order; clicks on unshown ids are left out."""
        rank_of = {doc_id: r for r, doc_id in enumerate(self.shown, start=1)}
        return sorted(rank_of[d] for d in set(self.clicked) if d in rank_of)

    def to_dict(self) -> dict[str, Any]:
        query: dict[str, str] = {}
        if self.text:
            query["text"] = self.text
        if self.image:
            query["image"] = self.image
        out: dict[str, Any] = {"query": query, "shown": list(self.shown), "clicked": list(self.clicked), "ts": self.ts}
        if self.session is not None:
            out["session"] = self.session
        if self.dwell_ms:
            out["dwell_ms"] = dict(self.dwell_ms)
        return out


def resolve_log_image(image: str | None, log_dir: Path) -> str | None:
    """A logged query image as an absolute path or URL (relative paths are relative to the log file's folder)."""
    if not image or image.startswith(("http://", "https://")):
        return image or None
    p = Path(image)
    return str(p if p.is_absolute() else (Path(log_dir) / p).resolve())


def resolve_query_image(session: ClickSession, log_dir: Path) -> str | None:
    """The session's query image as an absolute path or URL."""
    return resolve_log_image(session.image, log_dir)


def _ids(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = obj.get(name)
    if not isinstance(value, list):
        raise ValueError(f"field '{name}' must be a list of item ids, got {type(value).__name__}")
    if len(value) > MAX_SHOWN:
        raise ValueError(f"field '{name}' lists {len(value)} ids; at most {MAX_SHOWN} are accepted")
    out = []
    for i, raw in enumerate(value):
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            raise ValueError(f"field '{name}[{i}]' must be a non-empty string id, got {raw!r}")
        if len(str(raw)) > MAX_ID_LENGTH:
            raise ValueError(f"field '{name}[{i}]' is longer than {MAX_ID_LENGTH} characters")
        out.append(str(raw).strip())
    return tuple(dict.fromkeys(out))  # a repeated click on one item is one click


def parse_ts(value: Any) -> datetime:
    """Parses an ISO-8601 timestamp ('Z' accepted); raises ValueError naming the field."""
    if not isinstance(value, str):
        raise ValueError(f"field 'ts' must be an ISO-8601 string, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"field 'ts' is not an ISO-8601 timestamp: {value!r}") from None


def session_from_dict(obj: Any, line: int = 0) -> ClickSession:
    """Validates one decoded log object; raises ValueError naming the offending field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    query = obj.get("query")
    if not isinstance(query, dict):
        raise ValueError(f"field 'query' must be an object with 'text' and/or 'image', got {type(query).__name__}")
    text, image = query.get("text") or "", query.get("image") or None
    if not isinstance(text, str):
        raise ValueError(f"field 'query.text' must be a string, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"field 'query.image' must be a path or URL string, got {type(image).__name__}")
    if not text.strip() and not image:
        raise ValueError("field 'query' has neither 'text' nor 'image'")
    shown, clicked = _ids(obj, "shown"), _ids(obj, "clicked")
    ts = obj.get("ts")
    parse_ts(ts)
    session = obj.get("session")
    if session is not None and not isinstance(session, (str, int)):
        raise ValueError(f"field 'session' must be a string, got {type(session).__name__}")
    dwell = obj.get("dwell_ms") or {}
    if not isinstance(dwell, dict):
        raise ValueError(f"field 'dwell_ms' must be an object of id -> milliseconds, got {type(dwell).__name__}")
    for key, ms in dwell.items():
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
            raise ValueError(f"field 'dwell_ms.{key}' must be a non-negative number, got {ms!r}")
    return ClickSession(shown=shown, clicked=clicked, ts=ts, text=text.strip(), image=image,
                        session=None if session is None else str(session),
                        dwell_ms={str(k): float(v) for k, v in dwell.items()}, line=line)


@dataclass
class ClickLogSummary:
    """What a pass over a log saw. Mutable on purpose: the reader fills it in as it streams."""

    lines: int = 0
    sessions: int = 0
    malformed: int = 0
    clicks: int = 0
    unshown_clicks: int = 0  # clicks on ids the session did not show (kept, but carry no rank)
    errors: list[LineError] = field(default_factory=list)  # the first `max_errors` malformed lines
    max_errors: int = 20

    def add_error(self, line: int, message: str) -> None:
        self.malformed += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, message))

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "sessions": self.sessions, "malformed": self.malformed, "clicks": self.clicks,
                "unshown_clicks": self.unshown_clicks, "first_errors": [str(e) for e in self.errors]}

    def __str__(self) -> str:
        head = (f"{self.sessions} session(s) from {self.lines} line(s), {self.clicks} click(s); "
                f"{self.malformed} malformed line(s)")
        return "\n  ".join([head, *(str(e) for e in self.errors)])


def parse_click_lines(lines: Iterable[str], summary: ClickLogSummary | None = None) -> Iterator[ClickSession]:
    """Yields each valid session; a malformed line is counted in `summary` with its line number and skipped."""
    summary = summary if summary is not None else ClickLogSummary()
    for lineno, s in parse_jsonl_lines(lines, session_from_dict):
        summary.lines += 1
        if isinstance(s, LineError):
            summary.add_error(s.line, s.message)
            continue
        s = replace(s, line=lineno)
        shown = set(s.shown)
        summary.sessions += 1
        summary.clicks += len(s.clicked)
        summary.unshown_clicks += sum(1 for d in s.clicked if d not in shown)
        yield s


def iter_click_log(path: str | Path, summary: ClickLogSummary | None = None) -> Iterator[ClickSession]:
    """Streams a JSONL click log from disk (see parse_click_lines)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from parse_click_lines(f, summary)


def read_click_log(path: str | Path, max_errors: int = 20) -> tuple[list[ClickSession], ClickLogSummary]:
    """Reads a whole log into memory; for logs too large for that, iterate with iter_click_log."""
    summary = ClickLogSummary(max_errors=max_errors)
    return list(iter_click_log(path, summary)), summary


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClickLogWriter:
    """Appends sessions to a JSONL log, one write() and flush per line under a lock.

    The file is opened unbuffered in append mode (O_APPEND), so each line lands whole even when another
    process appends to the same file; a reader never sees half a line unless the writer dies mid-write,
    and the reader then reports that one line as malformed.
    """

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._f = open(self.path, "ab", buffering=0)

    def write(self, session: ClickSession) -> None:
        data = (json.dumps(session.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._f.closed:
                raise ValueError(f"click log {self.path} is closed.")
            view = memoryview(data)
            while view:  # a regular file takes it in one write; the loop only guards against a short write
                view = view[self._f.write(view):]
            self._f.flush()
            if self._fsync:
                os.fsync(self._f.fileno())

    def store_query_image(self, data: bytes, suffix: str = ".jpg") -> str:
        """Keeps a query photo (the server gets bytes, the log holds paths) under `query-images/` beside the log.

        Named by content hash, so a repeated photo is stored once; returns the path relative to the log's folder.
        """
        if not data:
            raise ValueError("a query image needs at least one byte.")
        name = f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        folder = self.path.parent / QUERY_IMAGE_DIR
        target = folder / name
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.{threading.get_ident()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return f"{QUERY_IMAGE_DIR}/{name}"

    def log_search(self, shown: Sequence[str], text: str = "", image: str | None = None,
                   clicked: Sequence[str] = (), session: str | None = None, ts: str | None = None) -> ClickSession:
        """Logs one served search (clicks may come later from the shop under the same `session`)."""
        s = session_from_dict({"query": {"text": text, "image": image}, "shown": list(shown), "clicked": list(clicked),
                               "ts": ts or utc_now_iso(), "session": session})
        self.write(s)
        return s

    def close(self) -> None:
        with self._lock:
            self._f.close()

    def __enter__(self) -> ClickLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
