"""`vitrine gate`: a candidate CLIP is promoted only if it helps on held-out clicks without forgetting.

The margins come from [gate]; `vitrine gate-text` (cli/gate_text.py) shares the setup and the verdict.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate", help="promote a candidate CLIP only if it helps on held-out clicks without forgetting")
    p.add_argument("--candidate", required=True, help="candidate CLIP checkpoint dir")
    p.add_argument("--current", help="current CLIP checkpoint dir (default: the registry's current)")
    p.add_argument("--clicks", help="held-out click log JSONL (this, --judgments, or both)")
    p.add_argument("--judgments", metavar="DIR", help="a `vitrine judgments export` folder: its judged_ndcg@10 and "
                                                      "judged_recall@10 must gain min_gain (beside the click metrics)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--flickr", help="flickr8k folder for general image<->caption recall")
    add_gate_options(p)
    p.set_defaults(handler=cmd_gate)


def judged_query_sets(judgments: str | None) -> dict:
    """{"judged": QuerySet} of a `vitrine judgments export` folder, measured as judged_ndcg@10 and judged_recall@10
    (and gating: trainer/gate.py in_domain_config), or {} without one."""
    if not judgments:
        return {}
    from vitrine.ranking.judgments import export_paths
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.gate import JUDGED, QuerySet

    queries, qrels = export_paths(judgments)
    return {JUDGED: QuerySet(load_queries(queries), load_qrels(qrels), Path(judgments).resolve())}


def add_gate_options(p: argparse.ArgumentParser) -> None:
    """What both gates (gate, gate-text) take after their own inputs: the registry, the margins, the report."""
    p.add_argument("--registry", help="model registry dir: a promoted candidate is written here")
    p.add_argument("--config", help="vitrine.toml; its [gate] section sets the margins")
    p.add_argument("--min-gain", type=float, default=None, help="overrides gate.min_gain")
    p.add_argument("--max-general-drop", type=float, default=None, help="overrides gate.max_general_drop")
    p.add_argument("--report", help="write the JSON report here as well")
    p.add_argument("--device", default=None)


def cmd_gate(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.clicklog import read_click_log
    from vitrine.trainer.gate import GateData, load_flickr, run_gate

    if not args.clicks and not args.judgments:
        raise ValueError("vitrine gate needs --clicks LOG (held-out clicks), --judgments DIR (a `vitrine judgments "
                         "export`), or both.")
    query_sets = judged_query_sets(args.judgments)
    config, registry, current = gate_setup(args, "gate")
    sessions, log_dir = [], Path(args.catalog).resolve().parent
    if args.clicks:
        sessions, summary = read_click_log(args.clicks)
        print(f"held-out click log {args.clicks}: {summary}", file=sys.stderr)
        log_dir = Path(args.clicks).resolve().parent
        if not sessions and query_sets:
            # Without a session its metrics could not gate, and the verdict would rest on the judged set unannounced.
            raise ValueError(f"--clicks {args.clicks} has no sessions; drop --clicks to gate on --judgments alone.")
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    data = GateData(sessions, log_dir, items, Path(args.catalog).resolve().parent,
                    load_flickr(args.flickr) if args.flickr else None, query_sets)
    return finish_gate(args, run_gate(args.candidate, current, data, config, device=args.device), registry)


def load_gate_config(path: str | None, overrides: dict) -> object:
    """The [gate] section of vitrine.toml (validated with the rest of the file), with command-line overrides."""
    from dataclasses import replace

    from vitrine.serving.config import load_config

    return replace(load_config(path).gate, **{k: v for k, v in overrides.items() if v is not None})


def gate_setup(args: argparse.Namespace, command: str) -> tuple:
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


def finish_gate(args: argparse.Namespace, report: object, registry: object) -> int:
    from vitrine.trainer.gate import write_report

    if report.promote and registry is not None:
        report.promoted_version = registry.promote(args.candidate, note={
            "gate": {c.metric: {"current": c.current, "candidate": c.candidate} for c in report.checks}})
    print(report.to_text())
    print(json.dumps(report.to_dict(), default=str))
    if args.report:
        write_report(report, args.report)
    return 0 if report.promote else 1
