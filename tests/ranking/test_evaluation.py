from __future__ import annotations

import json

import pytest

from tests.conftest import make_items
from vitrine.ranking.evaluation import (
    Variant,
    ablation_plan,
    evaluate_encoder,
    format_markdown,
    format_table,
    latency_summary,
    max_abs_diff,
    ranx_metrics,
    read_run,
    reports_to_json,
    run_queries,
    score_run,
    write_run,
)
from vitrine.ranking.metrics import evaluate

QRELS = {"q1": {"d1": 2, "d3": 1}, "q2": {"d2": 1}, "q3": {"d9": 1}}
QUERIES = [{"qid": "q1", "text": "one"}, {"qid": "q2", "text": "two"}, {"qid": "q3", "text": "boom"}]


def fake_search(q, variant):
    if q["text"] == "boom":
        raise RuntimeError("backend down")
    order = {"one": ["d3", "d1", "d7"], "two": ["d5", "d6", "d2"]}[q["text"]]
    if variant.sources == ("bm25",):
        order = order[::-1]
    return [(d, 1.0 / (i + 1)) for i, d in enumerate(order)]


def test_ablation_plan_enumerates_sources_fusions_and_stages():
    plan = ablation_plan(["bm25", "text", "clip_image", "text"], ["rrf", "weighted"], {"rerank_depth": [0, 50]})
    names = [v.name for v in plan]
    assert names == ["default", "bm25 only", "text only", "clip_image only", "bm25+text+clip_image rrf",
                     "bm25+text+clip_image weighted", "rerank_depth=0", "rerank_depth=50"]
    assert plan[1].sources == ("bm25",) and plan[4].fusion == "rrf"
    assert plan[-1].options == {"rerank_depth": 50}


def test_single_source_has_no_fusion_variants():
    assert [v.name for v in ablation_plan(["bm25"], ["rrf", "weighted"])] == ["default", "bm25 only"]


def test_run_queries_records_errors_and_the_failed_query_scores_zero():
    qrun = run_queries(QUERIES, fake_search)
    assert set(qrun.run) == {"q1", "q2"} and list(qrun.errors) == ["q3"]
    assert "backend down" in qrun.errors["q3"]
    assert len(qrun.latencies_ms) == 2 and all(t >= 0 for t in qrun.latencies_ms)
    report = score_run(qrun, QRELS)
    assert report.queries == 3 and report.errors == 1
    # q3 counts as judged but missing, so the mean is over three queries
    assert report.metrics["mrr@10"] == pytest.approx((1 / 1 + 1 / 3 + 0) / 3)
    assert report.metrics == evaluate(qrun.ranked(), QRELS)


def test_variant_reaches_the_search_function():
    default = run_queries(QUERIES[:2], fake_search)
    bm25 = run_queries(QUERIES[:2], fake_search, Variant("bm25 only", sources=("bm25",)))
    assert default.ranked()["q1"] == ["d3", "d1", "d7"] and bm25.ranked()["q1"] == ["d7", "d1", "d3"]
    assert score_run(bm25, QRELS).name == "bm25 only"


def test_tool_run_agrees_with_ranx():
    qrun = run_queries(QUERIES, fake_search)
    ours = score_run(qrun, QRELS).metrics
    theirs = ranx_metrics(qrun.ranked(), QRELS)
    assert max_abs_diff(ours, theirs) < 1e-9
    assert theirs["ndcg@10"] > 0


def test_latency_summary_percentiles():
    s = latency_summary([float(i) for i in range(1, 101)])
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert latency_summary([])["p50"] != latency_summary([])["p50"]  # NaN when nothing succeeded


def test_formats_and_json_round_trip():
    report = score_run(run_queries(QUERIES, fake_search), QRELS)
    table = format_table([report])
    assert table.splitlines()[0].split()[:3] == ["variant", "ndcg@1", "ndcg@5"]
    assert "default" in table.splitlines()[2]
    md = format_markdown([report]).splitlines()
    assert md[0].startswith("| variant |") and md[1].startswith("|---|") and md[2].count("|") == md[0].count("|")
    obj = json.loads(reports_to_json([report], k=100))
    assert obj["k"] == 100 and obj["reports"][0]["metrics"]["ndcg@10"] == pytest.approx(report.metrics["ndcg@10"], abs=1e-6)


def test_run_file_round_trip_and_bad_line(tmp_path):
    run = {"q1": [("d1", 0.5), ("d2", 0.25)], "q2": []}
    p = tmp_path / "run.jsonl"
    write_run(p, run)
    assert read_run(p) == run
    p.write_text('{"qid": "q1", "hits": [{"id": "d1"}]}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_run(p)


def test_evaluate_encoder_scores_dense_retrieval(keyword_encoder):
    queries = [{"qid": "a", "text": "crimson dress"}, {"qid": "b", "text": "azure purse"},
               {"qid": "c", "text": "red shirt", "exclude_ids": ["1"]}, {"qid": "d", "image": "x.jpg"}]
    qrels = {"a": {"4": 2}, "b": {"7": 2}, "c": {"1": 1}}
    report = evaluate_encoder("kw", lambda: keyword_encoder, make_items(), queries, qrels, k=5)
    assert report.metrics["mrr@1"] == pytest.approx(2 / 3)  # "1" is excluded for c, so c scores 0
    assert report.extra["dim"] == keyword_encoder.dim and report.extra["items"] == 8
    assert report.extra["index_factory"] == "Flat" and report.extra["index_bytes"] > 8 * keyword_encoder.dim * 4
    assert report.extra["skipped_non_text_queries"] == 1 and report.extra["peak_rss_mib"] > 0
