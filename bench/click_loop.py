"""The click loop on fashion: simulated clicks -> CLIP fine-tune -> gate, against the base CLIP, on a held-out query half.

    python bench/click_loop.py [--sessions-per-query 4] [--epochs 2] [--generated 600] [--destroy-lr 0.05]
    python bench/click_loop.py --tiny      # a ~2-minute smoke run that proves the pipeline, not the figures

Splits text-paraphrase and composed queries by qid into train and test halves (a hash of the qid, so it is
deterministic); SIMULATES PBM clicks from the train half's qrels and from extra queries generated from catalog
attributes (never equal to a test query); fine-tunes from the base CLIP; measures base and candidate on the test
half's qrels (pure CLIP retrieval, nDCG@10), on held-out simulated clicks and on general image<->text recall
(held-out catalog pairs, flickr8k); runs the gate, and shows it rejecting a model trained with a destructive
learning rate. Writes bench/results/click_loop.json (or --out); last stdout line: the same JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.machine import machine  # noqa: E402
from vitrine.indexer.catalog import Item, read_catalog  # noqa: E402
from vitrine.ranking.clicklog import ClickLogWriter, read_click_log  # noqa: E402
from vitrine.ranking.metrics import load_qrels, load_queries  # noqa: E402
from vitrine.trainer.click_clip import ClickClipTrainer, ClickTrainConfig, prepare_click_data  # noqa: E402
from vitrine.trainer.gate import GateConfig, GateData, QuerySet, decide, load_flickr, measure  # noqa: E402
from vitrine.trainer.registry import ModelRegistry  # noqa: E402
from vitrine.trainer.simulate import SimulatorConfig, simulate_clicks  # noqa: E402

TASKS = ("text-paraphrase", "composed")
TEXT_TEMPLATES = ("{color} {article} for {gender}", "{gender}'s {color} {article}", "{color} {article}")


def in_train_half(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 2 == 0


def split_queries(data: Path) -> tuple[dict, dict]:
    """(train, test) per task: {task: (queries, qrels)}; a qid's half depends on the qid alone."""
    train, test = {}, {}
    for task in TASKS:
        queries = load_queries(data / "queries" / f"{task}.jsonl")
        qrels = load_qrels(data / "qrels" / f"{task}.tsv")
        train[task] = ([q for q in queries if in_train_half(q["qid"])], qrels)
        test[task] = ([q for q in queries if not in_train_half(q["qid"])], qrels)
    return train, test


def _attr(it: Item, key: str) -> str:
    return str(it.attributes.get(key, "")).strip()


def generate_queries(items: list[Item], n: int, forbidden_texts: set[str], forbidden_images: set[str],
                     seed: int) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Text and composed training queries from catalog attributes, graded like the shared data's qrels.

    Text: "{color} {article} for {gender}" and variants; grade 2 when colour, article type and gender match,
    1 when article type and gender do. Composed: an item photo + "in {colour}" (another colour that exists for
    that article type and gender); grade 2 in that colour, 1 same article type and gender. A generated query never
    equals a test query: no test text, and no test query photo.
    """
    rng = np.random.default_rng(seed)
    by_kind: dict[tuple[str, str], list[Item]] = {}
    for it in items:
        if it.image and _attr(it, "article_type") and _attr(it, "gender") and _attr(it, "color"):
            by_kind.setdefault((_attr(it, "article_type"), _attr(it, "gender")), []).append(it)
    kinds = [k for k, v in by_kind.items() if len(v) >= 5]
    colors_of = {k: sorted({_attr(it, "color") for it in by_kind[k]}) for k in kinds}
    queries, qrels, seen = [], {}, set()
    attempts = 0
    while len(queries) < n and attempts < n * 20:
        attempts += 1
        kind = kinds[rng.integers(len(kinds))]
        article, gender = kind
        pool = by_kind[kind]
        composed = rng.random() < 0.5 and len(colors_of[kind]) > 1
        if composed:
            src = pool[rng.integers(len(pool))]
            if src.image in forbidden_images:
                continue
            color = rng.choice([c for c in colors_of[kind] if c != _attr(src, "color")])
            text, image, exclude = f"in {color.lower()}", src.image, [src.id]
        else:
            color = rng.choice(colors_of[kind])
            template = TEXT_TEMPLATES[rng.integers(len(TEXT_TEMPLATES))]
            text = template.format(color=color, article=article, gender=gender).lower()
            image, exclude = None, []
        key = (text, image)
        if text in forbidden_texts or key in seen:
            continue
        seen.add(key)
        qid = f"gen-{len(queries)}"
        queries.append({"qid": qid, "text": text, **({"image": image, "exclude_ids": exclude} if image else {})})
        qrels[qid] = {it.id: 2 if _attr(it, "color") == color else 1 for it in pool if it.id not in exclude}
    return queries, qrels


def simulate(path: Path, batches: list[tuple[list[dict], dict]], catalog_ids: list[str], data: Path,
             config: SimulatorConfig) -> dict:
    n = clicks = 0
    if path.exists():
        path.unlink()
    with ClickLogWriter(path) as writer:
        for queries, qrels in batches:
            for s in simulate_clicks(queries, qrels, config, catalog_ids, image_root=data):
                writer.write(s)
                n += 1
                clicks += len(s.clicked)
    return {"sessions": n, "clicks": clicks}


def fine_tune(base: Path, out: Path, log: Path, items: list[Item], data: Path, config: ClickTrainConfig,
              tracking: str | None) -> dict:
    t0 = time.perf_counter()
    sessions, summary = read_click_log(log)
    trainer = ClickClipTrainer(config, out, base=str(base), device="cpu")
    prep = prepare_click_data(sessions, items, data, log.parent, config, trainer.preprocess["image_size"], progress=False)
    prep_s = time.perf_counter() - t0
    result = trainer.fit_clicks(prep)
    if tracking:
        from vitrine.trainer.tracking import MlflowTracker, log_training

        with MlflowTracker(tracking, experiment="click-loop-bench", run_name=out.name) as tracker:
            best = next(c for c in result["curve"] if c["epoch"] == result["best_epoch"])
            log_training(tracker, {"base": str(base), **result["clicks"]["config"]}, result["curve"], best, out)
    return {"seconds": round(time.perf_counter() - t0, 1), "prepare_s": round(prep_s, 1), "examples": len(prep.train),
            "best_epoch": result["best_epoch"], "curve": result["curve"], "log": summary.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--base", default=str(ROOT / ".cache" / "models" / "clip-fashion-r10t64"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "click-loop"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "click_loop.json"))
    parser.add_argument("--sessions-per-query", type=int, default=4)
    parser.add_argument("--generated", type=int, default=600, help="training queries generated from catalog attributes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4, help="a tenth of the base recipe's 2e-3")
    parser.add_argument("--freeze-text", choices=["none", "transformer", "all"], default="transformer")
    parser.add_argument("--general-fraction", type=float, default=0.25)
    parser.add_argument("--general-pairs", type=int, default=2000)
    parser.add_argument("--hard-negatives", type=int, default=1)
    parser.add_argument("--destroy-lr", type=float, default=0.05, help="the destructive run's learning rate; 0 skips it")
    parser.add_argument("--destroy-sessions", type=int, default=1, help="sessions per query for the destructive run's log")
    parser.add_argument("--general-items", type=int, default=1000)
    parser.add_argument("--max-test-queries", type=int, default=0, help="per task; 0 = the whole test half")
    parser.add_argument("--no-flickr", action="store_true")
    parser.add_argument("--mlflow-dir", default=None, help="track the fine-tunes in this MLflow store")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because this 2-core machine is shared with other jobs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="smoke-sized: proves the pipeline runs, not the figures")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sessions_per_query, args.generated, args.epochs = 2, 60, 1
        args.general_pairs, args.general_items, args.max_test_queries, args.destroy_sessions = 200, 200, 20, 1
        args.no_flickr = True
    import torch

    torch.set_num_threads(args.threads)
    t_loop = time.perf_counter()
    data = Path(args.data)
    fashion = data / "fashion"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    items, _ = read_catalog(fashion / "catalog.jsonl", skip_invalid=True)
    catalog_ids = [it.id for it in items]
    train, test = split_queries(fashion)
    if args.max_test_queries:
        test = {t: (q[:args.max_test_queries], r) for t, (q, r) in test.items()}
    test_texts = {q["text"].strip().lower() for qs, _ in test.values() for q in qs if q.get("text")}
    test_images = {q["image"] for qs, _ in test.values() for q in qs if q.get("image")}
    generated, gen_qrels = generate_queries(items, args.generated, test_texts, test_images, args.seed)
    assert not test_texts & {q["text"] for q in generated}  # the rule the benchmark's figures rest on

    t0 = time.perf_counter()
    sim = SimulatorConfig(sessions_per_query=args.sessions_per_query, judged_per_session=5, distractors=5,
                          seed=args.seed)
    batches = [(q, r) for q, r in train.values()] + [(generated, gen_qrels)]
    if args.tiny:
        batches = [(q[:20], r) for q, r in batches]
    train_log = simulate(work / "train-clicks.jsonl", batches, catalog_ids, fashion, sim)
    heldout_cfg = SimulatorConfig(sessions_per_query=max(2, args.sessions_per_query // 2), judged_per_session=5,
                                  distractors=5, seed=args.seed + 1)
    heldout_log = simulate(work / "heldout-clicks.jsonl", list(test.values()), catalog_ids, fashion, heldout_cfg)
    timings["simulate_s"] = round(time.perf_counter() - t0, 1)
    print(f"simulated clicks: train {train_log}, held-out {heldout_log}; {len(generated)} generated queries", flush=True)

    config = ClickTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, freeze_text=args.freeze_text,
                              general_fraction=args.general_fraction, general_pairs=args.general_pairs,
                              hard_negatives=args.hard_negatives, holdout_fraction=0.05, seed=args.seed)
    tuned = fine_tune(Path(args.base), work / "candidate", work / "train-clicks.jsonl", items, fashion, config,
                      args.mlflow_dir)
    timings["fine_tune_s"] = tuned["seconds"]

    heldout_sessions, _ = read_click_log(work / "heldout-clicks.jsonl")
    gate_data = GateData(heldout_sessions, work, items, fashion,
                         None if args.no_flickr else load_flickr(data / "flickr8k"),
                         {t: QuerySet(q, r, fashion) for t, (q, r) in test.items()})
    gate_cfg = GateConfig(min_gain=0.01, max_general_drop=0.10, general_items=args.general_items, seed=args.seed)
    t0 = time.perf_counter()
    metrics = {"base": measure(args.base, gate_data, gate_cfg), "candidate": measure(work / "candidate", gate_data, gate_cfg)}
    timings["measure_two_models_s"] = round(time.perf_counter() - t0, 1)
    registry = ModelRegistry(work / "registry")
    if registry.current() is None:
        registry.promote(args.base, note={"by": "bench/click_loop.py", "role": "base"})
    report = decide(metrics["base"], metrics["candidate"], gate_cfg)
    report.models = {"candidate": str(work / "candidate"), "current": str(args.base)}
    if report.promote:
        report.promoted_version = registry.promote(work / "candidate", note={"by": "bench/click_loop.py"})
    print(report.to_text(), flush=True)

    destroyed = None
    if args.destroy_lr > 0:
        bad_log = work / "destroy-clicks.jsonl"
        simulate(bad_log, batches, catalog_ids, fashion,
                 SimulatorConfig(sessions_per_query=args.destroy_sessions, judged_per_session=5, distractors=5, seed=args.seed))
        bad_cfg = ClickTrainConfig(epochs=1, batch_size=args.batch_size, lr=args.destroy_lr, freeze_text=args.freeze_text,
                                   general_fraction=0.0, holdout_fraction=0.05, seed=args.seed)
        destroyed = fine_tune(Path(args.base), work / "destroyed", bad_log, items, fashion, bad_cfg, None)
        metrics["destroyed"] = measure(work / "destroyed", gate_data, gate_cfg)
        bad_report = decide(metrics["base"], metrics["destroyed"], gate_cfg)
        bad_report.models = {"candidate": str(work / "destroyed"), "current": str(args.base)}
        print(bad_report.to_text(), flush=True)
        destroyed = {"lr": args.destroy_lr, "seconds": destroyed["seconds"], "examples": destroyed["examples"],
                     "gate": bad_report.to_dict()}
    timings["loop_total_s"] = round(time.perf_counter() - t_loop, 1)

    def delta(name: str) -> float | None:
        a, b = metrics["base"].get(name), metrics["candidate"].get(name)
        return None if a is None or b is None else round(b - a, 4)

    def rel(name: str) -> float | None:
        a, b = metrics["base"].get(name), metrics["candidate"].get(name)
        return None if not a or b is None else round((b - a) / a, 4)

    figures = {f"{t}/ndcg@10": {"base": metrics["base"].get(f"{t}_ndcg@10"), "candidate": metrics["candidate"].get(f"{t}_ndcg@10"),
                                "delta": delta(f"{t}_ndcg@10"), "target_delta": 0.05} for t in TASKS}
    figures.update({m: {"base": metrics["base"].get(m), "candidate": metrics["candidate"].get(m), "relative": rel(m),
                        "max_relative_drop": 0.10} for m in ("catalog_i2t_r@10", "catalog_t2i_r@10", "flickr_i2t_r@10", "flickr_t2i_r@10")})
    figures.update({m: {"base": metrics["base"].get(m), "candidate": metrics["candidate"].get(m), "delta": delta(m)}
                    for m in ("click_ndcg@10", "click_recall@10")})
    results = {"bench": "click_loop", "machine": machine(), "tiny": args.tiny, "simulated_clicks": True,
               "args": {k: v for k, v in vars(args).items()}, "split": {t: {"train": len(train[t][0]), "test": len(test[t][0])} for t in TASKS},
               "generated_queries": len(generated), "train_log": train_log, "heldout_log": heldout_log,
               "fine_tune": {k: v for k, v in tuned.items() if k != "log"}, "figures": figures, "metrics": metrics,
               "gate": report.to_dict(), "destructive": destroyed, "timings": timings}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    for name, fig in figures.items():
        print(f"{name:22s} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items()))
    print(f"loop: {timings}")
    print(json.dumps({"figures": figures, "gate": report.to_dict()["decision"],
                      "destructive_gate": destroyed["gate"]["decision"] if destroyed else None, "timings": timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
