"""First-stage fusion rules compared offline on the candidates of built bundles (no server: the same lists).

For each bundle and query task it runs the default first stage once with deep k, keeps every candidate's
per-source score and rank (`Hit.scores_by_source`), and re-fuses those lists with each rule, so the rules are
compared on identical candidates. The target of the fusion default: on every set, never more than 0.005
nDCG@10 below the better of RRF and the best single source.

    python bench/fusion.py runs/text/scifact-base:scifact/claims runs/text/fashion-base:fashion/text-literal,text-paraphrase

(the bundles `bench/text_tuning.py` builds with the base model; any bundle of those catalogs will do).

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

from vitrine.serving.assemble import open_served  # noqa: E402
from vitrine.serving.config import VitrineConfig  # noqa: E402
from vitrine.ranking.fusion import FusionMethod, fuse  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels, load_queries  # noqa: E402
from vitrine.ranking.pipeline import SearchConfig, SearchRequest  # noqa: E402


def rules(config: SearchConfig) -> dict:
    w = {"bm25": config.weights["bm25"], "text": config.weights["text"]}
    return {
        "bm25": lambda lists: fuse({"bm25": lists["bm25"]}, FusionMethod.RRF),
        "dense": lambda lists: fuse({"text": lists["text"]}, FusionMethod.RRF),
        "rrf": lambda lists: fuse(lists, FusionMethod.RRF, {"bm25": 1, "text": 1}),
        "weighted_max (no gate)": lambda lists: fuse(lists, FusionMethod.WEIGHTED_MAX, w),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", help="BUNDLE:DATASET/TASK[,TASK...]")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--depth", type=int, default=100)
    args = parser.parse_args(argv)
    data = Path(args.data)
    default = SearchConfig(stages="first")
    config = SearchConfig(stages="first", bm25_gate_words=0)  # every candidate of both sources, fused below
    results: dict = {"machine": machine(), "figures": {}}
    for spec in args.sets:
        bundle, _, tasks = spec.partition(":")
        name, _, task_list = tasks.partition("/")
        searcher = open_served(bundle, VitrineConfig(search=config)).searcher
        for task in task_list.split(","):
            qrels = load_qrels(data / name / "qrels" / f"{task}.tsv")
            runs: dict[str, dict[str, list[str]]] = {r: {} for r in [*rules(config), "default"]}
            for q in load_queries(data / name / "queries" / f"{task}.jsonl"):
                if q["qid"] not in qrels or not q.get("text"):
                    continue
                res = searcher.search(SearchRequest(text=q["text"], k=2 * args.depth, stages="first",
                                                    exclude_ids=q.get("exclude_ids", ())))
                lists = {s: sorted(((h.id, h.scores_by_source[s].score) for h in res.hits if s in h.scores_by_source),
                                   key=lambda x: -x[1]) for s in ("bm25", "text")}
                for rule, f in rules(config).items():
                    runs[rule][q["qid"]] = [h.id for h in f(lists)][:100]
                searcher = searcher.with_config(default)   # the pipeline's own default, BM25 gate included
                res = searcher.search(SearchRequest(text=q["text"], k=100, stages="first", exclude_ids=q.get("exclude_ids", ())))
                runs["default"][q["qid"]] = [h.id for h in res.hits]
                searcher = searcher.with_config(config)
            fig = {rule: round(evaluate(run, qrels)["ndcg@10"], 4) for rule, run in runs.items()}
            fig["target"] = round(max(fig["rrf"], fig["bm25"], fig["dense"]) - 0.005, 4)
            fig["meets_target"] = fig["default"] >= fig["target"]
            results["figures"][f"{name}/{task}@{Path(bundle).name}"] = fig
            print(f"{name}/{task}@{Path(bundle).name}", fig, file=sys.stderr, flush=True)
        searcher.bundle.close()
    report("fusion", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
