"""Cross-encoder re-ranking of the first stage's top candidates (sentence-transformers `CrossEncoder`).

The pure core is `rerank_scores(scores, hits)`; `CrossEncoderReranker` computes the scores in batches,
truncating documents deliberately, on CUDA when present, with an LRU cache of (query, document) scores.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrine.encoders.batching import current_scope
from vitrine.encoders.base import pick_device
from vitrine.encoders.config import Backend, as_backend
from vitrine.serving.schema import check, check_positive_ints, config_from_dict
from vitrine.ranking.types import Hit, SourceHit

CROSS = "cross"


@dataclass(frozen=True)
class RerankConfig:
    # Candidates re-scored when a request does not say; 20 keeps fashion p99 under 300 ms on 2 CPU cores
    # (bench/second_stage.py, README "Second stage").
    depth: int = 20
    max_depth: int = 200
    batch_size: int = 32
    # Tokens for query + document. Documents are cut to max_doc_chars first (title and lead survive), then the
    # tokenizer truncates the document side only, so a long abstract never crowds out the query.
    max_length: int = 128
    max_doc_chars: int = 800
    cache_size: int = 50_000
    # ONNX Runtime intra-op threads of one cross-encoder call. Unlike a query encoding, a call scores `depth` pairs
    # at once, long enough to split across both cores (README "Threads and micro-batching").
    threads: int = 2

    @classmethod
    def from_dict(cls, d: dict) -> RerankConfig:
        cfg = config_from_dict(cls, d, "rerank")
        check_positive_ints(cfg, "rerank", ("depth", "cache_size"), minimum=0)
        check_positive_ints(cfg, "rerank", ("max_depth", "batch_size", "max_length", "max_doc_chars", "threads"))
        check(cfg.depth <= cfg.max_depth, "rerank.depth", f"at most rerank.max_depth ({cfg.max_depth})", cfg.depth)
        return cfg


def rerank_scores(scores: Sequence[float] | np.ndarray, hits: Sequence[Hit], source: str = CROSS,
                  raw: Sequence[float] | np.ndarray | None = None) -> list[Hit]:
    """Re-orders the first len(scores) hits by `scores`; the rest keep their order below them.

    Each re-scored hit records `source` in scores_by_source: its `raw` score (default: `scores`) and its rank by
    that raw score among the re-scored. Hits below the depth are scored just under the lowest re-scored one,
    so the returned list stays sorted by score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    raw = scores if raw is None else np.asarray(raw, dtype=np.float64)
    n = len(scores)
    if n > len(hits) or len(raw) != n:
        raise ValueError(f"got {n} scores ({len(raw)} raw) for {len(hits)} hits.")
    if n == 0:
        return list(hits)
    raw_rank = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (-raw[i], i)), start=1)}
    order = sorted(range(n), key=lambda i: (-scores[i], i))  # ties keep first-stage order
    head = [Hit(hits[i].id, float(scores[i]), {**hits[i].scores_by_source, source: SourceHit(float(raw[i]), raw_rank[i])})
            for i in order]
    floor, tail = float(scores.min()), hits[n:]
    head += [Hit(h.id, floor - 1.0 - j / max(len(tail), 1), h.scores_by_source) for j, h in enumerate(tail)]
    return head


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min() if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def blend_scores(first: np.ndarray, cross: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * first-stage + alpha * cross-encoder, each min-max normalised over the re-scored candidates.

    alpha = 1 orders by the cross-encoder alone; the trainer picks alpha on held-out queries, so a cross-encoder
    that is only partly right still adds what it knows instead of replacing a better first stage.
    """
    return (1.0 - alpha) * minmax(first) + alpha * minmax(cross)


def truncate_doc(text: str, max_chars: int) -> str:
    """Cuts at a word boundary so the tokenizer never sees half a word."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


def training_meta(path: str) -> dict:
    """training.json of a cross-encoder Vitrine trained ({} for any other model)."""
    meta = Path(path) / "training.json"
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}


ONNX_DIR = "onnx"  # inside a cross-encoder directory: its ONNX variants (encoders/onnx.py)


class CrossEncoderReranker:
    """Scores (query, document) pairs with a CrossEncoder; safe to call from many threads.

    `backend` "torch" runs the sentence-transformers model; "onnx" / "onnx-int8" run the variant exported into
    `<dir>/onnx/` by `export_cross_onnx` with ONNX Runtime (`threads` intra-op threads per call).
    """

    def __init__(self, name_or_dir: str, config: RerankConfig = RerankConfig(), device: str | None = None,
                 backend: Backend | str = Backend.TORCH, threads: int = 1) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        from vitrine.encoders.text import resolve_text_model

        path = resolve_text_model(name_or_dir)
        self.device = pick_device(device)
        self.config = config
        self.name = name_or_dir
        meta = training_meta(path)
        self.version = meta.get("version", Path(path).name or path)
        # Weight of the cross-encoder against the fused first-stage score, chosen on held-out queries by the trainer.
        self.blend = float(meta.get("blend", 1.0))
        # A local model must never trigger a hub lookup: there may be no network.
        self.model = CrossEncoder(path, num_labels=1, max_length=config.max_length, device=self.device,
                                  local_files_only=Path(path).is_dir())
        self.tokenizer = self.model.tokenizer
        self.net = self.model.transformers_model   # an HF *ForSequenceClassification
        self.net.eval()
        self._cache: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._net_lock = threading.Lock()   # torch inference on CPU already uses every core; queue, don't thrash
        self.backend = backend = as_backend(backend)
        self.session = None
        if backend != Backend.TORCH:
            from vitrine.encoders import onnx

            record = onnx.read_record(Path(path) / ONNX_DIR)
            if backend not in record.get("variants", {}):
                raise ValueError(f"{path} has no {str(backend)!r} variant in {ONNX_DIR}/; run `vitrine export onnx --reranker {path}`.")
            self.session = onnx.session(Path(path) / ONNX_DIR / record["variants"][backend]["file"], threads)
            self.inputs = tuple(record["inputs"])
            self._net_lock = _NoLock()  # ONNX Runtime sessions are thread-safe, each call uses `threads` threads
            self.model = self.net = None  # only the tokenizer is needed: the torch weights leave memory

    def logits(self, queries: Sequence[str], docs: Sequence[str]) -> "torch.Tensor":  # noqa: F821
        """Raw relevance logits for aligned (query, document) pairs, with gradients when the net is training. (B,)"""
        enc = self.tokenizer(list(queries), [truncate_doc(d, self.config.max_doc_chars) for d in docs],
                             truncation="only_second", max_length=self.config.max_length, padding=True,
                             return_tensors="pt").to(self.device)
        return self.net(**enc).logits[:, 0]

    def _scores(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """Logits for aligned pairs with the serving backend, as float32. (B,)"""
        if self.session is None:
            return self.logits(queries, docs).float().cpu().numpy()
        enc = self.tokenizer(list(queries), [truncate_doc(d, self.config.max_doc_chars) for d in docs],
                             truncation="only_second", max_length=self.config.max_length, padding=True, return_tensors="np")
        return self.session.run(None, {n: enc[n].astype(np.int64) for n in self.inputs})[0].astype(np.float32)

    def score(self, query: str, docs: Sequence[str]) -> np.ndarray:
        """Relevance scores (logits) of `docs` for `query`, from the cache where possible. (N,)"""
        import torch

        scope = current_scope()   # kept apart per tenant when the model is shared (encoders/batching.py)
        keys = [(scope, query, hashlib.blake2b(d.encode("utf-8"), digest_size=12).hexdigest()) for d in docs]
        out = np.empty(len(docs), dtype=np.float32)
        todo = []
        with self._cache_lock:
            for i, key in enumerate(keys):
                cached = self._cache.get(key)
                if cached is None:
                    todo.append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = cached
        bs = self.config.batch_size
        with self._net_lock, torch.inference_mode():
            for start in range(0, len(todo), bs):
                idx = todo[start:start + bs]
                out[idx] = self._scores([query] * len(idx), [docs[i] for i in idx])
        if self.config.cache_size and todo:
            with self._cache_lock:
                for i in todo:
                    self._cache[keys[i]] = float(out[i])
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return out


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def export_cross_onnx(reranker: CrossEncoderReranker, out_dir: str | Path) -> dict:
    """Writes the cross-encoder's fp32 and int8 ONNX variants (logits of the first label) to `out_dir`; returns the
    variants record, without quality (the caller measures it: `check_cross_variants`)."""
    import torch

    from vitrine.encoders import onnx

    class Logit(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001, ANN201
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.net(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits[:, 0]

    enc = reranker.tokenizer(["red shirt", "shoes for men"], ["a red cotton shirt", "black leather shoes"],
                             padding=True, return_tensors="pt")
    example = {n: enc[n].cpu() for n in onnx.INPUTS if n in enc}
    variants = onnx.export(Logit(reranker.net).cpu(), example, out_dir, "logit")
    reranker.net.to(reranker.device)
    reranker.tokenizer.save_pretrained(str(out_dir))
    return onnx.write_record(out_dir, {"kind": "cross", "source": reranker.version, "name": reranker.name,
                                       "max_length": reranker.config.max_length, "inputs": list(example), "variants": variants})
