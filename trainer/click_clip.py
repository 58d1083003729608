"""CLIP fine-tuning from click logs: (query text and/or image -> clicked item's image) on ClipTrainer's model code.

Negatives are the other clicked items in the batch plus items shown above a click and skipped. Each click is
weighted by the inverse of its examination propensity (1 / rank**eta, clipped) against position bias. Guards
against forgetting, each configurable: a low learning rate, frozen towers, and general catalog (image, text)
pairs mixed into every batch; general image<->text recall on held-out catalog pairs is measured every epoch.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitrine.encoders.clip import copy_attribute_heads, save_checkpoint_dir
from vitrine.serving.schema import config_from_dict
from vitrine.indexer.catalog import Item, resolve_image
from vitrine.ranking.clicklog import ClickSession, resolve_log_image, resolve_query_image
from vitrine.trainer.click_eval import brute_force_run, click_judgments, run_metrics
from vitrine.trainer.clip import ClipTrainer, warmup_cosine
from vitrine.trainer.clip_data import ClipTrainConfig, Pairs, load_pairs, load_square
from vitrine.trainer.clip_loss import info_nce


@dataclass(frozen=True)
class ClickTrainConfig:
    epochs: int = 3
    batch_size: int = 64             # click pairs per step
    lr: float = 1e-4                 # low on purpose: a guard against forgetting
    weight_decay: float = 0.05
    warmup_steps: int = 10
    freeze_text: str = "transformer"  # "none" | "transformer" | "all", as in ClipTrainConfig
    freeze_image: bool = False
    general_fraction: float = 0.25   # share of every batch that is general catalog (image, text) pairs; 0 = off
    general_pairs: int = 2000        # catalog pairs the general mix is drawn from
    general_holdout: int = 300       # catalog pairs kept out of training to measure forgetting
    hard_negatives: int = 2          # per click: the nearest items shown above it and skipped; 0 = in-batch only
    eta: float = 1.0                 # examination propensity 1 / rank**eta used for the weights
    max_weight: float = 10.0         # clip of the inverse-propensity weight; 1 turns weighting off
    text_target_weight: float = 0.0  # also pull the query towards the clicked item's text
    composed_text_weight: float = 0.5  # composed query = normalise(image + w * text), as ranking.pipeline does
    holdout_fraction: float = 0.1    # share of queries whose sessions are held out for model selection
    patience: int = 2
    seed: int = 0
    hflip: bool = True

    def __post_init__(self) -> None:
        ClipTrainConfig(freeze_text=self.freeze_text)  # same check, same message
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}.")
        for name in ("general_fraction", "holdout_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("general_pairs", "general_holdout", "hard_negatives", "warmup_steps", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.eta < 0:
            raise ValueError(f"eta must not be negative, got {self.eta}.")
        if self.max_weight < 1:
            raise ValueError(f"max_weight must be at least 1 (1 turns weighting off), got {self.max_weight}.")
        if self.text_target_weight < 0 or self.composed_text_weight < 0:
            raise ValueError("text_target_weight and composed_text_weight must not be negative.")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ClickTrainConfig:
        return config_from_dict(cls, obj, "click_train")

    def clip_config(self) -> ClipTrainConfig:
        """The ClipTrainConfig that ClipTrainer's model loading and freezing read."""
        return ClipTrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                               warmup_steps=max(1, self.warmup_steps), freeze_text=self.freeze_text,
                               freeze_image=self.freeze_image, patience=max(1, self.patience), seed=self.seed,
                               hflip=self.hflip, train_blocks=-1, attribute_weight=0.0)


def ipw_weight(rank: int, eta: float, max_weight: float) -> float:
    """Inverse examination propensity of a 1-based rank, min(rank**eta, max_weight)."""
    return float(min(rank ** eta, max_weight))


@dataclass(frozen=True)
class ClickExample:
    query_key: str
    text: str
    image: str | None             # absolute path of the query image
    item_id: str
    rank: int
    weight: float
    hard_negatives: tuple[str, ...]


def click_examples(sessions: Iterable[ClickSession], log_dir: Path, config: ClickTrainConfig,
                   known: Callable[[str], bool]) -> tuple[list[ClickExample], dict[str, int]]:
    """One example per click on a shown, known item; weights are normalised to mean 1. Returns (examples, skip counts)."""
    examples: list[ClickExample] = []
    skipped = {"unknown_item": 0, "unshown_click": 0}
    for s in sessions:
        clicked = set(s.clicked)
        ranks = s.click_ranks()
        skipped["unshown_click"] += len(clicked) - len(ranks)
        for rank in ranks:
            item_id = s.shown[rank - 1]
            if not known(item_id):
                skipped["unknown_item"] += 1
                continue
            above = [d for d in reversed(s.shown[:rank - 1]) if d not in clicked and known(d)]
            examples.append(ClickExample(s.query_key, s.text, resolve_query_image(s, log_dir), item_id, rank,
                                         ipw_weight(rank, config.eta, config.max_weight),
                                         tuple(above[:config.hard_negatives])))
    if examples:
        mean = float(np.mean([e.weight for e in examples]))
        examples = [ClickExample(e.query_key, e.text, e.image, e.item_id, e.rank, e.weight / mean, e.hard_negatives)
                    for e in examples]
    return examples, skipped


def split_by_query(sessions: Sequence[ClickSession], fraction: float, seed: int) -> tuple[list[ClickSession], list[ClickSession]]:
    """(train, held-out) sessions; all sessions of one query land on the same side."""
    keys = sorted({s.query_key for s in sessions if s.click_ranks()})
    n_hold = int(round(fraction * len(keys))) if len(keys) >= 2 and fraction > 0 else 0
    held = {keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:n_hold]}
    return [s for s in sessions if s.query_key not in held], [s for s in sessions if s.query_key in held]


@dataclass
class ClickData:
    """Everything fit_clicks needs, decoded once: examples, item pixels, query pixels and the splits."""

    train: list[ClickExample]
    heldout: list[ClickSession]
    items: Pairs                         # every item used: targets, negatives, held-out candidates, general pairs
    general_train: np.ndarray            # rows of `items` for the general mix
    general_heldout: np.ndarray          # rows of `items` for measuring forgetting
    query_images: dict[str, int]         # absolute path -> row of query_pixels
    query_pixels: torch.Tensor           # (M, 3, S, S) uint8
    log_dir: Path
    image_owner: dict[str, str] = field(default_factory=dict)  # item image path -> item id (never shown for its own photo)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def row(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.items.ids)}


def prepare_click_data(sessions: Sequence[ClickSession], items: Sequence[Item], catalog_dir: Path, log_dir: Path,
                       config: ClickTrainConfig, size: int, progress: bool = False) -> ClickData:
    """Splits sessions by query, builds the examples, and decodes every image they need at `size` pixels."""
    usable = {it.id: it for it in items if it.image and it.has_text()}
    train_sessions, heldout = split_by_query(sessions, config.holdout_fraction, config.seed)
    examples, skipped = click_examples(train_sessions, log_dir, config, lambda d: d in usable)
    rng = np.random.default_rng(config.seed)
    involved = {e.item_id for e in examples} | {d for e in examples for d in e.hard_negatives}
    involved |= {d for s in heldout for d in (*s.shown, *s.clicked) if d in usable}
    others = [d for d in usable if d not in involved]
    rng.shuffle(others)
    general_heldout_ids = others[:config.general_holdout]
    pool = [d for d in usable if d not in set(general_heldout_ids)]
    general_ids = [pool[i] for i in rng.permutation(len(pool))[:config.general_pairs]] if config.general_fraction > 0 else []
    needed = list(dict.fromkeys([*sorted(involved), *general_ids, *general_heldout_ids]))
    pairs = load_pairs([usable[d] for d in needed], catalog_dir, size, progress=progress)
    row = {d: i for i, d in enumerate(pairs.ids)}
    broken = {d for d, _ in pairs.broken}
    if broken:
        skipped["broken_item_image"] = len(broken)
        examples = [ClickExample(e.query_key, e.text, e.image, e.item_id, e.rank, e.weight,
                                 tuple(d for d in e.hard_negatives if d in row)) for e in examples if e.item_id in row]
    query_images: dict[str, int] = {}
    arrays, bad = [], set()
    for path in dict.fromkeys([e.image for e in examples if e.image] +
                              [resolve_query_image(s, log_dir) for s in heldout if s.image]):
        try:
            if path.startswith(("http://", "https://")):
                raise OSError("query image URLs are not fetched for training")
            arrays.append(load_square(path, size))
            query_images[path] = len(arrays) - 1
        except (OSError, ValueError):
            bad.add(path)
    if bad:
        skipped["unreadable_query_image"] = len(bad)
        examples = [e for e in examples if not e.image or e.image in query_images]
    query_pixels = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays
                    else torch.zeros((0, 3, size, size), dtype=torch.uint8))
    return ClickData(examples, heldout, pairs, np.array([row[d] for d in general_ids if d in row], dtype=np.int64),
                     np.array([row[d] for d in general_heldout_ids if d in row], dtype=np.int64), query_images,
                     query_pixels, log_dir, {resolve_image(it, catalog_dir): it.id for it in usable.values()}, skipped)


@dataclass(frozen=True)
class _TextCache:
    item_text: torch.Tensor        # text-tower inputs (token ids or cached pooled outputs) per item row
    query_text: torch.Tensor       # the same per distinct training query text
    text_row: dict[str, int]       # query text -> row of query_text
    row: dict[str, int]            # item id -> row of ClickData.items


class ClickClipTrainer(ClipTrainer):
    """Fine-tunes a CLIP checkpoint on click examples; keeps the epoch with the best held-out click nDCG@10."""

    def __init__(self, config: ClickTrainConfig, out_dir: Path, base: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, model_cfg: dict[str, Any] | None = None) -> None:
        super().__init__(config.clip_config(), out_dir, base=base, device=device, log=log, model_cfg=model_cfg)
        self.click_config = config
        self.base = base

    def _images(self, pixels: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = self._augment(pixels) if augment else pixels
        return F.normalize(self.model.encode_image(self._normalize(x).to(self.device)), dim=-1)  # (B, D)

    def _queries(self, texts: torch.Tensor | None, text_rows: list[int], pixels: torch.Tensor | None,
                 image_rows: list[int], n: int, composed: torch.Tensor) -> torch.Tensor:
        """(n, D) query vectors: text, image, or normalise(image + w * text) per row, like the serving pipeline."""
        dim = self.model_cfg["embed_dim"]
        q = torch.zeros((n, dim), device=self.device)
        if image_rows:
            q = q.index_add(0, torch.tensor(image_rows, device=self.device), self._images(pixels))
        if text_rows:
            t = F.normalize(self._encode_text(texts), dim=-1) * composed.to(self.device)[:, None]  # (T, D)
            q = q.index_add(0, torch.tensor(text_rows, device=self.device), t)
        return F.normalize(q, dim=-1)

    def _batch_queries(self, batch: Sequence[ClickExample], data: ClickData, text_cache: torch.Tensor,
                       text_row: Mapping[str, int]) -> torch.Tensor:
        w = self.click_config.composed_text_weight
        text_rows = [i for i, e in enumerate(batch) if e.text]
        image_rows = [i for i, e in enumerate(batch) if e.image]
        texts = text_cache[[text_row[batch[i].text] for i in text_rows]] if text_rows else None
        pixels = data.query_pixels[[data.query_images[batch[i].image] for i in image_rows]] if image_rows else None
        composed = torch.tensor([w if batch[i].image else 1.0 for i in text_rows])
        return self._queries(texts, text_rows, pixels, image_rows, len(batch), composed)

    @torch.no_grad()
    def evaluate_clicks(self, data: ClickData, item_text: torch.Tensor, k: int = 10) -> dict[str, float]:
        """Held-out click recall@k / nDCG@k (retrieval among every loaded item) and general catalog recall@k."""
        self.model.eval()
        out: dict[str, float] = {}
        if len(data.general_heldout) >= 2:
            held = data.general_heldout
            views = self._image_inputs(data.items.pixels[held], progress=False, train=False)
            g = self.evaluate(views, np.arange(len(held)), item_text[held])
            out.update({f"general_{m}": v for m, v in g.items()})
        queries, qrels = click_judgments(data.heldout)
        queries = [q for q in queries if not q.image or resolve_log_image(q.image, data.log_dir) in data.query_images]
        if queries:
            xb = torch.cat([self._images(data.items.pixels[s:s + 256]) for s in range(0, len(data.items.ids), 256)])
            as_examples = [ClickExample("", q.text, resolve_log_image(q.image, data.log_dir), "", 1, 1.0, ()) for q in queries]
            uniq = list(dict.fromkeys(q.text for q in queries if q.text))
            text_cache = self._text_inputs(uniq) if uniq else torch.zeros(0)
            xq = torch.cat([self._batch_queries(as_examples[s:s + 256], data, text_cache, {t: i for i, t in enumerate(uniq)})
                            for s in range(0, len(as_examples), 256)])  # (Q, D)
            exclude = [[data.image_owner[e.image]] if e.image in data.image_owner else [] for e in as_examples]
            ranked = brute_force_run(xq.cpu().numpy(), xb.cpu().numpy(), data.items.ids, k, exclude)
            scores = run_metrics({q.qid: r for q, r in zip(queries, ranked)}, {q.qid: qrels[q.qid] for q in queries}, k)
            out.update({f"click_{m}": v for m, v in scores.items()})
        return out

    def _loss(self, batch: Sequence[ClickExample], general: np.ndarray | None, data: ClickData, cache: _TextCache) -> torch.Tensor:
        """Weighted query -> clicked-item cross-entropy over in-batch and hard negatives, mixed with general InfoNCE."""
        cfg = self.click_config
        q = self._batch_queries(batch, data, cache.query_text, cache.text_row)  # (B, D)
        cols = list(dict.fromkeys([e.item_id for e in batch] + [d for e in batch for d in e.hard_negatives]))
        col_of = {d: j for j, d in enumerate(cols)}  # each item once, so a repeated click is no false negative
        col_rows = [cache.row[d] for d in cols]
        targets = torch.tensor([col_of[e.item_id] for e in batch], device=self.device)
        weights = torch.tensor([e.weight for e in batch], device=self.device)
        scale = self.model.logit_scale.exp()
        logits = scale * q @ self._images(data.items.pixels[col_rows], augment=True).T  # (B, C)
        ce = F.cross_entropy(logits, targets, reduction="none")
        if cfg.text_target_weight > 0:
            txt = F.normalize(self._encode_text(cache.item_text[col_rows]), dim=-1)  # (C, D)
            ce = ce + cfg.text_target_weight * F.cross_entropy(scale * q @ txt.T, targets, reduction="none")
        loss = (weights * ce).sum() / weights.sum()
        if general is None:
            return loss
        g_loss = info_nce(self._images(data.items.pixels[general], augment=True),
                          F.normalize(self._encode_text(cache.item_text[general]), dim=-1), scale)
        return (len(batch) * loss + len(general) * g_loss) / (len(batch) + len(general))

    def fit_clicks(self, data: ClickData, progress: bool = False) -> dict[str, Any]:
        cfg = self.click_config
        t_start = time.perf_counter()
        if not data.train:
            raise ValueError("the click log has no usable clicks: no shown item that was clicked is in the catalog "
                             f"with an image (skipped: {data.skipped}).")
        self.log(f"click pairs: {len(data.train)} train, {len(data.heldout)} held-out sessions, "
                 f"{len(data.general_train)} general pairs, {len(data.general_heldout)} general held out; caching text ...")
        item_text = self._text_inputs(data.items.texts)
        query_texts = list(dict.fromkeys(e.text for e in data.train if e.text))
        cache = _TextCache(item_text, self._text_inputs(query_texts) if query_texts else torch.zeros(0),
                           {t: i for i, t in enumerate(query_texts)}, data.row)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = max(1, len(data.train) // cfg.batch_size)
        sched = warmup_cosine(opt, max(1, cfg.warmup_steps), steps * cfg.epochs)
        n_general = int(round(cfg.batch_size * cfg.general_fraction / (1 - cfg.general_fraction))) if len(data.general_train) >= 2 else 0
        base = self.evaluate_clicks(data, item_text)
        state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0,
                                 "curve": [{"epoch": 0, "train_loss": float("nan"), **base, "elapsed_s": 0.0}]}
        self.log(f"base: {_fmt(base)}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        best_dir = self.out_dir / ".best"
        rng = np.random.default_rng(cfg.seed)
        for epoch in range(cfg.epochs):
            self.model.train()
            perm = rng.permutation(len(data.train))
            losses = []
            for step in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, mininterval=2.0):
                batch = [data.train[i] for i in perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
                general = (data.general_train[rng.choice(len(data.general_train), min(n_general, len(data.general_train)), replace=False)]
                           if n_general else None)
                loss = self._loss(batch, general, data, cache)
                losses.append(self._step(opt, sched, loss))
            metrics = self.evaluate_clicks(data, item_text)
            train_loss = float(np.mean(losses))
            state["curve"].append({"epoch": epoch + 1, "train_loss": train_loss, **metrics,
                                   "elapsed_s": round(time.perf_counter() - t_start, 1)})
            self.log(f"epoch {epoch + 1}: loss {train_loss:.3f}, {_fmt(metrics)}")
            state["epoch"] = epoch + 1
            # Model selection on held-out clicks; without any, the lowest training loss.
            score = (metrics["click_ndcg@10"] + metrics["click_recall@10"]) if "click_ndcg@10" in metrics else -train_loss
            if not math.isfinite(train_loss):
                score = -math.inf
            if score > state["best"] or state["best_epoch"] < 0:
                state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
                save_checkpoint_dir(self.model, self.model_cfg, self.preprocess, best_dir)
                copy_attribute_heads(self.base, best_dir)
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= max(1, cfg.patience):
                    self.log(f"early stop: no held-out gain for {cfg.patience} epoch(s)")
                    break
        result = self._finish(best_dir, state, data.items, len(data.train), len(data.heldout), time.perf_counter() - t_start)
        result["clicks"] = {"config": asdict(cfg), "base_model": self.base, "examples": len(data.train),
                            "heldout_sessions": len(data.heldout), "general_pairs": len(data.general_train),
                            "general_heldout": len(data.general_heldout), "skipped": data.skipped, "base_metrics": base}
        (self.out_dir / "training.json").write_text(json.dumps(result, indent=2, default=str))
        best = next(c for c in state["curve"] if c["epoch"] == state["best_epoch"])
        (self.out_dir / "metrics.json").write_text(json.dumps({"heldout": best, "base": base}, indent=2))
        return result


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("@10"))
