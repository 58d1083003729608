"""Batch indexing on a Ray cluster (`vitrine index --ray`): the same bundle as the single-process indexer.

Ray Data reads the catalog; a pool of long-lived Ray actors (one model copy each, a GPU each when there are GPUs)
encodes exactly the batches the single-process indexer makes, keyed by number, so a retried batch can neither be
lost nor counted twice; FAISS shards are added to copies of one trained index in Ray tasks and merged in order.
"""
from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vitrine.indexer.ann import AnnConfig, VectorIndex
from vitrine.indexer.catalog import Item, LineError, collect_items, item_from_dict, parquet_rows, read_catalog
from vitrine.indexer.jsonl import parse_jsonl_lines

log = logging.getLogger("vitrine.indexer")


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'vitrine-search[ray]'") from None
    return ray


def connect(address: str = "auto") -> dict[str, float]:
    """Joins the cluster at `address` ("auto": RAY_ADDRESS's, else a new local one); returns its resources."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    return ray.cluster_resources()


# ---- reading the catalog ----

def read_catalog_ray(path: str | Path, *, skip_invalid: bool = False, column_map: dict[str, str] | None = None
                     ) -> tuple[list[Item], list[LineError]]:
    """Like indexer.catalog.read_catalog, with Ray Data's read tasks doing the reading (JSONL, Parquet)."""
    import ray.data

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Quoted CSV fields may span lines, so a CSV is parsed by one reader that knows its line numbers.
        return read_catalog(path, skip_invalid=skip_invalid, column_map=column_map)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True   # rows in file order: line numbers stay right
    if suffix == ".parquet":
        rows = parquet_rows(ray.data.read_parquet(str(path)).iter_rows())
    else:
        # Bytes, split here exactly as the local reader splits them (\n, \r, \r\n; not U+2028, which JSON strings
        # may hold), bad UTF-8 replaced rather than failing the whole read.
        data = b"".join(r["bytes"] for r in ray.data.read_binary_files(str(path)).iter_rows())
        rows = parse_jsonl_lines(io.StringIO(data.decode("utf-8", errors="replace"), newline=None), item_from_dict)
    return collect_items(rows, path, skip_invalid)


# ---- encoding actors ----

class _Worker:
    """A Ray actor holding one copy of each model it is given (loaded once, then used by every phase of the job)."""

    def __init__(self, threads: int, kill_once: tuple[str, str, int] | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.models: dict[str, Any] = {}
        self.kill_once = kill_once

    def load(self, key: str, factory: Callable[[], Any]) -> str:
        if key not in self.models:
            self.models[key] = factory()
        return str(getattr(self.models[key], "device", "cpu"))

    def encode(self, key: str, factory: Callable[[], Any], kind: str, number: int, payload: str
               ) -> tuple[int, bytes, bytes, str]:
        """One batch: (its number, float32 vectors, the vector ids of the photos that decoded, broken photos)."""
        self.load(key, factory)
        encoder = self.models[key]
        self._maybe_die(kind, number)
        batch = json.loads(payload)
        ok: list[int] = []
        broken: list[tuple[str, str]] = []
        if kind == "text":
            xb = encoder.encode_texts(batch)  # (B, D)
        else:
            import torch

            from vitrine.indexer.images import load_batch

            rows = [(int(d), Item(id=item_id), location) for d, item_id, location in batch]
            ok, pixels, broken = load_batch(encoder, rows)
            xb = encoder.encode_pixels(torch.stack(pixels)) if pixels else np.zeros((0, encoder.dim))
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        return number, xb.tobytes(), np.asarray(ok, np.int64).tobytes(), json.dumps(broken)

    def add_shard(self, blob: tuple[bytes, bytes | None], factory: str, xb: np.ndarray, ids: np.ndarray
                  ) -> tuple[bytes, bytes | None]:
        """One shard added to a copy of the trained index, shipped back serialised (on the workers, which hold the
        cluster's CPUs for the job)."""
        shard = VectorIndex.from_bytes(blob, factory, AnnConfig(use_gpu=False))
        shard.add(xb, ids)
        return shard.to_bytes()

    def _maybe_die(self, kind: str, number: int) -> None:
        """Fault injection for tests and drills, `kill_once = (marker file, "text" | "image", N)`: the first worker to
        reach batch N of that phase kills its own process (SIGKILL, as the OOM killer or a lost node would); Ray
        restarts the actor and retries the batch."""
        if self.kill_once is None or (kind, number) != tuple(self.kill_once[1:]):
            return
        marker = Path(self.kill_once[0])
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def factory_key(factory: Callable[[], Any]) -> str:
    """One name per model build (function and arguments), so a worker loads each model once."""
    if isinstance(factory, functools.partial):
        return repr((factory.func.__qualname__, factory.args, sorted(factory.keywords.items())))
    return repr(factory)


def _where(name: str) -> str:
    """A local model by its absolute path (workers may start in another directory), a hub name as it is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def text_factory(name: str) -> Callable[[], Any]:
    from vitrine.encoders.text import SentenceTransformerEncoder

    return functools.partial(SentenceTransformerEncoder, _where(name), device=None)


def clip_factory(name: str, pretrained: str | None = None) -> Callable[[], Any]:
    from vitrine.encoders.clip import ClipEncoder

    return functools.partial(ClipEncoder, _where(name), pretrained=pretrained, device=None)


def encoder_factory(encoder: Any) -> Callable[[], Any]:
    """A picklable factory that rebuilds `encoder` (a SentenceTransformerEncoder or a ClipEncoder) in a worker:
    the factory is shipped, never the loaded weights."""
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.encoders.text import SentenceTransformerEncoder

    if isinstance(encoder, ClipEncoder):
        return clip_factory(encoder.name, encoder.pretrained)
    if isinstance(encoder, SentenceTransformerEncoder):
        return text_factory(encoder.name)
    factory = getattr(encoder, "ray_factory", None)
    if factory is None:
        raise TypeError(f"{type(encoder).__name__} cannot be rebuilt in a Ray worker (give it a `ray_factory`).")
    return factory


class RayRunner:
    """`indexer.bundle.LocalRunner`'s three steps on a Ray cluster (see the module docstring)."""

    def __init__(self, address: str = "auto", workers: int = 0, kill_once: tuple[str, str, int] | None = None) -> None:
        import ray

        resources = connect(address)
        self.gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
        self.workers = workers or self.gpus or cpus
        if not self.gpus and self.workers > cpus:
            raise ValueError(f"--workers {self.workers}: the cluster has {cpus} CPUs and no GPU.")
        # GPU actors share the GPUs evenly; CPU actors split the cores, never more than one node has.
        self.gpus_per_worker = min(1.0, self.gpus / self.workers) if self.gpus else 0.0
        self.threads = 0 if self.gpus else max(1, min(node_cpus, cpus // self.workers))
        self.address = address
        # One long-lived actor per worker for the whole job: models load once, and can start loading (`preload`)
        # while the driver reads the catalog. A dead actor is restarted and its call retried, a bounded number of times.
        # CPU workers reserve no logical CPU (their torch threads are sized to the cores above) so that Ray Data's read
        # tasks can run beside them, and SPREAD puts them on different nodes.
        actor = ray.remote(_Worker).options(num_cpus=0, num_gpus=self.gpus_per_worker, scheduling_strategy="SPREAD",
                                            max_restarts=3, max_task_retries=3)
        self.actors = [actor.remote(self.threads, kill_once) for _ in range(self.workers)]

    def close(self) -> None:
        """Stops the workers (their models go with them)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def preload(self, factories: Sequence[Callable[[], Any]]) -> None:
        """Starts every worker loading these models now (not waited for); the phases that use them find them loaded."""
        for a in self.actors:
            for factory in factories:
                a.load.remote(factory_key(factory), factory)

    def describe(self) -> dict:
        return {"ray": self.address, "workers": self.workers, "devices": ["cuda"] if self.gpus else ["cpu"]}

    def _run(self, kind: str, factory: Callable[[], Any], batches: list[Any], total: int, desc: str, progress: bool
             ) -> list[tuple[int, bytes, bytes, str]]:
        """Every batch through the workers (at most two calls in flight per worker); results in batch order, each
        batch exactly once."""
        import ray

        key = factory_key(factory)
        results: dict[int, tuple[int, bytes, bytes, str]] = {}
        pending: dict[Any, int] = {}
        todo = list(range(len(batches)))
        t0 = time.perf_counter()
        with tqdm(total=total, desc=f"{desc} ({self.workers} Ray workers)", unit="item", disable=not progress,
                  mininterval=1.0) as bar:
            while todo or pending:
                while todo and len(pending) < 2 * len(self.actors):
                    n = todo.pop(0)
                    actor = self.actors[n % len(self.actors)]
                    pending[actor.encode.remote(key, factory, kind, n, json.dumps(batches[n]))] = n
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    n = pending.pop(ref)
                    out = ray.get(ref)   # raises once Ray gave up retrying: the job fails naming nothing half-done
                    if n not in results:   # a batch is kept once, whatever Ray redelivered
                        results[n] = out
                        bar.update(len(batches[n]))
        log.info("%s: %d items in %.1f s on %d Ray workers", desc, total, time.perf_counter() - t0, self.workers)
        return [results[n] for n in range(len(batches))]

    def encode_texts(self, encoder: Any, texts: Sequence[str], batch_size: int, desc: str, progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        batches = [list(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
        out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
        for n, xb, _, _ in self._run("text", encoder_factory(encoder), batches, len(texts), desc, progress):
            xb = np.frombuffer(xb, np.float32).reshape(-1, encoder.dim)
            out[n * batch_size:n * batch_size + len(xb)] = xb
        return out

    def encode_images(self, encoder: Any, rows: Sequence[tuple[int, Item]], catalog_dir: Path, batch_size: int,
                      progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        from vitrine.indexer.multiphoto import photo_jobs

        # Every photo of every item, keyed by its vector id (indexer/multiphoto.py), as the local indexer does.
        todo = [(vid, item.id, location) for vid, item, location in photo_jobs(rows, catalog_dir)]
        batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
        docnos: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        broken: list[tuple[str, str]] = []
        for _, xb, ok, bad in self._run("image", encoder_factory(encoder), batches, len(todo), "encode images", progress):
            docnos.append(np.frombuffer(ok, np.int64))
            vectors.append(np.frombuffer(xb, np.float32).reshape(-1, encoder.dim))
            broken.extend((str(i), str(r)) for i, r in json.loads(bad))
        xb = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)
        return (np.concatenate(docnos) if docnos else np.zeros(0, np.int64)), xb, broken

    def build_vectors(self, xb: np.ndarray, ids: np.ndarray, config: AnnConfig) -> VectorIndex:
        """Trained once on (a sample of) xb here; one Ray task per worker adds its contiguous shard to a copy; the
        shards are merged in order. Indexes FAISS cannot merge (graphs) are filled here instead."""
        import ray

        index = VectorIndex.trained(xb, config)
        if not index.mergeable or self.workers == 1 or len(xb) < 2 * self.workers:
            index.add(xb, ids)
            return index
        blob = ray.put(index.to_bytes())
        transport = replace(config, use_gpu=False)   # shard copies stay on the CPU (no GPU copy per task)
        bounds = np.linspace(0, len(xb), self.workers + 1).astype(int)
        tasks = [actor.add_shard.remote(blob, index.factory, xb[a:b], ids[a:b])
                 for actor, (a, b) in zip(self.actors, itertools.pairwise(bounds), strict=True)]
        index.merge([VectorIndex.from_bytes(b, index.factory, transport) for b in ray.get(tasks)])
        return index
