"""Adapts a sentence-transformers text embedder to a catalog with sentence-transformers' own training stack.

Pairs (generated from the catalog, from judgments, and general caption paraphrases) get hard negatives mined
from Vitrine's own first stage, with false negatives filtered out; MultipleNegativesRankingLoss trains on
in-batch plus mined negatives; InformationRetrievalEvaluator measures base and tuned on held-out pairs and on
the general caption check, and the best epoch is kept.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.encoders.base import pick_device
from vitrine.serving.schema import check, config_from_dict
from vitrine.encoders.text import ADAPTER_FILE, resolve_text_model
from vitrine.indexer.bundle import item_text
from vitrine.indexer.catalog import Item
from vitrine.ranking.pipeline import Searcher, SearchRequest
from vitrine.trainer.distributed import barrier, broadcast, world
from vitrine.trainer.text_pairs import Pair

LOSSES = ("mnrl", "cached_mnrl")
ADAPTERS = ("none", "lora")
LORA_LR = 2e-4  # an adapter starts at zero and has few weights: it needs a larger step than the whole model
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class TextTrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5                     # one short epoch (about 85 steps): low enough to keep what the base knew
    warmup_ratio: float = 0.1
    generators: tuple[str, ...] = ("attributes", "title", "cloze")
    per_item: int = 1                    # pairs per item from each generator
    max_pairs: int = 2000                # in-domain training pairs: every judged pair, then generated ones (seeded);
                                         # with the general share, about 30 minutes on scifact on 2 CPU cores
    negatives: int = 1                   # mined hard negatives per pair
    mine_depth: int = 20                 # first-stage candidates a negative is chosen from
    negative_margin: float = 0.9         # skip a candidate whose cosine to the positive is above this (a near-duplicate)
    general_fraction: float = 0.25       # share of every epoch's pairs that are general caption paraphrases
    holdout_pairs: int = 300             # in-domain pairs held out for the evaluator
    general_holdout: int = 300           # flickr8k photos held out for the general check
    max_seq_length: int = 128
    loss: str = "mnrl"
    patience: int = 2                    # evaluations without held-out gain before stopping
    adapter: str = "none"                # "lora": train a LoRA adapter (peft) on the frozen base instead of every weight
    lora_rank: int = 16
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextTrainConfig:
        if isinstance(d, Mapping) and d.get("adapter") == "lora" and d.get("lr") is None:
            d = {**d, "lr": LORA_LR}
        cfg = config_from_dict(cls, d, "train_text")
        check(cfg.adapter in ADAPTERS, "train_text.adapter", f"one of {', '.join(ADAPTERS)}", cfg.adapter)
        check(cfg.loss in LOSSES, "train_text.loss", f"one of {', '.join(LOSSES)}", cfg.loss)
        check(0 <= cfg.general_fraction < 1, "train_text.general_fraction", "in [0, 1)", cfg.general_fraction)
        check(0 < cfg.negative_margin <= 1, "train_text.negative_margin", "in (0, 1]", cfg.negative_margin)
        for name in ("epochs", "batch_size", "max_pairs", "mine_depth", "max_seq_length", "lora_rank"):
            check(getattr(cfg, name) >= 1, f"train_text.{name}", "a positive integer", getattr(cfg, name))
        return cfg


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str
    source: str


@dataclass(frozen=True)
class TextTask:
    """What a text run learns from and is judged on: the triplets, and evaluators (name ->
    InformationRetrievalEvaluator) that score the base and every epoch; the first one's nDCG@10 picks the best."""

    triplets: Sequence[Triplet]
    evaluators: Mapping[str, Any]


def fingerprint(items: Sequence[Item]) -> str:
    """A short hash of the catalog the model was tuned on, recorded in training.json."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda x: x.id):
        h.update(json.dumps(it.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mine_negatives(pairs: Sequence[Pair], searcher: Searcher, items: Mapping[str, Item], config: TextTrainConfig,
                   judged: Mapping[str, set[str]] | None = None, progress: bool = False) -> list[Triplet]:
    """(anchor, positive, hard negative) from Vitrine's first stage over the catalog.

    A candidate is never a negative when it is the positive, is judged relevant for the anchor (`judged`: anchor
    -> item ids), contains every word of a short anchor (an attribute pseudo-query it also answers), or its
    stored vector's cosine to the positive's is above `negative_margin` (a near-duplicate). A pair whose
    candidates are all refused gets a random acceptable item instead, so every pair keeps its place.
    """
    from tqdm import tqdm

    encoder = searcher.text_encoder
    if encoder is not None:  # the anchors are encoded in batches up front, not one by one inside search()
        anchors = list(dict.fromkeys(p.anchor[:2000].strip() for p in pairs))  # as search() sees them
        # A searcher of mining's own over the same bundle, so the caller's is never changed, even for a while.
        searcher = Searcher(searcher.bundle, _Precomputed(encoder, anchors, encoder.encode_texts(anchors, progress=progress)),
                            searcher.config, clip_encoder=searcher.clip_encoder, reranker=searcher.reranker,
                            ranker=searcher.ranker, rerank=searcher.rerank)
    mining = _Mining(searcher, items, config, judged, searcher.bundle.vectors.get("text"),
                     searcher.bundle.docstore.docno_by_id, random.Random(config.seed), sorted(items))
    out: list[Triplet] = []
    for pair in tqdm(pairs, desc="mine negatives", disable=not progress, unit="pair"):
        out += _mine_one(pair, mining)
    return out


class _Precomputed:
    """A text encoder that answers known texts from vectors computed in one batched pass."""

    def __init__(self, encoder: Any, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.encoder, self.dim, self.rows = encoder, encoder.dim, {t: i for i, t in enumerate(texts)}
        self.vectors = vectors  # (N, D)

    def encode_texts(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        if all(t in self.rows for t in texts):
            return self.vectors[[self.rows[t] for t in texts]]
        return self.encoder.encode_texts(texts, **kwargs)


@dataclass(frozen=True)
class _Mining:
    """What mining every pair shares: the first stage, the catalog, the judged items per anchor, the bundle's stored
    text vectors and their row per item id (or None: no near-duplicate check), and the fallback's random draws."""

    searcher: Searcher
    items: Mapping[str, Item]
    config: TextTrainConfig
    judged: Mapping[str, set[str]] | None
    vectors: Any
    docno: Mapping[str, int]
    rng: random.Random
    ids: Sequence[str]                   # every item id, sorted: what the fallback samples from


def _mine_one(pair: Pair, m: _Mining) -> list[Triplet]:
    hits = m.searcher.search(SearchRequest(text=pair.anchor[:2000], k=m.config.mine_depth, stages="first")).hits
    banned = {pair.item_id} | set((m.judged or {}).get(pair.anchor, ()))
    anchor_words = _words(pair.anchor) if len(pair.anchor) < 80 else set()
    cands = [h.id for h in hits if h.id not in banned and h.id in m.items]
    if anchor_words:
        cands = [c for c in cands if not anchor_words <= _words(item_text(m.items[c]))]
    if m.vectors is not None and cands and pair.item_id in m.docno:
        xb = m.vectors.reconstruct(np.array([m.docno[pair.item_id], *(m.docno[c] for c in cands)]))
        if xb is not None:
            sims = xb[1:] @ xb[0]  # (C,) unit vectors
            cands = [c for c, s in zip(cands, sims) if s <= m.config.negative_margin]
    if not cands:
        cands = [c for c in m.rng.sample(m.ids, min(len(m.ids), 20)) if c not in banned
                 and not (anchor_words and anchor_words <= _words(item_text(m.items[c])))][:1]
    return [Triplet(pair.anchor, pair.positive, item_text(m.items[c]), pair.source) for c in cands[:m.config.negatives]]


def general_triplets(pairs: Sequence[Pair], seed: int) -> list[Triplet]:
    """General pairs with a random other caption as the negative, so they share the in-domain columns."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(pairs):
        j = rng.randrange(len(pairs) - 1) if len(pairs) > 1 else 0
        other = pairs[j + (j >= i)] if len(pairs) > 1 else p
        out.append(Triplet(p.anchor, p.positive, other.positive, "general"))
    return out


def ir_evaluator(name: str, queries: Mapping[str, str], corpus: Mapping[str, str], relevant: Mapping[str, set[str]],
                 batch_size: int) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(dict(queries), dict(corpus), {q: set(r) for q, r in relevant.items()}, name=name,
                                         ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10],
                                         map_at_k=[10], show_progress_bar=False, batch_size=batch_size)


def heldout_task(pairs: Sequence[Pair], items: Mapping[str, Item], corpus_size: int, seed: int
                 ) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """In-domain check on held-out pairs: anchor -> its item, among a seeded sample of the catalog.

    A short anchor (an attribute pseudo-query) is also answered by every corpus item holding all its words, so
    those count as relevant too; otherwise the check would reward guessing among equally good items.
    """
    ids = sorted({p.item_id for p in pairs})
    rest = sorted(set(items) - set(ids))
    random.Random(seed).shuffle(rest)
    corpus = {i: item_text(items[i]) for i in ids + rest[:max(0, corpus_size - len(ids))]}
    words = {i: _words(t) for i, t in corpus.items()}
    queries, relevant = {}, {}
    for n, p in enumerate(pairs):
        q = f"q{n}"
        queries[q] = p.anchor
        anchor_words = _words(p.anchor) if len(p.anchor) < 80 else set()
        relevant[q] = {p.item_id} | ({i for i, w in words.items() if anchor_words <= w} if anchor_words else set())
    return queries, corpus, relevant


def _loss(model: Any, name: str, batch_size: int, workers: int = 1) -> Any:
    """The contrastive loss; with several workers each embeds its share of a batch and the embeddings are
    gathered, so every anchor still sees the whole batch's in-batch negatives."""
    from sentence_transformers.sentence_transformer import losses

    gather = workers > 1
    if name == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=max(8, batch_size // workers // 4),
                                                         gather_across_devices=gather)
    return losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather)


def add_lora(model: Any, rank: int) -> None:
    """Wraps the transformer in a LoRA adapter (peft) on the attention and feed-forward projections; the base
    weights stay frozen and only the adapter trains."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ImportError("--adapter lora needs peft: pip install 'vitrine-search[train]'") from None
    model[0].model = get_peft_model(model[0].model, LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION, r=rank, lora_alpha=2 * rank, lora_dropout=0.1,
        target_modules=["query", "key", "value", "dense"]))


def save_model(model: Any, out: Path, base: str, adapter: str) -> None:
    """A full model as a sentence-transformers directory; an adapter as the adapter alone plus the name of its
    base (`vitrine_adapter.json`), which Vitrine's text encoder loads (encoders/text.py load_text_model)."""
    if adapter == "none":
        model.save(str(out))
        return
    model[0].model.save_pretrained(str(out))  # the PeftModel: the adapter alone
    (out / ADAPTER_FILE).write_text(json.dumps({"base": base, "adapter": adapter}, indent=2) + "\n")


def model_size(path: Path) -> int:
    """Bytes of the weights a model directory holds (an adapter directory holds only the adapter)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin"))


def train_text(base: str, out: Path, task: TextTask, config: TextTrainConfig, meta: Mapping[str, Any],
               device: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tunes `base` on the task's triplets with SentenceTransformerTrainer; writes the model, metrics and
    training.json.

    Each of the task's evaluators scores the base before training and the model after every epoch; the best epoch
    by the first evaluator's nDCG@10 is kept (early stopping with `patience`).

    Inside a torch process group (`vitrine train text --ray`) the trainer runs DDP: each rank takes an equal share
    of every batch of `batch_size`, the loss gathers the embeddings across ranks, and the per-epoch evaluation is
    shared as sentence-transformers does it. Rank 0 alone scores base and tuned, saves and logs; every rank
    returns its result.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import EarlyStoppingCallback, set_seed

    rank, workers = world()
    if config.batch_size % workers:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of the {workers} workers; each worker takes "
                         f"an equal share of every batch.")
    if rank:
        progress, log = False, _quiet
    set_seed(config.seed)
    device = pick_device(device)
    t0 = time.perf_counter()
    model = SentenceTransformer(resolve_text_model(base), device=device)
    model.max_seq_length = config.max_seq_length
    if config.adapter == "lora":
        add_lora(model, config.lora_rank)
    evaluator = SequentialEvaluator(list(task.evaluators.values()))
    key = f"eval_{next(iter(task.evaluators))}_cosine_ndcg@10"
    base_metrics = evaluator(model) if rank == 0 else {}
    if rank == 0:
        log(f"base {key.removeprefix('eval_')}: {base_metrics[key.removeprefix('eval_')]:.4f}")
    rows = list(task.triplets)
    random.Random(config.seed).shuffle(rows)
    data = Dataset.from_dict({"anchor": [t.anchor for t in rows], "positive": [t.positive for t in rows],
                              "negative": [t.negative for t in rows]})
    work = out.parent / f".{out.name}.work"
    full = config.adapter == "none"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size // workers,
        learning_rate=config.lr, warmup_steps=config.warmup_ratio, batch_sampler=BatchSamplers.NO_DUPLICATES,
        # An adapter checkpoint cannot be reloaded by the trainer (peft 0.21 with transformers 5), so adapters keep
        # the last epoch; a full model keeps the best one.
        eval_strategy="epoch", save_strategy="epoch" if full else "no", save_total_limit=1, load_best_model_at_end=full,
        metric_for_best_model=key, greater_is_better=True, seed=config.seed, data_seed=config.seed,
        logging_steps=max(1, len(rows) // config.batch_size // 10), report_to=[], disable_tqdm=not progress,
        use_cpu=device == "cpu", dataloader_num_workers=0, save_only_model=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=_loss(model, config.loss, config.batch_size, workers), evaluator=evaluator,
                                         callbacks=[EarlyStoppingCallback(config.patience)] if full else [])
    trainer.train()
    barrier()  # every rank has loaded the best checkpoint from `work` before rank 0 removes it
    if rank:
        return broadcast(None)
    tuned_metrics = evaluator(model)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out, base, config.adapter)
    metrics = {"base": base_metrics, "tuned": tuned_metrics, "curve": trainer.state.log_history}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    counts: dict[str, int] = {}
    for t in rows:
        counts[t.source] = counts.get(t.source, 0) + 1
    training = {"base": base, "config": asdict(config), "triplets": counts, "seconds": round(seconds, 1),
                "weights_bytes": model_size(out), "device": device, "torch_threads": torch.get_num_threads(),
                "workers": workers, **meta}
    (out / "training.json").write_text(json.dumps(training, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # the trainer's checkpoints; the best one is already in `out`
    return broadcast({"metrics": metrics, "training": training, "key": key.removeprefix("eval_")})


def _quiet(message: str) -> None:
    pass
