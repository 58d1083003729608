"""What the server writes about the searches it serves: candidate features (for learning to rank) and click logs.

Both are JSONL, one self-describing object per line, appended with one write + flush under a lock, so a
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

from vitrine.encoders.config import check, check_positive_ints, config_from_dict
from vitrine.ranking.clicklog import ClickLogWriter, session_from_dict
from vitrine.ranking.features import SCHEMA_VERSION, features_to_dict


@dataclass(frozen=True)
class LogConfig:
    """[logs] section."""

    feature_log: str = ""              # JSONL path; empty = no feature log
    feature_sample_rate: float = 0.0   # share of searches logged without being asked (0..1)
    click_log: str = ""                # JSONL path for Feedback; empty = Feedback answers FAILED_PRECONDITION
    pending_searches: int = 10_000     # searches remembered for Feedback (oldest forgotten first)

    @classmethod
    def from_dict(cls, d: dict) -> LogConfig:
        cfg = config_from_dict(cls, d, "logs")
        check(0 <= cfg.feature_sample_rate <= 1, "logs.feature_sample_rate", "between 0 and 1", cfg.feature_sample_rate)
        check_positive_ints(cfg, "logs", ("pending_searches",))
        return cfg


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


def experiment_line(experiment: Mapping[str, Any], session: str, request_id: str, shown: Sequence[str],
                    clicked: Sequence[str] | None = None) -> dict[str, Any]:
    """One experiment-log line (ranking/experiments.py reads and joins them): the search's impression when `clicked`
    is None, else one Feedback's clicks on it, credited to the arm or to the teams that contributed the items."""
    from vitrine.ranking.experiments import credit, experiment_record

    shown_set = set(shown)
    clicks = [] if clicked is None else list(dict.fromkeys(c for c in clicked if c in shown_set))
    extra = {"event": "impression" if clicked is None else "click", "clicked": clicks}
    if experiment["kind"] == "ab":
        return experiment_record(experiment["experiment"], session, request_id, len(shown), arm=experiment["arm"],
                                 clicks=len(clicks), **extra)
    if clicked is None:
        extra["teams"] = dict(experiment["teams"])
    return experiment_record(experiment["experiment"], session, request_id, len(shown),
                             credit={"a": 0, "b": 0, **credit(experiment["teams"], clicks)}, **extra)


class QueryLog:
    """Feature sampling/logging and the memory of recent searches that Feedback turns into click-log lines."""

    def __init__(self, config: LogConfig = LogConfig(), seed: int | None = None) -> None:
        self.config = config
        self.features = JsonlAppender(config.feature_log) if config.feature_log else None
        self.clicks = ClickLogWriter(config.click_log) if config.click_log else None
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def wants_features(self, asked: bool) -> bool:
        if self.features is None:
            return False
        return asked or (self.config.feature_sample_rate > 0 and self._rng.random() < self.config.feature_sample_rate)

    def remember(self, request_id: str, query: Mapping[str, Any], shown: Sequence[str], session: str,
                 image: bytes = b"", experiment: Mapping[str, Any] | None = None) -> None:
        """Keeps a served search until its Feedback; an image query's photo is stored beside the click log. Kept even
        without a click log, so that Feedback can tell a known request id (no log to write) from an unknown one."""
        query = {"text": query.get("text", "")}
        if image and self.clicks is not None:
            query["image"] = self.clicks.store_query_image(image)
        entry = {"query": query, "shown": list(shown), "session": session,
                 "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if experiment is not None:
            entry["experiment"] = dict(experiment)
        with self._lock:
            self._recent[request_id] = entry
            while len(self._recent) > self.config.pending_searches:
                self._recent.popitem(last=False)

    def feedback(self, request_id: str, clicked: Sequence[str], dwell_ms: Mapping[str, int],
                 experiment_log: JsonlAppender | None = None) -> bool:
        """Appends a click-log line for a remembered search (and, for an experiment's search, the clicks credited to
        its arm or teams to `experiment_log`). KeyError when the id is unknown or forgotten; False when there was
        nowhere to write (no click log, not an experiment's search)."""
        with self._lock:
            entry = self._recent.get(request_id)
        if entry is None:
            raise KeyError(request_id)
        logged = False
        if experiment_log is not None and "experiment" in entry:
            experiment_log.write(experiment_line(entry["experiment"], entry["session"] or request_id, request_id,
                                                 entry["shown"], clicked))
            logged = True
        if self.clicks is None:
            return logged
        line = {"query": entry["query"], "shown": entry["shown"], "clicked": list(clicked), "ts": entry["ts"],
                "session": entry["session"] or request_id}
        if dwell_ms:
            line["dwell_ms"] = dict(dwell_ms)
        self.clicks.write(session_from_dict(line))   # validated like any log line a shop sends
        return True

    def close(self) -> None:
        for f in (self.features, self.clicks):
            if f is not None:
                f.close()
