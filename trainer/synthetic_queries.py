"""Training queries and graded judgments generated from catalog attributes, for catalogs with no judged queries.

A query names a colour, an article type and a gender that occur together in the catalog ("navy blue shirts for
men"). Grades follow the fashion data's rule: 2 when every named attribute matches, 1 when the article type
(and gender) match. Queries whose text equals an evaluation query's are never produced.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

from vitrine.indexer.catalog import Item

TEMPLATES = ("{color} {article} for {gender}", "{color} {article} {gender}'s", "{gender}'s {article} in {color}",
             "{article} {color} {gender}")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def attribute_queries(items: Sequence[Item], n: int, forbidden_texts: Iterable[str] = (), seed: int = 0,
                      min_items: int = 3, prefix: str = "gen") -> tuple[list[dict], dict[str, dict[str, int]]]:
    """(queries, qrels) for up to `n` (colour, article type, gender) combinations with at least `min_items` items."""
    combos = Counter()
    for it in items:
        a = {k.casefold(): str(v) for k, v in it.attributes.items()}
        if a.get("color") and a.get("article_type") and a.get("gender"):
            combos[(a["color"], a["article_type"], a["gender"])] += 1
    rng = random.Random(seed)
    candidates = sorted(c for c, count in combos.items() if count >= min_items)
    rng.shuffle(candidates)
    forbidden = {_norm(t) for t in forbidden_texts}
    queries, qrels = [], {}
    for color, article, gender in candidates:
        if len(queries) >= n:
            break
        template = rng.choice(TEMPLATES)
        text = template.format(color=color.lower(), article=article.lower(), gender=gender.lower())
        if _norm(text) in forbidden:
            continue
        qid = f"{prefix}-{len(queries)}"
        judged = {}
        for it in items:
            a = {k.casefold(): str(v) for k, v in it.attributes.items()}
            if a.get("article_type") == article and a.get("gender") == gender:
                judged[it.id] = 2 if a.get("color") == color else 1
        queries.append({"qid": qid, "text": text})
        qrels[qid] = judged
    return queries, qrels
