"""`vitrine train clip`: the command-line harness over trainer/clip.py."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train models from catalog pairs")
    tsub = train.add_subparsers(dest="model", required=True)
    p = tsub.add_parser("clip", help="train (or fine-tune) a CLIP on the catalog's (image, text) pairs")
    p.add_argument("--catalog", required=True)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--base", help="Vitrine CLIP checkpoint directory to fine-tune from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--vision", default=None, help="timm image tower, e.g. resnet10t, resnet18")
    p.add_argument("--freeze-text", choices=["none", "transformer", "all"], default=None)
    p.add_argument("--freeze-image", action="store_true")
    p.add_argument("--holdout", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_train_clip)


def cmd_train_clip(args: argparse.Namespace) -> int:
    from indexer.catalog import read_catalog
    from trainer.clip import ClipTrainConfig, ClipTrainer, load_pairs

    overrides = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "image_size": args.image_size,
        "vision": args.vision, "freeze_text": args.freeze_text, "holdout": args.holdout, "patience": args.patience,
        "max_pairs": args.max_pairs, "seed": args.seed}.items() if v is not None}
    if args.freeze_image:
        overrides["freeze_image"] = True
    config = ClipTrainConfig(**overrides)
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    trainer = ClipTrainer(config, Path(args.out), base=args.base, device=args.device)
    size = trainer.preprocess["image_size"]
    pairs = load_pairs(items, Path(args.catalog).resolve().parent, size, progress=not args.quiet)
    if pairs.broken:
        print(f"skipped {len(pairs.broken)} item(s) with broken or missing images, e.g. {pairs.broken[:3]}")
    result = trainer.fit(pairs, resume=args.resume, progress=not args.quiet)
    print(json.dumps({"out": args.out, "best_epoch": result["best_epoch"], "seconds": result["seconds"],
                      "heldout": next(c for c in result["curve"] if c["epoch"] == result["best_epoch"])}))
    return 0
