"""The workbench's doors without a browser (issue 27): keys and the judge scope (401/403), CSRF and same-origin checks,
photos only by item id, judgments on disk across a restart, and the arm and --compare options."""
from __future__ import annotations

import base64
import http.client
import io
import http.cookiejar
import json
import re
import shutil
import urllib.error
import urllib.request

import pytest

from vitrine.indexer.bundle import Bundle
from vitrine.indexer.live import LiveConfig, LiveIndex
from vitrine.ranking.judgments import JudgmentStore
from vitrine.ranking.pipeline import Searcher
from vitrine.server.app import create_server, single
from vitrine.server.auth import KeyStore, create_key
from vitrine.server.http import http_app, start_http
from vitrine.server.workbench import Workbench
from vitrine.serving.assemble import Served


class Browser:
    """A cookie-keeping HTTP client: what a browser sends, minus the page."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def open_page(self) -> str:
        with self.opener.open(self.base + "/ui", timeout=30) as resp:
            page = resp.read().decode()
            self.headers = dict(resp.headers)
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        return page

    def call(self, path: str, body: dict | None = None, headers: dict | None = None, csrf: bool = True) -> tuple[int, dict]:
        sent = {"content-type": "application/json", **({"x-csrf-token": self.csrf} if csrf else {}), **(headers or {})}
        req = urllib.request.Request(self.base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers=sent, method="GET" if body is None else "POST")
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def login(self, key: str) -> tuple[int, dict]:
        status, out = self.call("/ui/api/login", {"key": key})
        if status == 200:
            self.csrf = out["csrf"]
        return status, out


@pytest.fixture()
def bench(small_bundle_path, tmp_path, keyword_encoder):
    path = tmp_path / "live"
    shutil.copytree(small_bundle_path, path)
    keys_file = tmp_path / "keys.json"
    keys = {name: create_key(keys_file, "default", scopes, name)[1]
            for name, scopes in (("alice", ["search", "judge"]), ("carol", ["search"]), ("writer", ["write"]))}
    bundle = Bundle(path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(commit_interval_s=0.05))
    store = KeyStore.load(keys_file)
    served = create_server(single(Served(Searcher(bundle, keyword_encoder)), live), "127.0.0.1:0")
    other = Served(Searcher(Bundle(small_bundle_path), keyword_encoder))
    from vitrine.server.search_service import SearchServicer

    wb = Workbench(served.search, store, lambda tenant: tmp_path / "judgments",
                   compare={"copy": SearchServicer(single(other))})
    http, thread = start_http(http_app(served.search, served.catalog, store, wb), "127.0.0.1", 0)
    port = http.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", keys, tmp_path / "judgments"
    http.should_exit = True
    thread.join(10)
    served.stop(0)
    live.close()
    bundle.close()
    other.searcher.bundle.close()


def test_the_page_is_served_with_a_strict_policy_and_needs_a_key(bench):
    base, keys, _ = bench
    b = Browser(base)
    page = b.open_page()
    assert "<script src=\"/ui/static/app.js\"" in page and "<script>" not in page   # no inline script to inject into
    assert "script-src 'self'" in b.headers["content-security-policy"] and b.headers["x-frame-options"] == "DENY"
    cookie = b.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert b.call("/ui/api/search", {"request": {"text": "shoe"}})[0] == 401          # a session, but no key yet
    assert b.login("vk_wrong")[0] == 401
    assert b.login(keys["writer"])[0] == 403                                           # no search scope: cannot look
    assert b.login(keys["carol"])[0] == 200
    status, out = b.call("/ui/api/search", {"request": {"text": "black shoe", "k": 3}})
    assert status == 200 and len(out["hits"]) == 3 and out["qid"].startswith("q")
    assert json.loads(out["hits"][0]["fields_json"])["title"] and out["hits"][0]["explanation"]
    # carol may look but not judge
    assert b.call("/ui/api/judge", {"text": "black shoe", "item": out["hits"][0]["id"], "grade": 2})[0] == 403


def test_judging_needs_the_judge_scope_and_the_sessions_csrf_token(bench):
    base, keys, folder = bench
    b = Browser(base)
    b.open_page()
    assert b.call("/ui/api/judge", {"text": "black shoe", "item": "1", "grade": 2})[0] == 401   # not logged in
    b.login(keys["alice"])
    item = {"text": "black shoe", "item": "1", "grade": 2, "config": {"label": "A"}}
    assert b.call("/ui/api/judge", item, csrf=False)[0] == 403                                   # no token
    assert b.call("/ui/api/judge", item, headers={"x-csrf-token": "forged"})[0] == 403
    assert b.call("/ui/api/judge", item, headers={"origin": "https://evil.example"})[0] == 403
    assert b.call("/ui/api/judge", item, headers={"sec-fetch-site": "cross-site"})[0] == 403
    assert b.call("/ui/api/judge", {**item, "grade": 3})[0] == 400
    status, out = b.call("/ui/api/judge", item, headers={"origin": base})
    assert status == 200 and out["mine"] == {"1": 2} and out["judged"] == {"1": 2}
    (j,) = JudgmentStore(folder).current()
    assert (j.who, j.text, j.item, j.grade, j.config["label"], j.tenant) == ("alice", "black shoe", "1", 2, "A", "default")
    # The JSON API: an API key instead of a session; no key 401, a key without judge 403.
    api = Browser(base)
    assert api.call("/v1/judge", {"text": "black shoe", "item": "2", "grade": 1}, csrf=False)[0] == 401
    carol = {"authorization": f"Bearer {keys['carol']}"}
    assert api.call("/v1/judge", {"text": "black shoe", "item": "2", "grade": 1}, carol, csrf=False)[0] == 403
    alice = {"authorization": f"Bearer {keys['alice']}"}
    assert api.call("/v1/judge", {"text": "Black  Shoe", "item": "2", "grade": 1}, alice, csrf=False)[0] == 200
    status, listed = api.call("/v1/judgments", None, alice, csrf=False)
    assert status == 200 and sorted((j["item"], j["grade"]) for j in listed["judgments"]) == [("1", 2), ("2", 1)]
    assert len({j["qid"] for j in listed["judgments"]}) == 1   # "Black  Shoe" is the same query
    assert api.call("/v1/judgments", None, carol, csrf=False)[0] == 403


def test_logging_in_gives_a_new_session_id(bench):
    base, keys, _ = bench
    b = Browser(base)
    b.open_page()
    jar = next(h for h in b.opener.handlers if isinstance(h, urllib.request.HTTPCookieProcessor)).cookiejar
    planted = {c.value for c in jar}
    b.login(keys["alice"])
    assert planted and not planted & {c.value for c in jar}


def test_photos_are_served_by_item_id_and_only_from_the_bundle(bench, tmp_path):
    from PIL import Image

    base, keys, _ = bench
    b = Browser(base)
    b.open_page()
    b.login(keys["carol"])
    assert b.call("/ui/photo?id=../../etc/passwd")[0] == 404
    assert b.call("/ui/photo?id=1&n=9")[0] == 404
    assert b.call("/ui/photo?id=1&bundle=nope")[0] == 404
    assert Browser(base).call("/ui/photo?id=1")[0] == 401
    # A write key cannot turn the photo door into a file reader: items naming a file outside the bundle and its
    # catalog's folder (absolute, or `..` out of the bundle) are stored, but their photo is not served.
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(secret)
    writer = {"authorization": f"Bearer {keys['writer']}"}
    up = [{"item": {"id": "abs", "title": "Red Square", "image_uri": str(secret)}},
          {"item": {"id": "dots", "title": "Red Square", "image_uri": "bundle:../../outside/secret.png"}}]
    status, acks = Browser(base).call("/v1/upsert", {"requests": up}, writer, csrf=False)
    assert status == 200 and [a["id"] for a in acks["acks"]] == ["abs", "dots"]
    for item in ("abs", "dots"):
        status, out = b.call(f"/ui/photo?id={item}")
        assert status == 404 and "not served" in out["message"]
    # A photo sent as bytes is kept in the bundle, and served.
    sent = io.BytesIO()
    Image.new("RGB", (5, 3), (0, 0, 255)).save(sent, format="PNG")
    up = [{"item": {"id": "kept", "title": "Blue Square", "image": base64.b64encode(sent.getvalue()).decode()}}]
    assert Browser(base).call("/v1/upsert", {"requests": up}, writer, csrf=False)[0] == 200
    with b.opener.open(base + "/ui/photo?id=kept", timeout=30) as resp:
        assert resp.headers["content-type"] == "image/png" and Image.open(io.BytesIO(resp.read())).size == (5, 3)


def test_bad_input_is_refused_naming_the_field(bench):
    base, keys, _ = bench
    b = Browser(base)
    b.open_page()
    b.login(keys["alice"])
    for path, body, says in [
        ("/ui/api/search", {"column": {"tenant": ["x"]}, "request": {"text": "x"}}, "column.tenant: expected a string"),
        ("/ui/api/search", {"column": {"tenant": "default", "bundle": "copy"}, "request": {"text": "x"}}, "column:"),
        ("/ui/api/search", {"column": [], "request": {"text": "x"}}, "column:"),
        ("/ui/api/judge", {"text": ["a", "b"], "item": "1", "grade": 2}, "text: expected a string"),
        ("/ui/api/judge", {"text": "x", "item": {"id": 1}, "grade": 2}, "item: expected a string"),
        ("/ui/api/judge", {"text": "x", "item": "1", "grade": 2.0}, "grade:"),
        ("/ui/api/judge", {"text": "x", "item": "1", "grade": True}, "grade:"),
        ("/ui/api/judge", {"text": "x" * 1001, "item": "1", "grade": 2}, "text: 1001 characters"),
        ("/ui/api/judge", {"text": "x", "item": "1", "grade": 2, "config": {"k": "v" * 5000}}, "config:"),
        ("/ui/api/judge", {"tenant": 3, "text": "x", "item": "1", "grade": 2}, "tenant: expected a string"),
        ("/ui/api/judge", {"text": "", "item": "1", "grade": 2}, "text:"),
        ("/ui/api/judge", {"photo": "f" * 64, "item": "1", "grade": 2}, "photo:"),
    ]:
        status, out = b.call(path, body)
        assert status == 400 and out["message"].startswith(says), (body, out)
    deep = "[" * 100_000 + "]" * 100_000
    req = urllib.request.Request(base + "/ui/api/judge", data=deep.encode(), method="POST",
                                 headers={"content-type": "application/json", "x-csrf-token": b.csrf})
    with pytest.raises(urllib.error.HTTPError) as err:
        b.opener.open(req, timeout=30)
    assert err.value.code == 400 and json.loads(err.value.read())["message"].startswith("body:")


def test_columns_reach_comparison_bundles_and_refuse_unknown_ones(bench):
    base, keys, _ = bench
    b = Browser(base)
    b.open_page()
    b.login(keys["carol"])
    status, about = b.call("/ui/api/session")
    assert status == 200 and about["compare"] == ["copy"] and about["can_judge"] is False and "bm25" in about["sources"]
    # A write to the live bundle shows in its column, not in the comparison copy's.
    writer = Browser(base)
    code, _ = writer.call("/v1/upsert", {"requests": [{"item": {"id": "n1", "title": "Purple Scarf"}}]},
                          {"authorization": f"Bearer {keys['writer']}"}, csrf=False)
    assert code == 200
    live = b.call("/ui/api/search", {"request": {"text": "purple scarf", "k": 3}})[1]
    copy = b.call("/ui/api/search", {"column": {"bundle": "copy"}, "request": {"text": "purple scarf", "k": 3}})[1]
    assert [h["id"] for h in live["hits"]][:1] == ["n1"] and "n1" not in [h["id"] for h in copy.get("hits", [])]
    assert b.call("/ui/api/search", {"column": {"bundle": "nope"}, "request": {"text": "x"}})[0] == 404
    status, out = b.call("/ui/api/search", {"column": {"arm": "b"}, "request": {"text": "x"}})
    assert status == 400 and out["message"].startswith("x-vitrine-arm:")
    status, out = b.call("/ui/api/search", {"request": {"text": "x", "k": "many"}})
    assert status == 400 and out["message"].startswith("request:")


def test_judgments_survive_a_restart(bench, small_bundle_path, keyword_encoder):
    base, keys, folder = bench
    b = Browser(base)
    b.open_page()
    b.login(keys["alice"])
    for item, grade in (("1", 2), ("2", 0), ("1", 1)):   # the last grade of an item is its grade
        assert b.call("/ui/api/judge", {"text": "black shoe", "item": item, "grade": grade})[0] == 200
    # Another server process on the same folder (sessions are gone; judgments are on disk).
    served = create_server(single(Served(Searcher(Bundle(small_bundle_path), keyword_encoder))), "127.0.0.1:0")
    wb = Workbench(served.search, None, lambda tenant: folder)
    http, thread = start_http(http_app(served.search, served.catalog, None, wb), "127.0.0.1", 0)
    try:
        again = Browser(f"http://127.0.0.1:{http.servers[0].sockets[0].getsockname()[1]}")
        again.open_page()
        again.call("/ui/api/login", {"name": "alice"})
        status, out = again.call("/ui/api/search", {"request": {"text": "black shoe", "k": 8}})
        assert status == 200 and out["judged"] == {"1": 1, "2": 0}
    finally:
        http.should_exit = True
        thread.join(10)
        served.stop(0)


def test_a_column_can_show_one_experiment_arm(small_bundle, keyword_encoder, tmp_path):
    from vitrine.ranking.search_config import SearchConfig
    from vitrine.server.state import ServingState
    from vitrine.server.tenants import Tenant, Tenants
    from vitrine.serving.config import ExperimentConfig

    arm_a = Searcher(small_bundle, keyword_encoder)
    arm_b = Searcher(small_bundle, keyword_encoder, SearchConfig(weights={"bm25": 0.1, "text": 2.0}))
    tenant = Tenant("default", ServingState(Served(arm_a, arm_b=arm_b)), experiment=ExperimentConfig(name="e", kind="ab"))
    served = create_server(Tenants([tenant]), "127.0.0.1:0")
    wb = Workbench(served.search, None, lambda t: tmp_path / "judgments")
    http, thread = start_http(http_app(served.search, served.catalog, None, wb), "127.0.0.1", 0)
    try:
        b = Browser(f"http://127.0.0.1:{http.servers[0].sockets[0].getsockname()[1]}")
        b.open_page()
        assert b.call("/ui/api/session")[1]["arms"] is True
        from vitrine.ranking.pipeline import SearchRequest

        for arm, searcher in (("a", arm_a), ("b", arm_b)):
            status, out = b.call("/ui/api/search", {"column": {"arm": arm}, "request": {"text": "black shoe", "k": 8}})
            expected = searcher.search(SearchRequest(text="black shoe", k=8)).hits
            assert status == 200 and [(h["id"], h["score"]) for h in out["hits"]] == [(h.id, h.score) for h in expected]
        a, b_ = (b.call("/ui/api/search", {"column": {"arm": arm}, "request": {"text": "black shoe", "k": 8}})[1]
                 for arm in "ab")
        assert [h["score"] for h in a["hits"]] != [h["score"] for h in b_["hits"]]
        assert b.call("/ui/api/search", {"column": {"arm": "c"}, "request": {"text": "x"}})[0] == 400
    finally:
        http.should_exit = True
        thread.join(10)
        served.stop(0)


def test_the_pages_work_behind_tls_with_secure_cookies(tmp_path, small_bundle, keyword_encoder):
    import ssl

    from tests.server.test_tenants import _self_signed

    cert, key = _self_signed(tmp_path)
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "127.0.0.1:0")
    wb = Workbench(served.search, None, lambda t: tmp_path / "judgments", secure=True)
    door, thread = start_http(http_app(served.search, served.catalog, None, wb), "localhost", 0, str(cert), str(key))
    try:
        b = Browser(f"https://localhost:{door.servers[0].sockets[0].getsockname()[1]}")
        context = ssl.create_default_context(cafile=str(cert))
        b.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                               urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        b.open_page()
        assert "secure" in b.headers["set-cookie"].lower()
        status, out = b.call("/ui/api/search", {"request": {"text": "black shoe", "k": 2}})
        assert status == 200 and len(out["hits"]) == 2
        with pytest.raises((urllib.error.URLError, OSError, http.client.HTTPException)):   # plain HTTP is not answered
            urllib.request.urlopen(b.base.replace("https", "http") + "/ui", timeout=5)
    finally:
        door.should_exit = True
        thread.join(10)
        served.stop(0)


def test_serve_refuses_bad_compare_flags_in_one_line(small_bundle_path, tmp_path, capsys):
    from vitrine.cli.main import main

    for flags, says in ((["--compare", "nodir"], "give NAME=DIR"),
                        (["--compare", f"x={tmp_path}"], "not a Vitrine bundle"),
                        (["--compare", f"x={small_bundle_path}"], "add --http-port")):
        assert main(["serve", "--bundle", small_bundle_path, "--read-only", *flags]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_tenants_each_keep_their_judgments_and_keys_stay_in_their_tenant(small_bundle, keyword_encoder, tmp_path):
    from vitrine.server.state import ServingState
    from vitrine.server.tenants import Tenant, Tenants

    keys_file = tmp_path / "keys.json"
    ana = create_key(keys_file, "a", ["search", "judge"], "ana")[1]
    root = create_key(keys_file, "*", ["admin"], "root")[1]
    tenants = Tenants([Tenant(name, ServingState(Served(Searcher(small_bundle, keyword_encoder)))) for name in "ab"])
    served = create_server(tenants, "127.0.0.1:0")
    store = KeyStore.load(keys_file)
    wb = Workbench(served.search, store, lambda t: tmp_path / t.name / "judgments")
    door, thread = start_http(http_app(served.search, served.catalog, store, wb), "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{door.servers[0].sockets[0].getsockname()[1]}"
        b = Browser(base)
        b.open_page()
        b.login(ana)
        about = b.call("/ui/api/session")[1]
        assert (about["tenant"], about["tenants"]) == ("a", ["a"])
        assert b.call("/ui/api/search", {"column": {"tenant": "b"}, "request": {"text": "shoe"}})[0] == 403
        assert b.call("/ui/api/judge", {"tenant": "b", "text": "shoe", "item": "1", "grade": 2})[0] == 403
        assert b.call("/ui/photo?id=1&tenant=b")[0] == 403
        assert b.call("/ui/api/judge", {"text": "shoe", "item": "1", "grade": 2})[0] == 200
        admin = Browser(base)
        admin.open_page()
        admin.login(root)
        about = admin.call("/ui/api/session")[1]
        assert (about["tenant"], about["tenants"]) == ("a", ["a", "b"])   # no "default" tenant here: the first
        assert admin.call("/ui/api/judge", {"tenant": "b", "text": "shoe", "item": "2", "grade": 1})[0] == 200
        assert [(j.who, j.item) for j in JudgmentStore(tmp_path / "a" / "judgments").current()] == [("ana", "1")]
        assert [(j.who, j.item) for j in JudgmentStore(tmp_path / "b" / "judgments").current()] == [("root", "2")]
    finally:
        door.should_exit = True
        thread.join(10)
        served.stop(0)
