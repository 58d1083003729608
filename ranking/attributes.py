"""Soft attribute boosts on the fused list: a composed query's named values ("in red") and what a query photo shows
(the CLIP's attribute heads)."""
from __future__ import annotations

from collections.abc import Mapping

from vitrine.indexer.columns import norm
from vitrine.indexer.docstore import DocStore
from vitrine.ranking.types import Hit, SourceHit


def same_photo(hits: list[Hit], mode: str, predicted: Mapping[str, tuple[str, float]], min_cosine: float
               ) -> dict[str, dict[str, str]]:
    """Candidates whose photo is the query photo itself (an image query's cosine >= min_cosine: a copy, encoded
    again): they show every attribute the query photo shows, whatever their catalog lists."""
    if mode != "image":
        return {}
    shows = {f: v for f, (v, _) in predicted.items()}
    return {h.id: shows for h in hits if (sh := h.scores_by_source.get("clip_image")) is not None and sh.score >= min_cosine}


def boost(hits: list[Hit], docstore: DocStore, bonus: Mapping[str, tuple[str, float]], source: str = "",
          shown: Mapping[str, Mapping[str, str]] | None = None) -> list[Hit]:
    """Soft constraints: field -> (value, bonus); an item with that attribute value (in the catalog, or `shown` by its
    photo) gains the bonus in its fused score. With `source`, the total bonus is recorded under that name for
    explanations."""
    shown = shown or {}
    out = []
    for h in hits:
        item = docstore.get(h.id)
        sees = shown.get(h.id, {})
        gain = 0.0 if item is None else sum(
            b for f, (v, b) in bonus.items()
            if sees.get(f) == v
            or any(k.casefold() == f and norm(x) == v for k, x in item.attributes.items()))
        by = {**h.scores_by_source, source: SourceHit(gain, 0)} if source and gain else h.scores_by_source
        out.append(Hit(h.id, h.score + gain, by))
    return sorted(out, key=lambda h: (-h.score, h.id))
