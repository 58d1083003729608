"""First-stage quality and latency through `vitrine serve` and the batch client, on ../shared/data.

For each data set it builds (or reuses) two bundles, one with exact vectors ("Flat") and one with the
default factory ("auto": IVF-PQ with exact refine at these sizes), serves each with `vitrine serve`,
sends every query with `vitrine search --queries` (the batch client, over gRPC), and reports nDCG@10,
Recall@100 and the client-side p50/p99 latency per query. Also reports each source alone and RRF,
through the same server (per-request `--sources` / `--fusion`), so the default's gain is visible.

    python bench/first_stage.py [--data ../shared/data] [--bundles runs]

The last line printed is one JSON object with every figure and the machine.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import commit, machine  # noqa: E402

from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.ranking.evaluation import read_run  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels  # noqa: E402

TASKS = {"scifact": ["claims"], "fashion": ["text-literal", "text-paraphrase"]}
VARIANTS = {  # name -> extra `vitrine search` flags
    "default": [],
    "bm25": ["--sources", "bm25"],
    "text": ["--sources", "text"],
    "rrf": ["--fusion", "rrf", "--weight", "bm25=1", "--weight", "text=1"],
}


def fresh(out: Path) -> bool:
    """A bundle (or model) built by a bench at this very commit; anything older is rebuilt, not reused."""
    stamp = out / "bench-commit.txt"
    return stamp.is_file() and stamp.read_text().strip() == commit() and not commit().endswith("+dirty")


def stamp(out: Path) -> None:
    (out / "bench-commit.txt").write_text(commit() + "\n")


def ensure_bundle(data: Path, name: str, flavour: str, bundles: Path) -> Path:
    out = bundles / f"{name}-{flavour}"
    if (out / "manifest.json").is_file() and fresh(out):
        return out
    cfg = None
    if flavour == "Flat":
        cfg = Path(tempfile.mkdtemp()) / "flat.toml"
        cfg.write_text('[index]\nfactory = "Flat"\n')
    cmd = [sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(data / name / "catalog.jsonl"),
           "--out", str(out), "--force", *(["--config", str(cfg)] if cfg else [])]
    print(f"building {out} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    stamp(out)
    return out


def run_batch(target: str, queries: Path, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "vitrine.cli.main", "search", "--target", target, "--queries", str(queries),
           "--k", "100", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stderr.strip().splitlines()[-1])


def served_metrics(target: str, queries: Path, qrels: dict, extra: list[str], run_path: Path) -> tuple[dict, dict]:
    """Sends every query through the batch client and scores the run: (metrics, latency summary)."""
    lat = run_batch(target, queries, extra, run_path)
    run = {qid: [d for d, _ in hits] for qid, hits in read_run(run_path).items()}
    return evaluate(run, qrels), lat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--bundles", default=str(ROOT / "runs"))
    parser.add_argument("--flavours", default="Flat,auto")
    parser.add_argument("--sets", default=",".join(TASKS), help="data sets to measure, e.g. fashion")
    args = parser.parse_args(argv)
    data, bundles = Path(args.data), Path(args.bundles)
    bundles.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "figures": {}}
    tmp = Path(tempfile.mkdtemp())
    for name, tasks in ((n, TASKS[n]) for n in args.sets.split(",")):
        for flavour in args.flavours.split(","):
            bundle = ensure_bundle(data, name, flavour, bundles)
            manifest = json.loads((bundle / "manifest.json").read_text())
            proc, target = start_server(bundle)
            try:
                for task in tasks:
                    qrels = load_qrels(data / name / "qrels" / f"{task}.tsv")
                    for variant, extra in VARIANTS.items():
                        if flavour != "Flat" and variant != "default":
                            continue  # the per-source references only need measuring once
                        run_path = tmp / f"{name}-{flavour}-{task}-{variant}.jsonl"
                        m, lat = served_metrics(target, data / name / "queries" / f"{task}.jsonl", qrels, extra, run_path)
                        key = f"{name}/{task}/{flavour}/{variant}"
                        results["figures"][key] = {
                            "ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
                            "p50_ms": lat["latency_ms"]["p50"], "p99_ms": lat["latency_ms"]["p99"],
                            "queries": lat["queries"], "factory": manifest["vectors"]["text"]["factory"],
                        }
                        print(key, results["figures"][key], file=sys.stderr, flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    fig = results["figures"]
    results["ivfpq_minus_exact_ndcg@10"] = {
        f"{n}/{t}": round(fig[f"{n}/{t}/auto/default"]["ndcg@10"] - fig[f"{n}/{t}/Flat/default"]["ndcg@10"], 4)
        for n, ts in TASKS.items() for t in ts if f"{n}/{t}/auto/default" in fig and f"{n}/{t}/Flat/default" in fig
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_stage.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
