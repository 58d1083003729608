"""The Search service: proto -> SearchRequest -> Searcher -> proto, and nothing else."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import grpc

from vitrine.encoders.batching import cache_scope, deadline
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.indexer.columns import FieldFilter
from vitrine.ranking.facets import FacetSpec
from vitrine.ranking.features import FEATURES
from vitrine.ranking.fusion import FusionMethod
from vitrine.ranking.pipeline import InvalidRequest, Searcher, SearchRequest, SearchResult
from vitrine.ranking.rules import BoostRule, PinRule, Rules
from vitrine.server.experiment import run_experiment
from vitrine.server.query_log import Answered, NoQuery
from vitrine.server.state import model_versions
from vitrine.server.status import Metrics, StatusError, abort_on_error, check_deadline
from vitrine.server.tenants import Tenant, Tenants, single_value

STORED_FIELDS = ("id", "title", "description", "category", "attributes", "price", "image")
_FUSION = {search_pb2.FUSION_RRF: FusionMethod.RRF, search_pb2.FUSION_WEIGHTED: FusionMethod.WEIGHTED,
           search_pb2.FUSION_WEIGHTED_MAX: FusionMethod.WEIGHTED_MAX}


def request_from_proto(req: search_pb2.SearchRequest) -> tuple[SearchRequest, list[str]]:
    fields = list(req.fields)
    for f in fields:
        if f not in STORED_FIELDS and f != "*":
            raise InvalidRequest("fields", f"unknown stored field {f!r}; fields are {', '.join(STORED_FIELDS)} or '*'.")
    if req.k < 0:
        raise InvalidRequest("k", f"must be positive, got {req.k}.")
    if req.fusion not in (search_pb2.FUSION_UNSPECIFIED, *_FUSION):
        raise InvalidRequest("fusion", f"unknown fusion method {req.fusion}.")
    has_price = req.HasField("price")
    return SearchRequest(
        text=req.text,
        image=bytes(req.image),
        filters=dict(req.filters),
        price_min=req.price.min if has_price and req.price.HasField("min") else None,
        price_max=req.price.max if has_price and req.price.HasField("max") else None,
        k=req.k,
        offset=req.offset,
        exclude_ids=list(req.exclude_ids),
        fusion=_FUSION.get(req.fusion),
        weights=dict(req.weights),
        sources=list(req.sources),
        explain=req.explain,
        constraint=req.constraint,
        composed_text_weight=req.composed_text_weight if req.HasField("composed_text_weight") else None,
        stages=req.stages,
        rerank_depth=req.rerank_depth if req.HasField("rerank_depth") else None,
        log_features=req.log_features,
        where=tuple(FieldFilter(w.field, tuple(w.any_of), tuple(w.none_of), w.min if w.HasField("min") else None,
                                w.max if w.HasField("max") else None, w.exists if w.HasField("exists") else None)
                    for w in req.where),
        facets=tuple(FacetSpec(f.field, f.size, tuple(f.ranges)) for f in req.facets),
        sort=req.sort.field,
        descending=req.sort.descending,
        highlight=req.highlight,
        rules=Rules(boost=tuple(BoostRule(b.field, b.value, b.factor if b.HasField("factor") else 1.0,
                                          b.add if b.HasField("add") else 0.0) for b in req.boosts),
                    pin=tuple(PinRule(p.id, p.position) for p in req.pins), hide=tuple(req.hide_ids),
                    min_score=req.min_score if req.HasField("min_score") else None),
        no_rules=req.no_rules,
        like_id=req.like_id,
    ), fields


_LATER_STAGES = ("fused", "cross", "ltr", "attributes", "rules")


def explain_hit(hit: Any, method: FusionMethod, weights: dict[str, float], contributions: dict[str, float] | None = None) -> str:
    """One line a person can read: first-stage sources and fusion, then the cross-encoder and ranker, if they ran."""
    by = hit.scores_by_source
    parts = [f"{s}: score={h.score:.4f} rank={h.rank} weight={weights.get(s, 1.0):g}"
             for s, h in sorted(by.items()) if s not in _LATER_STAGES]
    fused = by["fused"].score if "fused" in by else hit.score
    out = f"fused={fused:.4f} by {method.value} of [" + "; ".join(parts) + "]"
    if "attributes" in by:
        out += f" + {by['attributes'].score:.4f} for attributes the query photo shows"
    if "rules" in by:
        out += f" {by['rules'].score:+.4f} by merchandising rules"
    if "cross" in by:
        out += f"; cross-encoder={by['cross'].score:.4f} (rank {by['cross'].rank})"
    if "ltr" in by:
        out += f"; ranker={by['ltr'].score:.4f} (rank {by['ltr'].rank})"
        if contributions:
            top = sorted(((k, v) for k, v in contributions.items() if k != "bias"), key=lambda kv: -abs(kv[1]))[:5]
            out += " = bias {:+.3f} ".format(contributions.get("bias", 0.0)) + " ".join(f"{k} {v:+.3f}" for k, v in top) + " ..."
    return out


def add_facets(resp: search_pb2.SearchResponse, result: SearchResult) -> None:
    resp.facet_scope = result.facet_scope
    for f in result.facets:
        out = resp.facets.add(field=f.field, missing=f.missing, other=f.other, disjunctive=f.disjunctive,
                              counted=f.counted)
        for v in f.values:
            out.values.add(value=v.value, count=v.count, selected=v.selected)
        for b in f.buckets:
            bucket = out.buckets.add(count=b.count)
            if b.min is not None:
                bucket.min = b.min
            if b.max is not None:
                bucket.max = b.max


def add_arranged(h: search_pb2.Hit, hit: Any, result: SearchResult, explain: bool) -> None:
    """A hit's highlights, the rules that moved it and its sort value."""
    hit_id = hit.id
    lexical = "bm25" in hit.scores_by_source
    if hit_id in result.highlights:
        snippets = result.highlights[hit_id]
        h.lexical_match = bool(snippets) or lexical   # BM25 may match in the category or attributes: no snippet
        for sn in snippets:
            h.highlights.add(field=sn.field, fragment=sn.fragment, html=sn.html, starts=[a for a, _ in sn.spans],
                             ends=[b for _, b in sn.spans])
    h.rules.extend(result.rules.get(hit_id, ()))
    if hit_id in result.sort_values:
        h.sort_value = result.sort_values[hit_id]
    if explain and result.rules.get(hit_id):
        h.explanation += "; rules: " + ", ".join(result.rules[hit_id])
    if explain and hit_id in result.highlights and not result.highlights[hit_id]:
        h.explanation += ("; no query word in its title or description (BM25 matched its category or attributes)"
                          if lexical else "; no lexical match (only a dense source found it)")


ARM_HEADER = "x-vitrine-arm"


def requested_arm(context: grpc.ServicerContext, tenant: Tenant, served: Any) -> str | None:
    """The experiment arm a request asks for by metadata (`x-vitrine-arm: a|b`), or None for the usual assignment."""
    arm = single_value(context.invocation_metadata(), ARM_HEADER).strip().lower()
    if not arm:
        return None
    if arm not in ("a", "b"):
        raise InvalidRequest(ARM_HEADER, f"is {arm!r}; an experiment's arms are 'a' and 'b'.")
    if tenant.experiment is None or served.arm_b is None:
        raise InvalidRequest(ARM_HEADER, f"tenant {tenant.name!r} runs no experiment, so it has no arm {arm!r}.")
    return arm


class SearchServicer(search_pb2_grpc.SearchServicer):
    """Thin: proto -> SearchRequest -> the tenant's Searcher -> proto. Each tenant's searcher can be swapped atomically."""

    def __init__(self, tenants: Tenants, metrics: Metrics | None = None) -> None:
        self.tenants = tenants
        self.metrics = metrics

    @abort_on_error
    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        with self.tenants.lease(context) as tenant:
            tenant.quota.admit(request.ByteSize())
            with tenant.quota.slot():
                return self._search(tenant, request, context)

    def _search(self, tenant: Tenant, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        state, query_log = tenant.state, tenant.query_log
        served = state.served  # one bundle serves the whole request, even during a swap
        searcher = served.searcher
        req, fields = request_from_proto(request)
        check_deadline(context)
        log_features = query_log.wants_features(req.log_features)
        if log_features != req.log_features:
            req = replace(req, log_features=log_features)
        request_id = query_log.new_request_id()
        assignment = None
        with deadline(context.time_remaining()), cache_scope(tenant.name):
            arm = requested_arm(context, tenant, served)
            if arm is not None:   # one arm alone (the workbench's columns): not randomised, so credited to no arm
                result = (served.arm_b if arm == "b" else searcher).search(req, state.reading)
            elif tenant.experiment is not None and served.arm_b is not None:
                result, assignment = run_experiment(tenant.experiment, served, req, state.reading,
                                                    request.session or request_id, request_id)
            else:
                result = searcher.search(req, state.reading)
        with state.reading():
            response = self._response(searcher, req, result, fields)
        response.request_id = request_id
        query_log.log_answer(Answered(request_id, request.session, req, result, response.model_versions, assignment),
                             tenant.experiment_log)
        if self.metrics is not None:
            for stage, ms in result.timings_ms.items():
                self.metrics.stages.labels(stage).observe(ms / 1e3)
        return response

    @abort_on_error
    def Feedback(self, request: search_pb2.FeedbackRequest, context: grpc.ServicerContext) -> search_pb2.FeedbackResponse:
        with self.tenants.lease(context) as tenant:
            tenant.quota.admit(request.ByteSize())
            if not request.request_id:
                raise InvalidRequest("request_id", "is empty; quote the request_id of the SearchResponse.")
            try:
                logged = tenant.query_log.feedback(request.request_id, list(request.clicked), dict(request.dwell_ms),
                                                   tenant.experiment_log)
            except NoQuery as exc:
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
            except KeyError:
                # Request ids are kept per tenant: another tenant's id is unknown here, exactly like a forgotten one.
                raise StatusError(grpc.StatusCode.NOT_FOUND,
                                  f"request_id {request.request_id!r} is unknown or too old to log.") from None
            if not logged:   # a click nobody records is a silent loss: say how to record them
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION,
                                  "this server keeps no click log, so feedback cannot be recorded; set [logs] click_log "
                                  "= \"PATH.jsonl\" in vitrine.toml and restart with `vitrine serve --config vitrine.toml`.")
            return search_pb2.FeedbackResponse(logged=True)

    @abort_on_error
    def Info(self, request: search_pb2.InfoRequest, context: grpc.ServicerContext) -> search_pb2.InfoResponse:
        with self.tenants.lease(context) as tenant:
            tenant.quota.admit()
            return self._info(tenant)

    def _info(self, tenant: Tenant) -> search_pb2.InfoResponse:
        served = tenant.state.served
        searcher = served.searcher
        # The served stages join the manifest so `vitrine eval --ablate` can measure each one.
        stages = searcher.available_stages()
        manifest = {**searcher.bundle.manifest.to_dict(), "served_models": model_versions(searcher),
                    "served_backends": dict(served.backends), "tenant": tenant.name,
                    "quota": asdict(tenant.quota.config),
                    **({"experiment": asdict(tenant.experiment)} if tenant.experiment else {}),
                    **({"stages": {"stages": stages}} if len(stages) > 1 else {})}
        return search_pb2.InfoResponse(bundle_version=searcher.bundle.version, manifest_json=json.dumps(manifest))

    def _response(self, searcher: Searcher, req: SearchRequest, result: SearchResult, fields: list[str]) -> search_pb2.SearchResponse:
        method = req.fusion or searcher.config.fusion
        weights = {**searcher.config.weights, **req.weights}
        resp = search_pb2.SearchResponse(
            total_candidates=result.total_candidates,
            bundle_version=result.bundle_version,
            took_ms=result.timings_ms.get("total", 0.0),
            stages=result.stages,
            stage_ms=result.timings_ms,
        )
        resp.model_versions.update(model_versions(searcher))
        add_facets(resp, result)
        docstore = searcher.bundle.docstore
        for hit in result.hits:
            h = resp.hits.add(id=hit.id, score=hit.score)
            for source, sh in sorted(hit.scores_by_source.items()):
                h.sources.add(source=source, score=sh.score, rank=sh.rank)
            if fields:
                item = docstore.get(hit.id)
                stored = item.to_dict() if item is not None else {"id": hit.id}
                if "*" not in fields:
                    stored = {f: stored[f] for f in fields if f in stored}
                h.fields_json = json.dumps(stored, ensure_ascii=False)
            if req.explain and result.mode == "browse":
                h.explanation = f"browse (no query): {'by ' + req.sort + (' descending' if req.descending else '') if req.sorted_by else 'catalog order'}"
            elif req.explain:
                contrib = result.contributions.get(hit.id)
                h.explanation = explain_hit(hit, method, weights, contrib)
                if result.dropped:  # a source the request would have used, left out, and why (e.g. a weak CLIP)
                    h.explanation += "; " + "; ".join(f"{s} left out: {why}" for s, why in sorted(result.dropped.items()))
                if result.corrected:  # typo tolerance: each word no item contains, and what it was also searched as
                    h.explanation += "; searched " + ", ".join(f"{t!r} also as {f!r}" for t, f in sorted(result.corrected.items()))
                if contrib:
                    h.contributions.update(contrib)
                x = result.features.get(hit.id)
                if x is not None:
                    h.features.update({n: float(v) for n, v in zip(FEATURES, x) if v == v})  # NaN = absent
            add_arranged(h, hit, result, req.explain)
        return resp
