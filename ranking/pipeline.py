"""The search pipeline over an opened bundle: validate, filter, retrieve from each source, fuse, paginate."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from vitrine.encoders.base import TextEncoder, l2_normalize
from vitrine.encoders.images import decode_image
from vitrine.indexer.bm25 import Restrict, query_words
from vitrine.indexer.columns import FilterError
from vitrine.indexer.multiphoto import PHOTO_SOURCE, photo_id, search_items
from vitrine.indexer.bundle import Bundle, item_text
from vitrine.indexer.synonyms import Synonyms
from vitrine.ranking.attributes import boost, same_photo
from vitrine.ranking.arrange import (CANDIDATES, CATALOG, arrange, browse, check_like, check_shop_fields, hit_docnos,
                                     needs_arranging, without_field)
from vitrine.ranking.features import QueryContext, candidate_features
from vitrine.ranking.fusion import fuse
from vitrine.ranking.ltr import LTR, LtrRanker
# The request and result types live in ranking/request.py; the doors import them from here too.
from vitrine.ranking.request import SOURCES, InvalidRequest, SearchRequest, SearchResult, Unsupported, validate
from vitrine.ranking.rules import Rules, apply_boosts
from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig, blend_scores, rerank_scores
# The [search] section lives in ranking/search_config.py; the doors import it from here too.
from vitrine.ranking.search_config import SearchConfig, clip_text_trust  # noqa: F401
from vitrine.ranking.types import Constraint, Hit, SourceHit, Stage


class ClipLike(TextEncoder, Protocol):
    def encode_images(self, images: list, batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


def _respell(text: str, corrected: Mapping[str, str]) -> str:
    """`text` with each corrected word (whole words, any case) replaced by its catalog spelling."""
    for typo, fix in corrected.items():
        text = re.sub(rf"(?<!\w){re.escape(typo)}(?!\w)", fix, text, flags=re.IGNORECASE)
    return text


@dataclass(frozen=True)
class Encoded:
    """A query as the first stage reads it: its text, mode, sources, query vectors, what its photo shows, and
    BM25's typo corrections."""

    text: str
    mode: str
    sources: tuple[str, ...]
    queries: Mapping[str, np.ndarray]
    seen: Mapping[str, tuple[str, float]]
    fixes: Mapping[str, tuple[str, int]]


@dataclass(frozen=True)
class FirstStage:
    fused: list[Hit]
    constraints: dict[str, str]
    predicted: dict[str, tuple[str, float]]
    items: dict[str, Any]                 # the items the second stage reads
    moved: dict[str, list[str]]           # id -> the merchandising boosts that changed its score


class Searcher:
    """Answers SearchRequests over one bundle with the given encoders; safe to call from many threads."""

    def __init__(self, bundle: Bundle, text_encoder: TextEncoder | None, config: SearchConfig = SearchConfig(),
                 clip_encoder: ClipLike | None = None, reranker: CrossEncoderReranker | None = None,
                 ranker: LtrRanker | None = None, rerank: RerankConfig | None = None) -> None:
        self.bundle = bundle
        self.text_encoder = text_encoder
        self.clip_encoder = clip_encoder
        self.config = config
        self.reranker = reranker
        self.ranker = ranker
        self.rerank = rerank or (reranker.config if reranker is not None else RerankConfig())
        self.synonyms = Synonyms.load(config.synonyms) if config.synonyms else None

    def with_second_stage(self, reranker: CrossEncoderReranker | None = None, ranker: LtrRanker | None = None,
                          rerank: RerankConfig | None = None) -> Searcher:
        """The same bundle and encoders with other second-stage models (None keeps this one's): an experiment's arm."""
        return self._copy(reranker=reranker or self.reranker, ranker=ranker or self.ranker,
                          rerank=rerank if reranker is not None and rerank is not None else self.rerank)

    def with_config(self, config: SearchConfig) -> Searcher:
        """The same bundle and models searched with other [search] settings (a sweep in bench/, no reload)."""
        return self._copy(config=config)

    def _copy(self, **changes: Any) -> Searcher:
        args = {"bundle": self.bundle, "text_encoder": self.text_encoder, "config": self.config,
                "clip_encoder": self.clip_encoder, "reranker": self.reranker, "ranker": self.ranker, "rerank": self.rerank}
        return Searcher(**{**args, **changes})

    def available_stages(self) -> list[str]:
        return [Stage.FIRST, *([Stage.CROSS] if self.reranker is not None else []),
                *([Stage.FULL] if self.ranker is not None else [])]

    def available_sources(self) -> list[str]:
        out = ["bm25"]
        if self.text_encoder is not None and "text" in self.bundle.vectors:
            out.append("text")
        if self.clip_encoder is not None and "clip_image" in self.bundle.vectors:
            out += ["clip_text", "clip_image"]
        return out

    def search(self, req: SearchRequest, reading: Callable[[], AbstractContextManager] = nullcontext) -> SearchResult:
        """Answers one request. Encoding and the cross-encoder run outside `reading()` (the live index's read lock):
        only index and docstore reads hold it, so a write waiting for the lock never waits on a model."""
        try:
            return self._search(req, reading)
        except FilterError as exc:  # a filter, facet or sort naming a field wrongly, found where the columns are read
            raise InvalidRequest(exc.field, str(exc)) from None

    def _search(self, req: SearchRequest, reading: Callable[[], AbstractContextManager]) -> SearchResult:
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        with reading():
            k = self._validate(req)
            req = replace(req, k=k)
            rules = self.config.rules.for_query(req.text).then(req.rules) if not req.no_rules else req.rules
            if req.browse:
                arranged, total, moved = browse(self.bundle, req, rules, timings)
                timings["total"] = (time.perf_counter() - t_start) * 1e3
                return SearchResult(hits=arranged.hits[req.offset:req.offset + k], total_candidates=total,
                                    timings_ms=timings, bundle_version=self.bundle.version, mode="browse",
                                    facets=arranged.facets, facet_scope=CATALOG if req.facets else "", rules=moved,
                                    sort_values=arranged.sort_values, highlights=arranged.highlights)
            liked = self._liked(req) if req.like_id else {}
        image = None
        if req.image:
            image = decode_image(req.image, self.config.max_image_bytes, self.config.max_image_pixels)
            if "clip_image" not in self.available_sources():
                raise Unsupported("image: this bundle has no CLIP image index, so it cannot answer image queries; "
                                  "build one with `vitrine index --clip-model`.")
        text = req.text.strip()
        mode = "composed" if image is not None and text else "image" if image is not None else "text"
        sources = self._active_sources(req, mode, liked)
        dropped: dict[str, str] = {}
        # A request that names clip_text (in sources or weights) gets it; otherwise the bundle's check decides.
        if mode == "text" and "clip_text" in sources and not req.sources and "clip_text" not in req.weights:
            trusted, why = clip_text_trust(self.bundle.manifest, self.config.clip_text_min_recall)
            if not trusted:
                sources.remove("clip_text")
                dropped["clip_text"] = why
        fixes, corrected = self._corrected(text, sources)
        queries, seen = self._encode(req, text, image, mode, sources, corrected, timings)
        queries = {s: x for s, x in {**queries, **self._like_vectors(liked, queries)}.items() if s in sources}
        if req.like_id:
            mode = "like"
        encoded = Encoded(text, mode, tuple(sources), queries, seen, fixes)
        with reading():
            first = self._first_stage(req, encoded, timings, rules)
        query = QueryContext(text, mode, dict(req.filters), {}, self.config.candidates)
        ranked, applied, features, contributions = self._second_stage(req, query, first.fused, first.items, timings, reading)
        with reading():
            t0 = time.perf_counter()
            arranged = arrange(self.bundle, req, ranked, rules, first.moved,
                               lambda field: hit_docnos(self.bundle, self._first_stage(
                                   without_field(req, field), encoded, {}, rules).fused),
                               fixes)
            if needs_arranging(req, rules):
                timings["arrange"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return SearchResult(hits=arranged.hits[req.offset:req.offset + k], total_candidates=len(arranged.hits),
                            timings_ms=timings, bundle_version=self.bundle.version, constraints=first.constraints,
                            predicted=first.predicted, mode=mode, stages=applied, features=features,
                            contributions=contributions, dropped=dropped, corrected=corrected, facets=arranged.facets,
                            facet_scope=CANDIDATES if req.facets else "", highlights=arranged.highlights,
                            rules=first.moved, sort_values=arranged.sort_values)

    def _encode(self, req: SearchRequest, text: str, image: Any, mode: str, sources: list[str], corrected: Mapping[str, str],
                timings: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, float]]]:
        """The query vector of each dense source ((1, D) each), and what the query photo shows (attribute heads)."""
        queries: dict[str, np.ndarray] = {}
        # The dense encoders read the query as spelt right: a typo splits a word into pieces no item's text has.
        dense_text = _respell(text, corrected)
        if "text" in sources and text:
            t0 = time.perf_counter()
            queries["text"] = self.text_encoder.encode_texts([dense_text])  # (1, D)
            timings["text_encode"] = (time.perf_counter() - t0) * 1e3
        clip_text = None
        if ("clip_text" in sources or mode == "composed") and text and self.clip_encoder is not None:
            t0 = time.perf_counter()
            clip_text = self.clip_encoder.encode_texts([dense_text])  # (1, D)
            timings["clip_text_encode"] = (time.perf_counter() - t0) * 1e3
            if "clip_text" in sources:
                queries["clip_text"] = clip_text
        seen: dict[str, tuple[str, float]] = {}
        if "clip_image" in sources and image is not None:
            t0 = time.perf_counter()
            xq = self.clip_encoder.encode_images([image])  # (1, D)
            seen = self._predicted_attributes(xq)
            if mode == "composed":
                w = self.config.composed_text_weight if req.composed_text_weight is None else req.composed_text_weight
                xq = l2_normalize(xq + w * clip_text)
            queries["clip_image"] = xq
            timings["clip_image_encode"] = (time.perf_counter() - t0) * 1e3
        return queries, seen

    def _like_vectors(self, liked: Mapping[str, np.ndarray | str], queries: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """A like_id request's vectors, each joined by the query text's vector when text came with it ("like this, but
        in red": the two added and normalised, as a composed query joins a photo and its text)."""
        out = {}
        for source, x in liked.items():
            if isinstance(x, str):
                x = self.text_encoder.encode_texts([x])
            out[source] = l2_normalize(x + queries[source]) if source in queries else x
        return out

    def _liked(self, req: SearchRequest) -> dict[str, np.ndarray | str]:
        """A like_id request's query vectors: the item's stored text vector and photo (or CLIP stand-in) vector; its
        text where the text index keeps no exact vectors (the caller encodes it). Under the read lock."""
        docno = check_like(self.bundle, req)
        out = {}
        for source in ("text", "clip_image"):
            index = self.bundle.vectors.get(source)
            if index is None or source not in self.available_sources():
                continue
            # The main photo, else the first extra photo that was readable when the item was indexed.
            for vid in [docno] + [photo_id(docno, j) for j in range(1, 1 + (self.bundle.max_extra_photos
                                                                               if source == PHOTO_SOURCE else 0))]:
                try:
                    x = index.reconstruct(np.array([vid]))
                except RuntimeError:  # no vector under this id
                    continue
                if x is not None:
                    out[source] = l2_normalize(x.astype(np.float32))
                break
        if "text" not in out and "text" in self.available_sources():   # a PQ-only index keeps no exact vectors
            item = self.bundle.docstore.items[docno]
            if item.has_text():   # encoded by the caller, outside the read lock
                out["text"] = item_text(item)
        return out

    def _corrected(self, text: str, sources: list[str]) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        """Found once per query: BM25's corrections (typo -> (catalog word, edits)) and the dense encoders'
        respellings (typo -> word), for the words nothing knows (indexer/bm25.py)."""
        if not (self.config.typos and text and set(sources) & {"bm25", "text", "clip_text"}):
            return {}, {}
        bm25, words = self.bundle.bm25, query_words(text)
        unknown = bm25.unknown_words(words)
        if not unknown:
            return {}, {}
        fixes = bm25.corrections(words, unknown)
        return fixes, bm25.respellings(unknown, fixes)

    def _first_stage(self, req: SearchRequest, q: Encoded, timings: dict[str, float], rules: Rules) -> FirstStage:
        """Filters, BM25 and ANN retrieval, fusion, boosts and the merchandising boosts over the encoded query; also
        fetches the items the second stage will read. Runs under the live index's read lock."""
        allowed, constraints, constraint_mode = self._allowed(req, q)
        predicted = {f: vp for f, vp in q.seen.items() if f not in constraints}  # fields the text names are the text's
        exclude = set(req.exclude_ids) | set(rules.hide) | ({req.like_id} if req.like_id else set())
        lists = self._lists(req, q, allowed, exclude, timings)
        t0 = time.perf_counter()
        weights = {**self.config.weights, **req.weights}
        clip_rule = "clip_text" in lists and "clip_text" not in req.weights and ("bm25" in lists or "text" in lists)
        if clip_rule:
            coverage = self.bundle.bm25.term_coverage(q.text)
            timings["coverage"] = (time.perf_counter() - t0) * 1e3
            if coverage >= self.config.literal_coverage:
                weights["clip_text"] = weights.get("clip_text", 0.0) * self.config.literal_clip_scale
        if (lists.get("bm25") and len(lists) > 1 and "bm25" not in req.weights
                and 0 < len(self.bundle.bm25.query_words(q.text)) <= self.config.bm25_gate_words):
            t1 = time.perf_counter()
            if self.bundle.bm25.explained_share(q.text, lists["bm25"][0][1]) < self.config.bm25_explain_min:
                weights["bm25"] = 0.0
            timings["bm25_gate"] = (time.perf_counter() - t1) * 1e3
        fused = fuse(lists, req.fusion or self.config.fusion, weights, self.config.rrf_k)
        if constraints and constraint_mode is Constraint.SOFT:
            fused = boost(fused, self.bundle.docstore, {f: (v, self.config.constraint_bonus) for f, v in constraints.items()})
        if predicted:
            shown = same_photo(fused, q.mode, predicted, self.config.same_photo_min_cosine)
            fused = boost(fused, self.bundle.docstore, {f: (v, self.config.attribute_bonus * p)
                                                        for f, (v, p) in predicted.items()}, "attributes", shown)
        moved: dict[str, list[str]] = {}
        if rules.boost:
            fused = apply_boosts(fused, rules.boost, self.bundle.docstore.columns, self.bundle.docstore.docno_by_id, moved)
        if rules.min_score is not None:
            fused = [h for h in fused if h.score >= rules.min_score]
        timings["fusion"] = (time.perf_counter() - t0) * 1e3
        depth2 = self.rerank.depth if req.rerank_depth is None else req.rerank_depth
        later = self.reranker is not None or self.ranker is not None or req.log_features  # a second stage may read them
        items = {h.id: self.bundle.docstore.get(h.id) for h in fused[:depth2]} if later else {}
        return FirstStage(fused, constraints, predicted, items, moved)

    def _allowed(self, req: SearchRequest, q: Encoded) -> tuple[np.ndarray | None, dict[str, str], Constraint]:
        """The doc numbers the filters allow (None: all), and a composed query's named values ("in red") as hard
        constraints (narrowing them) or soft ones."""
        docstore = self.bundle.docstore
        try:
            allowed = docstore.allowed(req.filters, req.price_min, req.price_max, req.where)
        except FilterError:
            raise
        except ValueError as exc:
            raise InvalidRequest("filters", str(exc).removeprefix("filters: ")) from None
        constraints, constraint_mode = {}, Constraint(req.constraint or self.config.constraint)
        if q.mode == "composed" and constraint_mode is not Constraint.OFF:
            constraints = docstore.mentioned_values(q.text, self.config.constraint_fields)
            if constraints and constraint_mode is Constraint.HARD:
                narrowed = docstore.allowed({**req.filters, **constraints}, req.price_min, req.price_max, req.where)
                if narrowed is not None and len(narrowed):
                    allowed = narrowed
                else:
                    constraint_mode = Constraint.SOFT  # nothing matches every named value: rank by them instead
        return allowed, constraints, constraint_mode

    def _lists(self, req: SearchRequest, q: Encoded, allowed: np.ndarray | None, exclude: set[str],
               timings: dict[str, float]) -> dict[str, list[tuple[str, float]]]:
        """Each source's (id, score) list, best first, `depth` deep."""
        # A deeper page retrieves deeper; a sorted request orders one candidate set whatever the page, so its pages
        # never overlap (a deeper retrieval would bring other items into the sort).
        depth = max(self.config.candidates, req.k if req.sorted_by else req.offset + req.k) + len(exclude)
        lists: dict[str, list[tuple[str, float]]] = {}
        if "bm25" in q.sources and q.text:
            t0 = time.perf_counter()
            also = tuple(self.synonyms.expand(q.text)) if self.synonyms is not None else ()
            restrict = Restrict(req.filters, req.price_min, req.price_max, allowed if req.where else None)
            pairs = self.bundle.bm25.search(q.text, depth, restrict, self.config.typos, also, q.fixes)
            lists["bm25"] = self._to_ids(pairs, exclude)
            timings["bm25"] = (time.perf_counter() - t0) * 1e3
        for source, index in (("text", "text"), ("clip_text", "clip_image"), ("clip_image", "clip_image")):
            if source in q.queries:
                t0 = time.perf_counter()
                lists[source] = self._ann(index, q.queries[source], depth, allowed, exclude)
                timings[f"{source}_ann"] = (time.perf_counter() - t0) * 1e3
        return lists

    def _second_stage(self, req: SearchRequest, query: QueryContext, fused: list[Hit], items: Mapping[str, Any],
                      timings: dict[str, float], reading: Callable[[], AbstractContextManager] = nullcontext,
                      ) -> tuple[list[Hit], str, dict[str, np.ndarray], dict[str, dict[str, float]]]:
        """Cross-encoder, then LightGBM, over the top rerank_depth fused hits; deeper hits keep fused order."""
        stages = Stage(req.stages or self.config.stages)
        depth = self.rerank.depth if req.rerank_depth is None else req.rerank_depth
        cross = stages in (Stage.CROSS, Stage.FULL) and self.reranker is not None and bool(query.text)
        ltr = stages is Stage.FULL and self.ranker is not None
        if depth == 0 or not fused or not (cross or ltr or req.log_features):
            return fused, Stage.FIRST, {}, {}
        t0 = time.perf_counter()
        hits = [Hit(h.id, h.score, {**h.scores_by_source, "fused": SourceHit(h.score, r)})
                for r, h in enumerate(fused[:depth], start=1)] + fused[depth:]
        n = min(depth, len(fused))
        applied = Stage.FIRST
        if cross:
            docs = [item_text(items[h.id]) if items[h.id] is not None else "" for h in hits[:n]]
            cross_scores = self.reranker.score(query.text, docs)
            blended = blend_scores(np.array([h.score for h in hits[:n]]), cross_scores, self.reranker.blend)
            hits = rerank_scores(blended, hits, raw=cross_scores)
            timings["cross"] = (time.perf_counter() - t0) * 1e3
            applied = Stage.CROSS
        features: dict[str, np.ndarray] = {}
        contributions: dict[str, dict[str, float]] = {}
        if ltr or req.log_features:
            t0 = time.perf_counter()
            with reading():
                mentioned = self.bundle.docstore.mentioned_values(query.text) if query.text else {}
            query = QueryContext(query.text, query.mode, query.filters, mentioned, query.depth)
            X = candidate_features(query, hits[:n], [items[h.id] for h in hits[:n]])
            features = {h.id: x for h, x in zip(hits[:n], X)}
            timings["features"] = (time.perf_counter() - t0) * 1e3
        if ltr:
            t0 = time.perf_counter()
            head = hits[:n]
            hits = rerank_scores(self.ranker.predict(X), hits, LTR)
            if req.explain:
                contrib, names = self.ranker.contributions(X)
                contributions = {h.id: {name: float(c) for name, c in zip(names, row)} for h, row in zip(head, contrib)}
            timings["ltr"] = (time.perf_counter() - t0) * 1e3
            applied = Stage.FULL
        return hits, applied, features, contributions

    def _predicted_attributes(self, xq: np.ndarray) -> dict[str, tuple[str, float]]:
        """What the query photo looks like, per the CLIP's attribute heads: the confident fields."""
        heads = getattr(self.clip_encoder, "attribute_heads", None)
        if heads is None or self.config.attribute_bonus <= 0:
            return {}
        return {f.casefold(): (" ".join(v.casefold().split()), p) for f, (v, p) in heads.predict(xq)[0].items()
                if p >= self.config.attribute_min_prob}

    def _ann(self, source: str, xq: np.ndarray, depth: int, allowed: np.ndarray | None, exclude: set[str]) -> list[tuple[str, float]]:
        if allowed is not None and len(allowed) == 0:
            return []
        # Several photos per item (indexer/multiphoto.py): an item scores by its best photo and comes back once.
        max_extra = self.bundle.max_extra_photos if source == PHOTO_SOURCE else 0
        D, I = search_items(self.bundle.vectors[source], xq, depth, allowed, max_extra)
        pairs = [(int(i), float(d)) for d, i in zip(D[0], I[0]) if i >= 0]
        return self._to_ids(pairs, exclude)

    def _to_ids(self, pairs: list[tuple[int, float]], exclude: set[str]) -> list[tuple[str, float]]:
        items = self.bundle.docstore.items
        out = []
        for docno, score in pairs:
            item = items.get(docno)
            # A doc number missing from the docstore was deleted; never return the ghost.
            if item is not None and item.id not in exclude:
                out.append((item.id, score))
        return out

    def _active_sources(self, req: SearchRequest, mode: str = "text", liked: Mapping[str, np.ndarray] | None = None,
                        ) -> list[str]:
        available = self.available_sources()
        if liked:
            # More like this: the item's own vectors, and BM25 and the text encoder for text sent with it.
            wanted = [s for s in available if s in liked or (s == "bm25" and req.text.strip())]
            return [s for s in wanted if not req.sources or s in req.sources]
        if not req.sources:
            # Words like "the same but in red" mean nothing to BM25 on their own: composed queries go through CLIP.
            wanted = {"text": ("bm25", "text", "clip_text"), "image": ("clip_image",), "composed": ("clip_image",)}[mode]
            return [s for s in available if s in wanted]
        for s in req.sources:
            if s not in SOURCES:
                raise InvalidRequest("sources", f"unknown source {s!r}; sources are {', '.join(SOURCES)}.")
            if s not in available:
                raise InvalidRequest("sources", f"source {s!r} is not available in this bundle; available: {', '.join(available)}.")
        return list(req.sources)

    def _validate(self, req: SearchRequest) -> int:
        k = validate(req, self.config, self.available_stages(), self.rerank.max_depth)
        check_shop_fields(self.bundle, req)
        return k
