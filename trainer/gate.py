"""The evaluation gate: a candidate CLIP replaces the current one only if it helps in-domain without forgetting.

In-domain: recall@k and nDCG@k on held-out click sessions (an item's grade is its click count) and/or on a set people
graded (`--judgments`), retrieving among the whole catalog with the query's CLIP text / image / composed vector, as
the serving pipeline does.
General: image<->text recall@k on a fixed sample of catalog pairs, and on flickr8k captions when given.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.indexer.catalog import Item, read_catalog, resolve_image
from vitrine.ranking.clicklog import ClickSession, resolve_log_image
# [gate] and the metric names it may use are served configuration (serving/config.py); re-exported for the gates.
from vitrine.serving.config import (CLICK_METRICS, GENERAL_METRICS, JUDGED_METRICS, TEXT_GENERAL_METRICS,  # noqa: F401
                                    TEXT_METRICS, GateConfig)
from vitrine.trainer.click_eval import brute_force_run, click_judgments, compose, run_metrics

JUDGED = "judged"  # the query set people graded; measured as judged_ndcg@10, judged_recall@10


@dataclass(frozen=True)
class Check:
    metric: str
    kind: str            # "in-domain" | "general"
    current: float | None
    candidate: float | None
    passed: bool | None  # None: not measured, not counted
    reason: str


@dataclass
class GateReport:
    promote: bool
    checks: list[Check]
    current: dict[str, float]
    candidate: dict[str, float]
    config: GateConfig
    models: dict[str, str] = field(default_factory=dict)
    promoted_version: str | None = None

    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": "promote" if self.promote else "reject", "promoted_version": self.promoted_version,
                "models": self.models, "checks": [asdict(c) for c in self.checks], "current": self.current,
                "candidate": self.candidate, "config": asdict(self.config)}

    def to_text(self) -> str:
        head = "PROMOTE" if self.promote else "REJECT"
        lines = [f"gate: {head} {self.models.get('candidate', 'candidate')} over {self.models.get('current', 'current')}"]
        for c in self.checks:
            mark = {True: "pass", False: "FAIL", None: "skip"}[c.passed]
            lines.append(f"  [{mark}] {c.reason}")
        if self.promoted_version:
            lines.append(f"  registered as {self.promoted_version}")
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def decide(current: Mapping[str, float], candidate: Mapping[str, float], config: GateConfig) -> GateReport:
    """Pure decision: every in-domain metric gains at least min_gain, no general metric drops more than allowed."""
    checks: list[Check] = []
    for m in config.in_domain_metrics:
        cur, cand = current.get(m), candidate.get(m)
        if cur is None or cand is None:
            missing = "no judged set" if m in JUDGED_METRICS else "no held-out clicks"
            checks.append(Check(m, "in-domain", cur, cand, False, f"{m}: not measured ({missing}); cannot show a gain"))
            continue
        delta = cand - cur
        ok = math.isfinite(delta) and delta >= config.min_gain - 1e-12
        checks.append(Check(m, "in-domain", cur, cand, ok,
                            f"{m}: {_fmt(cur)} -> {_fmt(cand)} ({delta:+.4f}); needs at least +{config.min_gain:.4f}"))
    for m in config.general_metrics:
        cur, cand = current.get(m), candidate.get(m)
        if cur is None or cand is None:
            checks.append(Check(m, "general", cur, cand, None, f"{m}: not measured (no data given for it)"))
            continue
        drop = (cur - cand) / cur if cur > 0 else (0.0 if cand >= cur else math.inf)
        if cur < config.chance_floor:
            checks.append(Check(m, "general", cur, cand, None,
                                f"{m}: {_fmt(cur)} -> {_fmt(cand)} ({-drop:+.1%} relative); not gated: the current model "
                                f"is below the chance floor {config.chance_floor:g}, so there is nothing to forget"))
            continue
        ok = math.isfinite(cand) and drop <= config.max_general_drop + 1e-12
        checks.append(Check(m, "general", cur, cand, ok,
                            f"{m}: {_fmt(cur)} -> {_fmt(cand)} ({-drop:+.1%} relative); may drop at most "
                            f"{config.max_general_drop:.0%}"))
    promote = all(c.passed is not False for c in checks)
    return GateReport(promote, checks, dict(current), dict(candidate), config)


# ---- measuring one model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySet:
    """Queries judged by qrels (e.g. a benchmark's test half), measured beside the click sessions."""

    queries: list[dict]       # qid, text?, image?, exclude_ids?
    qrels: dict[str, dict[str, int]]
    image_root: Path          # relative query images are under it


@dataclass
class GateData:
    """What both models are measured on, read once."""

    sessions: list[ClickSession]
    log_dir: Path
    items: list[Item]
    catalog_dir: Path
    flickr: tuple[list[Item], Path, list[str]] | None = None  # image items, their folder, one caption per item
    query_sets: dict[str, QuerySet] = field(default_factory=dict)


def load_flickr(folder: str | Path, heldout: int = 500, seed: int = 0) -> tuple[list[Item], Path, list[str]]:
    """flickr8k in the shared layout: catalog.jsonl (photos), queries/caption.jsonl and qrels/caption.tsv.

    With captions.txt present, only the held-out photos of trainer/clip.general_split (never trained on) are kept.
    """
    from vitrine.ranking.metrics import load_qrels, load_queries

    folder = Path(folder)
    items, _ = read_catalog(folder / "catalog.jsonl", skip_invalid=True)
    by_id = {it.id: it for it in items if it.image}
    if (folder / "captions.txt").is_file():
        from vitrine.trainer.clip import general_split

        held = {Path(p).stem for p in general_split(folder / "captions.txt", heldout, seed)[1]}
        by_id = {i: it for i, it in by_id.items() if i in held}
    text = {q["qid"]: q["text"] for q in load_queries(folder / "queries" / "caption.jsonl") if q.get("text")}
    pairs: dict[str, str] = {}
    for qid, judged in load_qrels(folder / "qrels" / "caption.tsv").items():
        for doc_id, grade in judged.items():
            if grade > 0 and doc_id in by_id and qid in text and doc_id not in pairs:
                pairs[doc_id] = text[qid]
    if not pairs:
        raise ValueError(f"{folder}: no (photo, caption) pairs found in qrels/caption.tsv.")
    ids = sorted(pairs)
    return [by_id[d] for d in ids], folder, [pairs[d] for d in ids]


def _encode_items(encoder: Any, items: Sequence[Item], folder: Path) -> tuple[list[str], np.ndarray]:
    """Ids and vectors as the indexer stores them: the photo where there is one, else the item's CLIP text."""
    from vitrine.indexer.bundle import clip_item_text
    from vitrine.indexer.images import encode_catalog_images

    # The main photo of each item: one vector per item, so a ranking of these rows names each item once.
    rows = [(i, replace(it, extra_images=())) for i, it in enumerate(items)]
    docnos, xb_img, _ = encode_catalog_images(rows, folder, encoder, progress=False)
    with_image = set(docnos.tolist())
    text_rows = [i for i, it in rows if i not in with_image and it.has_text()]
    xb_txt = encoder.encode_texts([clip_item_text(items[i]) for i in text_rows]) if text_rows else np.zeros((0, encoder.dim), np.float32)
    ids = [items[i].id for i in docnos.tolist()] + [items[i].id for i in text_rows]
    return ids, np.concatenate([xb_img, xb_txt]).astype(np.float32)


def _recall_both_ways(img: np.ndarray, txt: np.ndarray, k: int) -> tuple[float, float]:
    import torch

    from vitrine.trainer.clip import retrieval_recall

    r = retrieval_recall(torch.from_numpy(img), torch.from_numpy(txt), k)
    return r[f"i2t_r@{k}"], r[f"t2i_r@{k}"]


def _query_vectors(encoder: Any, texts: Sequence[str], images: Sequence[str | None],
                   text_weight: float) -> tuple[np.ndarray, list[int]]:
    """(Q', D) vectors for the queries whose image (if any) can be read, and the indices of those queries."""
    from vitrine.encoders.images import decode_image
    from vitrine.indexer.images import read_image_bytes

    decoded: dict[int, Any] = {}
    keep = []
    for i, path in enumerate(images):
        if path:
            try:
                decoded[i] = decode_image(read_image_bytes(path))
            except (OSError, ValueError):
                continue  # a query whose photo is gone cannot be replayed; the caller counts it
        keep.append(i)
    if not keep:
        return np.zeros((0, encoder.dim), np.float32), keep
    kept_texts = [texts[i] for i in keep]
    xt = encoder.encode_texts([t or " " for t in kept_texts]) * np.array([[1.0 if t else 0.0] for t in kept_texts], np.float32)
    xi = np.zeros_like(xt)
    rows = [j for j, i in enumerate(keep) if i in decoded]
    if rows:
        xi[rows] = encoder.encode_images([decoded[keep[j]] for j in rows])
    return compose(xt, xi, text_weight), keep  # (Q', D)


def _ranked(encoder: Any, texts: Sequence[str], images: Sequence[str | None], exclude: Sequence[Sequence[str]],
            ids: Sequence[str], xb: np.ndarray, config: GateConfig, k: int) -> tuple[list[list[str]], list[int]]:
    xq, keep = _query_vectors(encoder, texts, images, config.composed_text_weight)
    return brute_force_run(xq, xb, ids, k, [exclude[i] for i in keep]), keep


def measure(model_dir: str | Path, data: GateData, config: GateConfig, device: str | None = None, k: int = 10) -> dict[str, float]:
    """Every gate metric for one CLIP checkpoint directory (plus `<name>_ndcg@k` for each of data.query_sets)."""
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.indexer.bundle import clip_item_text

    encoder = ClipEncoder(str(model_dir), device=device)
    ids, xb = _encode_items(encoder, data.items, data.catalog_dir)
    out: dict[str, float] = {}
    owner = {resolve_image(it, data.catalog_dir): it.id for it in data.items if it.image}
    queries, qrels = click_judgments(data.sessions)
    if queries:
        paths = [resolve_log_image(q.image, data.log_dir) for q in queries]
        exclude = [[owner[p]] if p in owner else [] for p in paths]  # the shop never shows an item for its own photo
        ranked, keep = _ranked(encoder, [q.text for q in queries], paths, exclude, ids, xb, config, k)
        if len(keep) < len(queries):
            out["click_unreadable_query_images"] = float(len(queries) - len(keep))
        run = {queries[i].qid: r for i, r in zip(keep, ranked)}
        out.update({f"click_{m}": v for m, v in run_metrics(run, {queries[i].qid: qrels[queries[i].qid] for i in keep}, k).items()})
    for name, qs in data.query_sets.items():
        paths = [str(Path(q["image"]) if Path(q["image"]).is_absolute() else (qs.image_root / q["image"]).resolve())
                 if q.get("image") else None for q in qs.queries]
        ranked, keep = _ranked(encoder, [q.get("text") or "" for q in qs.queries], paths,
                               [list(q.get("exclude_ids", ())) for q in qs.queries], ids, xb, config, k)
        run = {qs.queries[i]["qid"]: r for i, r in zip(keep, ranked)}
        judged = {q["qid"]: qs.qrels[q["qid"]] for q in qs.queries if q["qid"] in qs.qrels}
        out.update({f"{name}_{m}": v for m, v in run_metrics(run, judged, k).items()})
    row = {d: i for i, d in enumerate(ids)}
    paired = [it for it in data.items if it.image and it.has_text() and it.id in row]
    rng = np.random.default_rng(config.seed)
    sample = [paired[i] for i in sorted(rng.permutation(len(paired))[:config.general_items])]
    if len(sample) >= 2:
        img = xb[[row[it.id] for it in sample]]
        txt = encoder.encode_texts([clip_item_text(it) for it in sample])
        out[f"catalog_i2t_r@{k}"], out[f"catalog_t2i_r@{k}"] = _recall_both_ways(img, txt, k)
    if data.flickr is not None:
        f_items, f_dir, captions = data.flickr
        f_ids, f_xb = _encode_items(encoder, f_items, f_dir)
        f_row = {d: i for i, d in enumerate(f_ids)}
        keep = [i for i, it in enumerate(f_items) if it.id in f_row]
        img = f_xb[[f_row[f_items[i].id] for i in keep]]
        txt = encoder.encode_texts([captions[i] for i in keep])
        out[f"flickr_i2t_r@{k}"], out[f"flickr_t2i_r@{k}"] = _recall_both_ways(img, txt, k)
    return out


def in_domain_config(config: GateConfig, clicks: bool, judged: bool) -> GateConfig:
    """The [gate] margins with the in-domain metrics the data given can show.

    With a judged set, its metrics always gate (those [gate] names, else both), so a promotion is never decided
    without the set people graded; the click metrics [gate] names gate too when clicks were given, and are dropped
    when they were not (nothing could measure them). Without a judged set, [gate] is used as written.
    """
    if not judged:
        return config
    named = config.in_domain_metrics
    metrics = [m for m in named if m in JUDGED_METRICS] or list(JUDGED_METRICS)
    metrics += [m for m in named if m not in JUDGED_METRICS and (clicks or m not in CLICK_METRICS)]
    return replace(config, in_domain_metrics=tuple(metrics))


def run_gate(candidate: str | Path, current: str | Path, data: GateData, config: GateConfig,
             device: str | None = None) -> GateReport:
    """Measures both models and decides; promotion into a registry is the caller's step."""
    config = in_domain_config(config, clicks=bool(data.sessions), judged=JUDGED in data.query_sets)
    report = decide(measure(current, data, config, device), measure(candidate, data, config, device), config)
    report.models = {"candidate": str(candidate), "current": str(current)}
    return report


def write_report(report: GateReport, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
