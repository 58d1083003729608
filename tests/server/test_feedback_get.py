"""Loud instead of silent over a real gRPC server: Feedback without a click log, unknown request ids, Get read-only."""
from __future__ import annotations

import json

import grpc
import pytest

from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served
from vitrine.server.client import CatalogClient, VitrineClient
from vitrine.server.query_log import LogConfig, QueryLog


@pytest.fixture()
def read_only_target(small_bundle, keyword_encoder):
    """A server over the small bundle with no live index (`serve --read-only`) and the default [logs]: no click log."""
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "127.0.0.1:0")
    yield f"127.0.0.1:{served.port}"
    served.stop(0)


def test_feedback_without_a_click_log_says_how_to_enable_it(read_only_target):
    with VitrineClient(read_only_target) as client:
        result = client.search("red shirt", k=3)
        with pytest.raises(grpc.RpcError) as err:
            client.feedback(result.request_id, [result.hits[0].id])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "[logs] click_log" in err.value.details() and "vitrine.toml" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.feedback("no-such-request", ["1"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-request" in err.value.details()


def test_feedback_with_a_click_log_writes_it_and_unknown_ids_are_not_found(tmp_path, small_bundle, keyword_encoder):
    clicks = tmp_path / "logs" / "clicks.jsonl"
    query_log = QueryLog(LogConfig(click_log=str(clicks)))
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder)), query_log=query_log), "127.0.0.1:0")
    try:
        with VitrineClient(f"127.0.0.1:{served.port}") as client:
            result = client.search("red shirt", k=3)
            assert client.feedback(result.request_id, [result.hits[0].id]) is True
            with pytest.raises(grpc.RpcError) as err:
                client.feedback("0" * 32, ["1"])
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # A browse had no query: its clicks are refused with the reason, not an INTERNAL error.
            browse = client.search(where=[{"field": "color", "any_of": ["red"]}])
            with pytest.raises(grpc.RpcError) as err:
                client.feedback(browse.request_id, [browse.hits[0].id])
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "browse" in err.value.details()
    finally:
        served.stop(0)
        query_log.close()
    lines = [json.loads(line) for line in clicks.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["clicked"] == [result.hits[0].id] and lines[0]["query"]["text"] == "red shirt"


def test_get_works_on_a_read_only_server_and_writes_stay_refused(read_only_target):
    with CatalogClient(read_only_target) as catalog:
        items = catalog.get(["3", "nope", "1"])
        assert [it["id"] for it in items] == ["3", "1"]
        assert items[0]["title"] == "Black Dress" and items[0]["attributes"]["color"] == "Black"
        with pytest.raises(grpc.RpcError) as err:
            catalog.delete(["1"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "--read-only" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            catalog.get([""])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_while_loading_is_unavailable():
    served = create_server(single(None), "127.0.0.1:0")
    try:
        with CatalogClient(f"127.0.0.1:{served.port}") as catalog, pytest.raises(grpc.RpcError) as err:
            catalog.get(["1"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.value.details()
    finally:
        served.stop(0)
