"""`vitrine retrain`: the whole click loop in one command — train, gate, index, promote, switch.

Each step is the same command a person would run (`train clip --clicks`, `gate`, `index`), parsed by that
command's own parser and run in this process; the first step that fails stops the run with a report naming it. The serving bundle is
never touched: the new bundle is written beside it, then a `current` symlink is re-pointed atomically (a server
started with `--watch` follows it) and/or a running server is told to switch with the Admin Reload RPC.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vitrine.cli import gate, index, train
from vitrine.cli.target import TOKEN_ENV
from vitrine.serving.tenancy import point_current


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="fine-tune CLIP on a click log, gate it, re-index and switch the server")
    p.add_argument("--clicks", help="click log (JSONL); with --tenant: the tenant's logs/clicks.jsonl")
    p.add_argument("--bundle", help="the serving bundle, ideally a `current` symlink to it; with --tenant: the tenant's")
    p.add_argument("--tenant", help="retrain one tenant of a `serve --tenants DIR` deployment (needs --tenants): its "
                                    "clicks, bundle, registry and work directory, and Reload for that tenant only")
    p.add_argument("--tenants", metavar="DIR", help="the tenants directory --tenant is in")
    p.add_argument("--registry", help="model registry directory (default: BUNDLE's folder/models; the tenant's registry/)")
    p.add_argument("--target", help="HOST:PORT of a running server to switch with Admin/Reload")
    p.add_argument("--token", default=None, help=f"write token for Reload (default: ${TOKEN_ENV})")
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="share of sessions (seeded random) the gate keeps")
    p.add_argument("--flickr", help="flickr8k folder for the general-knowledge check")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--freeze-text", choices=["none", "transformer", "all"], default=None)
    p.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                   help="passed on to `vitrine train clip --clicks` (repeatable), e.g. --train-arg=--general-fraction=0.5")
    p.add_argument("--work", help="where candidates and split logs go (default: BUNDLE's folder/retrain-<time>)")
    p.add_argument("--config", help="vitrine.toml ([gate] margins, indexer settings)")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_retrain)


def split_log(clicks: Path, work: Path, fraction: float, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """Writes train and held-out logs, image paths made absolute.

    The held-out sessions are a seeded random `fraction` of all sessions, so the gate measures the same traffic
    mix the candidate learned from, on sessions it never saw. (Splitting by time would be truer to a shop's next
    week, but simulated logs are written query by query, so it would hold out whole queries.)
    """
    import random
    from dataclasses import replace

    from vitrine.ranking.clicklog import ClickLogWriter, read_click_log, resolve_query_image

    sessions, summary = read_click_log(clicks)
    if not sessions:
        raise ValueError(f"click log {clicks} has no valid session ({summary}).")
    order = list(range(len(sessions)))
    random.Random(seed).shuffle(order)
    n_held = int(round(len(sessions) * fraction))
    held_idx = set(order[len(order) - n_held:])
    train = [s for i, s in enumerate(sessions) if i not in held_idx]
    held = [s for i, s in enumerate(sessions) if i in held_idx]
    if not any(s.click_ranks() for s in held) or not any(s.click_ranks() for s in train):
        raise ValueError(f"click log {clicks}: too few sessions with clicks to hold some out ({summary}).")
    paths = (work / "clicks-train.jsonl", work / "clicks-heldout.jsonl")
    for path, part in zip(paths, (train, held)):
        with ClickLogWriter(path) as w:
            for s in part:
                w.write(replace(s, image=resolve_query_image(s, clicks.resolve().parent)))
    return paths[0], paths[1], {"sessions": len(sessions), "train": len(train), "heldout": len(held),
                                "malformed_lines": summary.malformed}


def step_parser() -> argparse.ArgumentParser:
    """The commands retrain runs, with the same flags as on the command line."""
    parser = argparse.ArgumentParser(prog="vitrine")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, gate, index):
        module.register(sub)
    return parser


def _step(report: dict, name: str, argv: list[str]) -> int:
    print(f"[retrain] {name}: vitrine {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        args = step_parser().parse_args(argv)
        rc = args.handler(args)
    except SystemExit as exc:   # some handlers exit with a message
        rc = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int) and exc.code:
            print(exc.code, file=sys.stderr)
    report["steps"].append({"step": name, "exit": rc, "seconds": round(time.perf_counter() - t0, 1)})
    return rc


def tenant_defaults(args: argparse.Namespace) -> None:
    """Fills --clicks, --bundle, --registry and --work from the tenant's directory (serving/tenancy.py). A tenant
    serving `bundle/` gets a `current` pointer on promotion, so its next start (and a watcher) follows it."""
    from vitrine.serving.tenancy import TenantSpec, tenant_dir

    if not args.tenants:
        raise ValueError("--tenant needs --tenants DIR (the directory `vitrine serve --tenants` serves).")
    spec = TenantSpec.read(tenant_dir(args.tenants, args.tenant))
    if not spec.read_only:
        # Its acknowledged writes live in the serving bundle's WAL; a bundle re-indexed from the catalog file
        # would drop them (and a tenant taking writes cannot hot-swap).
        raise ValueError(f"tenant {args.tenant} takes live writes; retrain serves read-only tenants (read_only = true "
                         "in its tenant.toml), whose catalog is the file they are indexed from.")
    args.clicks = args.clicks or str(spec.click_log)
    args.bundle = args.bundle or str(spec.bundle)
    args.registry = args.registry or str(spec.registry)
    if not args.work:
        args.work = str(spec.dir / f"retrain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    args.pointer = str(spec.dir / "current")


def cmd_retrain(args: argparse.Namespace) -> int:
    from vitrine.indexer.manifest import Manifest
    from vitrine.trainer.registry import ModelRegistry

    if args.tenant:
        tenant_defaults(args)
    if not args.clicks or not args.bundle:
        raise ValueError("retrain needs --clicks and --bundle, or --tenant T --tenants DIR.")
    link = Path(args.bundle)
    serving = link.resolve()
    manifest_path = serving / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"--bundle {args.bundle} is not a Vitrine bundle (no manifest.json)")
    manifest = Manifest.read(manifest_path)
    current_model = manifest.models["clip"].name if "clip" in manifest.models else None
    catalog = manifest.catalog
    if not current_model or not Path(current_model).is_dir():
        raise ValueError(f"bundle {serving} has no local CLIP model to fine-tune (models.clip.name = {current_model!r}).")
    if not catalog or not Path(catalog).is_file():
        raise ValueError(f"bundle {serving} does not record a readable catalog path ({catalog!r}); re-index it with `vitrine index`.")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = Path(args.work) if args.work else serving.parent / f"retrain-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    registry = Path(args.registry) if args.registry else serving.parent / "models"
    report: dict[str, Any] = {"bundle": str(serving), "current_model": current_model, "work": str(work), "steps": []}
    t0 = time.perf_counter()

    def finish(ok: bool, why: str = "") -> int:
        report.update(ok=ok, seconds=round(time.perf_counter() - t0, 1), **({"stopped": why} if why else {}))
        (work / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report))
        return 0 if ok else 1

    train_log, held_log, report["clicks"] = split_log(Path(args.clicks), work, args.heldout_fraction, args.seed)
    candidate = work / "candidate"
    argv = ["train", "clip", "--clicks", str(train_log), "--catalog", catalog, "--base", current_model, "--out",
            str(candidate), "--quiet", "--seed", str(args.seed)]
    argv += (["--epochs", str(args.epochs)] if args.epochs else []) + (["--lr", str(args.lr)] if args.lr else [])
    argv += (["--freeze-text", args.freeze_text] if args.freeze_text else []) + list(args.train_arg)
    argv += ["--no-mlflow"] if args.no_mlflow else ["--mlflow-dir", str(serving.parent / "mlruns")]
    if _step(report, "train", argv) != 0:
        return finish(False, "training failed")
    argv = ["gate", "--candidate", str(candidate), "--current", current_model, "--clicks", str(held_log), "--catalog",
            catalog, "--registry", str(registry), "--report", str(work / "gate.json")]
    argv += (["--flickr", args.flickr] if args.flickr else []) + (["--config", args.config] if args.config else [])
    if _step(report, "gate", argv) != 0:
        return finish(False, "the gate rejected the candidate (see gate.json); nothing was indexed or switched")
    version = ModelRegistry(registry).current()
    model_dir = registry / version
    report["promoted"] = {"version": version, "path": str(model_dir)}
    parent = Path(args.pointer).parent if getattr(args, "pointer", None) else serving.parent
    new_bundle = parent / f"{serving.name.split('@')[0]}@{version}-{stamp}"
    argv = ["index", "--catalog", catalog, "--out", str(new_bundle), "--clip-model", str(model_dir), "--quiet"]
    argv += ["--config", args.config] if args.config else []
    if _step(report, "index", argv) != 0:
        return finish(False, "indexing failed; the serving bundle is unchanged")
    report["new_bundle"] = str(new_bundle)
    if args.target:
        # The server switches first: a pointer is re-pointed only to a bundle the server could load.
        from vitrine.server.client import VitrineClient

        with VitrineClient(args.target, tenant=args.tenant) as client:
            resp = client.reload(str(new_bundle), token=args.token or os.environ.get(TOKEN_ENV))
        report["reload"] = {"bundle_version": resp.bundle_version, "previous": resp.previous_bundle_version,
                            "load_ms": round(resp.load_ms, 1)}
    if getattr(args, "pointer", None) and not link.is_symlink():
        link = Path(args.pointer)   # a tenant that served bundle/ from now on follows its `current` pointer
    if link.is_symlink() or getattr(args, "pointer", None):
        point_current(link, new_bundle)
        report["pointer"] = f"{link} -> {new_bundle.name}"
    return finish(True)
