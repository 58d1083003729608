"""`vitrine simulate-clicks`, `click-labels`, `gate` and `registry`: the click-loop commands over the trainer library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-clicks", help="SIMULATE a click log from graded qrels (for tests, benchmarks, demos)")
    p.add_argument("--queries", required=True, help="query JSONL (qid, text?, image?, exclude_ids?)")
    p.add_argument("--qrels", required=True, help="graded qrels TSV (BEIR layout)")
    p.add_argument("--catalog", required=True, help="catalog JSONL: distractor ids, and the folder query images are under")
    p.add_argument("--out", required=True, help="click log JSONL to write")
    p.add_argument("--run", help="rankings to show (JSONL of {qid, hits: [{id, score}]}); default: built from qrels")
    p.add_argument("--sessions-per-query", type=int, default=10)
    p.add_argument("--model", choices=["pbm", "cascade"], default="pbm")
    p.add_argument("--eta", type=float, default=1.0, help="PBM examination 1 / rank**eta")
    p.add_argument("--depth", type=int, default=10, help="items shown per session")
    p.add_argument("--distractors", type=int, default=20, help="random catalog items mixed into qrels rankings")
    p.add_argument("--ranking", choices=["shuffled", "ordered"], default="shuffled")
    p.add_argument("--click-prob", default="0:0.05,1:0.5,2:0.9", help="click probability by grade, e.g. 0:0.05,1:0.5,2:0.9")
    p.add_argument("--image-root", help="folder relative query images are under (default: the catalog's folder)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_simulate_clicks)

    p = sub.add_parser("click-labels", help="write the click-label table (qid, query, doc_id, position, label) for the ranker")
    p.add_argument("--clicks", required=True)
    p.add_argument("--out", required=True, help=".tsv or .jsonl")
    p.add_argument("--depth", type=int, default=None, help="positions per session (default: up to the last click)")
    p.set_defaults(handler=cmd_click_labels)

    p = sub.add_parser("gate", help="promote a candidate CLIP only if it helps on held-out clicks without forgetting")
    p.add_argument("--candidate", required=True, help="candidate CLIP checkpoint dir")
    p.add_argument("--current", help="current CLIP checkpoint dir (default: the registry's current)")
    p.add_argument("--clicks", required=True, help="held-out click log JSONL")
    p.add_argument("--catalog", required=True)
    p.add_argument("--flickr", help="flickr8k folder for general image<->caption recall")
    p.add_argument("--registry", help="model registry dir: a promoted candidate is written here")
    p.add_argument("--config", help="vitrine.toml; its [gate] section sets the margins")
    p.add_argument("--min-gain", type=float, default=None, help="overrides gate.min_gain")
    p.add_argument("--max-general-drop", type=float, default=None, help="overrides gate.max_general_drop")
    p.add_argument("--report", help="write the JSON report here as well")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=cmd_gate)

    p = sub.add_parser("gate-text", help="promote a tuned text model only if it wins on held-out queries without forgetting")
    p.add_argument("--candidate", required=True, help="tuned text model dir (from `vitrine train text`)")
    p.add_argument("--current", help="serving text model: a name or dir (default: the registry's current)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--queries", required=True, help="query JSONL")
    p.add_argument("--qrels", required=True, help="HELD-OUT judgments (never the ones the candidate trained on)")
    p.add_argument("--general", help="flickr8k captions.txt for the general paraphrase check")
    p.add_argument("--general-photos", type=int, default=300, help="photos in the general check (default 300)")
    p.add_argument("--registry", help="model registry dir: a promoted candidate is written here")
    p.add_argument("--config", help="vitrine.toml; its [gate] section sets the margins")
    p.add_argument("--min-gain", type=float, default=None, help="overrides gate.min_gain")
    p.add_argument("--max-general-drop", type=float, default=None, help="overrides gate.max_general_drop")
    p.add_argument("--report", help="write the JSON report here as well")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=cmd_gate_text)

    p = sub.add_parser("registry", help="list, promote into, or roll back a model registry")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    for name, help_text in (("list", "versions, the current one marked"), ("rollback", "make the previous model current"),
                            ("current", "print the current model's path")):
        r = rsub.add_parser(name, help=help_text)
        r.add_argument("--registry", required=True)
        r.set_defaults(handler=cmd_registry)
    r = rsub.add_parser("promote", help="add a model as the next version and make it current (no gate)")
    r.add_argument("--registry", required=True)
    r.add_argument("--model", required=True)
    r.set_defaults(handler=cmd_registry)


def parse_click_prob(spec: str) -> dict[int, float]:
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        grade, sep, prob = part.partition(":")
        try:
            out[int(grade)] = float(prob)
        except ValueError:
            raise ValueError(f"--click-prob entry {part!r} must look like GRADE:PROBABILITY, e.g. 2:0.9.") from None
        if not sep:
            raise ValueError(f"--click-prob entry {part!r} must look like GRADE:PROBABILITY, e.g. 2:0.9.")
    return out


def cmd_simulate_clicks(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.clicklog import ClickLogWriter
    from vitrine.ranking.evaluation import read_run
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.simulate import SimulatorConfig, simulate_clicks

    try:
        config = SimulatorConfig.from_dict({
            "model": args.model, "eta": args.eta, "depth": args.depth, "distractors": args.distractors,
            "ranking": args.ranking, "sessions_per_query": args.sessions_per_query, "seed": args.seed,
            "click_prob": parse_click_prob(args.click_prob)})
    except ValueError as exc:
        raise SystemExit(f"simulate-clicks: {exc}") from None
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    run = {q: [d for d, _ in hits] for q, hits in read_run(args.run).items()} if args.run else None
    image_root = Path(args.image_root) if args.image_root else Path(args.catalog).resolve().parent
    out = Path(args.out)
    if out.exists():
        out.unlink()  # a fresh log, not an append to an old one
    n = clicks = 0
    with ClickLogWriter(out) as writer:
        for s in simulate_clicks(load_queries(args.queries), load_qrels(args.qrels), config, [it.id for it in items],
                                 run=run, image_root=image_root):
            writer.write(s)
            n += 1
            clicks += len(s.clicked)
    print(json.dumps({"out": str(out), "sessions": n, "clicks": clicks, "model": config.model.value, "simulated": True}))
    return 0


def cmd_click_labels(args: argparse.Namespace) -> int:
    from vitrine.ranking.clicklog import ClickLogSummary, iter_click_log
    from vitrine.trainer.clicks import click_label_rows, write_click_labels

    summary = ClickLogSummary()
    n = write_click_labels(click_label_rows(iter_click_log(args.clicks, summary), depth=args.depth), args.out)
    print(f"click log {args.clicks}: {summary}")
    print(json.dumps({"out": args.out, "rows": n, "sessions": summary.sessions, "malformed": summary.malformed}))
    return 0


def load_gate_config(path: str | None, overrides: dict) -> object:
    """The [gate] section of vitrine.toml (validated with the rest of the file), with command-line overrides."""
    from dataclasses import replace

    from vitrine.cli.config import load_config

    return replace(load_config(path).gate, **{k: v for k, v in overrides.items() if v is not None})


def cmd_gate(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.clicklog import read_click_log
    from vitrine.trainer.gate import GateData, load_flickr, run_gate

    config, registry, current = _gate_setup(args, "gate")
    sessions, summary = read_click_log(args.clicks)
    print(f"held-out click log {args.clicks}: {summary}", file=sys.stderr)
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    data = GateData(sessions, Path(args.clicks).resolve().parent, items, Path(args.catalog).resolve().parent,
                    load_flickr(args.flickr) if args.flickr else None)
    return _finish_gate(args, run_gate(args.candidate, current, data, config, device=args.device), registry)


def _gate_setup(args: argparse.Namespace, command: str) -> tuple:
    """What both gates start from: the [gate] margins (with overrides), the registry or None, the current model."""
    from vitrine.trainer.registry import ModelRegistry, RegistryError

    try:
        config = load_gate_config(args.config, {"min_gain": args.min_gain, "max_general_drop": args.max_general_drop})
    except ValueError as exc:
        raise SystemExit(f"{command}: {exc}") from None
    registry = ModelRegistry(args.registry) if args.registry else None
    if args.current is not None:
        return config, registry, args.current
    if registry is None:
        raise SystemExit(f"{command}: give --current MODEL_DIR, or --registry DIR that has a current model.")
    try:
        return config, registry, str(registry.current_path())
    except RegistryError as exc:
        raise SystemExit(f"{command}: {exc}") from None


def _finish_gate(args: argparse.Namespace, report: object, registry: object) -> int:
    from vitrine.trainer.gate import write_report

    if report.promote and registry is not None:
        report.promoted_version = registry.promote(args.candidate, note={
            "gate": {c.metric: {"current": c.current, "candidate": c.candidate} for c in report.checks}})
    print(report.to_text())
    print(json.dumps(report.to_dict(), default=str))
    if args.report:
        write_report(report, args.report)
    return 0 if report.promote else 1


def cmd_gate_text(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.text_gate import TextGateData, run_text_gate
    from vitrine.trainer.text_pairs import caption_check, read_captions, split_captions

    config, registry, current = _gate_setup(args, "gate-text")
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    general = None
    if args.general:
        captions = read_captions(args.general)
        # The same held-out photos `train text` kept out (same seed), so the check is on photos neither model saw.
        general = caption_check(captions, split_captions(captions, args.general_photos, config.seed)[1])
    data = TextGateData(items, load_queries(args.queries), load_qrels(args.qrels), general)
    return _finish_gate(args, run_text_gate(args.candidate, current, data, config, device=args.device), registry)


def cmd_registry(args: argparse.Namespace) -> int:
    from vitrine.trainer.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(args.registry)
    try:
        if args.registry_command == "list":
            for v in registry.list():
                print(f"{'*' if v.current else ' '} {v.version}  {v.promoted}  {v.source}")
            if not registry.versions():
                print(f"registry {args.registry} is empty")
        elif args.registry_command == "rollback":
            previous = registry.current()
            print(f"rolled back {previous} -> {registry.rollback()}")
        elif args.registry_command == "current":
            print(registry.current_path())
        elif args.registry_command == "promote":
            print(f"promoted {args.model} as {registry.promote(args.model, note={'by': 'vitrine registry promote'})}")
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    return 0
