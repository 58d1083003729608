"""Malformed Catalog and Search requests each get the status an independent oracle expects; the server stays healthy."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitrine.indexer.bundle import Bundle
from vitrine.indexer.live import LiveIndex
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from fuzz import expected_item_status, fuzz  # noqa: E402


@pytest.fixture(scope="module")
def target(small_bundle_path, keyword_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "live"
    shutil.copytree(small_bundle_path, path)
    bundle = Bundle(path)
    live = LiveIndex(bundle, keyword_encoder)
    live.start()
    served = create_server(single(Served(Searcher(bundle, keyword_encoder)), live), "127.0.0.1:0")
    server, port = served.server, served.port
    yield f"127.0.0.1:{port}"
    server.stop(0)
    live.close()
    bundle.close()


hostile_text = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\x00", "x" * 257, "t" * 20_001, "\x7f"]))
items = st.builds(
    lambda id_, title, attrs, price, uri, image: _item(id_, title, attrs, price, uri, image),
    hostile_text, hostile_text,
    st.dictionaries(hostile_text, hostile_text, max_size=4),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.sampled_from(["", "img/a.jpg", "u" * 2049]),
    st.sampled_from([b"", b"\x89PNG"]),
)


def _item(id_, title, attrs, price, uri, image) -> search_pb2.Item:
    item = search_pb2.Item(id=id_, title=title, attributes=attrs, image_uri=uri, image=image)
    if price is not None:
        item.price = price
    return item


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item=items)
def test_every_upserted_item_gets_the_oracles_status(target, item):
    with grpc.insecure_channel(target) as channel:
        stub = search_pb2_grpc.CatalogStub(channel)
        try:
            acks = list(stub.Upsert(iter([search_pb2.UpsertRequest(item=item)]), timeout=10))
            code = grpc.StatusCode.OK
            assert [a.id for a in acks] == [item.id.strip()]
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert exc.details().split(":")[0].startswith("item.")  # names the field
        assert code == expected_item_status(item)


def test_random_mixed_requests_get_expected_statuses_and_server_stays_healthy(target):
    summary = fuzz(target, 600, seed=3, unicode_whitespace=True)
    assert summary["wrong_status"] == 0, summary["examples"]
    assert summary["unhealthy_checks"] == 0 and summary["healthy_at_end"]


@pytest.mark.parametrize("space", ["\x0b", "\x0c", "\u00a0", "\u3000"])
def test_unicode_whitespace_in_a_query_is_not_an_internal_error(target, space):
    with grpc.insecure_channel(target) as channel:
        search_pb2_grpc.SearchStub(channel).Search(search_pb2.SearchRequest(text=f"red{space}shirt"), timeout=10)
