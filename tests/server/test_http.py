"""JSON over HTTP beside gRPC (issue 27, part 1): the same servicers behind both doors, so the same hits, scores,
keys, tenants and error messages; the proto's JSON mapping is the schema."""
from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request

import pytest

from vitrine.indexer.bundle import Bundle
from vitrine.indexer.live import LiveConfig, LiveIndex
from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import ServerOptions, create_server, single
from vitrine.server.auth import KeyStore, create_key
from vitrine.server.client import VitrineClient
from vitrine.server.http import http_app, start_http
from vitrine.serving.assemble import Served


def call(base: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json", **(headers or {})},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture()
def doors(small_bundle_path, tmp_path, keyword_encoder):
    path = tmp_path / "live"
    shutil.copytree(small_bundle_path, path)
    bundle = Bundle(path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(commit_interval_s=0.05))
    served = create_server(single(Served(Searcher(bundle, keyword_encoder)), live), "127.0.0.1:0")
    http, thread = start_http(http_app(served.search, served.catalog), "127.0.0.1", 0)
    port = http.servers[0].sockets[0].getsockname()[1]
    yield f"127.0.0.1:{served.port}", f"http://127.0.0.1:{port}"
    http.should_exit = True
    thread.join(10)
    served.stop(0)
    live.close()
    bundle.close()


def test_http_search_returns_the_hits_and_scores_grpc_does(doors):
    target, base = doors
    with VitrineClient(target) as client:
        grpc_hits = [(h.id, h.score) for h in client.search("black shoe", k=5, where=[{"field": "gender",
                                                                                      "any_of": ["women", "men"]}]).hits]
    status, body = call(base, "/v1/search", {"text": "black shoe", "k": 5,
                                             "where": [{"field": "gender", "any_of": ["women", "men"]}]})
    assert status == 200 and [(h["id"], h["score"]) for h in body["hits"]] == grpc_hits
    status, info = call(base, "/v1/info")
    assert status == 200 and json.loads(info["manifest_json"])["counts"]["items"] == 8


def test_http_writes_and_reads_the_catalog(doors):
    _, base = doors
    status, acks = call(base, "/v1/upsert", {"requests": [{"item": {"id": "n1", "title": "Purple Scarf"}}]})
    assert status == 200 and acks["acks"] == [{"id": "n1", "changed": True}]
    status, got = call(base, "/v1/get", {"ids": ["n1"]})
    assert status == 200 and json.loads(got["items_json"][0])["title"] == "Purple Scarf"
    assert call(base, "/v1/delete", {"ids": ["n1"]}) == (200, {"deleted": 1})


@pytest.mark.parametrize("path, body, status, starts", [
    ("/v1/search", {"text": ""}, 400, "text:"),
    ("/v1/search", {"text": "x", "where": [{"field": "colour", "any_of": ["red"]}]}, 400, "where.colour:"),
    ("/v1/search", {"text": "x", "kk": 3}, 400, "body:"),
    ("/v1/search", {"image": base64.b64encode(b"not a photo").decode()}, 400, "image:"),
    ("/v1/feedback", {"request_id": "nope", "clicked": ["1"]}, 404, "request_id"),
    ("/v1/upsert", {"items": []}, 400, "body:"),
])
def test_http_errors_map_grpc_statuses_with_the_same_messages(doors, path, body, status, starts):
    _, base = doors
    got, answer = call(base, path, body)
    assert got == status and answer["message"].startswith(starts), answer
    assert call(base, "/v1/search", {"text": "red"})[0] == 200   # the server is still fine


def test_http_needs_the_same_api_keys(small_bundle, keyword_encoder, tmp_path):
    keys_file = tmp_path / "keys.json"
    _, search_key = create_key(keys_file, "default", ["search"])
    keys = KeyStore.load(keys_file)
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "127.0.0.1:0",
                           ServerOptions(keys=keys))
    http, thread = start_http(http_app(served.search, served.catalog, keys), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{http.servers[0].sockets[0].getsockname()[1]}"
    try:
        assert call(base, "/v1/search", {"text": "red"})[0] == 401
        assert call(base, "/v1/search", {"text": "red"}, {"authorization": "Bearer wrong"})[0] == 401
        assert call(base, "/v1/search", {"text": "red"}, {"authorization": f"Bearer {search_key}"})[0] == 200
        status, body = call(base, "/v1/delete", {"ids": ["1"]}, {"authorization": f"Bearer {search_key}"})
        assert status == 403 and "write" in body["message"]
        status, doc = call(base, "/openapi.json")
        assert status == 200 and "/v1/search" in doc["paths"] and "FieldFilter" in doc["components"]["schemas"]
    finally:
        http.should_exit = True
        thread.join(10)
        served.stop(0)


def test_vitrine_serve_http_port_serves_json_beside_grpc(serve_process, tiny_st, tmp_path):
    from tests.conftest import make_items
    from vitrine.encoders.text import SentenceTransformerEncoder
    from vitrine.indexer.ann import AnnConfig
    from vitrine.indexer.bundle import IndexerConfig, build_bundle

    build_bundle(make_items(), tmp_path / "b", SentenceTransformerEncoder(tiny_st, device="cpu"),
                 IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False))
    proc, target = serve_process(tmp_path / "b", ["--read-only", "--http-port", "0", "--compare", f"copy={tmp_path / 'b'}",
                                                  "--judgments", str(tmp_path / "j")], timeout_s=120)
    try:
        line = proc.stdout.readline()
        assert line.startswith("http on http://"), line
        base = line.split("http on ", 1)[1].strip()
        status, body = call(base, "/v1/search", {"text": "red shirt", "k": 2})
        with VitrineClient(target) as client:
            assert [h["id"] for h in body["hits"]] == [h.id for h in client.search("red shirt", k=2).hits]
        assert status == 200
        # The workbench on the same port: a comparison bundle, and a grade kept in --judgments.
        assert proc.stdout.readline().strip() == f"workbench on {base}/ui"
        from tests.server.test_workbench import Browser
        from vitrine.ranking.judgments import JudgmentStore

        page = Browser(base)
        page.open_page()
        page.call("/ui/api/login", {"name": "dora"})
        assert page.call("/ui/api/session")[1]["compare"] == ["copy"]
        assert page.call("/ui/api/judge", {"text": "red shirt", "item": body["hits"][0]["id"], "grade": 2})[0] == 200
        assert [(j.who, j.grade) for j in JudgmentStore(tmp_path / "j").current()] == [("dora", 2)]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
