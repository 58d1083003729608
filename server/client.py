"""Python clients for shop backends: `VitrineClient("host:port").search(text="red dress")`, and `CatalogClient`.

Needs only grpcio and protobuf (the base install), never torch. `options=ROUND_ROBIN` spreads calls over replicas.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from google.protobuf import json_format

from vitrine.indexer.catalog import Item
from vitrine.proto import search_pb2, search_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TENANT_HEADER = "x-vitrine-tenant"  # the tenant every RPC acts on (server/tenants.py)

# Client-side load balancing over every address a target names or resolves to (`ipv4:10.0.0.1:50051,10.0.0.2:50051`,
# or `dns:///vitrine-headless.shop.svc.cluster.local:50051` for a Kubernetes headless Service): calls take turns, and
# a replica whose health service says NOT_SERVING (loading, draining on SIGTERM) gets none until it serves again.
# Search and Info, which change nothing, are retried on UNAVAILABLE (a replica that died with the call in flight) on
# the next replica; Feedback is not (it appends to a click log). For read traffic: replicas are `--read-only`, and
# each writable server has its own WAL.
ROUND_ROBIN: tuple[tuple[str, str], ...] = (
    ("grpc.service_config", json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [{
            "name": [{"service": "vitrine.v1.Search", "method": "Search"}, {"service": "vitrine.v1.Search", "method": "Info"}],
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
    })),
)

FUSION = {"": search_pb2.FUSION_UNSPECIFIED, "rrf": search_pb2.FUSION_RRF, "weighted": search_pb2.FUSION_WEIGHTED,
          "weighted_max": search_pb2.FUSION_WEIGHTED_MAX}


@dataclass(frozen=True)
class Query:
    """One Search request as a shop backend asks it: the keyword arguments of `VitrineClient.search`, checked when
    built and turned into the proto by `to_proto` (None = the server's default)."""

    text: str = ""
    image: bytes = b""
    filters: Mapping[str, str] | None = None
    price_min: float | None = None
    price_max: float | None = None
    k: int = 10
    offset: int = 0
    exclude_ids: Sequence[str] = ()
    fusion: str = ""                          # a key of FUSION; "" = the server's
    weights: Mapping[str, float] | None = None
    sources: Sequence[str] = ()
    fields: Sequence[str] = ()                # stored fields to return with each hit ("*" = all)
    explain: bool = False
    constraint: str = ""
    composed_text_weight: float | None = None
    stages: str = ""
    rerank_depth: int | None = None
    log_features: bool = False
    session: str = ""
    # Shop features (proto FieldFilter, FacetRequest, Boost; README "Facets, filters, sorting"): plain dicts with the
    # proto's field names, e.g. where=[{"field": "color", "any_of": ["red", "blue"]}, {"field": "size_cm", "min": 30}],
    # facets=["color", {"field": "price", "ranges": [25, 50]}], boosts=[{"field": "brand", "value": "Acme",
    # "factor": 2}], pins={"sku-1": 1}. sort: "price" ascending, "-price" descending, "" relevance.
    where: Sequence[Mapping[str, Any]] = ()
    facets: Sequence[str | Mapping[str, Any]] = ()
    sort: str = ""
    highlight: bool = False
    boosts: Sequence[Mapping[str, Any]] = ()
    pins: Mapping[str, int] | None = None
    hide_ids: Sequence[str] = ()
    min_score: float | None = None
    no_rules: bool = False
    like_id: str = ""

    def __post_init__(self) -> None:
        if self.fusion not in FUSION:
            raise ValueError(f"fusion must be one of {sorted(FUSION)}, got {self.fusion!r}.")

    def _shop(self, req: search_pb2.SearchRequest) -> None:
        """The shop fields, through the proto's own JSON mapping (a wrong key is a ValueError naming it)."""
        try:
            for w in self.where:
                json_format.ParseDict(w, req.where.add())
            for f in self.facets:
                json_format.ParseDict({"field": f} if isinstance(f, str) else f, req.facets.add())
            for b in self.boosts:
                json_format.ParseDict(b, req.boosts.add())
        except json_format.ParseError as exc:
            raise ValueError(str(exc)) from None
        for item_id, position in (self.pins or {}).items():
            req.pins.add(id=item_id, position=position)
        if self.sort:
            req.sort.field = self.sort.removeprefix("-")
            req.sort.descending = self.sort.startswith("-")
        req.hide_ids.extend(self.hide_ids)
        if self.min_score is not None:
            req.min_score = self.min_score
        req.highlight, req.no_rules, req.like_id = self.highlight, self.no_rules, self.like_id

    def to_proto(self) -> search_pb2.SearchRequest:
        req = search_pb2.SearchRequest(
            text=self.text, image=self.image, filters=dict(self.filters or {}), k=self.k, offset=self.offset,
            exclude_ids=list(self.exclude_ids), fusion=FUSION[self.fusion], weights=dict(self.weights or {}),
            sources=list(self.sources), fields=list(self.fields), explain=self.explain, constraint=self.constraint,
            stages=self.stages, log_features=self.log_features, session=self.session,
        )
        # Optional proto fields are set only when given, so the server can tell "not given" from 0.
        if self.rerank_depth is not None:
            req.rerank_depth = self.rerank_depth
        if self.composed_text_weight is not None:
            req.composed_text_weight = self.composed_text_weight
        if self.price_min is not None:
            req.price.min = self.price_min
        if self.price_max is not None:
            req.price.max = self.price_max
        self._shop(req)
        return req


@dataclass(frozen=True)
class ClientHit:
    id: str
    score: float
    sources: Mapping[str, float]
    fields: Mapping[str, Any] = field(default_factory=dict)
    explanation: str = ""
    contributions: Mapping[str, float] = field(default_factory=dict)
    features: Mapping[str, float] = field(default_factory=dict)
    highlights: list[dict] = field(default_factory=list)   # {"field", "fragment", "html", "starts", "ends"}
    lexical_match: bool | None = None                        # with highlight: whether a query word occurs in it
    rules: list[str] = field(default_factory=list)           # the merchandising rules that moved it
    sort_value: float | None = None


@dataclass(frozen=True)
class ClientResult:
    hits: list[ClientHit]
    total_candidates: int
    bundle_version: str
    model_versions: Mapping[str, str]
    took_ms: float
    stages: str = ""
    request_id: str = ""
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    facets: list[dict] = field(default_factory=list)        # the proto's Facet as JSON (field names as in the proto)
    facet_scope: str = ""


class _Client:
    """The channel scaffold both clients share: one channel, a default deadline, the key (or write token) and the
    tenant as metadata on every call; TLS with `credentials` (server/auth.py channel_credentials); further channel
    `options` (e.g. ROUND_ROBIN) after the defaults, so they win."""

    def __init__(self, target: str, timeout_s: float, token: str | None = None, tenant: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   *options]
        self.channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
                        else grpc.insecure_channel(target, options=options))
        self.timeout_s = timeout_s
        self.metadata: tuple[tuple[str, str], ...] = bearer(token) + (((TENANT_HEADER, tenant),) if tenant else ())

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class VitrineClient(_Client):
    """Blocking client of the Search (and Admin) service; raises grpc.RpcError with the server's status and message."""

    def __init__(self, target: str, timeout_s: float = 10.0, token: str | None = None, tenant: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(target, timeout_s, token, tenant, credentials, options)
        self.stub = search_pb2_grpc.SearchStub(self.channel)

    def search(self, text: str = "", image: bytes = b"", *, filters: Mapping[str, str] | None = None,  # noqa: PLR0913
               price_min: float | None = None, price_max: float | None = None, k: int = 10, offset: int = 0,
               exclude_ids: Sequence[str] = (), fusion: str = "", weights: Mapping[str, float] | None = None,
               sources: Sequence[str] = (), fields: Sequence[str] = (), explain: bool = False, constraint: str = "",
               composed_text_weight: float | None = None, stages: str = "", rerank_depth: int | None = None,
               log_features: bool = False, session: str = "", where: Sequence[Mapping[str, Any]] = (),
               facets: Sequence[str | Mapping[str, Any]] = (), sort: str = "", highlight: bool = False,
               boosts: Sequence[Mapping[str, Any]] = (), pins: Mapping[str, int] | None = None,
               hide_ids: Sequence[str] = (), min_score: float | None = None, no_rules: bool = False,
               like_id: str = "") -> ClientResult:
        """One Search. The keywords are the users' API (see `Query` for each); the request is built from them once."""
        return self.send(Query(text, image, filters, price_min, price_max, k, offset, exclude_ids, fusion, weights,
                               sources, fields, explain, constraint, composed_text_weight, stages, rerank_depth,
                               log_features, session, where, facets, sort, highlight, boosts, pins, hide_ids, min_score,
                               no_rules, like_id))

    def send(self, query: Query) -> ClientResult:
        """One Search of a Query built beforehand."""
        return result_from_proto(self.stub.Search(query.to_proto(), timeout=self.timeout_s, metadata=self.metadata))

    def feedback(self, request_id: str, clicked: Sequence[str], dwell_ms: Mapping[str, int] | None = None) -> bool:
        """Reports clicks on a response; True when the server wrote them to its click log."""
        resp = self.stub.Feedback(search_pb2.FeedbackRequest(request_id=request_id, clicked=list(clicked),
                                                             dwell_ms=dict(dwell_ms or {})), timeout=self.timeout_s,
                                  metadata=self.metadata)
        return resp.logged

    def reload(self, bundle: str = "", reranker: str = "", ranker: str = "", token: str | None = None,
               timeout_s: float = 600.0) -> search_pb2.ReloadResponse:
        """Asks the server to hot-swap to another bundle (Admin service)."""
        stub = search_pb2_grpc.AdminStub(self.channel)
        metadata = bearer(token) + tuple(m for m in self.metadata if m[0] != "authorization") if token else self.metadata
        return stub.Reload(search_pb2.ReloadRequest(bundle=bundle, reranker=reranker, ranker=ranker),
                           metadata=metadata, timeout=timeout_s)

    def info(self) -> dict:
        resp = self.stub.Info(search_pb2.InfoRequest(), timeout=self.timeout_s, metadata=self.metadata)
        return {"bundle_version": resp.bundle_version, "manifest": json.loads(resp.manifest_json)}

    # Tenant management (a platform admin key).
    def create_tenant(self, name: str, bundle: str, reranker: str = "", ranker: str = "", read_only: bool = False,
                      config_toml: str = "", timeout_s: float = 600.0) -> search_pb2.TenantInfo:
        return search_pb2_grpc.AdminStub(self.channel).CreateTenant(search_pb2.CreateTenantRequest(
            name=name, bundle=bundle, reranker=reranker, ranker=ranker, read_only=read_only, config_toml=config_toml),
            metadata=self.metadata, timeout=timeout_s)

    def list_tenants(self) -> search_pb2.ListTenantsResponse:
        return search_pb2_grpc.AdminStub(self.channel).ListTenants(search_pb2.ListTenantsRequest(), metadata=self.metadata,
                                                                   timeout=self.timeout_s)

    def drop_tenant(self, name: str) -> str:
        return search_pb2_grpc.AdminStub(self.channel).DropTenant(search_pb2.DropTenantRequest(name=name),
                                                                  metadata=self.metadata, timeout=self.timeout_s).archived_to


def result_from_proto(resp: search_pb2.SearchResponse) -> ClientResult:
    return ClientResult(
        hits=[ClientHit(id=h.id, score=h.score, sources={s.source: s.score for s in h.sources},
                        fields=json.loads(h.fields_json) if h.fields_json else {}, explanation=h.explanation,
                        contributions=dict(h.contributions), features=dict(h.features),
                        highlights=[_as_dict(x) for x in h.highlights],
                        lexical_match=h.lexical_match if h.HasField("lexical_match") else None, rules=list(h.rules),
                        sort_value=h.sort_value if h.HasField("sort_value") else None)
              for h in resp.hits],
        total_candidates=resp.total_candidates,
        bundle_version=resp.bundle_version,
        model_versions=dict(resp.model_versions),
        took_ms=resp.took_ms,
        stages=resp.stages,
        request_id=resp.request_id,
        stage_ms=dict(resp.stage_ms),
        facets=[_facet(f) for f in resp.facets],
        facet_scope=resp.facet_scope,
    )


def _facet(f: search_pb2.Facet) -> dict:
    """A Facet as a dict of plain numbers (the proto's JSON mapping would write its int64 counts as strings)."""
    return {"field": f.field, "values": [{"value": v.value, "count": v.count, "selected": v.selected} for v in f.values],
            "buckets": [{"min": b.min if b.HasField("min") else None, "max": b.max if b.HasField("max") else None,
                         "count": b.count} for b in f.buckets],
            "missing": f.missing, "other": f.other, "disjunctive": f.disjunctive, "counted": f.counted}


def _as_dict(msg: Any) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def item_to_proto(item: Item) -> search_pb2.Item:
    msg = search_pb2.Item(id=item.id, title=item.title, description=item.description, category=item.category,
                          attributes=dict(item.attributes), image_uri=item.image or "", image_uris=list(item.extra_images))
    if item.price is not None:
        msg.price = item.price
    return msg


def local_photo(image: str | None, base_dir: Path) -> Path | None:
    """The file on this machine that an item's `image` names (a path relative to `base_dir`, the catalog's folder,
    or absolute), or None for a URL or no image."""
    if not image or image.startswith(("http://", "https://")):
        return None
    path = Path(image)
    return path if path.is_absolute() else base_dir / path


def _read_photo(item_id: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"item {item_id!r}: image {str(path)!r}: {exc.strerror or exc}; fix the path (relative to "
                         "the catalog file) or remove the image.") from None


def with_photo_bytes(request: search_pb2.UpsertRequest, base_dir: Path) -> search_pb2.UpsertRequest:
    """Sends each photo that is a file here as its bytes, so that a server on another machine can encode it (and keeps
    it with its bundle): the main one as `image`, the others in `images`; a URL stays an image_uri (or in
    image_uris) for the server to fetch. (The server orders an item's extra photos URLs first, then bytes.)"""
    if request.WhichOneof("change") != "item":
        return request
    item = request.item
    main = local_photo(item.image_uri, base_dir)
    more = [(uri, local_photo(uri, base_dir)) for uri in item.image_uris]
    if main is None and all(path is None for _, path in more):
        return request
    sent = search_pb2.UpsertRequest()
    sent.CopyFrom(request)  # a copy: the caller's list of requests does not keep every photo in memory
    if main is not None:
        sent.item.image_uri = ""
        sent.item.image = _read_photo(item.id, main)
    del sent.item.image_uris[:]
    sent.item.image_uris.extend(uri for uri, path in more if path is None)
    sent.item.images.extend(_read_photo(item.id, path) for _, path in more if path is not None)
    return sent


class CatalogClient(_Client):
    """Blocking client of the Catalog service; raises grpc.RpcError with the server's status and message."""

    def __init__(self, target: str, token: str | None = None, timeout_s: float = 30.0, tenant: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(target, timeout_s, token, tenant, credentials, options)
        self.stub = search_pb2_grpc.CatalogStub(self.channel)

    def upsert(self, requests: Iterable[search_pb2.UpsertRequest], timeout_s: float | None = None) -> Iterator[search_pb2.UpsertAck]:
        """Streams requests and yields each ack as the server makes the write durable."""
        return self.stub.Upsert(iter(requests), metadata=self.metadata, timeout=timeout_s)

    def upsert_items(self, items: Iterable[Item]) -> Iterator[search_pb2.UpsertAck]:
        return self.upsert(search_pb2.UpsertRequest(item=item_to_proto(it)) for it in items)

    def patch(self, item_id: str, price: float | None = None, attributes: dict[str, str] | None = None) -> search_pb2.UpsertAck:
        patch = search_pb2.ItemPatch(id=item_id, attributes=attributes or {})
        if price is not None:
            patch.price = price
        return next(iter(self.upsert([search_pb2.UpsertRequest(patch=patch)], self.timeout_s)))

    def delete(self, ids: Sequence[str]) -> int:
        return self.stub.Delete(search_pb2.DeleteRequest(ids=list(ids)), metadata=self.metadata, timeout=self.timeout_s).deleted

    def get(self, ids: Sequence[str]) -> list[dict]:
        resp = self.stub.Get(search_pb2.GetRequest(ids=list(ids)), metadata=self.metadata, timeout=self.timeout_s)
        return [json.loads(s) for s in resp.items_json]

    def snapshot(self, out_dir: str) -> search_pb2.SnapshotResponse:
        return self.stub.Snapshot(search_pb2.SnapshotRequest(out_dir=out_dir), metadata=self.metadata, timeout=600.0)
