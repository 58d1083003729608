"""JSON over HTTP beside gRPC, from the same process: the proto's JSON mapping (google.protobuf.json_format) over the
very servicers gRPC calls, so the schema, API keys, tenants, quotas, limits and error messages are the same.

    POST /v1/search    SearchRequest  -> SearchResponse          POST /v1/get     GetRequest     -> GetResponse
    GET  /v1/info                     -> InfoResponse            POST /v1/upsert  {"requests": [UpsertRequest]} -> {"acks": [UpsertAck]}
    POST /v1/feedback  FeedbackRequest -> FeedbackResponse       POST /v1/delete  DeleteRequest  -> DeleteResponse
    GET  /openapi.json, GET /healthz
    /ui, /ui/api/*, POST /v1/judge, GET /v1/judgments: the relevance workbench (server/workbench.py)

Headers are the gRPC metadata: `authorization: Bearer <key>`, `x-vitrine-tenant`. A gRPC status becomes its HTTP
status (Google's mapping: INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...) with `{"code": "INVALID_ARGUMENT", "message": "<field>: ..."}`.
Bytes fields (a query photo, an item's photos) are base64, as the JSON mapping writes them.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from vitrine.proto import search_pb2
from vitrine.server.auth import KeyStore, check_access
from vitrine.server.web_session import MAX_BODY_BYTES, key_headers  # one limit and one header reading for both

HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class HttpContext:
    """What the servicers read of a grpc.ServicerContext, from an HTTP request's headers."""

    def __init__(self, metadata: Sequence[tuple[str, str]], timeout_s: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Rpc:
    """One route: its gRPC method name (for the key's scope), the request and response messages, the call, and the
    HTTP verb (GET for a call without a request body)."""

    def __init__(self, method: str, request: type | None, response: type, call: Callable[[Any, HttpContext], Any],
                 verb: str = "post") -> None:
        self.method, self.request, self.response, self.call, self.verb = method, request, response, call, verb


async def invoke(call: Callable[[Any, HttpContext], Any], message: Any, metadata: Sequence[tuple[str, str]],
                 timeout_s: float | None = None) -> tuple[int, dict]:
    """A servicer call as JSON: (HTTP status, body). It blocks (encoders, locks), so it runs on a worker thread, as
    gRPC runs it on its pool."""
    try:
        out = await run_in_threadpool(call, message, HttpContext(metadata, timeout_s))
    except Aborted as exc:
        return HTTP_STATUS.get(exc.code, 500), {"code": exc.code.name, "message": str(exc)}
    if isinstance(out, list):
        return 200, {"acks": [to_json(a) for a in out]}
    return 200, to_json(out)


def error(code: grpc.StatusCode, message: str) -> JSONResponse:
    return JSONResponse({"code": code.name, "message": message}, status_code=HTTP_STATUS.get(code, 500))


def to_json(msg: Any) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def http_app(search: Any, catalog: Any, keys: KeyStore | None = None, workbench: Any = None) -> Starlette:
    """The app over a server's Search and Catalog servicers (server/app.py builds them; keys as `--keys`), with the
    workbench's pages at /ui when given one (server/workbench.py)."""
    rpcs = {
        "/v1/search": Rpc("/vitrine.v1.Search/Search", search_pb2.SearchRequest, search_pb2.SearchResponse, search.Search),
        "/v1/info": Rpc("/vitrine.v1.Search/Info", search_pb2.InfoRequest, search_pb2.InfoResponse, search.Info, "get"),
        "/v1/feedback": Rpc("/vitrine.v1.Search/Feedback", search_pb2.FeedbackRequest, search_pb2.FeedbackResponse,
                            search.Feedback),
        "/v1/get": Rpc("/vitrine.v1.Catalog/Get", search_pb2.GetRequest, search_pb2.GetResponse, catalog.Get),
        "/v1/delete": Rpc("/vitrine.v1.Catalog/Delete", search_pb2.DeleteRequest, search_pb2.DeleteResponse,
                          catalog.Delete),
        # A stream of UpsertRequest: {"requests": [...]} -> {"acks": [UpsertAck, ...]}
        "/v1/upsert": Rpc("/vitrine.v1.Catalog/Upsert", None, search_pb2.UpsertAck,
                          lambda reqs, ctx: list(catalog.Upsert(iter(reqs), ctx))),
    }
    document = openapi_document(rpcs)   # the same for every request: built once

    async def handle(request: Request) -> JSONResponse:
        rpc = rpcs[request.url.path]
        metadata = key_headers(request)
        if keys is not None and (refused := check_access(keys, rpc.method, metadata)) is not None:
            return error(*refused)
        body = await request.body() if request.method == "POST" else b"{}"
        if len(body) > MAX_BODY_BYTES:
            return error(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}.")
        try:
            message = parse(rpc, body)
        except ValueError as exc:
            return error(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = request.headers.get("x-vitrine-timeout-s")
        status, out = await invoke(rpc.call, message, metadata,
                                   float(timeout) if timeout and timeout.replace(".", "", 1).isdigit() else None)
        return JSONResponse(out, status_code=status)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [Route(path, handle, methods=[rpc.verb.upper()]) for path, rpc in rpcs.items()]
    if workbench is not None:
        from vitrine.server.workbench import Pages

        routes += Pages(workbench, invoke, _parse_dict).routes()
    return Starlette(routes=[*routes, Route("/openapi.json", openapi), Route("/healthz", healthz)])


def parse(rpc: Rpc, body: bytes) -> Any:
    """The request message from a JSON body; a bad body is a ValueError naming what is wrong."""
    try:
        obj = json.loads(body or b"{}")
    except RecursionError:
        raise ValueError("body: nested too deep to read.") from None
    except ValueError as exc:   # not JSON, or not UTF-8
        raise ValueError(f"body: not JSON ({exc}).") from None
    if rpc.request is None:  # upsert: {"requests": [UpsertRequest, ...]}
        if not isinstance(obj, dict) or not isinstance(obj.get("requests"), list):
            raise ValueError('body: an upsert is {"requests": [{"item": {...}} or {"patch": {...}}, ...]}.')
        return [_parse_dict(r, search_pb2.UpsertRequest, f"requests[{n}]") for n, r in enumerate(obj["requests"])]
    return _parse_dict(obj, rpc.request, "body")


def _parse_dict(obj: Any, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    try:
        return json_format.ParseDict(obj, kind())
    except json_format.ParseError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deep to read.") from None


_SCALARS = {FieldDescriptor.TYPE_DOUBLE: {"type": "number"}, FieldDescriptor.TYPE_FLOAT: {"type": "number"},
            FieldDescriptor.TYPE_INT32: {"type": "integer"}, FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
            FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"}, FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
            FieldDescriptor.TYPE_STRING: {"type": "string"}, FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
            FieldDescriptor.TYPE_ENUM: {"type": "string"}}


def schema_of(desc: Descriptor, out: dict[str, dict]) -> dict:
    """A JSON schema of a message as json_format writes it (proto field names), added to `out` with its nested ones."""
    if desc.name in out:
        return {"$ref": f"#/components/schemas/{desc.name}"}
    out[desc.name] = {}
    props = {}
    for f in desc.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            inner = schema_of(value.message_type, out) if value.message_type else dict(_SCALARS[value.type])
            props[f.name] = {"type": "object", "additionalProperties": inner}
            continue
        one = schema_of(f.message_type, out) if f.message_type is not None else dict(_SCALARS[f.type])
        if f.enum_type is not None:
            one["enum"] = [v.name for v in f.enum_type.values]
        props[f.name] = {"type": "array", "items": one} if f.is_repeated else one
    out[desc.name] = {"type": "object", "properties": props}
    return {"$ref": f"#/components/schemas/{desc.name}"}


def openapi_document(rpcs: dict[str, Rpc]) -> dict:
    schemas: dict[str, dict] = {}
    paths = {}
    for path, rpc in rpcs.items():
        request = ({"type": "object", "properties": {"requests": {"type": "array",
                                                                  "items": schema_of(search_pb2.UpsertRequest.DESCRIPTOR, schemas)}}}
                   if rpc.request is None else schema_of(rpc.request.DESCRIPTOR, schemas))
        response = schema_of(rpc.response.DESCRIPTOR, schemas)
        if rpc.request is None:
            response = {"type": "object", "properties": {"acks": {"type": "array", "items": response}}}
        op = {"operationId": rpc.method.rsplit("/", 1)[-1], "summary": f"{rpc.method} over JSON",
              "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                            "default": {"description": "an error: {code, message}"}}}
        if rpc.verb == "post":
            op["requestBody"] = {"content": {"application/json": {"schema": request}}}
        paths[path] = {rpc.verb: op}
    return {"openapi": "3.1.0", "info": {"title": "Vitrine JSON API", "version": "v1"}, "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


def start_http(app: Starlette, host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None
               ) -> tuple[Any, threading.Thread]:
    """Serves `app` with uvicorn on a daemon thread (HTTPS with the gRPC port's certificate and key); returns the
    server (its `.should_exit` stops it) and the thread."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           ssl_certfile=tls_cert, ssl_keyfile=tls_key))
    thread = threading.Thread(target=server.run, name="vitrine-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise OSError(f"could not serve HTTP on {host}:{port}")
    return server, thread
