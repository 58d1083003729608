"""The [search] section of vitrine.toml (SearchConfig), and whether a bundle's CLIP may join text queries."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vitrine.indexer.manifest import Manifest
from vitrine.ranking.fusion import FusionMethod
from vitrine.ranking.request import SOURCES
from vitrine.ranking.rules import Rules
from vitrine.ranking.types import Constraint, Stage
from vitrine.serving.schema import check, check_positive_ints, config_from_dict


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
    # Image queries: a candidate whose photo is the query photo itself (cosine at least this: the same photo encoded
    # again) gets the bonus for every attribute the query photo shows, as that photo does, whatever its catalog lists;
    # without it, a product whose catalog lists another colour than its photo shows ranked below look-alikes for its
    # own photo (issues 23 and 26). Not tuned on qrels: bench/multi_photo.py's crops, mirrors and small rotations of a
    # photo score 0.57-0.95 against it and the nearest other fashion product below 0.6, so only copies pass 0.98.
    # Above 1: off.
    same_photo_min_cosine: float = 0.98
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
    # Merchandising ([search.rules], ranking/rules.py): boosts and buries by field value, pins per query, hidden ids,
    # a minimum fused score; a request's own rules apply on top (or alone, with no_rules).
    rules: Rules = Rules()
    stages: Stage = Stage.FULL  # the deepest stage applied when a request does not say (only loaded models run)
    default_k: int = 10
    max_k: int = 1000
    max_offset: int = 10_000
    max_text_chars: int = 2048
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchConfig:
        d = dict(d)
        rules = Rules.from_dict(d.pop("rules")) if "rules" in d else Rules()
        cfg = replace(config_from_dict(cls, d, "search"), rules=rules)
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
