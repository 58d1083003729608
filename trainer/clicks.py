"""Click labels for the LightGBM ranker, and the public Yandex click sample as click-log sessions.

The click-log format itself (ClickSession, reader, writer) is the library's: ranking/clicklog.py.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vitrine.ranking.clicklog import ClickLogSummary, ClickSession

# ---- click labels for the LightGBM ranker --------------------------------------------------------------


@dataclass(frozen=True)
class ClickLabel:
    qid: str        # one ranking group per session
    query: str      # the query text (and image), to join sessions of one query
    doc_id: str
    position: int   # 1-based
    label: int      # 1 clicked, 0 shown and not clicked


def click_label_rows(sessions: Iterable[ClickSession], depth: int | None = None) -> Iterator[ClickLabel]:
    """Rows for a learning-to-rank table, one group per session with at least one click on a shown item.

    With depth=None a session contributes the positions up to its last click (those the user examined
    under the cascade assumption); with a depth, its first `depth` positions.
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be a positive number of positions, got {depth}.")
    for n, s in enumerate(sessions):
        ranks = s.click_ranks()
        if not ranks:
            continue
        cutoff = depth if depth is not None else ranks[-1]
        clicked = set(s.clicked)
        qid = s.session or f"session-{n}"
        query = s.text if not s.image else f"{s.text} [image {s.image}]".strip()
        for pos, doc_id in enumerate(s.shown[:cutoff], start=1):
            yield ClickLabel(qid, query, doc_id, pos, int(doc_id in clicked))


def write_click_labels(rows: Iterable[ClickLabel], path: str | Path) -> int:
    """Writes rows as TSV (header qid, query, doc_id, position, label) or JSONL by the file's suffix; returns the count."""
    path = Path(path)
    if path.suffix.lower() not in (".tsv", ".jsonl"):
        raise ValueError(f"click label table {path} must end in .tsv or .jsonl.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".tsv":
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["qid", "query", "doc_id", "position", "label"])
            for r in rows:
                w.writerow([r.qid, r.query.replace("\t", " ").replace("\n", " "), r.doc_id, r.position, r.label])
                n += 1
        else:
            for r in rows:
                f.write(json.dumps({"qid": r.qid, "query": r.query, "doc_id": r.doc_id, "position": r.position,
                                    "label": r.label}, ensure_ascii=False) + "\n")
                n += 1
    os.replace(tmp, path)
    return n


# ---- the public Yandex sample ----------------------------------------------------------------------------


def iter_yandex_sessions(path: str | Path, summary: ClickLogSummary | None = None) -> Iterator[ClickSession]:
    """Adapts the Yandex relevance-prediction sample (`QID_REGION<TAB>shown,ids : clicked , ids;` repeated).

    Its queries are integer ids only, so a session's query text is that id; it has no timestamps, so
    sessions get the epoch plus their ordinal in seconds (order kept). Each `;`-separated record counts
    as one line in the summary, numbered by its file line.
    """
    summary = summary if summary is not None else ClickLogSummary()
    ordinal = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            for record in line.split(";"):
                if not record.strip():
                    continue
                summary.lines += 1
                try:
                    head, _, tail = record.strip().partition("\t")
                    shown_part, sep, clicked_part = tail.partition(":")
                    if not head or not sep:
                        raise ValueError("expected QID_REGION<TAB>shown ids : clicked ids")
                    shown = [x.strip() for x in shown_part.split(",") if x.strip()]
                    clicked = [x.strip() for x in clicked_part.split(",") if x.strip()]
                    if not shown or not all(x.isdigit() for x in shown + clicked):
                        raise ValueError("shown and clicked ids must be integers, and something must be shown")
                except ValueError as exc:
                    summary.add_error(lineno, str(exc))
                    continue
                ts = datetime.fromtimestamp(ordinal, timezone.utc).isoformat().replace("+00:00", "Z")
                s = ClickSession(shown=tuple(dict.fromkeys(shown)), clicked=tuple(dict.fromkeys(clicked)), ts=ts,
                                 text=head, session=f"{head}#{ordinal}", line=lineno)
                ordinal += 1
                summary.sessions += 1
                summary.clicks += len(s.clicked)
                summary.unshown_clicks += sum(1 for d in s.clicked if d not in set(s.shown))
                yield s
