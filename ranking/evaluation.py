"""Evaluation harness: run queries through a search function per variant, collect runs and latencies, score them.

The search function is injected (a gRPC client, a Searcher, or a bare encoder + index), so this module
stays free of the server. Formatting (table, markdown, JSON) is pure and works on `EvalReport`s.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.indexer.jsonl import read_jsonl
from vitrine.ranking.metrics import DEFAULT_KS, METRICS, Qrels, Run, evaluate

ScoredRun = dict[str, list[tuple[str, float]]]  # qid -> [(doc_id, score)], best first
# (query, variant) -> ranked (doc_id, score) pairs; raises on a failed request.
SearchFn = Callable[[Mapping[str, Any], "Variant"], list[tuple[str, float]]]


@dataclass(frozen=True)
class Variant:
    """One way of answering the queries: which sources, which fusion, and any further request options.

    `options` are passed through to the search function (e.g. a future `rerank_depth`), so a new stage
    needs a new plan entry, not a new field here.
    """

    name: str
    sources: tuple[str, ...] = ()
    fusion: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_VARIANT = Variant("default")


def ablation_plan(sources: Sequence[str], fusions: Sequence[str] = (),
                  stages: Mapping[str, Sequence[Any]] | None = None) -> list[Variant]:
    """The default request, then each source alone, then every source under each fusion method, then each stage setting.

    Args:
        sources: first-stage sources the bundle serves, e.g. ["bm25", "text"] (later "clip_text", "clip_image").
        fusions: fusion method names the server accepts, e.g. ["rrf", "weighted"].
        stages: later stages and the settings to try, e.g. {"rerank_depth": [0, 20, 50]}; each value
            becomes one variant with that request option.
    """
    sources = list(dict.fromkeys(sources))
    plan = [DEFAULT_VARIANT]
    plan += [Variant(f"{s} only", sources=(s,)) for s in sources]
    if len(sources) > 1:
        plan += [Variant(f"{'+'.join(sources)} {f}", sources=tuple(sources), fusion=f) for f in fusions]
    for option, values in (stages or {}).items():
        plan += [Variant(f"{option}={v}", options={option: v}) for v in values]
    return plan


@dataclass
class QueryRun:
    """What running one variant over all queries produced."""

    variant: Variant
    run: ScoredRun
    latencies_ms: list[float]
    errors: dict[str, str]

    def ranked(self) -> Run:
        return {qid: [doc for doc, _ in hits] for qid, hits in self.run.items()}


def run_queries(queries: Sequence[Mapping[str, Any]], search: SearchFn, variant: Variant = DEFAULT_VARIANT,
                warmup: int = 1) -> QueryRun:
    """Sends every query through `search` once (after `warmup` untimed calls) and times each call.

    A query whose call raises is recorded in `errors` (qid -> message) and left out of the run, so it
    scores 0 like any judged query missing from a run.
    """
    for q in queries[:warmup]:
        try:
            search(q, variant)
        except Exception:  # noqa: BLE001 - the timed pass below records the error
            pass
    run: ScoredRun = {}
    latencies: list[float] = []
    errors: dict[str, str] = {}
    for q in queries:
        t0 = time.perf_counter()
        try:
            hits = search(q, variant)
        except Exception as exc:  # noqa: BLE001 - one failed query must not end the evaluation
            errors[q["qid"]] = f"{type(exc).__name__}: {exc}"
            continue
        latencies.append((time.perf_counter() - t0) * 1e3)
        run[q["qid"]] = list(hits)
    return QueryRun(variant, run, latencies, errors)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    lat = np.asarray(latencies_ms, dtype=np.float64)
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean())}


@dataclass(frozen=True)
class EvalReport:
    name: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    queries: int
    errors: int
    extra: dict[str, Any] = field(default_factory=dict)


def score_run(qrun: QueryRun, qrels: Qrels, ks: Iterable[int] = DEFAULT_KS) -> EvalReport:
    return EvalReport(name=qrun.variant.name, metrics=evaluate(qrun.ranked(), qrels, ks),
                      latency_ms=latency_summary(qrun.latencies_ms), queries=len(qrun.run) + len(qrun.errors),
                      errors=len(qrun.errors))


def ranx_metrics(run: Run, qrels: Qrels, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """The same metrics computed by ranx on the same ranking (scores are rank-derived, so ties cannot reorder)."""
    try:
        from ranx import Qrels as RQrels
        from ranx import Run as RRun
        from ranx import evaluate as ranx_evaluate
    except ImportError:
        raise ImportError("Checking against ranx needs the `ranx` package: pip install ranx") from None
    judged = {q: d for q, d in qrels.items() if any(g > 0 for g in d.values())}
    # ranx drops queries with an empty ranking; a tiny score for an unjudged sentinel keeps them (and scores 0).
    ranx_run = {q: ({d: float(len(run.get(q, [])) - i) for i, d in enumerate(run.get(q, []))} or {"\x00none": 0.0})
                for q in judged}
    names = [f"{m}@{k}" for m in METRICS for k in ks]
    out = ranx_evaluate(RQrels(judged), RRun(ranx_run), names, make_comparable=True)
    return {n: float(out[n]) for n in names}


def max_abs_diff(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a.keys() & b.keys())


# ---- run files -------------------------------------------------------------------------------------------


def write_run(path: str | Path, run: ScoredRun) -> None:
    """JSONL, one `{"qid", "hits": [{"id", "score"}]}` per query: the same layout as `vitrine search --queries`."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, hits in run.items():
            f.write(json.dumps({"qid": qid, "hits": [{"id": d, "score": s} for d, s in hits]}) + "\n")


def _run_row(row: Any) -> tuple[str, list[tuple[str, float]]]:
    try:
        return str(row["qid"]), [(str(h["id"]), float(h["score"])) for h in row["hits"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"expected {{'qid', 'hits': [{{'id', 'score'}}]}} ({exc!r})") from None


def read_run(path: str | Path) -> ScoredRun:
    return dict(read_jsonl(path, _run_row))


# ---- formatting ----------------------------------------------------------------------------------------


def table_columns(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    return [f"{m}@{k}" for m in METRICS for k in ks] + ["p50 ms", "p95 ms", "p99 ms"]


def report_rows(reports: Sequence[EvalReport], ks: Sequence[int] = DEFAULT_KS) -> list[list[str]]:
    rows = []
    for r in reports:
        cells = [f"{r.metrics[c]:.4f}" for c in table_columns(ks)[:-3]]
        cells += [f"{r.latency_ms[p]:.1f}" for p in ("p50", "p95", "p99")]
        rows.append([r.name, *cells, str(r.queries), str(r.errors)])
    return rows


def format_table(reports: Sequence[EvalReport], ks: Sequence[int] = DEFAULT_KS) -> str:
    header = ["variant", *table_columns(ks), "queries", "errors"]
    rows = report_rows(reports, ks)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(reports: Sequence[EvalReport], ks: Sequence[int] = DEFAULT_KS) -> str:
    header = ["variant", *table_columns(ks), "queries", "errors"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in report_rows(reports, ks)]
    return "\n".join(lines)


def reports_to_json(reports: Sequence[EvalReport], **context: Any) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return None if x != x else round(x, 6)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean({**context, "reports": [asdict(r) for r in reports]}))


# ---- model selection -----------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (Linux: `5` into /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory since the last reset_peak_rss (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_encoder(name: str, load: Callable[[], Any], items: Sequence[Any], queries: Sequence[Mapping[str, Any]],
                     qrels: Qrels, k: int = 100, batch_size: int = 64, ann: Any = None) -> EvalReport:
    """Encodes the catalog with one candidate text encoder, indexes it, and scores dense-only retrieval.

    `load()` returns the encoder (anything with name, dim, encode_texts). Throughput is measured through
    the indexer's own batching path; latency is per query (encode + search), one query at a time.
    """
    import faiss

    from vitrine.indexer.ann import AnnConfig, VectorIndex
    from vitrine.indexer.bundle import encode_in_batches, item_text

    reset_peak_rss()
    t0 = time.perf_counter()
    encoder = load()
    load_s = time.perf_counter() - t0
    rows = [it for it in items if it.has_text()]
    texts = [item_text(it) for it in rows]
    t0 = time.perf_counter()
    xb = encode_in_batches(encoder.encode_texts, texts, batch_size, f"encode {name}", encoder.dim, progress=False)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = VectorIndex.build(xb, np.arange(len(rows), dtype=np.int64), ann or AnnConfig(use_gpu=False))
    build_s = time.perf_counter() - t0
    index_bytes = sum(int(faiss.serialize_index(ix).size) for ix in (index.index, index.refine) if ix is not None)
    ids = [it.id for it in rows]

    def search(q: Mapping[str, Any], _variant: Variant) -> list[tuple[str, float]]:
        exclude = set(q.get("exclude_ids") or ())
        xq = encoder.encode_texts([q["text"]])  # (1, D)
        D, I = index.search(xq, k + len(exclude))
        return [(ids[i], float(d)) for d, i in zip(D[0], I[0]) if i >= 0 and ids[i] not in exclude][:k]

    text_queries = [q for q in queries if q.get("text")]
    report = score_run(run_queries(text_queries, search, Variant(name)), qrels)
    extra = {"dim": int(encoder.dim), "vector_bytes": int(encoder.dim) * 4, "items": len(rows),
             "encode_items_per_s": len(rows) / encode_s if encode_s > 0 else float("inf"),
             "encode_s": encode_s, "load_s": load_s, "index_factory": index.factory, "index_bytes": index_bytes,
             "index_build_s": build_s, "peak_rss_mib": peak_rss_mib(), "skipped_non_text_queries": len(queries) - len(text_queries)}
    return EvalReport(report.name, report.metrics, report.latency_ms, report.queries, report.errors, extra)


MODEL_COLUMNS = ("ndcg@10", "recall@100", "p50 ms", "items/s", "dim", "index MiB", "peak RSS MiB")
OPTIONAL_COLUMNS = {"weights_mib": ("weights MiB", "{:.1f}"), "general_recall@10": ("general R@10", "{:.4f}")}


def _optional(reports: Sequence[EvalReport]) -> list[str]:
    return [k for k in OPTIONAL_COLUMNS if all(k in r.extra for r in reports)]


def model_rows(reports: Sequence[EvalReport]) -> list[list[str]]:
    extra = _optional(reports)
    return [[r.name, f"{r.metrics['ndcg@10']:.4f}", f"{r.metrics['recall@100']:.4f}", f"{r.latency_ms['p50']:.1f}",
             f"{r.extra['encode_items_per_s']:.1f}", str(r.extra["dim"]), f"{r.extra['index_bytes'] / 2**20:.2f}",
             f"{r.extra['peak_rss_mib']:.0f}", *(OPTIONAL_COLUMNS[k][1].format(r.extra[k]) for k in extra)] for r in reports]


def format_models(reports: Sequence[EvalReport], markdown: bool = False) -> str:
    header = ["model", *MODEL_COLUMNS, *(OPTIONAL_COLUMNS[k][0] for k in _optional(reports))]
    rows = model_rows(reports)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [header, *rows])
