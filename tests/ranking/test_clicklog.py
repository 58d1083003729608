"""The click-log format: the streaming reader survives bad lines and names them, the writer appends whole lines."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vitrine.ranking.clicklog import (
    ClickLogSummary,
    ClickLogWriter,
    ClickSession,
    iter_click_log,
    parse_click_lines,
    read_click_log,
    session_from_dict,
)

GOOD = {"query": {"text": "red shirt"}, "shown": ["a", "b", "c", "d"], "clicked": ["c"], "ts": "2024-05-01T10:00:00Z"}


def line(**changes) -> str:
    return json.dumps(GOOD | changes)


def test_malformed_lines_are_counted_with_their_line_numbers(tmp_path):
    lines = [
        line(),                                                   # 1 ok
        "{not json",                                              # 2
        line(query={}),                                           # 3 neither text nor image
        "",                                                       # 4 blank: not a line of data
        line(ts="yesterday"),                                     # 5
        line(shown="a,b"),                                        # 6
        line(query={"image": "q.jpg"}, clicked=["a", "a"], session="s7", dwell_ms={"a": 1200}),  # 7 ok
        line(dwell_ms={"a": -5}),                                 # 8
        json.dumps(["a list"]),                                   # 9
        line(clicked=["zz"]),                                     # 10 ok: a click on an unshown id is kept
    ]
    path = tmp_path / "clicks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sessions, summary = read_click_log(path)
    assert [s.line for s in sessions] == [1, 7, 10]
    assert summary.lines == 9 and summary.sessions == 3 and summary.malformed == 6
    assert [e.line for e in summary.errors] == [2, 3, 5, 6, 8, 9]
    messages = {e.line: e.message for e in summary.errors}
    assert "invalid JSON" in messages[2]
    assert "neither 'text' nor 'image'" in messages[3]
    assert "'ts'" in messages[5] and "'shown'" in messages[6] and "dwell_ms.a" in messages[8]
    assert sessions[1].clicked == ("a",) and sessions[1].dwell_ms == {"a": 1200.0}
    assert summary.unshown_clicks == 1 and sessions[2].click_ranks() == []
    assert "line 2: invalid JSON" in str(summary)


def test_reader_streams_and_caps_the_errors_it_keeps():
    def lines():
        for i in range(1000):
            yield line() if i % 2 else "garbage"

    summary = ClickLogSummary(max_errors=5)
    stream = parse_click_lines(lines(), summary)
    first = next(stream)  # a generator: nothing past the first valid line has been read yet
    assert first.line == 2 and summary.lines == 2
    rest = list(stream)
    assert len(rest) == 499 and summary.malformed == 500 and len(summary.errors) == 5


def test_session_validation_names_the_field():
    with pytest.raises(ValueError, match="'clicked'"):
        session_from_dict(GOOD | {"clicked": None})
    with pytest.raises(ValueError, match=r"'shown\[1\]'"):
        session_from_dict(GOOD | {"shown": ["a", ""]})
    with pytest.raises(ValueError, match="'query.image'"):
        session_from_dict(GOOD | {"query": {"image": 3}})


def test_writer_appends_whole_lines_from_many_threads(tmp_path):
    path = tmp_path / "served.jsonl"
    with ClickLogWriter(path) as writer:
        def work(t: int) -> None:
            for i in range(50):
                writer.log_search([f"{t}-{j}" for j in range(40)], text=f"query {t} {i} " + "x" * 200,
                                  clicked=[f"{t}-3"], session=f"{t}-{i}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    sessions, summary = read_click_log(path)
    assert summary.malformed == 0 and len(sessions) == 400
    assert len({s.session for s in sessions}) == 400
    assert all(s.click_ranks() == [4] for s in sessions)
    with pytest.raises(ValueError, match="neither"):
        ClickLogWriter(tmp_path / "x.jsonl").log_search(["a"], text="  ")


def test_served_query_photos_are_stored_beside_the_log_and_resolve(tmp_path):
    from vitrine.ranking.clicklog import resolve_query_image

    with ClickLogWriter(tmp_path / "logs" / "served.jsonl") as writer:
        rel = writer.store_query_image(b"\xff\xd8 jpeg bytes")
        assert writer.store_query_image(b"\xff\xd8 jpeg bytes") == rel  # stored once
        writer.log_search(["a", "b"], image=rel, text="in red")
    (s,) = list(iter_click_log(tmp_path / "logs" / "served.jsonl"))
    assert Path(resolve_query_image(s, tmp_path / "logs")).read_bytes() == b"\xff\xd8 jpeg bytes"
    assert len(list((tmp_path / "logs" / "query-images").iterdir())) == 1


def test_written_sessions_read_back_equal(tmp_path):
    original = ClickSession(shown=("1", "2"), clicked=("2",), ts="2024-01-01T00:00:00Z", text="blue bag",
                            image="photos/q.jpg", session="abc", dwell_ms={"2": 3000.0})
    with ClickLogWriter(tmp_path / "log.jsonl") as w:
        w.write(original)
    (back,) = list(iter_click_log(tmp_path / "log.jsonl"))
    assert back.to_dict() == original.to_dict() and back.line == 1
