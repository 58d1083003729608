"""`vitrine judgments export`: the grades people gave on the /ui workbench, as a BEIR set with inter-judge agreement,
and the `--judgments DIR` option the evaluation commands (eval, eval models, gate, gate-text) read it back with."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HOW_TO_JUDGE = "judgments are made on the /ui page of `vitrine serve --http-port N`"
SHOWN_DISAGREEMENTS = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judgments", help="export the relevance grades made on the /ui workbench, with judge agreement")
    jsub = p.add_subparsers(dest="judgments_command", required=True)
    e = jsub.add_parser("export", help="write queries.jsonl + qrels/test.tsv (median grade) + agreement.json")
    e.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="a judgments dir (judgments.jsonl), or a bundle or tenant dir with judgments/ inside")
    e.add_argument("--out", required=True, metavar="DIR", help="export folder; then `vitrine eval --judgments OUT`")
    e.add_argument("--tenant", metavar="NAME", help="only this tenant's judgments (needed when the store holds several)")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    e.set_defaults(handler=cmd_export)


def add_judgments_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judgments", metavar="DIR",
                   help="a `vitrine judgments export` folder: its queries, qrels and photos, instead of --queries/--qrels")


def use_judgments(args: argparse.Namespace, command: str) -> None:
    """--judgments DIR stands for --queries DIR/queries.jsonl --qrels DIR/qrels/test.tsv (and --image-root DIR where
    the command has one); without it, both --queries and --qrels are needed."""
    from vitrine.ranking.judgments import export_paths

    image_root = getattr(args, "image_root", None)
    if not args.judgments:
        if not args.queries or not args.qrels:
            raise ValueError(f"{command} needs --queries and --qrels, or --judgments DIR (a `vitrine judgments export`).")
        return
    if args.queries or args.qrels or image_root:
        raise ValueError("--judgments DIR brings its own queries, qrels and photos; drop --queries/--qrels/--image-root, "
                         "or drop --judgments.")
    queries, qrels = export_paths(args.judgments)
    args.queries, args.qrels = str(queries), str(qrels)
    if hasattr(args, "image_root"):
        args.image_root = str(Path(args.judgments))  # the export's photos/ paths are relative to it


def resolve_store(source: str | Path) -> Path:
    """The judgments directory `--from` names: itself, its judgments/ (a tenant dir), or BUNDLE.judgments beside a
    bundle (where `vitrine serve --bundle BUNDLE --http-port N` keeps them)."""
    from vitrine.ranking.judgments import JUDGMENTS_FILE

    source = Path(source)
    beside = source.absolute().with_name(f"{source.absolute().name}.judgments")
    for folder in (source, source / "judgments", beside):
        if (folder / JUDGMENTS_FILE).is_file():
            return folder
    raise ValueError(f"--from {source}: no {JUDGMENTS_FILE} there, in {source / 'judgments'} or in {beside}; "
                     f"{HOW_TO_JUDGE}.")


def cmd_export(args: argparse.Namespace) -> int:
    from vitrine.ranking.judgments import JudgmentStore, export

    folder = resolve_store(args.source)
    if Path(args.out).resolve() == folder.resolve():
        raise ValueError(f"--out {args.out} is the judgments directory itself; choose another folder.")
    store = JudgmentStore(folder)
    judgments = store.current(args.tenant)
    if not judgments:
        tenants = sorted({j.tenant for j in store.current()})
        which = f" of tenant {args.tenant!r} (tenants here: {', '.join(map(repr, tenants))})" if tenants else ""
        raise ValueError(f"{folder / store.path.name} has no judgments{which}; {HOW_TO_JUDGE}.")
    tenants = sorted({j.tenant for j in judgments})
    if len(tenants) > 1:
        raise ValueError(f"{store.path} holds judgments of {len(tenants)} tenants ({', '.join(map(repr, tenants))}); "
                         "choose one with --tenant NAME.")
    summary = export(judgments, args.out, store)
    summary["skipped_lines"] = store.skipped
    bundle = Path(args.source) if (Path(args.source) / "manifest.json").is_file() else None
    summary["next"] = f"vitrine eval --bundle {bundle or 'BUNDLE'} --judgments {args.out}"
    if args.json:
        print(json.dumps(summary))
    else:
        written = json.loads(Path(summary["files"]["agreement"]).read_text(encoding="utf-8"))   # export computed it
        print(report(summary, written["disagreements"], folder))
    return 0


def _query_label(d: dict[str, Any]) -> str:
    label = repr(d["text"]) if d["text"] else ""
    if d["photo"]:
        label = f"{label} + photo {d['photo'][:8]}" if label else f"photo {d['photo'][:8]}"
    return label


def report(summary: dict[str, Any], disagreements: list[dict[str, Any]], folder: Path) -> str:
    """The human summary: counts, agreement per judge pair, the first disagreements, the files and the next step."""
    skipped = f"; {summary['skipped_lines']} torn or malformed line(s) skipped" if summary["skipped_lines"] else ""
    lines = [f"judgments from {folder}: {summary['queries']} queries, {summary['pairs']} judged pairs, "
             f"{summary['judges']} judge(s){skipped}"]
    if summary["missing_photos"]:
        lines.append(f"left out {len(summary['missing_photos'])} photo queries whose photo is not under {folder}/photos")
    if not summary["kappa"]:
        lines.append("agreement: no two judges graded the same (query, item); a second judge on the same queries "
                     "gives Cohen's kappa")
    for p in summary["kappa"]:
        kappa = "undefined (one grade only)" if p["kappa"] is None else f"{p['kappa']:.3f}"
        lines.append(f"  {p['judges'][0]} & {p['judges'][1]}: {p['shared']} shared pairs, Cohen's kappa {kappa}, "
                     f"observed agreement {p['observed']:.0%}")
    lines.append(f"disagreements: {len(disagreements)}")
    for d in disagreements[:SHOWN_DISAGREEMENTS]:
        grades = ", ".join(f"{who} {g}" for who, g in d["grades"].items())
        lines.append(f"  {_query_label(d)}  item {d['item']}: {grades}")
    if len(disagreements) > SHOWN_DISAGREEMENTS:
        lines.append(f"  ... {len(disagreements) - SHOWN_DISAGREEMENTS} more in {summary['files']['agreement']}")
    files = summary["files"]
    photos = f", {summary['photos']} photo(s) under {Path(files['queries']).parent / 'photos'}" if summary["photos"] else ""
    lines.append(f"wrote {files['queries']}, {files['qrels']} (median grade, rounded down), {files['agreement']}{photos}")
    lines.append(f"next: {summary['next']}")
    return "\n".join(lines)
