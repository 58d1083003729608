"""`--ray [ADDRESS] --workers N` for `vitrine train text|clip|reranker`: the same trainer function, run on Ray
Train workers (trainer/distributed.py) instead of in this process; without --ray, Ray is never imported."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitrine.trainer.distributed import RayOptions

DEFAULT_WORKERS = 2


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed training (Ray Train, DDP; pip install 'vitrine-search[ray]')")
    g.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="train on a Ray cluster: 'auto' (the default for a bare --ray) starts or joins a local one; "
                        "ray://host:port or host:port joins a remote one (the output folder must be shared with it)")
    g.add_argument("--workers", type=int, default=None,
                   help=f"Ray Train workers, one CPU each, or one GPU each when the cluster has GPUs (default {DEFAULT_WORKERS})")


def ray_options(args: argparse.Namespace, command: str) -> RayOptions | None:
    """The Ray settings of a train command, or None without --ray; checks that Ray is installed before any data
    is prepared."""
    if args.ray is None:
        if args.workers is not None:
            raise ValueError(f"{command}: --workers needs --ray (the workers are Ray Train workers).")
        return None
    if getattr(args, "device", None):
        raise ValueError(f"{command}: --device does not apply with --ray; each Ray worker trains on its own device "
                         f"(a GPU when the cluster has them, else a CPU).")
    from vitrine.trainer.distributed import RayOptions, require_ray

    options = RayOptions(args.ray, DEFAULT_WORKERS if args.workers is None else args.workers)
    try:
        require_ray()
    except ImportError as exc:
        raise SystemExit(f"{command}: {exc}") from None
    return options


def absolute(path: str | None) -> str | None:
    """A path that exists, made absolute (a Ray worker may start in another folder); a model name stays as given."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def run(train_fn: Callable[..., Any], kwargs: Mapping[str, Any], options: RayOptions, out: Path,
        log: Callable[[str], None] = print) -> Any:
    """train_fn(**kwargs) on the Ray workers; rank 0's return value."""
    from vitrine.trainer.distributed import run_distributed

    return run_distributed(train_fn, kwargs, options, out, log=log)


def summary_fields(options: RayOptions | None) -> dict[str, Any]:
    """What a command's final JSON line adds under --ray."""
    return {} if options is None else {"workers": options.workers, "ray": options.address}
