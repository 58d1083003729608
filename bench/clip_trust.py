"""When may CLIP text join text queries? The indexer's CLIP check per model, and fashion text nDCG@10 before and after.

`check`: the check `vitrine index` writes into the manifest (indexer/clip_check.py), for each CLIP on a catalog,
without building a bundle: on the items the CLIP's trainer held out, and on all catalog items (how optimistic a check
on training pairs would be).

`text`: fashion text-literal and text-paraphrase through the server's Searcher (in-process, first stage) over a
bundle built with a CLIP: "before" (stop words counted by the coverage rule, no check), "stop words" (the new
coverage rule, no check), "after" (the defaults: both), and BM25 + MiniLM alone. With --demo, over a `vitrine demo`
bundle instead: one query per (colour, article type, gender) of its generated catalog, "navy blue shirt for men"
style, graded from the attributes as fashion's queries are.

    python bench/clip_trust.py check --catalog CATALOG --clip DIR [--clip DIR ...] [--captions]
    python bench/clip_trust.py text --bundle BUNDLE [--data ../shared/data] [--demo]

Last line: one JSON object with every figure, also written to bench/results/clip_trust_<command>[_captions].json.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import commit, machine  # noqa: E402

TASKS = ("text-literal", "text-paraphrase")


def captioned(catalog: str) -> tuple[list, set[str]]:
    """flickr8k (photos, no text) with each photo's first caption as its title, and the photos the CLIP trainer keeps
    out of its general pairs (trainer/clip.general_split, 500, seed 0): the general-knowledge version of the check."""
    from dataclasses import replace as with_title

    from vitrine.indexer.catalog import read_catalog
    from vitrine.trainer.clip import general_split
    from vitrine.trainer.text_pairs import read_captions

    captions_file = Path(catalog).parent / "captions.txt"
    captions = {p.rsplit(".", 1)[0]: c for p, c in read_captions(captions_file).items()}
    items, _ = read_catalog(catalog)
    items = [with_title(it, title=captions[it.id][0]) for it in items if it.id in captions]
    _, held = general_split(captions_file, 500, 0)
    return items, {p.rsplit(".", 1)[0] for p in held}


def check(catalog: str, clips: list[str], captions: bool) -> dict:
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.indexer.bundle import clip_item_text
    from vitrine.indexer.catalog import read_catalog
    from vitrine.indexer.clip_check import CheckSample, clip_check, trainer_heldout_ids
    from vitrine.indexer.images import encode_catalog_images

    items, general = captioned(catalog) if captions else (read_catalog(catalog)[0], None)
    rows = list(enumerate(items))
    out = {}
    for name in clips:
        clip = ClipEncoder(str(Path(name).resolve()), device="cpu")
        ids, xb, broken = encode_catalog_images(rows, Path(catalog).resolve().parent, clip, 64, progress=False)
        held = general if captions else trainer_heldout_ids(clip.name)
        # seed 1 for the whole-catalog sample: seed 0 draws exactly the trainer's held-out pairs (same permutation).
        out[name] = {"heldout": clip_check(dict(rows), ids, xb, clip.encode_texts, clip_item_text, heldout=held),
                     "all_items": clip_check(dict(rows), ids, xb, clip.encode_texts, clip_item_text, heldout=None,
                                             sample=CheckSample(seed=1)),
                     "broken_photos": len(broken)}
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    return out


def _old_coverage(self, text: str) -> float:
    """Bm25Index.term_coverage before stop words were left out (what "before" measures)."""
    from vitrine.indexer.bm25 import TEXT_FIELDS

    words = self.query_words(text)
    if not words:
        return 0.0
    searcher = self.index.searcher()
    found = sum(searcher.search(self.index.parse_query(w, list(TEXT_FIELDS)), limit=1, count=False).hits != []
                for w in words)
    return found / len(words)


# `vitrine demo`'s article types as a shopper writes them: in the catalog's words, and in words it never uses.
DEMO_WORDS = {"Tshirts": "t-shirt", "Shirts": "shirt", "Jeans": "jeans", "Casual Shoes": "casual shoes",
              "Handbags": "handbag", "Watches": "watch", "Caps": "cap", "Dresses": "dress"}
DEMO_SYNONYMS = {"Tshirts": "tee", "Shirts": "button-down", "Jeans": "denims", "Casual Shoes": "sneakers",
                 "Handbags": "purse", "Watches": "wristwatch", "Caps": "hat", "Dresses": "frock"}


def demo_task(items: list, words: dict[str, str]) -> tuple[list[dict], dict]:
    """Queries like the demo's first one ("navy blue shirt for men"), one per (colour, article type, gender) the
    generated catalog has, graded from attributes as fashion's are: 2 = all three match, 1 = article type and gender."""
    combos = sorted({(a["color"], a["article_type"], a["gender"]) for a in (it.attributes for it in items)})
    queries, qrels = [], {}
    for n, (color, article, gender) in enumerate(combos):
        qid = f"demo-{n}"
        queries.append({"qid": qid, "text": f"{color.lower()} {words[article]} for {gender.lower()}"})
        qrels[qid] = {it.id: 2 if it.attributes["color"] == color else 1 for it in items
                      if it.attributes["article_type"] == article and it.attributes["gender"] == gender}
    return queries, qrels


def text(bundle: str, data: Path, demo: bool = False) -> dict:
    from vitrine.indexer.bm25 import Bm25Index
    from vitrine.serving.assemble import open_served
    from vitrine.ranking.metrics import evaluate, load_qrels, load_queries
    from vitrine.ranking.pipeline import SearchRequest, clip_text_trust

    folder = data / "fashion"
    searcher = open_served(bundle, batching=False).searcher
    if demo:
        items = list(searcher.bundle.docstore.items.values())
        tasks = {"demo-literal": demo_task(items, DEMO_WORDS), "demo-paraphrase": demo_task(items, DEMO_SYNONYMS)}
    else:
        tasks = {t: (load_queries(folder / "queries" / f"{t}.jsonl"), load_qrels(folder / "qrels" / f"{t}.tsv"))
                 for t in TASKS}
    base = searcher.config
    new_coverage = Bm25Index.term_coverage
    variants = {  # name -> (coverage rule, config, request sources)
        "before": (_old_coverage, replace(base, clip_text_min_recall=0.0), ()),
        "stop words only": (new_coverage, replace(base, clip_text_min_recall=0.0), ()),
        "after (defaults)": (new_coverage, base, ()),
        "bm25 + text only": (new_coverage, base, ("bm25", "text")),
    }
    trusted, why = clip_text_trust(searcher.bundle.manifest, base.clip_text_min_recall)
    clip = searcher.bundle.manifest.models.get("clip")
    out: dict = {"check": clip.check if clip else None, "clip_text_trusted": trusted,
                 "why": why, "ndcg@10": {}, "literal": {}, "clip_text_dropped": {}}
    for task, (queries, qrels) in tasks.items():
        for name, (coverage, config, sources) in variants.items():
            Bm25Index.term_coverage = coverage
            searcher = searcher.with_config(config)
            run, dropped = {}, 0
            for q in queries:
                result = searcher.search(SearchRequest(text=q["text"], k=10, stages="first", sources=sources,
                                                       exclude_ids=q.get("exclude_ids", ())))
                run[q["qid"]] = [h.id for h in result.hits]
                dropped += "clip_text" in result.dropped
            # Queries the coverage rule calls literal (CLIP text weight x literal_clip_scale, 0 by default).
            literal = sum(coverage(searcher.bundle.bm25, q["text"]) >= config.literal_coverage for q in queries)
            out["ndcg@10"].setdefault(task, {})[name] = round(evaluate(run, qrels)["ndcg@10"], 4)
            out["literal"].setdefault(task, {})[name] = literal
            out["clip_text_dropped"].setdefault(task, {})[name] = dropped
            print(task, name, out["ndcg@10"][task][name], f"literal {literal}/{len(queries)}, clip_text dropped by the "
                  f"check in {dropped}", file=sys.stderr, flush=True)
    Bm25Index.term_coverage = new_coverage
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("--catalog", required=True)
    c.add_argument("--clip", action="append", required=True)
    c.add_argument("--captions", action="store_true", help="flickr8k: titles from captions.txt (general knowledge)")
    t = sub.add_parser("text")
    t.add_argument("--bundle", required=True)
    t.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    t.add_argument("--demo", action="store_true", help="a `vitrine demo` bundle: attribute queries like its first one")
    args = parser.parse_args(argv)
    out = {"machine": machine(), "commit": commit()}
    if args.command == "check":
        out |= {"catalog": args.catalog, "checks": check(args.catalog, args.clip, args.captions)}
    else:
        out |= {"bundle": args.bundle, **text(args.bundle, Path(args.data), args.demo)}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = (f"clip_trust_{args.command}" + ("_captions" if getattr(args, "captions", False) else "")
            + ("_demo" if getattr(args, "demo", False) else "") + ".json")
    (results / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
