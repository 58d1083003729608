"""The second stage over a real gRPC server: cross-encoder + LightGBM, features logged online equal those computed
offline, click feedback, and a hot swap under load with zero failed queries."""
from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from vitrine.indexer.bundle import Bundle
from vitrine.ranking.features import FEATURES, features_from_dict
from vitrine.ranking.ltr import LtrRanker, LtrRows, LtrTrainConfig, train_ranker
from vitrine.ranking.pipeline import Searcher
from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served
from vitrine.server.client import VitrineClient
from vitrine.server.query_log import LogConfig, QueryLog
from vitrine.trainer.ranker import collect_features, label_with_qrels

QUERIES = [{"qid": "q1", "text": "red shirt"}, {"qid": "q2", "text": "black dress"}, {"qid": "q3", "text": "blue bag"},
           {"qid": "q4", "text": "black shoe"}, {"qid": "q5", "text": "red dress"}, {"qid": "q6", "text": "green shoe"},
           {"qid": "q7", "text": "women shirt"}, {"qid": "q8", "text": "men watch"}]
QRELS = {"q1": {"1": 2, "4": 1}, "q2": {"3": 2, "6": 1}, "q3": {"7": 2, "2": 1}, "q4": {"8": 2, "5": 1},
         "q5": {"4": 2, "1": 1}, "q6": {"5": 2}, "q7": {"2": 2, "1": 1}, "q8": {"6": 2}}


@pytest.fixture(scope="module")
def second_stage(tmp_path_factory, small_bundle_path, keyword_encoder, tiny_cross_encoder_dir):
    """A reranker (tiny, random) and a ranker trained on this bundle's features through the server's own code."""
    reranker = CrossEncoderReranker(tiny_cross_encoder_dir, RerankConfig(depth=8, max_length=32), device="cpu")
    bundle = Bundle(small_bundle_path)
    searcher = Searcher(bundle, keyword_encoder, reranker=reranker)
    groups = list(collect_features(searcher, QUERIES * 3, depth=8, progress=False))
    X, y, qids = label_with_qrels(groups, QRELS)
    qids = [f"{q}-{i // 8}" for i, q in enumerate(qids)]   # three copies of each query: distinct groups
    out = tmp_path_factory.mktemp("ltr") / "ranker"
    train_ranker(LtrRows(X, y, qids), out, LtrTrainConfig(n_estimators=30, min_child_samples=2, early_stopping_rounds=30,
                                                          valid_fraction=0.25), log=lambda m: None)
    bundle.close()
    return reranker, LtrRanker(out)


@pytest.fixture()
def served(tmp_path, small_bundle_path, keyword_encoder, second_stage):
    reranker, ranker = second_stage
    logs = LogConfig(feature_log=str(tmp_path / "features.jsonl"), click_log=str(tmp_path / "clicks.jsonl"))
    opened = []

    def loader(path: str, _reranker: str | None, _ranker: str | None) -> Served:
        opened.append(Bundle(path))
        return Served(Searcher(opened[-1], keyword_encoder, reranker=reranker, ranker=ranker, rerank=reranker.config))

    searcher = loader(small_bundle_path, None, None)
    served = create_server(single(searcher, query_log=QueryLog(logs), loader=loader), "127.0.0.1:0")
    server, port = served.server, served.port
    yield f"127.0.0.1:{port}", served.search, tmp_path
    server.stop(0)
    served.default.query_log.close()


def test_full_pipeline_over_grpc_reports_stages_versions_and_contributions(served):
    target, _, _ = served
    with VitrineClient(target) as client:
        full = client.search("red shirt", k=5, explain=True)
        first = client.search("red shirt", k=5, stages="first")
        cross = client.search("red shirt", k=5, stages="cross")
    assert (full.stages, first.stages, cross.stages) == ("full", "first", "cross")
    assert {"reranker", "ranker", "text"} <= set(full.model_versions)
    top = full.hits[0]
    assert {"cross", "ltr", "fused", "bm25"} <= set(top.sources)
    assert sum(top.contributions.values()) == pytest.approx(top.score, abs=1e-5)   # SHAP terms add up to the score
    assert "ranker=" in top.explanation and "cross-encoder=" in top.explanation
    assert set(top.features) <= set(FEATURES) and "bm25_score" in top.features
    assert "cross" not in first.hits[0].sources
    assert [h.sources["cross"] for h in cross.hits] == sorted((h.sources["cross"] for h in cross.hits), reverse=True)
    assert {"cross", "ltr"} <= set(full.stage_ms)


@pytest.mark.parametrize("kwargs,field", [({"stages": "everything"}, "stages"), ({"rerank_depth": 5000}, "rerank_depth")])
def test_bad_second_stage_requests_name_the_field(served, kwargs, field):
    target, _, _ = served
    with VitrineClient(target) as client, pytest.raises(grpc.RpcError) as err:
        client.search("red shirt", **kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_features_logged_online_equal_features_computed_offline(served, small_bundle_path, keyword_encoder, second_stage):
    target, servicer, tmp = served
    with VitrineClient(target) as client:
        client.search("black shoe", k=8, log_features=True, rerank_depth=8)
        client.search("blue bag", k=8)                      # not asked, not sampled: not logged
    lines = [json.loads(x) for x in (tmp / "features.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["schema_version"] == 1 and lines[0]["query"]["text"] == "black shoe"
    online = {c["id"]: features_from_dict(c["features"]) for c in lines[0]["candidates"]}
    reranker, ranker = second_stage
    bundle = Bundle(small_bundle_path)
    try:
        offline = next(collect_features(Searcher(bundle, keyword_encoder, reranker=reranker, ranker=ranker),
                                        [{"qid": "x", "text": "black shoe"}], depth=8, progress=False))
    finally:
        bundle.close()
    assert set(online) == set(offline.ids) and len(online) >= 4
    for doc_id, x in zip(offline.ids, offline.X):
        np.testing.assert_allclose(online[doc_id], x, rtol=1e-5, equal_nan=True)


def test_feedback_writes_a_click_log_line(served):
    target, _, tmp = served
    with VitrineClient(target) as client:
        result = client.search("red dress", k=4, session="s-1")
        assert client.feedback(result.request_id, [result.hits[1].id], {result.hits[1].id: 4200}) is True
        with pytest.raises(grpc.RpcError) as err:
            client.feedback("no-such-request", ["1"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    line = json.loads((tmp / "clicks.jsonl").read_text().splitlines()[-1])
    assert line["query"]["text"] == "red dress" and line["shown"] == [h.id for h in result.hits]
    assert line["clicked"] == [result.hits[1].id] and line["session"] == "s-1" and line["dwell_ms"] == {result.hits[1].id: 4200}
    from vitrine.ranking.clicklog import read_click_log

    sessions, summary = read_click_log(tmp / "clicks.jsonl")   # the trainer reads what the server wrote
    assert summary.malformed == 0 and sessions[-1].click_ranks() == [2]


def test_hot_swap_under_load_fails_no_query(served, small_bundle_path, tmp_path):
    target, servicer, _ = served
    new_path = tmp_path / "bundle-v2"
    shutil.copytree(small_bundle_path, new_path)
    manifest = json.loads((new_path / "manifest.json").read_text())
    manifest["bundle_version"] = "v2-test"
    (new_path / "manifest.json").write_text(json.dumps(manifest))
    errors, versions, stop = [], [], threading.Event()

    def hammer() -> None:
        with VitrineClient(target) as client:
            while not stop.is_set():
                try:
                    versions.append(client.search("black", k=3).bundle_version)
                except grpc.RpcError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with VitrineClient(target) as client:
        resp = client.reload(str(new_path))
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as bad:
            client.reload(str(tmp_path / "missing"))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert resp.bundle_version == "v2-test" and resp.previous_bundle_version != "v2-test"
    assert versions[-1] == "v2-test" and versions[0] != "v2-test" and len(versions) > 20
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bundle" in bad.value.details()
    assert servicer.tenants.get("default").state.searcher.bundle.version == "v2-test"
