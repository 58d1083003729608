"""Training pairs for the text embedder: generated from the catalog alone, from judgments, and general English.

Generators see only the catalog (never evaluation queries): a shop's real queries are unknown when it trains.
- `attributes`: a pseudo-query of some of an item's attribute values in a random order -> the item.
- `title`: an item's title -> the rest of it (attributes, description).
- `cloze`: inverse cloze for long texts: one sentence -> the document without it.
General pairs are two captions of the same photo (flickr8k): everyday paraphrases that keep what the base knew.
"""
from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vitrine.indexer.bm25 import CONTEXT_ATTRIBUTES
from vitrine.indexer.bundle import item_text
from vitrine.indexer.catalog import Item

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
MIN_CLOZE_SENTENCES = 3


@dataclass(frozen=True)
class Pair:
    anchor: str
    positive: str
    item_id: str       # the catalog item the positive is ("" for general pairs)
    source: str        # generator name, "qrels" or "general"


def attribute_query(item: Item, rng: random.Random) -> str | None:
    values = [str(v) for k, v in item.attributes.items() if k not in CONTEXT_ATTRIBUTES and str(v).strip()]
    if len(values) < 2:
        return None
    chosen = rng.sample(values, rng.randint(2, len(values)))
    return " ".join(chosen).lower()


def title_rest(item: Item, rng: random.Random) -> tuple[str, str] | None:
    rest = item_text(Item(id=item.id, attributes=item.attributes, description=item.description))
    return (item.title, rest) if item.title and rest else None


def inverse_cloze(item: Item, rng: random.Random) -> tuple[str, str] | None:
    sentences = [s for s in _SENTENCE.split(item.description) if s.strip()]
    if len(sentences) < MIN_CLOZE_SENTENCES:
        return None
    i = rng.randrange(len(sentences))
    rest = " ".join(s for j, s in enumerate(sentences) if j != i)
    return sentences[i], ". ".join(p for p in (item.title, rest) if p)


def _attributes(item: Item, rng: random.Random) -> tuple[str, str] | None:
    query = attribute_query(item, rng)
    return (query, item_text(item)) if query else None


GENERATORS: Mapping[str, Callable[[Item, random.Random], tuple[str, str] | None]] = {
    "attributes": _attributes,
    "title": title_rest,
    "cloze": inverse_cloze,
}


def generate_pairs(items: Sequence[Item], generators: Sequence[str], per_item: int, seed: int) -> list[Pair]:
    """Up to `per_item` pairs per item from each generator, deterministic for a seed."""
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown pair generator(s) {', '.join(unknown)}; generators are {', '.join(GENERATORS)}.")
    rng = random.Random(seed)
    out, seen = [], set()
    for item in items:
        for name in generators:
            for _ in range(per_item):
                pair = GENERATORS[name](item, rng)
                if pair is None or (pair[0], item.id) in seen:
                    continue
                seen.add((pair[0], item.id))
                out.append(Pair(pair[0], pair[1], item.id, name))
    return out


def generated_queries(items: Sequence[Item], generators: Sequence[str], limit: int, seed: int) -> dict[str, tuple[str, str]]:
    """Pseudo-query id -> (text, the item it was generated from): one pair per item from each generator, shuffled
    with `seed`, at most `limit` of them (the reranker trainer's extra training queries)."""
    if not generators:
        return {}
    pairs = generate_pairs(items, generators, 1, seed)
    random.Random(seed).shuffle(pairs)
    return {f"gen-{n}": (p.anchor, p.item_id) for n, p in enumerate(pairs[:limit])}


def judged_pairs(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], items: Mapping[str, Item],
                 qids: Sequence[str]) -> list[Pair]:
    """(query, relevant item) for every judged training query; grade 0 judgments are not positives."""
    return [Pair(queries[q], item_text(items[d]), d, "qrels") for q in qids for d, g in qrels.get(q, {}).items()
            if g > 0 and d in items and queries.get(q)]


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """flickr8k's captions.txt (image,caption): photo -> its captions, in file order."""
    by_photo: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if n == 1 and row[:2] == ["image", "caption"]:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}: line {n}: expected image,caption")
            by_photo[row[0]].append(",".join(row[1:]).strip())
    return dict(by_photo)


def split_captions(captions: Mapping[str, list[str]], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training photos, held-out photos): the general check never sees a photo the model trained on.
    At most half the photos are held out."""
    photos = sorted(p for p, c in captions.items() if len(c) >= 2)
    random.Random(seed).shuffle(photos)
    n = min(heldout, len(photos) // 2)
    return photos[n:], photos[:n]


def general_pairs(captions: Mapping[str, list[str]], photos: Sequence[str], n: int, seed: int) -> list[Pair]:
    """n pairs of two captions of one photo, spread over the photos."""
    rng = random.Random(seed)
    out: list[Pair] = []
    pool = list(photos)
    while len(out) < n and pool:
        rng.shuffle(pool)
        for p in pool[: n - len(out)]:
            a, b = rng.sample(captions[p], 2)
            out.append(Pair(a, b, "", "general"))
    return out


def caption_check(captions: Mapping[str, list[str]], photos: Sequence[str]
                  ) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """The general check as (queries, corpus, relevant): a photo's first caption -> its other captions."""
    queries, corpus, relevant = {}, {}, {}
    for p in photos:
        first, *rest = captions[p]
        queries[p] = first
        ids = {f"{p}#{i}" for i in range(1, len(rest) + 1)}
        corpus.update({f"{p}#{i}": c for i, c in enumerate(rest, start=1)})
        relevant[p] = ids
    return queries, corpus, relevant
