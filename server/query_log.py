"""What the server writes about the searches it serves: candidate features (for learning to rank), click logs and an
experiment's lines, all after the answer in one pass (QueryLog.log_answer) and from Feedback.

All are JSONL, one self-describing object per line, appended with one write + flush under a lock, so a
crash loses at most the line being written and never corrupts earlier ones.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.ranking.clicklog import ClickLogWriter, session_from_dict
from vitrine.ranking.experiment_log import Assignment
from vitrine.ranking.features import SCHEMA_VERSION, features_to_dict
from vitrine.ranking.pipeline import SearchRequest, SearchResult
from vitrine.serving.config import LogConfig


class JsonlAppender:
    """Thread-safe line appender; the file is opened once, in append mode."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def feature_record(request_id: str, query: Mapping[str, Any], bundle_version: str, models: Mapping[str, str],
                   ranked_ids: Sequence[str], features: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One feature-log line: the query and, in served order, each re-ranked candidate's features."""
    return {
        "schema_version": SCHEMA_VERSION, "request_id": request_id, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "query": dict(query), "bundle_version": bundle_version, "models": dict(models),
        "candidates": [{"id": i, "position": p, "features": features_to_dict(features[i])}
                       for p, i in enumerate((i for i in ranked_ids if i in features), start=1)],
    }


@dataclass(frozen=True)
class Answered:
    """One answered search, as everything logged after the answer needs it: built once by the Search servicer."""

    request_id: str
    session: str                     # as the client sent it; "" = none, and the request id stands in where a log needs one
    request: SearchRequest           # as served: `log_features` says whether this search's features are logged
    result: SearchResult
    models: Mapping[str, str]        # model versions, the response's own map (copied only when a line is written)
    assignment: Assignment | None = None   # the experiment's arm or teams, when an experiment answered


@dataclass(frozen=True)
class _Pending:
    """A served search waiting for its Feedback."""

    query: Mapping[str, str]
    shown: list[str]
    session: str
    ts: str
    assignment: Assignment | None


class NoQuery(ValueError):
    """Feedback for a search that had no query (a browse, a like_id request without text)."""


class QueryLog:
    """Feature sampling/logging and the memory of recent searches that Feedback turns into click-log lines."""

    def __init__(self, config: LogConfig = LogConfig(), seed: int | None = None) -> None:
        self.config = config
        self.features = JsonlAppender(config.feature_log) if config.feature_log else None
        self.clicks = ClickLogWriter(config.click_log) if config.click_log else None
        self._recent: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def wants_features(self, asked: bool) -> bool:
        if self.features is None:
            return False
        return asked or (self.config.feature_sample_rate > 0 and self._rng.random() < self.config.feature_sample_rate)

    def log_answer(self, answered: Answered, experiment_log: JsonlAppender | None = None) -> None:
        """Everything written after a search is answered, in one pass: its feature-log line (when asked or sampled),
        the memory Feedback reads, and, for an experiment's search, its impression in `experiment_log` (every
        impression, clicked or not)."""
        req, result, request_id = answered.request, answered.result, answered.request_id
        shown = [h.id for h in result.hits]
        if req.log_features and result.features:
            query = {"text": req.text, "mode": result.mode, **({"filters": dict(req.filters)} if req.filters else {})}
            self.features.write(feature_record(request_id, query, result.bundle_version, dict(answered.models), shown,
                                               result.features))
        self._remember(request_id, req.text, shown, answered.session, req.image, answered.assignment)
        if answered.assignment is not None and experiment_log is not None:
            experiment_log.write(answered.assignment.line(answered.session or request_id, request_id, shown))

    def _remember(self, request_id: str, text: str, shown: list[str], session: str, image: bytes,
                  assignment: Assignment | None) -> None:
        """Keeps a served search until its Feedback; an image query's photo is stored beside the click log. Kept even
        without a click log, so that Feedback can tell a known request id (no log to write) from an unknown one."""
        query = {"text": text}
        if image and self.clicks is not None:
            query["image"] = self.clicks.store_query_image(image)
        pending = _Pending(query, shown, session, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), assignment)
        with self._lock:
            self._recent[request_id] = pending
            while len(self._recent) > self.config.pending_searches:
                self._recent.popitem(last=False)

    def feedback(self, request_id: str, clicked: Sequence[str], dwell_ms: Mapping[str, int],
                 experiment_log: JsonlAppender | None = None) -> bool:
        """Appends a click-log line for a remembered search (and, for an experiment's search, the clicks credited to
        its arm or teams to `experiment_log`). KeyError when the id is unknown or forgotten; False when there was
        nowhere to write (no click log, not an experiment's search)."""
        with self._lock:
            pending = self._recent.get(request_id)
        if pending is None:
            raise KeyError(request_id)
        if not pending.query.get("text") and "image" not in pending.query and self.clicks is not None:
            # A browse or a more-like-this: the click log learns how queries match items, and there was no query.
            raise NoQuery(f"request_id {request_id!r} was a browse or a more-like-this request (no text, no photo): "
                          "its clicks have no query to learn from, so the click log does not record them.")
        logged = False
        if experiment_log is not None and pending.assignment is not None:
            experiment_log.write(pending.assignment.line(pending.session or request_id, request_id, pending.shown, clicked))
            logged = True
        if self.clicks is None:
            return logged
        line = {"query": pending.query, "shown": pending.shown, "clicked": list(clicked), "ts": pending.ts,
                "session": pending.session or request_id}
        if dwell_ms:
            line["dwell_ms"] = dict(dwell_ms)
        self.clicks.write(session_from_dict(line))   # validated like any log line a shop sends
        return True

    def close(self) -> None:
        for f in (self.features, self.clicks):
            if f is not None:
                f.close()
