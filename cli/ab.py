"""`vitrine ab report`: CTR per arm (A/B) and wins per team (interleaving) of one experiment, and whether they differ."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitrine.ranking.experiments import (
    ExperimentKind,
    ab_report,
    format_report,
    interleave_report,
    read_experiment_log,
    select_experiment,
)

EXPERIMENT_LOG = Path("logs") / "experiment.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="online comparisons of two ranker versions (A/B tests and interleaving)")
    asub = p.add_subparsers(dest="ab_command", required=True)
    r = asub.add_parser("report", help="report an experiment from an experiment log: CTR, wins, intervals, significance")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--log", help="an experiment log (JSONL)")
    where.add_argument("--tenant", help="a tenant name; its log is TENANTS/TENANT/logs/experiment.jsonl")
    r.add_argument("--tenants", help="the tenants directory (with --tenant)")
    r.add_argument("--experiment", help="the experiment to report (default: the one on the log's last line)")
    r.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05, i.e. 95%%)")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    r.set_defaults(handler=cmd_ab_report)


def log_path(args: argparse.Namespace) -> Path:
    """--log, or the tenant's experiment log; a tenant that has no directory under --tenants is a ValueError."""
    if args.log:
        if args.tenants:
            raise ValueError("--tenants goes with --tenant, not with --log.")
        path = Path(args.log)
    else:
        if not args.tenants:
            raise ValueError(f"--tenant {args.tenant} needs --tenants DIR, the directory that holds the tenants.")
        if not args.tenant or Path(args.tenant).name != args.tenant or args.tenant in (".", ".."):
            raise ValueError(f"--tenant must be a plain tenant name, got {args.tenant!r}.")
        tenant_dir = Path(args.tenants) / args.tenant
        if not tenant_dir.is_dir():
            raise ValueError(f"Unknown tenant {args.tenant!r}: there is no directory {tenant_dir}.")
        path = tenant_dir / EXPERIMENT_LOG
    if not path.is_file():
        raise FileNotFoundError(f"experiment log {path} does not exist")
    return path


def cmd_ab_report(args: argparse.Namespace) -> int:
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}.")
    path = log_path(args)
    name, rows = select_experiment(read_experiment_log(path), args.experiment)
    makers = {ExperimentKind.AB: ab_report, ExperimentKind.INTERLEAVE: interleave_report}
    reports = [make(rows, args.alpha) for kind, make in makers.items() if any(r["kind"] == kind for r in rows)]
    if args.json:
        print(json.dumps({"log": str(path), "experiment": name, "reports": [r.to_dict() for r in reports]}))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0
