"""A small Python client for shop backends: `VitrineClient("host:port").search(text="red dress")`."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from proto.vitrine.v1 import search_pb2, search_pb2_grpc

FUSION = {"": search_pb2.FUSION_UNSPECIFIED, "rrf": search_pb2.FUSION_RRF, "weighted": search_pb2.FUSION_WEIGHTED,
          "weighted_max": search_pb2.FUSION_WEIGHTED_MAX}


@dataclass(frozen=True)
class ClientHit:
    id: str
    score: float
    sources: Mapping[str, float]
    fields: Mapping[str, Any] = field(default_factory=dict)
    explanation: str = ""
    contributions: Mapping[str, float] = field(default_factory=dict)
    features: Mapping[str, float] = field(default_factory=dict)


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


class VitrineClient:
    """Blocking client over one channel; raises grpc.RpcError with the server's status and message."""

    def __init__(self, target: str, timeout_s: float = 10.0) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self.stub = search_pb2_grpc.SearchStub(self.channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VitrineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def search(
        self,
        text: str = "",
        image: bytes = b"",
        *,
        filters: Mapping[str, str] | None = None,
        price_min: float | None = None,
        price_max: float | None = None,
        k: int = 10,
        offset: int = 0,
        exclude_ids: Sequence[str] = (),
        fusion: str = "",
        weights: Mapping[str, float] | None = None,
        sources: Sequence[str] = (),
        fields: Sequence[str] = (),
        explain: bool = False,
        constraint: str = "",
        composed_text_weight: float | None = None,
        stages: str = "",
        rerank_depth: int | None = None,
        log_features: bool = False,
        session: str = "",
    ) -> ClientResult:
        if fusion not in FUSION:
            raise ValueError(f"fusion must be one of {sorted(FUSION)}, got {fusion!r}.")
        req = search_pb2.SearchRequest(
            text=text, image=image, filters=dict(filters or {}), k=k, offset=offset,
            exclude_ids=list(exclude_ids), fusion=FUSION[fusion], weights=dict(weights or {}),
            sources=list(sources), fields=list(fields), explain=explain, constraint=constraint,
            stages=stages, log_features=log_features, session=session,
        )
        if rerank_depth is not None:
            req.rerank_depth = rerank_depth
        if composed_text_weight is not None:
            req.composed_text_weight = composed_text_weight
        if price_min is not None:
            req.price.min = price_min
        if price_max is not None:
            req.price.max = price_max
        resp = self.stub.Search(req, timeout=self.timeout_s)
        return ClientResult(
            hits=[ClientHit(id=h.id, score=h.score, sources={s.source: s.score for s in h.sources},
                            fields=json.loads(h.fields_json) if h.fields_json else {}, explanation=h.explanation,
                            contributions=dict(h.contributions), features=dict(h.features))
                  for h in resp.hits],
            total_candidates=resp.total_candidates,
            bundle_version=resp.bundle_version,
            model_versions=dict(resp.model_versions),
            took_ms=resp.took_ms,
            stages=resp.stages,
            request_id=resp.request_id,
            stage_ms=dict(resp.stage_ms),
        )

    def feedback(self, request_id: str, clicked: Sequence[str], dwell_ms: Mapping[str, int] | None = None) -> bool:
        """Reports clicks on a response; True when the server wrote them to its click log."""
        resp = self.stub.Feedback(search_pb2.FeedbackRequest(request_id=request_id, clicked=list(clicked),
                                                             dwell_ms=dict(dwell_ms or {})), timeout=self.timeout_s)
        return resp.logged

    def reload(self, bundle: str = "", reranker: str = "", ranker: str = "", token: str | None = None,
               timeout_s: float = 600.0) -> search_pb2.ReloadResponse:
        """Asks the server to hot-swap to another bundle (Admin service)."""
        stub = search_pb2_grpc.AdminStub(self.channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return stub.Reload(search_pb2.ReloadRequest(bundle=bundle, reranker=reranker, ranker=ranker),
                           metadata=metadata, timeout=timeout_s)

    def info(self) -> dict:
        resp = self.stub.Info(search_pb2.InfoRequest(), timeout=self.timeout_s)
        return {"bundle_version": resp.bundle_version, "manifest": json.loads(resp.manifest_json)}
