"""The search pipeline over an opened bundle: validate, filter, retrieve from each source, fuse, paginate."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from vitrine.encoders.base import TextEncoder, l2_normalize
from vitrine.serving.schema import check, check_positive_ints, config_from_dict
from vitrine.encoders.images import decode_image
from vitrine.indexer.bm25 import query_words
from vitrine.indexer.bundle import Bundle, item_text
from vitrine.indexer.manifest import Manifest
from vitrine.indexer.synonyms import Synonyms
from vitrine.ranking.features import QueryContext, candidate_features
from vitrine.ranking.fusion import FusionMethod, fuse
from vitrine.ranking.ltr import LTR, LtrRanker
# The request and result types live in ranking/request.py; the doors import them from here too.
from vitrine.ranking.request import InvalidRequest, SearchRequest, SearchResult, Unsupported, parse_enum
from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig, blend_scores, rerank_scores
from vitrine.ranking.types import Constraint, Hit, SourceHit, Stage

SOURCES = ("bm25", "text", "clip_text", "clip_image")


class ClipLike(TextEncoder, Protocol):
    def encode_images(self, images: list, batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchConfig:
    fusion: FusionMethod = FusionMethod.WEIGHTED_MAX
    # bm25/text measured by bench/tune_first_stage.py on scifact claims and fashion text-literal/paraphrase
    # (one setting for all three; 0.4-0.5 for bm25 is a plateau); see README "Fusion defaults".
    weights: Mapping[str, float] = field(default_factory=lambda: {"bm25": 0.45, "text": 0.55, "clip_text": 0.5, "clip_image": 1.0})
    rrf_k: int = 60
    candidates: int = 100       # depth each source retrieves before fusion
    # Composed queries: q = normalise(image + composed_text_weight * text) in CLIP space, and attribute
    # values named in the text ("in red") used as a hard filter, a soft boost, or not at all.
    composed_text_weight: float = 0.5
    constraint: Constraint = Constraint.HARD
    constraint_bonus: float = 0.3
    constraint_fields: tuple[str, ...] = ()   # empty: every attribute
    # Image and composed queries, with a CLIP that has attribute heads: each attribute the query photo is predicted
    # to have (probability >= attribute_min_prob; fields the text names are left to the text) adds
    # attribute_bonus x probability to the fused score of items that have it. 0 = off. Chosen by
    # bench/clip_settings.py on fashion image queries: bonus 0 / 0.15 / 0.3 / 0.5 at min_prob 0.5 gave
    # 0.724 / 0.810 / 0.833 / 0.840; min_prob 0.3 / 0.5 / 0.7 at bonus 0.3 gave 0.846 / 0.833 / 0.786.
    attribute_bonus: float = 0.3
    attribute_min_prob: float = 0.3
    # CLIP text joins fully when under this fraction of the query's words occur in the catalog
    # (paraphrases); above it, BM25 + MiniLM already win and clip_text's weight is scaled by literal_clip_scale.
    literal_coverage: float = 1.0
    literal_clip_scale: float = 0.0
    # CLIP text joins text queries at all only when the bundle's check of its CLIP (indexer/clip_check.py: an item's
    # text finding the item's own photo, recall@10 among up to 1,000 catalog photos, on items the CLIP never trained
    # on) beats chance by at least this much, as a share of the way from chance to perfect: (recall - chance) /
    # (1 - chance). Photo and composed queries use CLIP whatever the check says. 0 = always trust it. Measured by
    # bench/clip_trust.py, not tuned on qrels: chance is 0; `make demo`'s 3-epoch CLIP 0.077 (its text results were
    # shoes for "shirt") and the fashion CLIP on flickr8k photos outside its shop 0.061, against 0.64 / 1.0 for the
    # demo CLIP trained 8 / 14 epochs and 0.855 for the default fashion CLIP in its shop. 0.2 sits well between.
    clip_text_min_recall: float = 0.2
    # Opt-in BM25 gate: a short keyword query (at most bm25_gate_words informative words) keeps BM25 in the fusion
    # only when its best hit explains at least bm25_explain_min of the query (Bm25Index.explained_share), else the
    # dense sources rank alone. Off (0) by default: on the full fashion catalog it lifts paraphrase 0.339 -> 0.425,
    # but on a catalog without full matches (bench/regress.py's fashion subset) it drops literal 0.894 -> 0.772.
    bm25_gate_words: int = 0
    bm25_explain_min: float = 0.8
    # Typo tolerance in BM25 (indexer/vocabulary.py): a query word no item contains is also searched as the nearest
    # catalog word within Elasticsearch's AUTO edits (its weight cut by the share of letters changed), and compounds
    # the catalog writes joined or split the other way are searched as it writes them. Needs a bundle indexed with
    # its vocabulary (older ones search without corrections).
    typos: bool = True
    # A synonyms file (Solr / Elasticsearch syntax, indexer/synonyms.py) for the lexical source: "tv, television"
    # or "pc => personal computer". Read when the searcher is built, so a tenant's Reload picks up an edit. "" = none.
    synonyms: str = ""
    stages: Stage = Stage.FULL  # the deepest stage applied when a request does not say (only loaded models run)
    default_k: int = 10
    max_k: int = 1000
    max_offset: int = 10_000
    max_text_chars: int = 2048
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchConfig:
        cfg = config_from_dict(cls, d, "search")
        for name, w in cfg.weights.items():
            check(name in SOURCES, f"search.weights.{name}", f"a source ({', '.join(SOURCES)})", name)
            check(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0, f"search.weights.{name}",
                  "a non-negative number", w)
        check(cfg.attribute_bonus >= 0, "search.attribute_bonus", "a non-negative number", cfg.attribute_bonus)
        check(0 <= cfg.attribute_min_prob <= 1, "search.attribute_min_prob", "a probability in [0, 1]", cfg.attribute_min_prob)
        check(0 <= cfg.clip_text_min_recall <= 1, "search.clip_text_min_recall", "a number in [0, 1]",
              cfg.clip_text_min_recall)
        check_positive_ints(cfg, "search", ("rrf_k", "candidates", "default_k", "max_k", "max_text_chars",
                                            "max_image_bytes", "max_image_pixels"))
        # A [search.weights] table overrides the sources it names; the others keep their defaults.
        return replace(cfg, weights={**cls().weights, **{k: float(v) for k, v in cfg.weights.items()}})


def clip_text_trust(manifest: Manifest, min_recall: float) -> tuple[bool, str]:
    """Whether the bundle's CLIP text tower may join text queries, and why, from its check in the manifest.

    A bundle without a check (indexed before the check existed) keeps the earlier behaviour, CLIP text joining as the
    coverage rule says: its CLIP was what its operator chose and measured, and an upgrade should not change served
    results silently (serving/assemble.py logs that a re-index would check it). A check that could not be measured (no
    item has both a photo and text) does not pass: nothing shows that the text tower finds anything.
    """
    clip = manifest.models.get("clip")
    if clip is None:
        return False, "this bundle has no CLIP"
    check = clip.check
    if min_recall <= 0:
        return True, "[search] clip_text_min_recall = 0: CLIP text joins whatever its check says"
    if check is None:
        return True, "this bundle has no CLIP check (indexed before it existed): CLIP text joins as before"
    recall = check.get("text_to_image_recall@10")
    if recall is None:
        return False, f"its CLIP check was not measured ({check.get('how', 'no reason recorded')})"
    chance = float(check.get("chance", 0.0))
    above = (recall - chance) / (1 - chance) if chance < 1 else 0.0
    verdict = "passes" if above >= min_recall else "is below"
    return above >= min_recall, (f"its CLIP check {verdict} [search] clip_text_min_recall = {min_recall:g}: "
                                 f"text->image recall@10 {recall:.3f} on {check.get('queries')} catalog items, chance "
                                 f"{chance:.3f}, so {above:.3f} of the way from chance to perfect")


def _respell(text: str, corrected: Mapping[str, str]) -> str:
    """`text` with each corrected word (whole words, any case) replaced by its catalog spelling."""
    for typo, fix in corrected.items():
        text = re.sub(rf"(?<!\w){re.escape(typo)}(?!\w)", fix, text, flags=re.IGNORECASE)
    return text


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
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        k = self._validate(req)
        image = None
        if req.image:
            image = decode_image(req.image, self.config.max_image_bytes, self.config.max_image_pixels)
            if "clip_image" not in self.available_sources():
                raise Unsupported("image: this bundle has no CLIP image index, so it cannot answer image queries; "
                                  "build one with `vitrine index --clip-model`.")
        text = req.text.strip()
        mode = "composed" if image is not None and text else "image" if image is not None else "text"
        sources = self._active_sources(req, mode)
        dropped: dict[str, str] = {}
        # A request that names clip_text (in sources or weights) gets it; otherwise the bundle's check decides.
        if mode == "text" and "clip_text" in sources and not req.sources and "clip_text" not in req.weights:
            trusted, why = clip_text_trust(self.bundle.manifest, self.config.clip_text_min_recall)
            if not trusted:
                sources.remove("clip_text")
                dropped["clip_text"] = why
        queries: dict[str, np.ndarray] = {}  # source -> (1, D) query vector
        fixes, corrected = self._corrected(text, sources)
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
        with reading():
            fused, constraints, predicted, items = self._first_stage(req, text, mode, sources, queries, seen, timings, fixes)
        query = QueryContext(text, mode, dict(req.filters), {}, self.config.candidates)
        ranked, applied, features, contributions = self._second_stage(req, query, fused, items, timings, reading)
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return SearchResult(hits=ranked[req.offset:req.offset + k], total_candidates=len(fused),
                            timings_ms=timings, bundle_version=self.bundle.version, constraints=constraints,
                            predicted=predicted, mode=mode, stages=applied, features=features, contributions=contributions,
                            dropped=dropped, corrected=corrected)

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

    def _first_stage(self, req: SearchRequest, text: str, mode: str, sources: list[str], queries: Mapping[str, np.ndarray],
                     seen: Mapping[str, tuple[str, float]], timings: dict[str, float],
                     fixes: Mapping[str, tuple[str, int]] | None = None,
                     ) -> tuple[list[Hit], dict[str, str], dict[str, tuple[str, float]], dict[str, Any]]:
        """Filters, BM25 and ANN retrieval, fusion and boosts over the encoded query; also fetches the items the
        second stage will read. Runs under the live index's read lock."""
        k = req.k or self.config.default_k
        try:
            allowed = self.bundle.docstore.allowed(req.filters, req.price_min, req.price_max)
        except ValueError as exc:
            raise InvalidRequest("filters", str(exc).removeprefix("filters: ")) from None
        constraints, constraint_mode = {}, Constraint(req.constraint or self.config.constraint)
        if mode == "composed" and constraint_mode is not Constraint.OFF:
            constraints = self.bundle.docstore.mentioned_values(text, self.config.constraint_fields)
            if constraints and constraint_mode is Constraint.HARD:
                narrowed = self.bundle.docstore.allowed({**req.filters, **constraints}, req.price_min, req.price_max)
                if narrowed is not None and len(narrowed):
                    allowed = narrowed
                else:
                    constraint_mode = Constraint.SOFT  # nothing matches every named value: rank by them instead
        predicted = {f: vp for f, vp in seen.items() if f not in constraints}  # fields the text names are the text's
        exclude = set(req.exclude_ids)
        depth = max(self.config.candidates, req.offset + k) + len(exclude)
        lists: dict[str, list[tuple[str, float]]] = {}
        if "bm25" in sources and text:
            t0 = time.perf_counter()
            also = tuple(self.synonyms.expand(text)) if self.synonyms is not None else ()
            pairs = self.bundle.bm25.search(text, depth, req.filters, req.price_min, req.price_max, self.config.typos, also,
                                            fixes)
            lists["bm25"] = self._to_ids(pairs, exclude)
            timings["bm25"] = (time.perf_counter() - t0) * 1e3
        for source, index in (("text", "text"), ("clip_text", "clip_image"), ("clip_image", "clip_image")):
            if source in queries:
                t0 = time.perf_counter()
                lists[source] = self._ann(index, queries[source], depth, allowed, exclude)
                timings[f"{source}_ann"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        weights = {**self.config.weights, **req.weights}
        clip_rule = "clip_text" in lists and "clip_text" not in req.weights and ("bm25" in lists or "text" in lists)
        if clip_rule:
            coverage = self.bundle.bm25.term_coverage(text)
            timings["coverage"] = (time.perf_counter() - t0) * 1e3
            if coverage >= self.config.literal_coverage:
                weights["clip_text"] = weights.get("clip_text", 0.0) * self.config.literal_clip_scale
        if (lists.get("bm25") and len(lists) > 1 and "bm25" not in req.weights
                and 0 < len(self.bundle.bm25.query_words(text)) <= self.config.bm25_gate_words):
            t1 = time.perf_counter()
            if self.bundle.bm25.explained_share(text, lists["bm25"][0][1]) < self.config.bm25_explain_min:
                weights["bm25"] = 0.0
            timings["bm25_gate"] = (time.perf_counter() - t1) * 1e3
        fused = fuse(lists, req.fusion or self.config.fusion, weights, self.config.rrf_k)
        if constraints and constraint_mode is Constraint.SOFT:
            fused = self._boost(fused, {f: (v, self.config.constraint_bonus) for f, v in constraints.items()})
        if predicted:
            fused = self._boost(fused, {f: (v, self.config.attribute_bonus * p) for f, (v, p) in predicted.items()},
                                source="attributes")
        timings["fusion"] = (time.perf_counter() - t0) * 1e3
        depth2 = self.rerank.depth if req.rerank_depth is None else req.rerank_depth
        later = self.reranker is not None or self.ranker is not None or req.log_features  # a second stage may read them
        items = {h.id: self.bundle.docstore.get(h.id) for h in fused[:depth2]} if later else {}
        return fused, constraints, predicted, items

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

    def _boost(self, hits: list[Hit], bonus: Mapping[str, tuple[str, float]], source: str = "") -> list[Hit]:
        """Soft constraints: field -> (value, bonus); an item with that attribute value gains the bonus in its fused
        score. With `source`, the total bonus is recorded under that name for explanations."""
        docstore = self.bundle.docstore
        out = []
        for h in hits:
            item = docstore.get(h.id)
            gain = 0.0 if item is None else sum(
                b for f, (v, b) in bonus.items()
                if any(k.casefold() == f and " ".join(str(x).casefold().split()) == v for k, x in item.attributes.items()))
            by = {**h.scores_by_source, source: SourceHit(gain, 0)} if source and gain else h.scores_by_source
            out.append(Hit(h.id, h.score + gain, by))
        return sorted(out, key=lambda h: (-h.score, h.id))

    def _ann(self, source: str, xq: np.ndarray, depth: int, allowed: np.ndarray | None, exclude: set[str]) -> list[tuple[str, float]]:
        if allowed is not None and len(allowed) == 0:
            return []
        D, I = self.bundle.vectors[source].search(xq, depth, allowed)
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

    def _active_sources(self, req: SearchRequest, mode: str = "text") -> list[str]:
        available = self.available_sources()
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
        cfg = self.config
        if not req.text.strip() and not req.image:
            raise InvalidRequest("text", "the query is empty; give text, an image, or both.")
        if len(req.text) > cfg.max_text_chars:
            raise InvalidRequest("text", f"is {len(req.text)} characters; the limit is {cfg.max_text_chars}.")
        if len(req.image) > cfg.max_image_bytes:
            raise InvalidRequest("image", f"is {len(req.image)} bytes; the limit is {cfg.max_image_bytes}.")
        k = req.k or cfg.default_k
        if k < 0 or k > cfg.max_k:
            raise InvalidRequest("k", f"must be between 1 and {cfg.max_k}, got {req.k}.")
        if req.offset < 0 or req.offset > cfg.max_offset:
            raise InvalidRequest("offset", f"must be between 0 and {cfg.max_offset}, got {req.offset}.")
        for name, value in (("price.min", req.price_min), ("price.max", req.price_max)):
            if value is not None and not np.isfinite(value):
                raise InvalidRequest(name, f"must be a finite number, got {value}.")
        if req.price_min is not None and req.price_max is not None and req.price_min > req.price_max:
            raise InvalidRequest("price", f"min {req.price_min} is greater than max {req.price_max}.")
        if req.constraint:
            parse_enum(Constraint, req.constraint, "constraint")
        if req.stages:
            stage = parse_enum(Stage, req.stages, "stages")
            if stage not in self.available_stages():
                raise InvalidRequest("stages", f"stage {stage.value!r} needs a "
                                               f"{'cross-encoder' if stage is Stage.CROSS else 'ranker'} and this server has "
                                               f"none loaded; available: {', '.join(self.available_stages())}.")
        if req.rerank_depth is not None and not 0 <= req.rerank_depth <= self.rerank.max_depth:
            raise InvalidRequest("rerank_depth", f"must be between 0 and {self.rerank.max_depth}, got {req.rerank_depth}.")
        if req.composed_text_weight is not None and not (np.isfinite(req.composed_text_weight) and req.composed_text_weight >= 0):
            raise InvalidRequest("composed_text_weight", f"must be a non-negative finite number, got {req.composed_text_weight}.")
        for name, w in req.weights.items():
            if name not in SOURCES:
                raise InvalidRequest("weights", f"unknown source {name!r}; sources are {', '.join(SOURCES)}.")
            if not np.isfinite(w) or w < 0:
                raise InvalidRequest(f"weights.{name}", f"must be a non-negative finite number, got {w}.")
        if len(req.exclude_ids) > cfg.max_k:
            raise InvalidRequest("exclude_ids", f"has {len(req.exclude_ids)} ids; the limit is {cfg.max_k}.")
        return k
