"""Assembles a Searcher from a bundle and its models: what the server, the evaluator and the trainers all open."""
from __future__ import annotations

import logging

from vitrine.encoders.config import EncoderConfig
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle
from vitrine.ranking.pipeline import SearchConfig, Searcher
from vitrine.ranking.rerank import RerankConfig

log = logging.getLogger("vitrine")


def open_searcher(bundle_path: str, *, ann: AnnConfig = AnnConfig(), encoders: EncoderConfig = EncoderConfig(),
                  search: SearchConfig = SearchConfig(), rerank: RerankConfig = RerankConfig(),
                  reranker: str | None = None, ranker: str | None = None) -> Searcher:
    """Opens a bundle with the encoders its manifest names and the optional second-stage models, warmed up."""
    bundle = Bundle(bundle_path, ann=ann)
    encoder = None
    if "text" in bundle.vectors:
        from vitrine.encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(bundle.manifest["models"]["text"]["name"], device=encoders.device)
        encoder.encode_texts(["warm up"])  # the first call pays one-off costs; not a user's query
    clip = None
    if "clip" in bundle.manifest.get("models", {}):
        from vitrine.encoders.clip import ClipEncoder

        clip = ClipEncoder(bundle.manifest["models"]["clip"]["name"], device=encoders.device)
        clip.encode_texts(["warm up"])
    cross = ltr = None
    if reranker:
        from vitrine.ranking.rerank import CrossEncoderReranker

        cross = CrossEncoderReranker(reranker, rerank, device=encoders.device)
        cross.score("warm up", ["warm up"])
    if ranker:
        from vitrine.ranking.ltr import LtrRanker

        ltr = LtrRanker(ranker)
        if ltr.meta.get("reranker") and cross is None:
            log.warning("ranker %s was trained with cross-encoder scores but no reranker is loaded; "
                        "its cross_* features will be missing", ranker)
    return Searcher(bundle, encoder, search, clip_encoder=clip, reranker=cross, ranker=ltr, rerank=rerank)
