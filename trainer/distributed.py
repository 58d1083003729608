"""Data-parallel training for `vitrine train ... --ray`: Ray Train runs a trainer function on N workers joined by a
torch process group (DDP, gloo on CPUs, NCCL on GPUs), rank 0 alone writing the output. Ray is imported only by
the Ray functions; the process-group helpers need torch alone and are no-ops in one process."""
from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
INSTALL_HINT = "training on Ray needs Ray Train: pip install 'vitrine-search[ray]'."
RESULT_FILE = "result.pkl"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to train: `address` "auto" starts or joins a local cluster; otherwise ray://host:port
    (Ray Client) or host:port (the cluster's GCS). Every worker takes one CPU, or one GPU when the cluster has them."""

    address: str = "auto"
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("The Ray address must be 'auto', ray://host:port or host:port, not empty.")
        if self.workers < 1:
            raise ValueError(f"The number of Ray workers must be a positive integer, got {self.workers}.")


def require_ray() -> Any:
    """Imports ray with Ray Train, or raises ImportError naming the extra to install."""
    try:
        import ray
        import ray.train.torch
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


def connect(address: str) -> dict[str, float]:
    """Joins the Ray cluster at `address` ("auto": the local one, started when none runs) unless this process is
    already connected, and returns the cluster's resources."""
    ray = require_ray()
    if not ray.is_initialized():
        # ray.init() without an address finds RAY_ADDRESS or the latest local cluster, else starts one.
        ray.init(address=None if address == "auto" else address, ignore_reinit_error=True)
    return dict(ray.cluster_resources())


def check_batch(batch_size: int, workers: int, flag: str = "--batch-size") -> None:
    """Every worker takes an equal share of each batch, so the batch must divide evenly among them."""
    if batch_size % workers:
        raise ValueError(f"{flag} {batch_size} is not a multiple of the {workers} workers; each worker takes an equal "
                         f"share of every batch, so give a batch size divisible by {workers}.")


def run_distributed(train_fn: Callable[..., T], kwargs: Mapping[str, Any], options: RayOptions, out: Path,
                    log: Callable[[str], None] = print) -> T:
    """Runs `train_fn(**kwargs, device=<the worker's device>)` on `options.workers` Ray Train workers and returns
    rank 0's return value.

    The kwargs (training pairs, decoded images) travel once through Ray's object store, so workers need no access
    to the catalog; they do need `out`'s folder at the same path as this process (a local cluster or a shared
    filesystem): rank 0 writes the model there, and Ray keeps its run state beside it in `.<out>.ray/` while the
    run lasts. A ValueError raised in a worker (a caller mistake) is raised here as a ValueError.
    """
    ray = require_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = connect(options.address)
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    use_gpu = gpus > 0
    log(f"training on {options.workers} Ray workers ({'cuda, nccl' if use_gpu else 'cpu, gloo'}) "
        f"of a cluster with {cpus:g} CPUs and {gpus} GPUs")
    if (gpus if use_gpu else cpus) < options.workers:
        log(f"the cluster has fewer {'GPUs' if use_gpu else 'CPUs'} than workers; Ray waits until it can place them all")
    out = Path(out).resolve()
    storage = out.parent / f".{out.name}.ray"
    trainer = TorchTrainer(_worker_loop, train_loop_config={"fn": train_fn, "kwargs": ray.put(dict(kwargs))},
                           scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=use_gpu),
                           run_config=RunConfig(storage_path=str(storage), name="train"))
    try:
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            return pickle.loads((Path(folder) / RESULT_FILE).read_bytes())
    except ray.train.TrainingFailedError as exc:
        raise worker_error(exc) from exc
    finally:
        shutil.rmtree(storage, ignore_errors=True)  # Ray's run state; what outlives the run is in `out`


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the process group is up; train, then rank 0 hands its result back as a checkpoint
    holding only that result (the model itself is already in the output directory)."""
    import os

    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device

    # Ray reserves one CPU per worker and sets OMP_NUM_THREADS to match; torch follows it, so N workers on N
    # cores do not oversubscribe them.
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    value = config["fn"](**ray.get(config["kwargs"]), device=str(get_device()))
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="vitrine-result-") as tmp:
        (Path(tmp) / RESULT_FILE).write_bytes(pickle.dumps(value))
        ray.train.report({"workers": ray.train.get_context().get_world_size()},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def worker_error(exc: Exception) -> Exception:
    """A ValueError or FileNotFoundError that a worker raised (a caller mistake, which the CLI reports as it does
    in one process), named with the lowest such rank; else the Ray error itself."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        error = failures[rank]
        cause = getattr(error, "cause", None) or error.__cause__ or error
        for kind in (ValueError, FileNotFoundError):
            if isinstance(cause, kind):
                return kind(f"{cause} (Ray worker {rank})")
    return exc


# The process-group helpers below are what the trainers call; outside a process group each is a no-op.

def world() -> tuple[int, int]:
    """(rank, world size) in the torch.distributed process group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes outputs and logs: rank 0, or the only process."""
    return world()[0] == 0


def broadcast(value: T) -> T:
    """Rank 0's value on every rank (rank 0 decides, e.g. an early stop, and every rank follows)."""
    if world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def gather_rows(x: Any) -> Any:
    """Every rank's rows in rank order, (world * B, D) from (B, D); gradients flow back to each rank's own rows,
    so a contrastive loss over the gathered rows sees every worker's in-batch negatives. Needs equal B per rank.

    With the same loss computed on every rank and DDP averaging, the gradient is the single-process one: each
    rank's rows receive the sum of every rank's (identical) gradient, and DDP divides by the world size."""
    if world()[1] == 1:
        return x
    return _gather_function().apply(x)


def _gather_function() -> Any:
    # torch.distributed.nn.functional.all_gather does this too but is deprecated in torch 2.14.
    import torch
    import torch.distributed as dist

    class GatherRows(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            ctx.rows = len(x)
            return torch.cat(parts)  # (world * B, D)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            grad = grad.contiguous()
            dist.all_reduce(grad)  # every rank's gradient for every row, summed
            start = dist.get_rank() * ctx.rows
            return grad[start:start + ctx.rows]  # (B, D): this rank's rows

    return GatherRows


def wrap_ddp(module: Any, device: str) -> Any:
    """The module in DistributedDataParallel inside a process group (gradients averaged across ranks), else itself.

    This is what Ray Train's `prepare_model` does once the model is on the worker's device (the trainers place it
    there themselves); calling DDP directly keeps the trainers free of Ray, so torchrun could launch them too.
    `find_unused_parameters` lets a step skip some weights (an attribute head with no labels in a batch).
    """
    if world()[1] == 1:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    where = torch.device(device)
    return DistributedDataParallel(module, device_ids=[where] if where.type == "cuda" else None,
                                   find_unused_parameters=True)


def shard(rows: Any) -> Any:
    """This rank's contiguous share of a batch (numpy array or list); shares differ by at most one row."""
    rank, size = world()
    if size == 1:
        return rows
    n = len(rows)
    start, stop = rank * n // size, (rank + 1) * n // size
    return rows[start:stop]
