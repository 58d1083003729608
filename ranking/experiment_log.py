"""The experiment log: the lines a tenant's online experiment appends, how they are written and read back.

The server appends to the tenant's experiment log (`<tenant>/logs/experiment.jsonl`) one line per search served by
the experiment ("event": "impression", no clicks yet) and one per Feedback on it ("event": "click"):
    A/B:          {"experiment": str, "kind": "ab", "arm": "a"|"b", "session": str, "request_id": str,
                   "shown": int, "clicks": int, "ts": ISO-8601, "event"?, "clicked"?: [id]}
    interleaving: {"experiment": str, "kind": "interleave", "session": str, "request_id": str,
                   "shown": int, "credit": {"a": int, "b": int}, "ts": ISO-8601, "event"?, "clicked"?, "teams"?}
`clicks` counts distinct shown ids clicked; `credit` is credit() over the team-draft teams. Unknown keys are kept.
`read_experiment_log` joins a search's lines by request_id into one impression (the union of its clicks), so a
search without Feedback counts as an impression without a click, and repeated Feedback counts once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrine.indexer.jsonl import LineError, iter_jsonl
from vitrine.ranking.arms import ARMS, Arm, ExperimentKind, credit
from vitrine.ranking.clicklog import parse_ts, utc_now_iso


@dataclass(frozen=True)
class Assignment:
    """What an experiment did with one search: the arm that answered it (A/B), or the team of each shown id
    (interleaving; filler ids have none). The server remembers it with the search and writes the search's lines
    from it; they are valid by construction, so they are not parsed back."""

    experiment: str
    kind: ExperimentKind
    arm: Arm | None = None
    teams: Mapping[str, Arm] = field(default_factory=dict)

    def line(self, session: str, request_id: str, shown: Sequence[str], clicked: Sequence[str] | None = None,
             ) -> dict[str, Any]:
        """The search's impression line when `clicked` is None, else one Feedback's clicks on it, credited to the arm
        or to the teams that contributed the items (clicks on ids that were not shown are left out)."""
        shown_set = set(shown)
        clicks = [] if clicked is None else list(dict.fromkeys(c for c in clicked if c in shown_set))
        if self.kind is ExperimentKind.AB:
            record = _record(self.experiment, session, request_id, len(shown), arm=self.arm, clicks=len(clicks))
        else:
            record = _record(self.experiment, session, request_id, len(shown), credit=credit(self.teams, clicks))
        record |= {"event": "impression" if clicked is None else "click", "clicked": clicks}
        if clicked is None and self.kind is ExperimentKind.INTERLEAVE:
            record["teams"] = dict(self.teams)
        return record


def _record(experiment: str, session: str, request_id: str, shown: int, *, arm: str | None = None,
            clicks: int | None = None, credit: Mapping[str, int] | None = None, ts: str | None = None) -> dict[str, Any]:
    """One log line in the documented key order, unchecked."""
    head = {"experiment": experiment}
    tail = {"session": session, "request_id": request_id, "shown": shown}
    if credit is not None and arm is None and clicks is None:
        record = head | {"kind": ExperimentKind.INTERLEAVE} | tail | {"credit": {t: credit.get(t, 0) for t in ARMS}}
    elif credit is None and arm is not None and clicks is not None:
        record = head | {"kind": ExperimentKind.AB, "arm": arm} | tail | {"clicks": clicks}
    else:
        raise ValueError("An experiment record takes either `arm` and `clicks` (A/B) or `credit` (interleaving).")
    record["ts"] = ts or utc_now_iso()
    return record


def experiment_record(experiment: str, session: str, request_id: str, shown: int, *, arm: str | None = None,
                      clicks: int | None = None, credit: Mapping[str, int] | None = None,
                      ts: str | None = None, **extra: Any) -> dict[str, Any]:
    """One log line from loose values (simulations, tests), checked like a line read back: pass `arm` and `clicks`
    for an A/B impression, or `credit` for an interleaved one; `extra` adds keys (event, clicked, teams)."""
    record = _record(experiment, session, request_id, shown, arm=arm, clicks=clicks, credit=credit, ts=ts) | extra
    try:
        return parse_record(record)
    except ValueError as exc:
        raise ValueError(f"Invalid experiment record: {exc}.") from None


def _count(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field '{name}' must be a non-negative integer, got {value!r}")
    return value


def parse_record(obj: Any) -> dict[str, Any]:
    """Validates one decoded log line and returns it; raises ValueError (TypeError: not an object) naming the field."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    for name in ("experiment", "session", "request_id"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise ValueError(f"field '{name}' must be a non-empty string, got {obj.get(name)!r}")
    parse_ts(obj.get("ts"))
    shown = _count(obj, "shown")
    if obj.get("kind") == ExperimentKind.AB:
        if obj.get("arm") not in ARMS:
            raise ValueError(f"field 'arm' must be 'a' or 'b', got {obj.get('arm')!r}")
        clicked = _count(obj, "clicks")
    elif obj.get("kind") == ExperimentKind.INTERLEAVE:
        c = obj.get("credit")
        if not isinstance(c, dict) or sorted(c) != ["a", "b"]:
            raise ValueError(f"field 'credit' must be an object with exactly 'a' and 'b', got {c!r}")
        clicked = _count(c, "a") + _count(c, "b")
    else:
        raise ValueError(f"field 'kind' must be 'ab' or 'interleave', got {obj.get('kind')!r}")
    if clicked > shown:
        raise ValueError(f"{clicked} credited clicks exceed the {shown} ids shown")
    return obj


def read_experiment_log(path: str | Path) -> list[dict[str, Any]]:
    """One row per impression of an experiment log (join_events); the first bad line raises
    ValueError("PATH: line N: reason")."""
    rows = []
    for _, value in iter_jsonl(path, parse_record):
        if isinstance(value, LineError):
            raise ValueError(f"{path}: {value}")  # noqa: TRY004 - a bad line is a bad value, whatever its reason
        rows.append(value)
    return join_events(rows)


def join_events(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Lines of one search (same request_id: its impression and each Feedback) as one row: clicks are the union of
    the ids its lines name, credited again to the impression's teams. Lines without ids add their counts."""
    by_request: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"{row['experiment']}\x00{row['kind']}\x00{row['request_id']}"
        merged = by_request.get(key)
        if merged is None:
            by_request[key] = {**row, **({"clicked": list(row["clicked"])} if "clicked" in row else {})}
            continue
        if "teams" in row and "teams" not in merged:
            merged["teams"] = row["teams"]
        if "clicked" in row:
            union = merged.setdefault("clicked", [])
            union += [c for c in row["clicked"] if c not in union]
        elif merged["kind"] == ExperimentKind.AB:
            merged["clicks"] += row["clicks"]
        else:
            merged["credit"] = {t: merged["credit"][t] + row["credit"][t] for t in ARMS}
    for merged in by_request.values():
        if merged.get("clicked"):
            if merged["kind"] == ExperimentKind.AB:
                merged["clicks"] = len(merged["clicked"])
            elif "teams" in merged:
                merged["credit"] = {**dict.fromkeys(ARMS, 0), **credit(merged["teams"], merged["clicked"])}
    return list(by_request.values())


def select_experiment(rows: Sequence[Mapping[str, Any]], experiment: str | None = None) -> tuple[str, list[dict]]:
    """(name, its rows): `experiment`, or by default the experiment of the log's last line (logs are appended)."""
    if not rows:
        raise ValueError("The experiment log has no lines.")
    name = experiment if experiment is not None else rows[-1]["experiment"]
    chosen = [dict(r) for r in rows if r["experiment"] == name]
    if not chosen:
        known = ", ".join(sorted({r["experiment"] for r in rows}))
        raise ValueError(f"Experiment {name!r} is not in the log; it has {known}.")
    return name, chosen
