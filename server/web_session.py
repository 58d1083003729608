"""Browser sessions for the workbench's pages (server/workbench.py): a session cookie bound to an API key at login,
CSRF and same-origin checks for every state-changing call, and the security headers every page and answer carries."""
from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vitrine.server.auth import ApiKey
from vitrine.server.tenants import TENANT_HEADER

SESSION_COOKIE = "vitrine_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 10_000
MAX_BODY_BYTES = 64 * 1024 * 1024   # as the JSON API's (a query photo rides in base64)
# Scripts and styles from this origin only (no inline script: injected markup could not run even if it rendered);
# photos may be the shop's http(s) URLs; no framing (clickjacking), no plugins, forms post here only.
HEADERS = {"content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                      "img-src 'self' blob: data: https: http:; object-src 'none'; base-uri 'none'; "
                                      "frame-ancestors 'none'; form-action 'self'",
           "x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer",
           "cache-control": "no-store"}


@dataclass
class Session:
    token: str
    csrf: str
    seen: float
    key: ApiKey | None = None
    bearer: str = ""               # "Bearer <key>" once logged in; held in memory only
    name: str = ""                 # a judge's name on a server without keys
    photos: OrderedDict[str, bytes] = field(default_factory=OrderedDict)


class Sessions:
    """Browser sessions in memory: a restart logs everyone out (the judgments themselves are on disk)."""

    def __init__(self) -> None:
        self._by_token: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.monotonic())
        with self._lock:
            self._by_token[s.token] = s
            if len(self._by_token) > MAX_SESSIONS:
                # Anyone can open the page, so a flood of fresh sessions drops other fresh ones, not logged-in judges.
                anonymous = next((t for t, x in self._by_token.items() if x.key is None and t != s.token), None)
                self._by_token.pop(anonymous if anonymous is not None else next(iter(self._by_token)))
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            s = self._by_token.get(token)
            if s is None or time.monotonic() - s.seen > SESSION_TTL_S:
                self._by_token.pop(token, None)
                return None
            s.seen = time.monotonic()
            self._by_token.move_to_end(token)
            return s

    def rotate(self, old: Session, keep_photos: bool = True) -> Session:
        """A new id for a session that just logged in or out (an id planted before login is worth nothing after
        it); logging out keeps nothing of the session."""
        s = self.new()
        if keep_photos:
            s.photos = old.photos
        with self._lock:
            self._by_token.pop(old.token, None)
        return s


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


def refused(exc: Refused) -> JSONResponse:
    return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.status, headers=HEADERS)


GRPC_REFUSAL = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}


def check_same_origin(request: Request, s: Session) -> None:
    """A state-changing call must carry the session's CSRF token and come from this origin: a page elsewhere can make
    the browser send the cookie (SameSite aside), but cannot read the token nor set the header."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), s.csrf.encode()):
        raise Refused(403, "PERMISSION_DENIED", f"cross-site request refused: header {CSRF_HEADER} is missing or wrong "
                                                "(reload /ui).")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise Refused(403, "PERMISSION_DENIED", f"cross-site request refused: origin {origin!r} is not this server.")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Refused(403, "PERMISSION_DENIED", "cross-site request refused: the browser says it came from another site.")


def key_headers(request: Request) -> list[tuple[str, str]]:
    """The gRPC metadata an HTTP request carries: its API key and tenant headers (the JSON API and the pages)."""
    return [(k.lower(), v) for k, v in request.headers.items() if k.lower() in ("authorization", TENANT_HEADER)]


def set_cookie(request: Request, response: Response, s: Session, secure: bool) -> None:
    # Secure under --tls-cert, and behind a TLS proxy that says so (uvicorn reads X-Forwarded-Proto from it).
    response.set_cookie(SESSION_COOKIE, s.token, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="strict",
                        secure=secure or request.url.scheme == "https")


async def json_body(request: Request) -> dict:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refused(413, "RESOURCE_EXHAUSTED", f"body: {declared} bytes; the limit is {MAX_BODY_BYTES}.")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Refused(413, "RESOURCE_EXHAUSTED", f"body: {len(raw)} bytes; the limit is {MAX_BODY_BYTES}.")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):   # not JSON, not UTF-8, or nested too deep to read
        raise Refused(400, "INVALID_ARGUMENT", "body: not JSON (or nested too deep).") from None
    if not isinstance(body, dict):
        raise Refused(400, "INVALID_ARGUMENT", "body: expected a JSON object.")
    return body


def text_of(obj: dict, name: str, where: str, limit: int) -> str:
    """A string field of a JSON object ("" when absent): another type or a longer text is refused naming it."""
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(400, "INVALID_ARGUMENT", f"{where}: expected a string, got {type(value).__name__}.")
    if len(value) > limit:
        raise Refused(400, "INVALID_ARGUMENT", f"{where}: {len(value)} characters; the limit is {limit}.")
    return value


