"""The relevance workbench at `/ui`, on the JSON-over-HTTP port: look at results as product cards, compare two
configurations side by side, grade results 0/1/2, and keep the grades per tenant for `vitrine judgments export`.

It calls the same Search servicer as gRPC and JSON (server/http.py), with the caller's API key, so what it shows is
what the shop's backend gets. The browser holds no key: `POST /ui/api/login` checks one and binds it to a session
cookie (HttpOnly, SameSite=Strict, Secure under TLS; a new session id at login). Every state-changing call needs the
session's CSRF token in `x-csrf-token` and a same-origin `Origin`; catalog text is rendered by the page as text, never
as markup, and a Content-Security-Policy allows scripts from this origin only. Photos come from the bundle: a photo is
named by item id and photo number, never by a path.

    GET  /ui                  the page               POST /ui/api/login   {key} or {name} (a server without keys)
    GET  /ui/static/{file}    its script and style   POST /ui/api/logout
    GET  /ui/api/session      who, what to compare   POST /ui/api/search  {column, request} -> hits, grades, qid
    GET  /ui/photo?id=&n=     an item's photo        POST /ui/api/judge   {text, photo, item, grade, config}
    POST /v1/judge            the same with an API key (scope judge); GET /v1/judgments lists a tenant's grades
"""
from __future__ import annotations

import base64
import functools
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vitrine.proto import search_pb2
from vitrine.ranking.judgments import Judgment, JudgmentStore, final_grades, photo_sha, query_id, utc_now
from vitrine.server.auth import ALL_TENANTS, JUDGE_METHOD, ApiKey, KeyStore, check_access
from vitrine.server.search_service import ARM_HEADER
from vitrine.server.tenants import DEFAULT_TENANT, TENANT_HEADER, Tenant
from vitrine.server.web_session import (GRPC_REFUSAL, HEADERS, MAX_BODY_BYTES, SESSION_COOKIE, Refused, Session,
                                        Sessions, check_same_origin, json_body, key_headers, refused, set_cookie,
                                        text_of)

SEARCH_METHOD = "/vitrine.v1.Search/Search"
UI_DIR = Path(__file__).with_name("ui")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
RECENT_PHOTOS = 16          # query photos a session keeps, so grading a photo query stores its photo
CARD_FIELDS = ["title", "price", "category"]
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
FACET_FIELDS = 6            # the catalog fields the page offers as facets (fewest distinct values first)


@dataclass
class Workbench:
    """What the pages need of a server: its Search servicer and tenants, the keys, where each tenant's judgments
    live, and the bundles loaded only for comparison (`vitrine serve --compare NAME=DIR`)."""

    search: Any                                      # SearchServicer
    keys: KeyStore | None
    judgments_dir: Callable[[Tenant], Path]
    compare: dict[str, Any] = field(default_factory=dict)   # name -> SearchServicer over that bundle alone
    secure: bool = False                             # served over TLS: cookies are Secure
    sessions: Sessions = field(default_factory=Sessions)
    _stores: dict[str, JudgmentStore] = field(default_factory=dict)
    _stores_lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self, tenant: Tenant) -> JudgmentStore:
        with self._stores_lock:   # one store (one lock, one cache) per tenant, whichever thread asks first
            if tenant.name not in self._stores:
                self._stores[tenant.name] = JudgmentStore(self.judgments_dir(tenant))
            return self._stores[tenant.name]

    def tenant(self, name: str) -> Tenant:
        tenant = self.search.tenants.get(name)
        if tenant is None:
            raise Refused(404, "NOT_FOUND", f"tenant: no tenant {name!r} on this server.")
        return tenant


# ---- who is asking -----------------------------------------------------------------------------------------


def session_of(wb: Workbench, request: Request) -> Session:
    s = wb.sessions.get(request.cookies.get(SESSION_COOKIE))
    if s is None:
        raise Refused(401, "UNAUTHENTICATED", "no session: open /ui and log in with an API key.")
    if wb.keys is not None and s.key is None:
        raise Refused(401, "UNAUTHENTICATED", "this server needs an API key: log in on /ui.")
    return s


def tenant_name(s: Session, asked: str) -> str:
    if asked:
        return asked
    return s.key.tenant if s.key is not None and s.key.tenant != ALL_TENANTS else DEFAULT_TENANT


def where_to_search(wb: Workbench, s: Session, column: dict, where: str) -> tuple[Any, str, list[tuple[str, str]]]:
    """The servicer, tenant and metadata a column's request goes to. A comparison bundle belongs to the server's one
    tenant: the key must be valid for it, whatever tenant the column names."""
    bundle = text_of(column, "bundle", f"{where}.bundle", 128)
    asked = text_of(column, "tenant", f"{where}.tenant", 128)
    if bundle and asked:
        raise Refused(400, "INVALID_ARGUMENT", f"{where}: a comparison bundle is served as its own; give bundle or "
                                               f"tenant, not both.")
    tenant = DEFAULT_TENANT if bundle else tenant_name(s, asked)
    md = metadata(s, tenant, text_of(column, "arm", f"{where}.arm", 8))
    allow(wb, SEARCH_METHOD, md)
    if not bundle:
        return wb.search, tenant, md
    return compared(wb, bundle, f"{where}.bundle"), tenant, [m for m in md if m[0] != TENANT_HEADER]


def metadata(s: Session, tenant: str, arm: str = "") -> list[tuple[str, str]]:
    md = [(TENANT_HEADER, tenant)]
    if s.bearer:
        md.append(("authorization", s.bearer))
    if arm:
        md.append((ARM_HEADER, arm))
    return md


def allow(wb: Workbench, method: str, md: list[tuple[str, str]]) -> None:
    if wb.keys is None:
        return
    denied = check_access(wb.keys, method, md)
    if denied is not None:
        code, message = denied
        raise Refused(GRPC_REFUSAL.get(code, 400), code.name, message)


def judge_name(s: Session) -> str:
    return s.key.id if s.key is not None else (s.name or "anonymous")


# ---- the routes --------------------------------------------------------------------------------------------


class Pages:
    """The /ui handlers. `call(servicer_method, message, metadata)` runs a servicer as the JSON door does and returns
    (HTTP status, body); `parse(obj, message_type, where)` reads a JSON object into a proto message."""

    def __init__(self, wb: Workbench, call: Callable, parse: Callable) -> None:
        self.wb, self.call, self.parse = wb, call, parse

    def routes(self) -> list[Route]:
        def guarded(handler: Callable) -> Callable:
            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except Refused as exc:
                    return refused(exc)
            return run

        post = ["POST"]
        return [Route("/ui", guarded(self.page)), Route("/ui/", guarded(self.page)), Route("/favicon.ico", no_icon),
                Route("/ui/static/{name}", guarded(self.static)), Route("/ui/photo", guarded(self.photo)),
                Route("/ui/api/session", guarded(self.about)),
                Route("/ui/api/login", guarded(self.login), methods=post),
                Route("/ui/api/logout", guarded(self.logout), methods=post),
                Route("/ui/api/search", guarded(self.search), methods=post),
                Route("/ui/api/judge", guarded(self.judge), methods=post),
                Route("/v1/judge", guarded(self.api_judge), methods=post),
                Route("/v1/judgments", guarded(self.api_judgments))]

    async def page(self, request: Request) -> Response:
        wb = self.wb
        s = wb.sessions.get(request.cookies.get(SESSION_COOKIE)) or wb.sessions.new()
        html = asset("index.html").decode("utf-8").replace("{{csrf}}", s.csrf)
        response = Response(html, media_type="text/html; charset=utf-8", headers=HEADERS)
        set_cookie(request, response, s, wb.secure)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise Refused(404, "NOT_FOUND", f"no file {name!r}.")
        return Response(asset(name), media_type=STATIC[name], headers=HEADERS)

    async def about(self, request: Request) -> Response:
        wb = self.wb
        s = wb.sessions.get(request.cookies.get(SESSION_COOKIE))
        if s is None:
            raise Refused(401, "UNAUTHENTICATED", "no session: open /ui.")
        body: dict[str, Any] = {"needs_key": wb.keys is not None, "logged_in": wb.keys is None or s.key is not None,
                                "who": judge_name(s), "csrf": s.csrf}
        if body["logged_in"]:
            tenants = [t.name for t in wb.search.tenants if s.key is None or s.key.tenant in (ALL_TENANTS, t.name)]
            tenant = tenant_name(s, "")
            if tenant not in tenants and tenants:   # a platform key on --tenants: no "default" tenant there
                tenant = tenants[0]
            scopes = sorted(s.key.scopes) if s.key is not None else ["search", "judge"]
            body.update(tenant=tenant, scopes=scopes, can_judge=s.key is None or s.key.may("judge"), tenants=tenants,
                        compare=sorted(wb.compare), **await run_in_threadpool(served_options, wb, tenant))
        return JSONResponse(body, headers=HEADERS)

    async def login(self, request: Request) -> Response:
        wb = self.wb
        s = wb.sessions.get(request.cookies.get(SESSION_COOKIE))
        if s is None:
            raise Refused(401, "UNAUTHENTICATED", "no session: open /ui first.")
        check_same_origin(request, s)
        body = await json_body(request)
        if wb.keys is None:
            s.name = text_of(body, "name", "name", 64).strip()
            return JSONResponse({"who": judge_name(s), "csrf": s.csrf}, headers=HEADERS)
        sent = text_of(body, "key", "key", 256).strip()
        key = wb.keys.authenticate(sent)
        if key is None:
            raise Refused(401, "UNAUTHENTICATED", "key: not a valid API key.")
        if not key.may("search"):
            raise Refused(403, "PERMISSION_DENIED", "key: looking at results needs the 'search' scope.")
        fresh = wb.sessions.rotate(s)
        fresh.key, fresh.bearer = key, f"Bearer {sent}"
        response = JSONResponse({"who": judge_name(fresh), "csrf": fresh.csrf}, headers=HEADERS)
        set_cookie(request, response, fresh, wb.secure)
        return response

    async def logout(self, request: Request) -> Response:
        s = session_of(self.wb, request)
        check_same_origin(request, s)
        fresh = self.wb.sessions.rotate(s, keep_photos=False)   # the old id, its key and photos are gone
        response = JSONResponse({"csrf": fresh.csrf}, headers=HEADERS)
        set_cookie(request, response, fresh, self.wb.secure)
        return response

    async def search(self, request: Request) -> Response:
        wb = self.wb
        s = session_of(wb, request)
        check_same_origin(request, s)
        body = await json_body(request)
        column = body.get("column", {})
        if not isinstance(column, dict):
            raise Refused(400, "INVALID_ARGUMENT", "column: expected a JSON object.")
        servicer, tenant, md = where_to_search(wb, s, column, "column")
        try:
            message = self.parse(body.get("request", {}), search_pb2.SearchRequest, "request")
        except ValueError as exc:
            raise Refused(400, "INVALID_ARGUMENT", str(exc)) from None
        message.explain = message.highlight = True
        del message.fields[:]
        message.fields.extend(CARD_FIELDS)
        sha = photo_sha(message.image) if message.image else ""
        if sha:
            remember_photo(s, sha, message.image)
        status, out = await self.call(servicer.Search, message, md)
        if status != 200:
            return JSONResponse(out, status_code=status, headers=HEADERS)
        qid = query_id(message.text, sha)
        mine, final = await run_in_threadpool(grades_for, wb, wb.tenant(tenant), qid, judge_name(s))
        out.update(qid=qid, photo=sha, tenant=tenant, mine=mine, judged=final)
        return JSONResponse(out, headers=HEADERS)

    async def judge(self, request: Request) -> Response:
        wb = self.wb
        s = session_of(wb, request)
        check_same_origin(request, s)
        body = await json_body(request)
        tenant = tenant_name(s, text_of(body, "tenant", "tenant", 128))
        allow(wb, JUDGE_METHOD, metadata(s, tenant))
        sha = text_of(body, "photo", "photo", 64)
        return await store_judgment(wb, wb.tenant(tenant), judge_name(s), body, sha, s.photos.get(sha) if sha else None)

    async def photo(self, request: Request) -> Response:
        wb = self.wb
        s = session_of(wb, request)
        q = request.query_params
        servicer, tenant, _ = where_to_search(wb, s, {k: q[k] for k in ("tenant", "bundle") if k in q}, "query")
        try:
            n = int(q.get("n", "0"))
        except ValueError:
            raise Refused(400, "INVALID_ARGUMENT", "n: a photo number (0 is the main photo).") from None
        where = await run_in_threadpool(photo_of, servicer.tenants.get(tenant), q.get("id", ""), n)
        if where.startswith(("http://", "https://")):
            return RedirectResponse(where, status_code=302)
        # photo_of served only a file with an image suffix (PHOTO_SUFFIXES), so its type is an image type.
        return FileResponse(where, media_type=mimetypes.guess_type(where)[0],
                            headers={**HEADERS, "cache-control": "private, max-age=300"})

    # The JSON API's judging, for scripts and other tools: an API key in `authorization`, as every /v1 call.
    async def api_judge(self, request: Request) -> Response:
        wb = self.wb
        md = key_headers(request)
        allow(wb, JUDGE_METHOD, md)
        body = await json_body(request)
        tenant = dict(md).get(TENANT_HEADER) or DEFAULT_TENANT
        who = key_of(wb, md).id if wb.keys is not None else (text_of(body, "who", "who", 64) or "anonymous")
        photo = None
        if body.get("image"):
            try:
                photo = base64.b64decode(text_of(body, "image", "image", MAX_BODY_BYTES), validate=True)
            except ValueError:
                raise Refused(400, "INVALID_ARGUMENT", "image: not base64.") from None
        return await store_judgment(wb, wb.tenant(tenant), who, body, photo_sha(photo) if photo else "", photo)

    async def api_judgments(self, request: Request) -> Response:
        md = key_headers(request)
        allow(self.wb, JUDGE_METHOD, md)
        tenant = self.wb.tenant(dict(md).get(TENANT_HEADER) or DEFAULT_TENANT)
        current = await run_in_threadpool(self.wb.store(tenant).current, tenant.name)
        return JSONResponse({"judgments": [j.to_dict() for j in current]})


@functools.cache
def asset(name: str) -> bytes:
    """The page's files, read once (they ship with the package)."""
    return (UI_DIR / name).read_bytes()


async def no_icon(request: Request) -> Response:
    return Response(status_code=204)


def compared(wb: Workbench, name: str, field_name: str) -> Any:
    servicer = wb.compare.get(name)
    if servicer is None:
        raise Refused(404, "NOT_FOUND", f"{field_name}: no bundle {name!r} is loaded for comparison; serve with "
                                        f"--compare NAME=DIR.")
    return servicer


def key_of(wb: Workbench, md: list[tuple[str, str]]) -> ApiKey:
    key = wb.keys.authenticate(dict(md).get("authorization", "")[7:].strip()) if wb.keys is not None else None
    assert key is not None  # allow() has already refused a missing or wrong key
    return key


def remember_photo(s: Session, sha: str, data: bytes) -> None:
    s.photos[sha] = data
    s.photos.move_to_end(sha)
    while len(s.photos) > RECENT_PHOTOS:
        s.photos.popitem(last=False)


async def store_judgment(wb: Workbench, tenant: Tenant, who: str, body: dict, sha: str, photo: bytes | None) -> Response:
    text = text_of(body, "text", "text", 1000)
    item = text_of(body, "item", "item", 256)
    grade = body.get("grade")
    if not item:
        raise Refused(400, "INVALID_ARGUMENT", "item: the id of the graded item is missing.")
    if not isinstance(grade, int) or isinstance(grade, bool) or grade not in (0, 1, 2):
        raise Refused(400, "INVALID_ARGUMENT", f"grade: {grade!r}; grades are 0 (not relevant), 1 (partly), 2 (relevant).")
    if not text.strip() and not sha:
        raise Refused(400, "INVALID_ARGUMENT", "text: a judgment needs the query's text or its photo.")
    store = wb.store(tenant)
    if sha and photo is None and await run_in_threadpool(store.photo_path, sha) is None:
        raise Refused(400, "INVALID_ARGUMENT", "photo: this session has not searched with that photo; search first.")
    config = body.get("config") or {}
    if not isinstance(config, dict) or len(json.dumps(config)) > 4096:
        raise Refused(400, "INVALID_ARGUMENT", "config: expected a JSON object of the column's settings (at most 4 KiB).")
    served = tenant.state.served
    version = served.searcher.bundle.version if served is not None else ""
    j = Judgment(ts=utc_now(), tenant=tenant.name, who=who, qid=query_id(text, sha), text=text, photo=sha, item=item, grade=grade,
                 config=config, bundle_version=version)
    try:
        await run_in_threadpool(store.add, j, photo)
    except OSError as exc:
        raise Refused(503, "UNAVAILABLE", f"the judgment could not be stored ({exc.strerror or exc}); it was not "
                                          f"recorded.") from None
    mine, final = await run_in_threadpool(grades_for, wb, tenant, j.qid, who)
    return JSONResponse({"stored": True, "qid": j.qid, "mine": mine, "judged": final}, headers=HEADERS)


def grades_for(wb: Workbench, tenant: Tenant, qid: str, who: str) -> tuple[dict[str, int], dict[str, int]]:
    """This judge's grades for the query, and every judge's final grade (what the export writes)."""
    current = [j for j in wb.store(tenant).current(tenant.name) if j.qid == qid]
    return {j.item: j.grade for j in current if j.who == who}, final_grades(current).get(qid, {})


def photo_of(tenant: Tenant | None, item_id: str, n: int) -> str:
    """Where item `item_id`'s photo number `n` is: the shop's http(s) URL, or an image file inside the bundle (photos
    sent live) or inside the folder of the catalog it was indexed from. Any other path an item names — an absolute
    one, `..` out of those folders, a link out of them, a file that is not an image — is not served: a write key
    must not turn the photo door into a way to read the host's files."""
    from vitrine.indexer.photos import photo_location

    if tenant is None:
        raise Refused(404, "NOT_FOUND", "tenant: no such tenant on this server.")
    if tenant.state.served is None:
        raise Refused(503, "UNAVAILABLE", "the bundle is still loading.")
    with tenant.state.reading():
        bundle = tenant.state.served.searcher.bundle
        item = bundle.docstore.get(item_id)
        if item is None or not 0 <= n < len(item.photos):
            raise Refused(404, "NOT_FOUND", f"id: item {item_id!r} has no photo {n}.")
        where = photo_location(bundle, item.photos[n])
        catalog = bundle.manifest.catalog
        roots = [Path(bundle.path).resolve(), *([Path(catalog).parent.resolve()] if catalog else [])]
    if where.startswith(("http://", "https://")):
        return where
    real = Path(where).resolve()
    inside = any(real.is_relative_to(root) for root in roots)
    if not inside or real.suffix.lower() not in PHOTO_SUFFIXES or not real.is_file():
        raise Refused(404, "NOT_FOUND", f"id: item {item_id!r}'s photo {n} is not served (only photos in the bundle or "
                                        f"its catalog's folder are).")
    return str(real)


def served_options(wb: Workbench, tenant_name_: str) -> dict[str, Any]:
    """What a column can vary on this tenant: stages, sources, fusion, arms; and the catalog's facet fields."""
    from vitrine.indexer.columns import PRICE

    tenant = wb.search.tenants.get(tenant_name_)
    if tenant is None or tenant.state.served is None:
        return {"stages": [], "sources": [], "weights": {}, "facets": [], "arms": False}
    served = tenant.state.served
    searcher = served.searcher
    with tenant.state.reading():
        columns = searcher.bundle.docstore.columns.by_field
        # Facets: the fields with values to pick among (a field of numbers only, or one value each, is no facet),
        # fewest distinct values first.
        fields = sorted((f for f, c in columns.items() if f != PRICE and 1 < len(c.values) <= 1000),
                        key=lambda f: (len(columns[f].values), f))
        has_price = PRICE in columns
    return {"stages": searcher.available_stages(), "sources": searcher.available_sources(),
            "weights": dict(searcher.config.weights), "facets": fields[:FACET_FIELDS],
            "fusion": ["FUSION_RRF", "FUSION_WEIGHTED", "FUSION_WEIGHTED_MAX"], "has_price": has_price,
            "arms": tenant.experiment is not None and served.arm_b is not None}
