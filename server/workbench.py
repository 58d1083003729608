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
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from vitrine.proto import search_pb2
from vitrine.ranking.judgments import Judgment, JudgmentStore, final_grades, photo_sha, query_id
from vitrine.server.auth import ALL_TENANTS, JUDGE_METHOD, ApiKey, KeyStore, check_access
from vitrine.server.search_service import ARM_HEADER
from vitrine.server.tenants import DEFAULT_TENANT, TENANT_HEADER, Tenant
from vitrine.server.web_session import (GRPC_REFUSAL, HEADERS, SESSION_COOKIE, Refused, Session, Sessions,
                                        check_same_origin, json_body, refused, set_cookie)

SEARCH_METHOD = "/vitrine.v1.Search/Search"
UI_DIR = Path(__file__).with_name("ui")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
RECENT_PHOTOS = 16          # query photos a session keeps, so grading a photo query stores its photo
CARD_FIELDS = ["title", "price", "category"]
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

    def store(self, tenant: Tenant) -> JudgmentStore:
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


def tenant_name(s: Session, asked: str | None) -> str:
    if asked:
        return asked
    return s.key.tenant if s.key is not None and s.key.tenant != ALL_TENANTS else DEFAULT_TENANT


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
        html = (UI_DIR / "index.html").read_text(encoding="utf-8").replace("{{csrf}}", s.csrf)
        response = Response(html, media_type="text/html; charset=utf-8", headers=HEADERS)
        set_cookie(response, s, wb.secure)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise Refused(404, "NOT_FOUND", f"no file {name!r}.")
        return Response((UI_DIR / name).read_bytes(), media_type=STATIC[name], headers=HEADERS)

    async def about(self, request: Request) -> Response:
        wb = self.wb
        s = wb.sessions.get(request.cookies.get(SESSION_COOKIE))
        if s is None:
            raise Refused(401, "UNAUTHENTICATED", "no session: open /ui.")
        body: dict[str, Any] = {"needs_key": wb.keys is not None, "logged_in": wb.keys is None or s.key is not None,
                                "who": judge_name(s), "csrf": s.csrf}
        if body["logged_in"]:
            tenant = tenant_name(s, None)
            scopes = sorted(s.key.scopes) if s.key is not None else ["search", "judge"]
            platform_admin = s.key is not None and s.key.tenant == ALL_TENANTS and "admin" in scopes
            body.update(tenant=tenant, scopes=scopes, can_judge="judge" in scopes or platform_admin,
                        tenants=[t.name for t in wb.search.tenants
                                 if s.key is None or s.key.tenant in (ALL_TENANTS, t.name)],
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
            s.name = str(body.get("name") or "")[:64].strip()
            return JSONResponse({"who": judge_name(s), "csrf": s.csrf}, headers=HEADERS)
        sent = str(body.get("key") or "").strip()
        key = wb.keys.authenticate(sent)
        if key is None:
            raise Refused(401, "UNAUTHENTICATED", "key: not a valid API key.")
        if "search" not in key.scopes and not (key.tenant == ALL_TENANTS and "admin" in key.scopes):
            raise Refused(403, "PERMISSION_DENIED", "key: looking at results needs the 'search' scope.")
        fresh = wb.sessions.rotate(s)
        fresh.key, fresh.bearer = key, f"Bearer {sent}"
        response = JSONResponse({"who": judge_name(fresh), "csrf": fresh.csrf}, headers=HEADERS)
        set_cookie(response, fresh, wb.secure)
        return response

    async def logout(self, request: Request) -> Response:
        s = session_of(self.wb, request)
        check_same_origin(request, s)
        fresh = self.wb.sessions.rotate(s)   # the old id (and its key) is gone
        response = JSONResponse({"csrf": fresh.csrf}, headers=HEADERS)
        set_cookie(response, fresh, self.wb.secure)
        return response

    async def search(self, request: Request) -> Response:
        wb = self.wb
        s = session_of(wb, request)
        check_same_origin(request, s)
        body = await json_body(request)
        column = body.get("column") or {}
        if not isinstance(column, dict):
            raise Refused(400, "INVALID_ARGUMENT", "column: expected a JSON object.")
        tenant = tenant_name(s, column.get("tenant"))
        md = metadata(s, tenant, str(column.get("arm") or ""))
        allow(wb, SEARCH_METHOD, md)
        servicer = wb.search
        if column.get("bundle"):
            servicer = compared(wb, str(column["bundle"]), "column.bundle")
            md = [m for m in md if m[0] != TENANT_HEADER]   # a comparison bundle is served as its own one tenant
        try:
            message = self.parse(body.get("request") or {}, search_pb2.SearchRequest, "request")
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
        tenant = tenant_name(s, body.get("tenant"))
        md = metadata(s, tenant)
        allow(wb, JUDGE_METHOD, md)
        sha = str(body.get("photo") or "")
        return await store_judgment(wb, wb.tenant(tenant), judge_name(s), body, sha, s.photos.get(sha) if sha else None)

    async def photo(self, request: Request) -> Response:
        wb = self.wb
        s = session_of(wb, request)
        q = request.query_params
        tenant = tenant_name(s, q.get("tenant"))
        allow(wb, SEARCH_METHOD, metadata(s, tenant))
        servicer = wb.search
        if q.get("bundle"):
            servicer, tenant = compared(wb, q["bundle"], "bundle"), DEFAULT_TENANT
        try:
            n = int(q.get("n", "0"))
        except ValueError:
            raise Refused(400, "INVALID_ARGUMENT", "n: a photo number (0 is the main photo).") from None
        where = await run_in_threadpool(photo_of, servicer.tenants.get(tenant), q.get("id", ""), n)
        if where.startswith(("http://", "https://")):
            return RedirectResponse(where, status_code=302)
        kind = mimetypes.guess_type(where)[0] or "application/octet-stream"
        if not kind.startswith("image/"):
            raise Refused(404, "NOT_FOUND", "id: that item's photo is not an image file.")
        return FileResponse(where, media_type=kind, headers={**HEADERS, "cache-control": "private, max-age=300"})

    # The JSON API's judging, for scripts and other tools: an API key in `authorization`, as every /v1 call.
    async def api_judge(self, request: Request) -> Response:
        wb = self.wb
        md = [(k.lower(), v) for k, v in request.headers.items() if k.lower() in ("authorization", TENANT_HEADER)]
        allow(wb, JUDGE_METHOD, md)
        body = await json_body(request)
        tenant = dict(md).get(TENANT_HEADER) or DEFAULT_TENANT
        who = key_of(wb, md).id if wb.keys is not None else str(body.get("who") or "anonymous")[:64]
        photo = None
        if body.get("image"):
            try:
                photo = base64.b64decode(str(body["image"]), validate=True)
            except ValueError:
                raise Refused(400, "INVALID_ARGUMENT", "image: not base64.") from None
        return await store_judgment(wb, wb.tenant(tenant), who, body, photo_sha(photo) if photo else "", photo)

    async def api_judgments(self, request: Request) -> Response:
        md = [(k.lower(), v) for k, v in request.headers.items() if k.lower() in ("authorization", TENANT_HEADER)]
        allow(self.wb, JUDGE_METHOD, md)
        tenant = self.wb.tenant(dict(md).get(TENANT_HEADER) or DEFAULT_TENANT)
        current = await run_in_threadpool(self.wb.store(tenant).current, tenant.name)
        return JSONResponse({"judgments": [j.to_dict() for j in current]})


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
    text = str(body.get("text") or "")
    item = str(body.get("item") or "")
    grade = body.get("grade")
    if not item:
        raise Refused(400, "INVALID_ARGUMENT", "item: the id of the graded item is missing.")
    if grade not in (0, 1, 2) or isinstance(grade, bool):
        raise Refused(400, "INVALID_ARGUMENT", f"grade: {grade!r}; grades are 0 (not relevant), 1 (partly), 2 (relevant).")
    if not text.strip() and not sha:
        raise Refused(400, "INVALID_ARGUMENT", "text: a judgment needs the query's text or its photo.")
    store = wb.store(tenant)
    if sha and photo is None and store.photo_path(sha) is None:
        raise Refused(400, "INVALID_ARGUMENT", "photo: this session has not searched with that photo; search first.")
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise Refused(400, "INVALID_ARGUMENT", "config: expected a JSON object (the column's settings).")
    served = tenant.state.served
    version = served.searcher.bundle.version if served is not None else ""
    j = Judgment(ts=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 tenant=tenant.name, who=who, qid=query_id(text, sha), text=text, photo=sha, item=item, grade=grade,
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
    """Where item `item_id`'s photo number `n` is: a file of the bundle or the catalog, or the shop's URL."""
    from vitrine.indexer.photos import photo_location

    if tenant is None or tenant.state.served is None:
        raise Refused(503, "UNAVAILABLE", "the bundle is still loading.")
    with tenant.state.reading():
        bundle = tenant.state.served.searcher.bundle
        item = bundle.docstore.get(item_id)
        if item is None or not 0 <= n < len(item.photos):
            raise Refused(404, "NOT_FOUND", f"id: item {item_id!r} has no photo {n}.")
        where = photo_location(bundle, item.photos[n])
    if not where.startswith(("http://", "https://")) and not Path(where).is_file():
        raise Refused(404, "NOT_FOUND", f"id: item {item_id!r}'s photo {n} is not on this server.")
    return where


def served_options(wb: Workbench, tenant_name_: str) -> dict[str, Any]:
    """What a column can vary on this tenant: stages, sources, fusion, arms; and the catalog's facet fields."""
    from vitrine.indexer.columns import PRICE

    tenant = wb.search.tenants.get(tenant_name_)
    if tenant is None or tenant.state.served is None:
        return {"stages": [], "sources": [], "facets": [], "arms": False}
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
            "facets": fields[:FACET_FIELDS], "fusion": ["FUSION_RRF", "FUSION_WEIGHTED", "FUSION_WEIGHTED_MAX"], "has_price": has_price,
            "arms": tenant.experiment is not None and served.arm_b is not None}
