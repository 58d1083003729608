"""Base MiniLM vs a text model tuned by `vitrine train text`, through `vitrine serve` and the batch client.

For each data set it indexes the catalog with the base model (default settings), trains a tuned model with
`vitrine train text` (defaults; scifact also gets its training judgments, fashion only pairs generated from the
catalog), indexes the catalog again with `--text-model` the tuned model, serves each bundle with `vitrine serve`
and sends every query through the batch client, fused (the default) and dense alone (`--sources text`), in one
run. The general check (flickr8k caption -> other captions of its photo, Recall@10 on held-out photos) comes
from the trainer's metrics for base and tuned.

    python bench/text_tuning.py [--sets scifact,fashion] [--data ../shared/data] [--work runs/text] [--reuse]

Models and bundles built at this commit are reused; `--reuse` also reuses ones from other commits (for
development only: figures for the README are measured without it). The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from first_stage import fresh, served_metrics, stamp  # noqa: E402
from machine import machine, report  # noqa: E402

from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.ranking.metrics import load_qrels  # noqa: E402

TASKS = {"scifact": ["claims"], "fashion": ["text-literal", "text-paraphrase"]}
VARIANTS = {"fused": [], "dense": ["--sources", "text"], "bm25": ["--sources", "bm25"],
            "rrf": ["--fusion", "rrf", "--weight", "bm25=1", "--weight", "text=1"]}


def train_args(data: Path, name: str) -> list[str]:
    """What a user of each data set has: scifact has training judgments, the shop has only its catalog."""
    general = ["--general", str(data / "flickr8k" / "captions.txt")]
    if name == "scifact":
        return [*general, "--queries", str(data / "scifact" / "queries.jsonl"),
                "--qrels", str(data / "scifact" / "qrels" / "train.tsv")]
    return general


def vitrine(*args: str, log: Path) -> float:
    """Runs one `vitrine` command with its output in `log`; returns its wall time in seconds."""
    import subprocess

    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "vitrine.cli.main", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"vitrine {' '.join(args[:2])} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def index_rate(log: Path) -> float | None:
    """Items per second of the `vitrine index` run whose output is in `log` (its last line is a JSON summary)."""
    try:
        summary = json.loads(log.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return round(summary["items"] / summary["seconds"], 1) if summary.get("seconds") else None


def ready(path: Path, marker: str, reuse: bool) -> bool:
    return (path / marker).is_file() and (reuse or fresh(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "text"))
    parser.add_argument("--sets", default=",".join(TASKS))
    parser.add_argument("--reuse", action="store_true", help="reuse models and bundles built at other commits")
    parser.add_argument("--train-arg", action="append", default=[], help="extra `vitrine train text` argument (repeat)")
    parser.add_argument("--tag", default="", help="suffix of the tuned model's directory and the result file")
    args = parser.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "train_args": args.train_arg, "figures": {}, "training": {}, "models": {}}
    tmp = Path(tempfile.mkdtemp())
    for name in args.sets.split(","):
        catalog = data / name / "catalog.jsonl"
        base_bundle, model = work / f"{name}-base", work / f"{name}-model{args.tag}"
        tuned_bundle = work / f"{name}-tuned{args.tag}"
        if not ready(base_bundle, "manifest.json", args.reuse):
            print(f"indexing {name} with the base model ...", file=sys.stderr, flush=True)
            vitrine("index", "--catalog", str(catalog), "--out", str(base_bundle), "--force", log=work / f"{name}-base.log")
            stamp(base_bundle)
        if not ready(model, "training.json", args.reuse):
            print(f"training {name} ...", file=sys.stderr, flush=True)
            wall = vitrine("train", "text", "--catalog", str(catalog), "--out", str(model), "--bundle", str(base_bundle),
                           *train_args(data, name), *args.train_arg, log=work / f"{name}-train{args.tag}.log")
            (model / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
            stamp(model)
        if not ready(tuned_bundle, "manifest.json", args.reuse):
            print(f"indexing {name} with the tuned model ...", file=sys.stderr, flush=True)
            vitrine("index", "--catalog", str(catalog), "--out", str(tuned_bundle), "--text-model", str(model), "--force",
                    log=work / f"{name}-tuned{args.tag}.log")
            stamp(tuned_bundle)
        training = json.loads((model / "training.json").read_text())
        metrics = json.loads((model / "metrics.json").read_text())
        wall = model / "wall_seconds.txt"
        results["training"][name] = {
            "train_seconds": training["seconds"], "command_seconds": float(wall.read_text()) if wall.is_file() else None,
            "device": training["device"], "generators": training["generators"], "pairs": training["pairs"],
            "triplets": training["triplets"],
            "general_recall@10": {k: round(metrics[k].get("general_cosine_recall@10", float("nan")), 4) for k in ("base", "tuned")},
            "heldout_ndcg@10": {k: round(metrics[k]["domain_cosine_ndcg@10"], 4) for k in ("base", "tuned")},
        }
        results["models"][name] = {
            label: {"index_items_per_s": index_rate(work / f"{name}-{label}{args.tag if label == 'tuned' else ''}.log"),
                    "general_recall@10": results["training"][name]["general_recall@10"][label]}
            for label in ("base", "tuned")}
        results["models"][name]["tuned"]["weights_mib"] = round(training.get("weights_bytes", 0) / 2**20, 2)
        g = results["training"][name]["general_recall@10"]
        results["training"][name]["general_relative_drop"] = round((g["base"] - g["tuned"]) / g["base"], 4) if g["base"] else None
        print(name, results["training"][name], file=sys.stderr, flush=True)
        for model_name, bundle in (("base", base_bundle), ("tuned", tuned_bundle)):
            proc, target = start_server(bundle)
            try:
                for task in TASKS[name]:
                    qrels = load_qrels(data / name / "qrels" / f"{task}.tsv")
                    for variant, extra in VARIANTS.items():
                        if model_name == "tuned" and variant == "bm25":
                            continue  # the same index: measured once
                        run_path = tmp / f"{name}-{model_name}-{task}-{variant}.jsonl"
                        m, lat = served_metrics(target, data / name / "queries" / f"{task}.jsonl", qrels, extra, run_path)
                        key = f"{name}/{task}/{model_name}/{variant}"
                        results["figures"][key] = {"ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
                                                   "p50_ms": lat["latency_ms"]["p50"]}
                        print(key, results["figures"][key], file=sys.stderr, flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    fig = results["figures"]
    results["gain_ndcg@10"] = {
        f"{n}/{t}/{v}": round(fig[f"{n}/{t}/tuned/{v}"]["ndcg@10"] - fig[f"{n}/{t}/base/{v}"]["ndcg@10"], 4)
        for n in args.sets.split(",") for t in TASKS[n] for v in ("fused", "dense", "rrf")}
    report(f"text_tuning{args.tag}", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
