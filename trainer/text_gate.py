"""The text embedder's promotion gate: a tuned model replaces the serving one only if it wins on held-out judged
queries by `min_gain` and loses at most `max_general_drop` (relative) on the general caption check.

Both models are measured the same way, by exact dense retrieval over the whole catalog, and the decision is
trainer/gate.py's `decide`, so text and CLIP models pass one rule with one report format.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vitrine.indexer.bundle import item_text
from vitrine.indexer.catalog import Item
from vitrine.ranking.metrics import evaluate
from vitrine.trainer.click_eval import brute_force_run
from vitrine.trainer.gate import TEXT_GENERAL_METRICS, TEXT_METRICS, GateConfig, GateReport, decide


@dataclass(frozen=True)
class TextGateData:
    items: Sequence[Item]
    queries: Sequence[dict]                       # held-out judged queries: qid, text
    qrels: Mapping[str, Mapping[str, int]]
    # The general check as (queries, corpus, relevant), from trainer.text_pairs.caption_check; None skips it.
    general: tuple[Mapping[str, str], Mapping[str, str], Mapping[str, set[str]]] | None = None


def text_gate_config(config: GateConfig) -> GateConfig:
    """The [gate] margins with the text metrics in place of the click and image ones. Only nDCG@10 must gain:
    Recall@10 is measured and reported, but on a small judged set it is often at its ceiling for both models."""
    return replace(config, in_domain_metrics=TEXT_METRICS[:1], general_metrics=TEXT_GENERAL_METRICS)


def measure_text(model: str | Path, data: TextGateData, device: str | None = None) -> dict[str, float]:
    from vitrine.encoders.text import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder(str(model), device=device)
    ids = [it.id for it in data.items]
    xb = encoder.encode_texts([item_text(it) for it in data.items])  # (N, D)
    queries = [q for q in data.queries if q.get("text") and q["qid"] in data.qrels]
    xq = encoder.encode_texts([q["text"] for q in queries])  # (Q, D)
    run = dict(zip((q["qid"] for q in queries), brute_force_run(xq, xb, ids, k=100)))
    m = evaluate(run, {q["qid"]: dict(data.qrels[q["qid"]]) for q in queries}, ks=(10,))
    out = {"text_ndcg@10": m["ndcg@10"], "text_recall@10": m["recall@10"]}
    if data.general is not None:
        gq, corpus, relevant = data.general
        cids = list(corpus)
        xc = encoder.encode_texts([corpus[c] for c in cids])
        xg = encoder.encode_texts([gq[q] for q in gq])
        grun = dict(zip(gq, brute_force_run(xg, xc, cids, k=10)))
        out["caption_r@10"] = evaluate(grun, {q: {c: 1 for c in relevant[q]} for q in gq}, ks=(10,))["recall@10"]
    return out


def run_text_gate(candidate: str | Path, current: str | Path, data: TextGateData, config: GateConfig,
                  device: str | None = None) -> GateReport:
    """Measures both models and decides; promotion into a registry is the caller's step."""
    config = text_gate_config(config)
    report = decide(measure_text(current, data, device), measure_text(candidate, data, device), config)
    report.models = {"candidate": str(candidate), "current": str(current)}
    return report
