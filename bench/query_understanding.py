"""Query understanding on the dev sets, through `vitrine serve`: BM25 alone, dense alone, plain RRF and the default,
with typo tolerance on and off, on the clean queries and on a seeded typo copy of them.

    python bench/query_understanding.py [--data ../shared/data] [--runs runs/query] [--sets fashion,scifact,...]

Each set is indexed once under --runs with the defaults and no CLIP (BM25 + the MiniLM text model: the text first
stage) and reused. Each bundle is served twice with `vitrine serve --read-only`: the defaults, and `[bm25] typos =
false`. The typo copy of a task changes one word of every query (the first eligible word at a seeded position: 4+
letters, no digits): one character deleted, two neighbours swapped, or one doubled, chosen by a seeded draw per
query, so anyone gets the same set. Variants per request: `sources=bm25`, `sources=text`, `fusion=rrf` with equal
weights (plain RRF), and the default. nDCG@10 with gain = grade (ranking/metrics.py). The last line is JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels, load_queries  # noqa: E402
from vitrine.server.client import VitrineClient  # noqa: E402

SETS = {"fashion": ("text-literal", "text-paraphrase"), "scifact": ("claims",), "crowdflower": ("product",),
        "nfcorpus": ("nutrition",)}
VARIANTS = {"bm25": {"sources": ["bm25"]}, "dense": {"sources": ["text"]},
            "rrf": {"fusion": "rrf", "weights": {"bm25": 1.0, "text": 1.0}}, "default": {}}
_EDITABLE = re.compile(r"^[a-z]{4,}$")


def typo(text: str, key: str, seed: int = 0) -> str:
    """`text` with one typo in one word of 4+ letters (deleted, swapped or doubled character), seeded by `key`."""
    rng = random.Random(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    words = text.split()
    eligible = [n for n, w in enumerate(words) if _EDITABLE.match(w.lower())]
    if not eligible:
        return text
    n = rng.choice(eligible)
    w = words[n]
    i = rng.randrange(1, len(w) - 1)        # never the first letter: people rarely get that one wrong
    kind = rng.choice(("delete", "swap", "double"))
    if kind == "delete":
        w = w[:i] + w[i + 1:]
    elif kind == "swap":
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    else:
        w = w[:i] + w[i] + w[i:]
    words[n] = w
    return " ".join(words)


def build(data: Path, name: str, runs: Path) -> Path:
    bundle = runs / name
    if not (bundle / "manifest.json").is_file():
        print(f"indexing {name} into {bundle} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(data / name / "catalog.jsonl"),
                        "--out", str(bundle), "--force", "--quiet"], check=True)
    return bundle


def run_task(client: VitrineClient, queries: list[dict], variant: dict) -> dict[str, list[str]]:
    run = {}
    for q in queries:
        hits = client.search(q["text"], k=10, stages="first", exclude_ids=q.get("exclude_ids", ()), **variant).hits
        run[q["qid"]] = [h.id for h in hits]
    return run


def measure(bundle: Path, config: Path | None, tasks: dict[str, tuple[list[dict], dict]]) -> dict:
    proc, target = start_server(bundle, ["--read-only", *(["--config", str(config)] if config else [])])
    out: dict = {}
    try:
        with VitrineClient(target, timeout_s=60.0) as client:
            for task, (queries, qrels) in tasks.items():
                for name, variant in VARIANTS.items():
                    t0 = time.perf_counter()
                    out[f"{task}/{name}"] = round(evaluate(run_task(client, queries, variant), qrels)["ndcg@10"], 4)
                    print(f"  {task}/{name}: {out[f'{task}/{name}']} ({time.perf_counter() - t0:.0f} s)",
                          file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "query"))
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data, runs = Path(args.data), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    off = runs / "typos-off.toml"
    off.write_text("[search]\ntypos = false\n")
    results: dict = {"bench": "query_understanding", "machine": machine(), "seed": args.seed, "sets": {}}
    for name in args.sets.split(","):
        bundle = build(data, name, runs)
        tasks: dict[str, tuple[list[dict], dict]] = {}
        for task in SETS[name]:
            qrels = load_qrels(data / name / "qrels" / f"{task}.tsv")
            queries = [q for q in load_queries(data / name / "queries" / f"{task}.jsonl") if q.get("text") and q["qid"] in qrels]
            typos = [{**q, "text": typo(q["text"], f"{name}/{task}/{q['qid']}", args.seed)} for q in queries]
            tasks[task] = (queries, qrels)
            tasks[f"{task}+typo"] = (typos, qrels)
            results["sets"].setdefault(name, {})[f"{task}+typo_changed"] = sum(a["text"] != b["text"]
                                                                              for a, b in zip(queries, typos))
        for label, config in (("typos_on", None), ("typos_off", off)):
            print(f"{name} ({label})", file=sys.stderr, flush=True)
            results["sets"][name][label] = measure(bundle, config, tasks)
    report("query_understanding", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
