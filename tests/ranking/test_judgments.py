"""People's relevance grades: the store keeps every acknowledged one across a torn write and a restart, one final
grade per (query, item) is the judges' median rounded down, kappa matches the hand formula, and the export is read
back by the evaluation's own readers."""
from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from vitrine.ranking.judgments import (
    Judgment,
    JudgmentStore,
    agreement,
    export,
    export_paths,
    final_grades,
    photo_sha,
    query_id,
    utc_now,
)
from vitrine.ranking.metrics import load_qrels, load_queries


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def judged(who: str, text: str, item: str, grade: int, photo: bytes | None = None, tenant: str = "shop") -> Judgment:
    sha = photo_sha(photo) if photo else ""
    return Judgment(ts=utc_now(), tenant=tenant, who=who, qid=query_id(text, sha), text=text, photo=sha, item=item,
                    grade=grade, config={"label": "A", "stages": "full"}, bundle_version="v1")


def hand_kappa(a: list[int], b: list[int]) -> float:
    """Cohen's kappa from its definition: (po - pe) / (1 - pe)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[g] * cb[g] for g in (0, 1, 2)) / n**2
    return (po - pe) / (1 - pe)


# ---- the store ---------------------------------------------------------------------------------------------------


def test_store_round_trips_regrades_and_survives_reopening(tmp_path):
    store = JudgmentStore(tmp_path / "judgments")
    first = judged("alice", "red dress", "4", 1)
    store.add(first)
    store.add(judged("alice", "red dress", "3", 0))
    store.add(judged("bob", "red dress", "4", 2))
    store.add(judged("alice", "Red  Dress", "4", 2))  # alice re-grades item 4 of the same query
    assert store.read()[0] == first and first.to_dict()["config"] == {"label": "A", "stages": "full"}
    assert len(store.read()) == 4 and store.skipped == 0
    reopened = JudgmentStore(tmp_path / "judgments")  # as after a restart
    current = {(j.who, j.item): j.grade for j in reopened.current()}
    assert current == {("alice", "4"): 2, ("alice", "3"): 0, ("bob", "4"): 2}
    assert reopened.current("other-shop") == [] and len(reopened.current("shop")) == 3
    assert Judgment.from_dict(json.loads(json.dumps(first.to_dict()))) == first


def test_a_torn_last_line_is_skipped_counted_and_the_next_add_is_whole(tmp_path):
    store = JudgmentStore(tmp_path)
    store.add(judged("alice", "red dress", "4", 2))
    whole = (tmp_path / "judgments.jsonl").read_bytes()
    with open(tmp_path / "judgments.jsonl", "ab") as f:
        f.write(whole[: len(whole) // 2])  # a crash mid-write
    assert [j.item for j in store.read()] == ["4"] and store.skipped == 1
    store.add(judged("alice", "blue bag", "7", 1))  # acknowledged after the crash: must not be glued to the torn line
    reopened = JudgmentStore(tmp_path)
    assert [j.item for j in reopened.read()] == ["4", "7"] and reopened.skipped == 1


def test_photo_is_stored_once_under_its_sha_and_found(tmp_path):
    store = JudgmentStore(tmp_path)
    photo = png((200, 10, 10))
    store.add(judged("alice", "", "4", 2, photo), photo)
    store.add(judged("bob", "", "4", 1, photo), photo)
    path = store.photo_path(photo_sha(photo))
    assert path == tmp_path / "photos" / f"{photo_sha(photo)}.png" and path.read_bytes() == photo
    assert [p.name for p in (tmp_path / "photos").iterdir()] == [path.name]  # once, and no temp file left behind
    assert JudgmentStore(tmp_path).photo_path(photo_sha(photo)) == path
    assert store.photo_path("0" * 64) is None and store.photo_path("../judgments") is None
    with pytest.raises(ValueError, match="do not hash"):
        store.add(judged("alice", "", "4", 2, photo), png((0, 0, 200)))


def test_from_dict_names_the_bad_field():
    good = judged("alice", "red dress", "4", 2).to_dict()
    for change, field in (({"grade": 3}, "'grade'"), ({"grade": True}, "'grade'"), ({"item": ""}, "'item'"),
                          ({"who": " "}, "'who'"), ({"qid": None}, "'qid'"), ({"config": []}, "'config'"),
                          ({"photo": "abc"}, "'photo'"), ({"text": "", "photo": ""}, "'text' or a 'photo'")):
        with pytest.raises(ValueError, match=field):
            Judgment.from_dict(good | change)


def test_query_id_normalises_case_and_spaces_but_not_the_photo():
    assert query_id("Red  Dress ", "") == query_id("red dress", "")
    assert query_id("red dress", "") != query_id("red dresses", "")
    assert query_id("red dress", "a" * 64) != query_id("red dress", "")
    assert query_id("x", "").startswith("q") and len(query_id("x", "")) == 17


# ---- final grades and agreement -----------------------------------------------------------------------------------


def test_final_grade_is_the_median_rounded_down_over_current_grades():
    js = [judged("a", "q", "split02", 0), judged("b", "q", "split02", 2),
          judged("a", "q", "split12", 1), judged("b", "q", "split12", 2),
          judged("a", "q", "three", 0), judged("b", "q", "three", 2), judged("c", "q", "three", 2),
          judged("a", "q", "regraded", 0), judged("a", "q", "regraded", 2)]
    assert final_grades(js) == {query_id("q", ""): {"regraded": 2, "split02": 1, "split12": 1, "three": 2}}


def test_agreement_kappa_matches_the_hand_formula_and_lists_disagreements():
    a = [2, 1, 0, 2, 1, 0, 2]
    b = [2, 1, 1, 2, 0, 0, 1]
    js = [judged("alice", "red dress", str(i), g) for i, g in enumerate(a)]
    js += [judged("bob", "red dress", str(i), g) for i, g in enumerate(b)]
    js += [judged("carol", "blue bag", "9", 1)]  # shares nothing with the others: no pair
    out = agreement(js)
    assert (out["judges"], out["queries"], out["pairs"]) == (3, 2, 8)
    [pair] = out["judge_pairs"]
    assert pair["judges"] == ["alice", "bob"] and pair["shared"] == 7
    assert pair["kappa"] == pytest.approx(hand_kappa(a, b), abs=1e-12) and pair["observed"] == pytest.approx(4 / 7)
    assert [d["item"] for d in out["disagreements"]] == ["2", "4", "6"]
    assert out["disagreements"][0] == {"qid": query_id("red dress", ""), "text": "red dress", "photo": "", "item": "2",
                                       "grades": {"alice": 0, "bob": 1}}


def test_kappa_is_none_with_a_note_when_both_judges_used_one_grade():
    js = [judged(who, "red dress", item, 2) for who in ("alice", "bob") for item in "123"]
    [pair] = agreement(js)["judge_pairs"]
    assert pair["kappa"] is None and pair["observed"] == 1.0 and "undefined" in pair["note"]
    # one grade each but different ones is defined: no agreement beyond chance
    js = [judged("alice", "red dress", i, 2) for i in "123"] + [judged("bob", "red dress", i, 1) for i in "123"]
    assert agreement(js)["judge_pairs"][0]["kappa"] == pytest.approx(0.0)


# ---- export --------------------------------------------------------------------------------------------------------


def test_export_is_read_back_by_the_evaluation_readers(tmp_path):
    store = JudgmentStore(tmp_path / "store")
    photo = png((10, 200, 10))
    for j in (judged("alice", "Red dress", "4", 2), judged("bob", "red  dress", "4", 1),
              judged("alice", "red dress", "3", 0), judged("alice", "in crimson", "4", 2, photo)):
        store.add(j, photo if j.photo else None)
    out = tmp_path / "export"
    summary = export(store.read(), out, store)
    assert (summary["queries"], summary["pairs"], summary["judges"], summary["photos"]) == (2, 3, 2, 1)
    assert summary["disagreements"] == 1 and summary["kappa"][0]["judges"] == ["alice", "bob"]
    queries = {q["qid"]: q for q in load_queries(out / "queries.jsonl")}
    text_q, photo_q = query_id("red dress", ""), query_id("in crimson", photo_sha(photo))
    assert queries[text_q]["text"] == "Red dress" and "image" not in queries[text_q]  # as first typed
    assert (out / queries[photo_q]["image"]).read_bytes() == photo  # resolves under the export, as --image-root DIR
    assert load_qrels(out / "qrels" / "test.tsv") == {text_q: {"3": 0, "4": 1}, photo_q: {"4": 2}}
    assert (out / "qrels" / "test.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    assert json.loads((out / "agreement.json").read_text())["disagreements"][0]["grades"] == {"alice": 2, "bob": 1}
    assert export_paths(out) == (out / "queries.jsonl", out / "qrels" / "test.tsv")
    with pytest.raises(ValueError, match="not an export of judgments"):
        export_paths(tmp_path / "store")


def test_export_leaves_out_a_photo_query_without_its_photo_and_refuses_mixed_tenants(tmp_path):
    photo = png((1, 2, 3))
    js = [judged("alice", "red dress", "4", 2), judged("alice", "", "5", 2, photo)]
    summary = export(js, tmp_path / "out", photos_from=None)
    assert summary["queries"] == 1 and summary["missing_photos"] == [query_id("", photo_sha(photo))]
    assert list(load_qrels(tmp_path / "out" / "qrels" / "test.tsv")) == [query_id("red dress", "")]
    with pytest.raises(ValueError, match="2 tenants"):
        export(js + [judged("bob", "red dress", "4", 1, tenant="other")], tmp_path / "out2", None)


def test_current_reads_again_what_another_process_added(tmp_path):
    from vitrine.ranking.judgments import Judgment, JudgmentStore

    def grade(who: str, item: str, g: int) -> Judgment:
        return Judgment(ts="2026-12-06T09:00:00.000Z", tenant="default", who=who, qid="q1", text="red", photo="",
                        item=item, grade=g)

    mine, theirs = JudgmentStore(tmp_path), JudgmentStore(tmp_path)   # two servers on one folder
    mine.add(grade("ana", "a", 2))
    assert [(j.who, j.grade) for j in mine.current()] == [("ana", 2)]
    theirs.add(grade("bob", "a", 1))
    mine.add(grade("ana", "b", 0))                  # its cache is stale: this add must not hide bob's
    assert sorted((j.who, j.item, j.grade) for j in mine.current()) == [("ana", "a", 2), ("ana", "b", 0), ("bob", "a", 1)]
    theirs.add(grade("bob", "a", 2))                # a re-grade elsewhere replaces the earlier one here too
    assert sorted((j.who, j.item, j.grade) for j in mine.current()) == [("ana", "a", 2), ("ana", "b", 0), ("bob", "a", 2)]
