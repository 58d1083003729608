"""`vitrine index`: validate a catalog, encode it in batches (GPU when present) and write a versioned bundle."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a catalog into a new bundle")
    p.add_argument("--catalog", required=True, help="catalog JSONL, .parquet, or .csv with --columns")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--config", help="vitrine.toml (see README, Configuration)")
    p.add_argument("--text-model", help="sentence-transformers name or local dir (default all-MiniLM-L6-v2, offline)")
    p.add_argument("--no-text-vectors", action="store_true", help="BM25 only; skip the dense text index")
    p.add_argument("--clip-model", help="CLIP checkpoint dir (from `vitrine train clip`) or open_clip architecture name")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag for --clip-model NAME, e.g. laion2b_s34b_b79k (needs a hub)")
    p.add_argument("--columns", help="CSV column map, e.g. id=sku,title=name,attributes.color=colour")
    p.add_argument("--skip-invalid", action="store_true", help="skip bad lines (reported) instead of failing")
    p.add_argument("--strict", action="store_true", help="refuse a catalog with top-level fields that are not catalog "
                                                         "fields (by default they are ignored, with a warning per field)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="read and encode on a Ray cluster: 'auto' (a local one, or $RAY_ADDRESS's) or HOST:PORT / "
                        "ray://HOST:PORT; the bundle is the same (needs the [ray] extra)")
    p.add_argument("--workers", type=int, default=0, help="--ray: encoding actors per model (default: one per GPU, "
                                                          "else one per CPU)")

    p.set_defaults(handler=cmd_index)


def _clip_name(clip_model: str) -> str:
    from vitrine.encoders.clip import is_checkpoint_dir

    return str(Path(clip_model).resolve()) if is_checkpoint_dir(clip_model) else clip_model


def cmd_index(args: argparse.Namespace) -> int:
    from vitrine.serving.config import load_config
    from vitrine.indexer.bundle import CatalogSource, IndexerConfig, build_bundle
    from vitrine.indexer.catalog import UnknownFields, check_catalog_path, parse_column_map, read_catalog

    check_catalog_path(args.catalog)
    config = load_config(args.config)
    t0 = time.perf_counter()
    runner = None
    if args.workers < 0 or (args.workers and args.ray is None):
        raise ValueError("--workers takes a positive number, with --ray.")
    if args.strict and args.ray is not None:
        raise ValueError("--strict checks fields as the local reader reads them; drop --ray (or --strict) for this run.")
    unknown = UnknownFields()
    if args.ray is not None:
        from vitrine.indexer.distributed import RayRunner, clip_factory, read_catalog_ray, text_factory

        runner = RayRunner(args.ray, args.workers)
        # The workers load their models while this process reads the catalog and loads its own copies.
        runner.preload([*([] if args.no_text_vectors else [text_factory(args.text_model or config.encoders.text_model)]),
                        *([clip_factory(_clip_name(args.clip_model), args.clip_pretrained)] if args.clip_model else [])])
        devices = ", ".join(runner.describe()["devices"])
        print(f"indexing on Ray ({args.ray}): {runner.workers} workers on {devices}", file=sys.stderr, flush=True)
        items, errors = read_catalog_ray(args.catalog, skip_invalid=args.skip_invalid,
                                         column_map=parse_column_map(args.columns))
    else:
        items, errors = read_catalog(args.catalog, skip_invalid=args.skip_invalid,
                                     column_map=parse_column_map(args.columns), unknown=unknown)
    if unknown.counts and args.strict:
        raise ValueError(unknown.refusal(args.catalog))
    for line in unknown.warnings():
        print(line, file=sys.stderr)
    if errors:
        print(f"skipped {len(errors)} invalid line(s):", file=sys.stderr)
        for e in errors[:50]:
            print(f"  {e}", file=sys.stderr)
    if not items:
        raise ValueError(f"catalog {args.catalog} has no valid items")
    encoder = None
    if not args.no_text_vectors:
        from vitrine.encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(args.text_model or config.encoders.text_model, device=config.encoders.device)
    clip = None
    if args.clip_model:
        from vitrine.encoders.clip import ClipEncoder

        clip = ClipEncoder(_clip_name(args.clip_model), pretrained=args.clip_pretrained, device=config.encoders.device)
    try:
        manifest = build_bundle(
            items, args.out, encoder,
            IndexerConfig(batch_size=config.encoders.batch_size, ann=config.index, bm25=config.bm25,
                          onnx=config.encoders.export_onnx, progress=not args.quiet),
            clip_encoder=clip,
            source=CatalogSource(dir=Path(args.catalog).resolve().parent, path=str(Path(args.catalog).resolve()),
                                 config=config.to_dict()),
            force=args.force, runner=runner,
        )
    finally:
        if runner is not None:
            runner.close()
    counts = manifest.counts
    if counts.broken_images:
        print(f"{counts.broken_images} image(s) could not be read (listed in manifest.json), e.g.:", file=sys.stderr)
        for b in (manifest.broken_images or ())[:10]:
            print(f"  item {b.id}: {b.reason}", file=sys.stderr)
    summary = {"bundle": str(args.out), "bundle_version": manifest.bundle_version, "items": counts.items,
               "skipped_lines": len(errors), "broken_images": counts.broken_images or 0,
               "vectors": {k: {"factory": v.factory, "count": v.count} for k, v in manifest.vectors.items()},
               "seconds": round(time.perf_counter() - t0, 1),
               "items_per_s": round(counts.items / max(time.perf_counter() - t0, 1e-9), 1),
               **(manifest.built_by or {})}
    print(json.dumps(summary))
    return 0
