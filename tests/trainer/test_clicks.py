"""Click labels for the ranker and the Yandex sample adapter (the log format itself: tests/ranking/test_clicklog.py)."""
from __future__ import annotations

import csv
import json

import pytest

from vitrine.ranking.clicklog import (
    ClickLogSummary,
    session_from_dict,
)
from vitrine.trainer.clicks import click_label_rows, iter_yandex_sessions, write_click_labels

GOOD = {"query": {"text": "red shirt"}, "shown": ["a", "b", "c", "d"], "clicked": ["c"], "ts": "2024-05-01T10:00:00Z"}


def line(**changes) -> str:
    return json.dumps(GOOD | changes)


def test_click_labels_stop_at_the_last_click_or_a_depth(tmp_path):
    sessions = [
        session_from_dict({**GOOD, "shown": ["a", "b", "c", "d", "e"], "clicked": ["b", "d"], "session": "s1"}),
        session_from_dict({**GOOD, "clicked": [], "session": "no-clicks"}),
        session_from_dict({**GOOD, "shown": ["x", "y"], "clicked": ["x"]}),
    ]
    rows = list(click_label_rows(sessions))
    assert [(r.qid, r.doc_id, r.position, r.label) for r in rows] == [
        ("s1", "a", 1, 0), ("s1", "b", 2, 1), ("s1", "c", 3, 0), ("s1", "d", 4, 1), ("session-2", "x", 1, 1)]
    deep = list(click_label_rows(sessions, depth=2))
    assert [(r.qid, r.position) for r in deep] == [("s1", 1), ("s1", 2), ("session-2", 1), ("session-2", 2)]
    assert write_click_labels(rows, tmp_path / "labels.tsv") == 5
    with open(tmp_path / "labels.tsv", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert table[1] == {"qid": "s1", "query": "red shirt", "doc_id": "b", "position": "2", "label": "1"}
    assert write_click_labels(deep, tmp_path / "labels.jsonl") == 4
    assert json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[-1])["doc_id"] == "y"
    with pytest.raises(ValueError, match=r"\.tsv or \.jsonl"):
        write_click_labels(rows, tmp_path / "labels.csv")
    with pytest.raises(ValueError, match="depth"):
        list(click_label_rows(sessions, depth=0))


def test_yandex_sample_adapter(tmp_path):
    path = tmp_path / "sample"
    path.write_text("7_1\t10,11,12 : 11 , 11 , 99; 7_1\t10,11,12 :; 8_0\tbroken record\n9_2\t5,6 : 6;\n")
    summary = ClickLogSummary()
    sessions = list(iter_yandex_sessions(path, summary))
    assert [(s.text, s.shown, s.clicked) for s in sessions] == [
        ("7_1", ("10", "11", "12"), ("11", "99")), ("7_1", ("10", "11", "12"), ()), ("9_2", ("5", "6"), ("6",))]
    assert summary.malformed == 1 and summary.errors[0].line == 1 and summary.unshown_clicks == 1
    assert sessions[0].click_ranks() == [2] and sessions[2].line == 2


def test_yandex_real_sample_parses_cleanly(shared_data):
    """The real log's whole point is its size and its position bias; the format is covered by the test above."""
    path = shared_data("yandex-clicks/testSample")
    summary = ClickLogSummary()
    rows = list(click_label_rows(iter_yandex_sessions(path, summary)))
    assert summary.sessions > 1000 and summary.malformed == 0
    by_position = {}
    for r in rows:
        by_position.setdefault(r.position, []).append(r.label)
    ctr = {p: sum(v) / len(v) for p, v in by_position.items()}
    assert ctr[1] > ctr[5] > 0  # real logs show the position bias the trainer corrects for
