"""Chooses the image and composed query settings by measurement: the photo-attribute bonus and the composed text weight.

Composed queries are measured on the shared colour changes ("the same but in red") and on gender changes ("the same
but for men") generated here from the catalog's attributes.

Opens a fashion bundle built with a CLIP (as `vitrine serve` does, same Searcher) and runs every image and composed
query in-process for each setting, so a grid of settings costs seconds, not a server restart each. The defaults
chosen here are then measured through the server by bench/images.py.

    python bench/clip_settings.py --bundle runs/fashion-clip [--data ../shared/data]

Last line: one JSON object, nDCG@10 per (task, setting).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import commit, machine  # noqa: E402

from vitrine.serving.assemble import open_served  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels, load_queries  # noqa: E402
from vitrine.ranking.pipeline import SearchRequest  # noqa: E402

IMAGE_GRID = ((0.0, 0.5), (0.15, 0.5), (0.3, 0.5), (0.5, 0.5), (0.3, 0.3), (0.3, 0.7))  # (bonus, min_prob)
TEXT_WEIGHT = (0.0, 0.25, 0.5, 1.0)
COMPOSED_BONUS = (0.0, 0.3)


def gender_task(folder: Path, n: int = 200, seed: int = 0) -> tuple[list[dict], dict]:
    """Composed queries that change the gender ("the same but for men"), generated from the catalog's attributes:
    grade 2 = same article type and colour in the asked gender, grade 1 = same article type in that gender."""
    items = [json.loads(x) for x in (folder / "catalog.jsonl").read_text().splitlines() if x.strip()]
    items = [it for it in items if it.get("image") and it.get("attributes", {}).get("gender") in ("Men", "Women")]
    have = {(a["article_type"], a["gender"], a.get("color")) for a in (it["attributes"] for it in items)}
    rng = random.Random(seed)
    rng.shuffle(items)
    queries, qrels = [], {}
    for it in items:
        a = it["attributes"]
        other = "Women" if a["gender"] == "Men" else "Men"
        if (a["article_type"], other, a.get("color")) not in have:
            continue
        qid = f"gender-{len(queries)}"
        queries.append({"qid": qid, "image": it["image"], "text": f"the same but for {other.lower()}", "exclude_ids": [it["id"]]})
        qrels[qid] = {x["id"]: 2 if x["attributes"].get("color") == a.get("color") else 1 for x in items
                      if x["attributes"]["article_type"] == a["article_type"] and x["attributes"]["gender"] == other}
        if len(queries) == n:
            break
    return queries, qrels


def run_task(searcher, folder: Path, task: str, queries: list[dict] | None = None, qrels: dict | None = None,
             **request) -> float:
    queries = queries or load_queries(folder / "queries" / f"{task}.jsonl")
    run = {}
    for q in queries:
        image = (folder / q["image"]).read_bytes() if q.get("image") else b""
        result = searcher.search(SearchRequest(text=q.get("text", ""), image=image, k=10,
                                               exclude_ids=q.get("exclude_ids", ()), **request))
        run[q["qid"]] = [h.id for h in result.hits]
    return evaluate(run, qrels or load_qrels(folder / "qrels" / f"{task}.tsv"))["ndcg@10"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    folder = Path(args.data) / "fashion"
    searcher = open_served(args.bundle).searcher
    base = searcher.config
    out: dict = {"machine": machine(), "commit": commit(), "bundle": args.bundle, "image": {}, "composed": {},
                 "composed-gender": {}}
    gender = gender_task(folder)
    out["composed-gender_queries"] = len(gender[0])
    for bonus, min_prob in IMAGE_GRID:
        searcher = searcher.with_config(replace(base, attribute_bonus=bonus, attribute_min_prob=min_prob))
        key = f"bonus={bonus} min_prob={min_prob}"
        out["image"][key] = round(run_task(searcher, folder, "image"), 4)
        print("image", key, out["image"][key], file=sys.stderr, flush=True)
    for w in TEXT_WEIGHT:
        for bonus in COMPOSED_BONUS:
            searcher = searcher.with_config(replace(base, attribute_bonus=bonus, attribute_min_prob=0.5))
            key = f"text_weight={w} bonus={bonus}"
            out["composed"][key] = round(run_task(searcher, folder, "composed", composed_text_weight=w), 4)
            out["composed-gender"][key] = round(run_task(searcher, folder, "", *gender, composed_text_weight=w), 4)
            print("composed", key, out["composed"][key], "gender", out["composed-gender"][key], file=sys.stderr, flush=True)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "clip_settings.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
