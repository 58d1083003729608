"""The bundle's check of its CLIP text tower: does an item's text find the item's own photo (text->image recall@10)?

The indexer writes it into the manifest (`models.clip.check`); the searcher lets CLIP text join text queries only when
it passes `[search] clip_text_min_recall` (ranking/pipeline.clip_text_trust). It needs no labels: a photo's own
item text is its answer, so any catalog with photos and titles can check any CLIP.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrine.indexer.catalog import Item

K = 10
MAX_QUERIES = 500
# Each query ranks its photo among at most this many catalog photos (its own, the other queries', then a random
# sample): a fixed pool keeps the figure comparable between a 400-item shop and a 9,000-item one, as retrieval
# benchmarks fix theirs (Flickr30k's 1K test images). Chance is k / pool; smaller catalogs rank among all photos.
POOL = 1000
# Fewer held-out items than this present in the catalog: the check samples the whole catalog instead (noisy
# otherwise), and says so.
MIN_HELDOUT = 20
TRAINING_RECORD = "training.json"  # written by `vitrine train clip` into its output directory (trainer/clip.py)


def trainer_heldout_ids(model: str) -> set[str] | None:
    """The catalog items `vitrine train clip` kept out of training (its training.json's heldout_ids), or None for a
    CLIP that records none (a hub model, or one trained before they were recorded)."""
    record = Path(model) / TRAINING_RECORD
    if not record.is_file():
        return None
    ids = json.loads(record.read_text(encoding="utf-8")).get("heldout_ids")
    return None if ids is None else {str(i) for i in ids}


def target_ranks(xq: np.ndarray, xb: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each query row, how many rows of xb score strictly above its target row `targets[i]` (0 = first)."""
    scores = xq @ xb.T  # (Q, N)
    target = scores[np.arange(len(targets)), targets]
    return (scores > target[:, None]).sum(axis=1)


@dataclass(frozen=True)
class CheckSample:
    """Which photos the check ranks: at most `queries` items queried, each among a `pool` of photos, drawn by `seed`."""

    queries: int = MAX_QUERIES
    pool: int = POOL
    seed: int = 0


def clip_check(items: Mapping[int, Item], photo_ids: np.ndarray, photo_xb: np.ndarray,
               encode_texts: Callable[[list[str]], np.ndarray], text: Callable[[Item], str],
               heldout: set[str] | None = None, sample: CheckSample = CheckSample()) -> dict:
    """Text->image recall@10 of the CLIP over the bundle's own photos.

    Args:
        items: doc number -> item.
        photo_ids, photo_xb: the doc numbers with a photo vector and those vectors, row for row (N, D).
        encode_texts: the CLIP text tower (unit vectors out).
        text: the text an item is queried with (the indexer passes clip_item_text, what CLIP pairs with photos).
        heldout: item ids the CLIP never trained on; when at least MIN_HELDOUT of them have a photo and text here,
            only they are queried, so a model that memorised its training pairs is not rewarded for it.
        sample: how many items are queried, among how many photos, drawn how.
    """
    rows = [r for r, d in enumerate(photo_ids.tolist()) if items[d].has_text()]
    if not rows:
        return {f"text_to_image_recall@{K}": None, "queries": 0,
                "how": "not measured: no item has both a photo and text, so the text tower cannot be checked"}
    held = [r for r in rows if items[int(photo_ids[r])].id in heldout] if heldout else []
    source = (f"items the CLIP's trainer held out ({len(held)} in this catalog)" if len(held) >= MIN_HELDOUT else
              "catalog items (the CLIP may have trained on them: optimistic)")
    rng = np.random.default_rng(sample.seed)
    queries = rng.permutation(held if len(held) >= MIN_HELDOUT else rows)[:sample.queries]
    others = np.setdiff1d(np.arange(len(photo_ids)), queries)
    members = np.concatenate([queries, rng.permutation(others)[:max(0, sample.pool - len(queries))]])  # pool rows
    xq = encode_texts([text(items[int(photo_ids[r])]) for r in queries])  # (Q, D)
    xb = photo_xb[members]  # (P, D); query i's photo is row i
    rank = target_ranks(xq, xb, np.arange(len(queries)))  # photos strictly closer than the item's own
    recall = float((rank < K).mean())
    return {f"text_to_image_recall@{K}": round(recall, 4), "chance": round(min(K, len(members)) / len(members), 4),
            "queries": int(len(queries)), "pool": int(len(members)), "heldout": len(held) >= MIN_HELDOUT,
            "how": f"{len(queries)} {source} queried with their CLIP item text; recall@{K} of the item's own photo among "
                   f"{len(members)} catalog photos"}
