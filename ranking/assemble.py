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
                  reranker: str | None = None, ranker: str | None = None, batching: bool = True) -> Searcher:
    """Opens a bundle with the encoders its manifest names and the optional second-stage models, warmed up.

    The text encoder, both CLIP towers and the cross-encoder run on the backend `encoders.backend` picks (encoders/onnx.py:
    "auto" = the fastest exported variant within `max_backend_loss` nDCG@10 of torch); with `batching`, query
    encodings of concurrent requests are micro-batched and cached (encoders/batching.py).
    """
    from vitrine.encoders import onnx
    from vitrine.encoders.batching import BatchingEncoder
    from vitrine.indexer.bundle import CLIP_VARIANTS, TEXT_VARIANTS

    from vitrine.encoders.base import pick_device

    bundle = Bundle(bundle_path, ann=ann)
    backends: dict[str, str] = {}
    # The ONNX variants run on the CPU: with a GPU, "auto" keeps the torch models on it.
    requested = encoders.backend if encoders.backend != onnx.AUTO or pick_device(encoders.device) == "cpu" else "torch"

    def batched(encoder: object, name: str) -> object:
        if not batching:
            return encoder
        return BatchingEncoder(encoder, encoders.batch_window_ms, encoders.batch_max, encoders.batch_queue,
                               encoders.cache_size, name)

    encoder = None
    if "text" in bundle.vectors:
        record = onnx.read_record(bundle.path / TEXT_VARIANTS)
        backends["text"] = onnx.choose_backend(record, requested, encoders.max_backend_loss)
        if backends["text"] == "torch":
            from vitrine.encoders.text import SentenceTransformerEncoder

            encoder = SentenceTransformerEncoder(bundle.manifest["models"]["text"]["name"], device=encoders.device)
        else:
            from vitrine.encoders.text import OnnxTextEncoder

            encoder = OnnxTextEncoder(bundle.path / TEXT_VARIANTS, backends["text"], encoders.threads)
        encoder.encode_texts(["warm up"])  # the first call pays one-off costs; not a user's query
        encoder = batched(encoder, "text")
    clip = None
    if "clip" in bundle.manifest.get("models", {}):
        from vitrine.encoders.clip import ClipEncoder

        record = onnx.read_record(bundle.path / CLIP_VARIANTS)
        backends["clip"] = onnx.choose_backend(record, requested, encoders.max_backend_loss)
        clip = ClipEncoder(bundle.manifest["models"]["clip"]["name"], device=encoders.device,
                           variants=bundle.path / CLIP_VARIANTS, backend=backends["clip"], threads=encoders.threads)
        clip.encode_texts(["warm up"])
        clip = batched(clip, "clip")
    cross = ltr = None
    if reranker:
        from pathlib import Path

        from vitrine.encoders.text import resolve_text_model
        from vitrine.ranking.rerank import ONNX_DIR, CrossEncoderReranker

        record = onnx.read_record(Path(resolve_text_model(reranker)) / ONNX_DIR)
        backends["reranker"] = onnx.choose_backend(record, requested, encoders.max_backend_loss)
        cross = CrossEncoderReranker(reranker, rerank, device=encoders.device, backend=backends["reranker"],
                                     threads=rerank.threads)
        cross.score("warm up", ["warm up"])
    if ranker:
        from vitrine.ranking.ltr import LtrRanker

        ltr = LtrRanker(ranker)
        if ltr.meta.get("reranker") and cross is None:
            log.warning("ranker %s was trained with cross-encoder scores but no reranker is loaded; "
                        "its cross_* features will be missing", ranker)
    searcher = Searcher(bundle, encoder, search, clip_encoder=clip, reranker=cross, ranker=ltr, rerank=rerank)
    searcher.backends = backends
    log.info("serving backends: %s", backends)
    return searcher
