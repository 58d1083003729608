"""A real server on port 0 with a real channel, over a bundle built with the keyword encoder."""
from __future__ import annotations

import dataclasses
import inspect
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served
from vitrine.server.client import Query, VitrineClient


@pytest.fixture()
def served(small_bundle, keyword_encoder):
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "127.0.0.1:0")
    server, port = served.server, served.port
    yield f"127.0.0.1:{port}", served.search
    server.stop(0)


def test_search_over_grpc_returns_fields_sources_and_versions(served):
    target, _ = served
    with VitrineClient(target) as client:
        result = client.search("red shirt", k=2, fields=["title", "price"], explain=True)
    assert result.hits[0].id == "1"
    assert result.hits[0].fields == {"title": "Red Shirt for Men", "price": 20.0}
    assert set(result.hits[0].sources) == {"bm25", "text"}
    assert "fused=" in result.hits[0].explanation and "bm25" in result.hits[0].explanation
    assert result.bundle_version and result.model_versions["text"] == "keyword-test-encoder"
    assert result.hits[0].score >= result.hits[1].score


def test_filters_pagination_and_exclusion_over_grpc(served):
    target, _ = served
    with VitrineClient(target) as client:
        assert {h.id for h in client.search("shoe", k=10, filters={"gender": "Women"}).hits} <= {"2", "3", "4", "7", "8"}
        first = client.search("black", k=2)
        second = client.search("black", k=2, offset=2)
        assert not {h.id for h in first.hits} & {h.id for h in second.hits}
        assert "3" not in {h.id for h in client.search("black dress", k=5, exclude_ids=["3"]).hits}
        assert [h.id for h in client.search("shoe", price_min=75, k=5).hits] == ["5"]


@pytest.mark.parametrize("kwargs,code,field", [
    ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
    ({"text": "x", "filters": {"material": "silk"}}, grpc.StatusCode.INVALID_ARGUMENT, "filters"),
    ({"text": "x", "k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ({"text": "x", "k": 10**6}, grpc.StatusCode.INVALID_ARGUMENT, "k"),
    ({"text": "x", "fields": ["secret"]}, grpc.StatusCode.INVALID_ARGUMENT, "fields"),
    ({"image": b"PK\x03\x04 not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ({"image": b"\xff" * (11 * 1024 * 1024)}, grpc.StatusCode.INVALID_ARGUMENT, "image"),
])
def test_bad_requests_get_invalid_argument_naming_the_field(served, kwargs, code, field):
    target, _ = served
    with VitrineClient(target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.search(**kwargs)
        assert err.value.code() == code
        assert err.value.details().startswith(field)
        assert client.search("red", k=1).hits  # the server is still fine


def test_raw_proto_with_unknown_fusion_enum_is_rejected(served):
    target, _ = served
    with grpc.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(search_pb2.SearchRequest(text="red", fusion=7))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fusion" in err.value.details()
        info = stub.Info(search_pb2.InfoRequest())
        assert json.loads(info.manifest_json)["counts"]["items"] == 8


def test_the_client_keywords_are_the_query_fields_and_optional_ones_are_sent_only_when_given():
    # search(text, image, *, keywords) passes them positionally: the same fields, in the same order, as Query
    assert list(inspect.signature(VitrineClient.search).parameters)[1:] == [f.name for f in dataclasses.fields(Query)]
    req = Query("red", k=3, price_max=50.0, rerank_depth=0, fusion="rrf").to_proto()
    assert (req.text, req.k, req.price.max, req.rerank_depth, req.fusion) == ("red", 3, 50.0, 0, search_pb2.FUSION_RRF)
    assert not req.price.HasField("min") and not req.HasField("composed_text_weight")
    assert not Query("red").to_proto().HasField("rerank_depth")
    with pytest.raises(ValueError, match="fusion must be one of"):
        Query("red", fusion="best")


def test_health_and_reflection(served):
    target, _ = served
    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="vitrine.v1.Search"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"vitrine.v1.Search", "grpc.health.v1.Health"} <= names


def test_internal_errors_become_internal_status_not_a_crash(served, monkeypatch):
    target, servicer = served

    def boom(req):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(servicer.tenants.get("default").state.searcher, "search", boom)
    with VitrineClient(target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.search("red")
        assert err.value.code() == grpc.StatusCode.INTERNAL and "disk on fire" not in err.value.details()
