"""Second-stage gains and latency: first stage, + cross-encoder, + LightGBM, each measured in one `vitrine eval` run.

Every step is the command a user would run (subprocesses of `vitrine`), and a step whose output exists is reused:

  scifact: `vitrine train reranker` on qrels/train.tsv (test queries refused in code), `vitrine train ranker` on the
           training queries the cross-encoder kept apart, then `vitrine eval --ablate-stages` on the 300 test claims.
  fashion: no judged training queries exist, so training queries and graded judgments are generated from catalog
           attributes (trainer/synthetic_queries.py; no text equal to any test query), then the same three steps on
           text-literal, text-paraphrase and composed.

    python bench/second_stage.py [--data ../shared/data] [--runs runs] [--only scifact|fashion]

Writes bench/results/second_stage.json and .md; the last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402

VITRINE = [sys.executable, "-m", "vitrine.cli.main"]


def run(args: list[str], log: Path) -> dict:
    """Runs one vitrine command, teeing stderr to a log; returns the JSON it printed last on stdout."""
    print("$ vitrine " + " ".join(args), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as err:
        out = subprocess.run(VITRINE + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    if out.returncode != 0:
        raise SystemExit(f"vitrine {args[0]} failed ({out.returncode}); see {log}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result["_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def stage_rows(report: dict) -> dict:
    """stage -> nDCG@10, Recall@10, MRR@10 and client-side latency from a `vitrine eval --json` report."""
    out = {}
    for r in report["reports"]:
        if not r["name"].startswith("stages="):
            continue
        m = r["metrics"]
        out[r["name"].split("=", 1)[1]] = {"ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
                                           "mrr@10": round(m["mrr@10"], 4), "p50_ms": round(r["latency_ms"]["p50"], 1),
                                           "p99_ms": round(r["latency_ms"]["p99"], 1)}
    return out


def write_generated(data: Path, out: Path, n: int) -> tuple[Path, Path]:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.metrics import load_queries
    from vitrine.trainer.synthetic_queries import attribute_queries

    items, _ = read_catalog(data / "catalog.jsonl", skip_invalid=True)
    test_texts = [q.get("text", "") for f in sorted((data / "queries").glob("*.jsonl")) for q in load_queries(f)]
    queries, qrels = attribute_queries(items, n, forbidden_texts=test_texts, seed=0)
    assert not {q["text"].casefold() for q in queries} & {t.casefold() for t in test_texts}
    out.mkdir(parents=True, exist_ok=True)
    qpath, rpath = out / "queries.jsonl", out / "qrels.tsv"
    qpath.write_text("".join(json.dumps(q) + "\n" for q in queries))
    with open(rpath, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["query-id", "corpus-id", "score"])
        for qid, judged in qrels.items():
            for doc, grade in judged.items():
                w.writerow([qid, doc, grade])
    return qpath, rpath


def no_cache_config(runs: Path) -> Path:
    """A config with the cross-encoder's score cache off, so each stage's latency is paid in full."""
    path = runs / "second_stage.toml"
    path.write_text("[rerank]\ncache_size = 0\n")
    return path


def bench_scifact(data: Path, runs: Path, log: Path) -> dict:
    d = data / "scifact"
    bundle, ce, ltr = runs / "scifact-Flat", runs / "models" / "ce-scifact", runs / "models" / "ltr-scifact"
    if not bundle.is_dir():
        run(["index", "--catalog", str(d / "catalog.jsonl"), "--out", str(bundle), "--quiet"], log)
    out = {}
    if not ce.is_dir():
        out["train_reranker"] = run(["train", "reranker", "--catalog", str(d / "catalog.jsonl"), "--queries", str(d / "queries.jsonl"),
                                     "--qrels", str(d / "qrels" / "train.tsv"), "--bundle", str(bundle), "--out", str(ce),
                                     "--epochs", "2", "--holdout", "0.1", "--reserve-for-ranker", "0.35", "--quiet"], log)
    if not ltr.is_dir():
        out["train_ranker"] = run(["train", "ranker", "--bundle", str(bundle), "--reranker", str(ce), "--queries",
                                   str(d / "queries.jsonl"), "--qrels", str(d / "qrels" / "train.tsv"), "--out", str(ltr),
                                   "--quiet"], log)
    report = run(["eval", "--bundle", str(bundle), "--reranker", str(ce), "--ranker", str(ltr), "--queries",
                  str(d / "queries" / "claims.jsonl"), "--qrels", str(d / "qrels" / "claims.tsv"), "--ablate-stages", "--json",
                  "--config", str(no_cache_config(runs))], log)
    out["claims"] = stage_rows(report)
    return out


def bench_fashion(data: Path, runs: Path, log: Path, n_queries: int) -> dict:
    d = data / "fashion"
    bundle, ce, ltr = runs / "fashion-clip", runs / "models" / "ce-fashion", runs / "models" / "ltr-fashion"
    if not bundle.is_dir():
        raise SystemExit(f"{bundle} is missing: build it with bench/images.py (a bundle with the trained CLIP)")
    qpath, rpath = write_generated(d, runs / "fashion-generated", n_queries)
    out = {"generated_queries": n_queries}
    if not ce.is_dir():
        out["train_reranker"] = run(["train", "reranker", "--catalog", str(d / "catalog.jsonl"), "--queries", str(qpath),
                                     "--qrels", str(rpath), "--bundle", str(bundle), "--out", str(ce), "--epochs", "2",
                                     "--holdout", "0.1", "--reserve-for-ranker", "0.35", "--quiet"], log)
    if not ltr.is_dir():
        out["train_ranker"] = run(["train", "ranker", "--bundle", str(bundle), "--reranker", str(ce), "--queries", str(qpath),
                                   "--qrels", str(rpath), "--out", str(ltr), "--quiet"], log)
    for task in ("text-literal", "text-paraphrase", "composed"):
        report = run(["eval", "--bundle", str(bundle), "--reranker", str(ce), "--ranker", str(ltr), "--queries",
                      str(d / "queries" / f"{task}.jsonl"), "--qrels", str(d / "qrels" / f"{task}.tsv"), "--ablate-stages",
                      "--json", "--config", str(no_cache_config(runs))], log)
        out[task] = stage_rows(report)
    return out


def markdown(results: dict) -> str:
    lines = ["| data | task | stage | nDCG@10 | Recall@10 | MRR@10 | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for data, tasks in results["data"].items():
        for task, stages in tasks.items():
            if not isinstance(stages, dict) or "first" not in stages:
                continue
            for stage, m in stages.items():
                lines.append(f"| {data} | {task} | {stage} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | "
                             f"{m['p50_ms']} | {m['p99_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--only", choices=["scifact", "fashion"])
    p.add_argument("--fashion-queries", type=int, default=400)
    args = p.parse_args(argv)
    data, runs = Path(args.data), Path(args.runs)
    (runs / "models").mkdir(parents=True, exist_ok=True)
    log = runs / "second_stage.log"
    results_path = ROOT / "bench" / "results" / "second_stage.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"data": {}}
    if args.only in (None, "scifact"):
        results["data"]["scifact"] = bench_scifact(data, runs, log)
    if args.only in (None, "fashion"):
        results["data"]["fashion"] = bench_fashion(data, runs, log, args.fashion_queries)
    results["machine"] = machine()
    results_path.write_text(json.dumps(results, indent=2))
    results_path.with_suffix(".md").write_text(markdown(results))
    print(markdown(results), file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
