"""Batch indexing on a Ray cluster (`vitrine index --ray`): the same bundle as the single-process indexer.

Ray Data reads the catalog (JSONL and Parquet in parallel read tasks; rows come back in catalog order so every bad
line is reported with its number by the same validator). Encoding runs in `map_batches` actor pools, one model copy
per actor, one GPU per actor when the cluster has GPUs. Each task is one batch of exactly the rows the
single-process indexer would batch together, keyed by its batch number, so a retried task (a worker that died)
can neither duplicate nor drop an item, and the vectors equal the single-process ones. FAISS is trained once on a
sample in the driver; Ray tasks add one shard each to a copy of the trained index and FAISS's merge_from joins them
in order. The docstore (doc numbers in catalog order) and Tantivy (its writer builds segments on its own threads,
then merges them) are written by the driver: encoding is the cost that needs a cluster.
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
from collections.abc import Callable, Iterator, Sequence
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

class _Encode:
    """A Ray Data actor holding one model copy; each call encodes one batch (one row of the dataset)."""

    def __init__(self, factory: Callable[[], Any], kind: str, threads: int, kill_once: tuple[str, str, int] | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.encoder = factory()
        self.kind = kind
        self.kill_once = kill_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch in (its number and a JSON payload), its vectors out as raw float32 bytes."""
        (number,) = batch["batch"]
        self._maybe_die(int(number))
        payload = json.loads(batch["payload"][0])
        ok: list[int] = []
        broken: list[tuple[str, str]] = []
        if self.kind == "text":
            xb = self.encoder.encode_texts(payload)  # (B, D)
        else:
            import torch

            from vitrine.indexer.images import load_batch

            rows = [(int(d), Item(id=item_id), location) for d, item_id, location in payload]
            ok, pixels, broken = load_batch(self.encoder, rows)
            xb = self.encoder.encode_pixels(torch.stack(pixels)) if pixels else np.zeros((0, self.encoder.dim))
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        return {"batch": np.array([number]), "xb": np.array([xb.tobytes()], dtype=object),
                "docnos": np.array([np.asarray(ok, np.int64).tobytes()], dtype=object),
                "broken": np.array([json.dumps(broken)])}

    def _maybe_die(self, number: int) -> None:
        """Fault injection for tests and drills, `kill_once = (marker file, "text" | "image", N)`: the first worker to
        reach batch N of that phase kills its own process (SIGKILL, as the OOM killer or a lost node would); Ray
        restarts the actor and retries the batch."""
        if self.kill_once is None or (self.kind, number) != tuple(self.kill_once[1:]):
            return
        marker = Path(self.kill_once[0])
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def encoder_factory(encoder: Any) -> Callable[[], Any]:
    """A picklable factory that rebuilds `encoder` (a SentenceTransformerEncoder or a ClipEncoder) in a worker:
    the factory is shipped, never the loaded weights."""
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.encoders.text import SentenceTransformerEncoder

    def where(name: str) -> str:   # a local model by its absolute path: workers may start in another directory
        return str(Path(name).resolve()) if Path(name).exists() else name

    if isinstance(encoder, ClipEncoder):
        return functools.partial(ClipEncoder, where(encoder.name), pretrained=encoder.pretrained, device=None)
    if isinstance(encoder, SentenceTransformerEncoder):
        return functools.partial(SentenceTransformerEncoder, where(encoder.name), device=None,
                                 max_seq_length=encoder.model.max_seq_length)
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
        self.kill_once = kill_once
        self.address = address

    def describe(self) -> dict:
        return {"ray": self.address, "workers": self.workers, "devices": ["cuda"] if self.gpus else ["cpu"]}

    def _run(self, kind: str, factory: Callable[[], Any], batches: list[Any], total: int, desc: str, progress: bool
             ) -> Iterator[dict[str, Any]]:
        """Each batch through the actor pool; yields results in batch order, each batch exactly once."""
        import ray.data

        if not batches:
            return
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = progress
        ds = ray.data.from_items([{"batch": n, "payload": json.dumps(b)} for n, b in enumerate(batches)],
                                 override_num_blocks=len(batches))
        workers = min(self.workers, len(batches))
        out = ds.map_batches(_Encode, fn_constructor_args=(factory, kind, self.threads, self.kill_once), batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=self.gpus_per_worker,
                             num_cpus=0 if self.gpus else self.threads,
                             # a worker that dies is restarted and its batch retried (batches are idempotent); a
                             # batch that kills every worker it meets fails the job instead of looping forever
                             max_restarts=3 * workers, max_task_retries=3)
        seen: set[int] = set()
        t0 = time.perf_counter()
        with tqdm(total=total, desc=f"{desc} ({self.workers} Ray workers)", unit="item", disable=not progress,
                  mininterval=1.0) as bar:
            for row in out.iter_rows():
                n = int(row["batch"])
                if n in seen:   # at-least-once delivery: a retried batch is dropped the second time
                    continue
                seen.add(n)
                bar.update(len(batches[n]))
                yield row
        missing = set(range(len(batches))) - seen
        if missing:
            raise RuntimeError(f"Ray returned no result for {len(missing)} batch(es), e.g. {sorted(missing)[:5]}.")
        log.info("%s: %d items in %.1f s on %d Ray workers", desc, total, time.perf_counter() - t0, self.workers)

    def encode_texts(self, encoder: Any, texts: Sequence[str], batch_size: int, desc: str, progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        batches = [list(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
        out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
        for row in self._run("text", encoder_factory(encoder), batches, len(texts), desc, progress):
            start = int(row["batch"]) * batch_size
            xb = np.frombuffer(row["xb"], np.float32).reshape(-1, encoder.dim)
            out[start:start + len(xb)] = xb
        return out

    def encode_images(self, encoder: Any, rows: Sequence[tuple[int, Item]], catalog_dir: Path, batch_size: int,
                      progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        from vitrine.indexer.catalog import resolve_image

        todo = [(docno, item.id, resolve_image(item, catalog_dir)) for docno, item in rows if item.image]
        batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
        docnos: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        broken: list[tuple[str, str]] = []
        for row in self._run("image", encoder_factory(encoder), batches, len(todo), "encode images", progress):
            docnos.append(np.frombuffer(row["docnos"], np.int64))
            vectors.append(np.frombuffer(row["xb"], np.float32).reshape(-1, encoder.dim))
            broken.extend((str(i), str(r)) for i, r in json.loads(row["broken"]))
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
        add_shard = ray.remote(max_retries=3)(_add_shard)
        blob = ray.put(index.to_bytes())
        transport = replace(config, use_gpu=False)   # shard copies stay on the CPU (no GPU copy per task)
        bounds = np.linspace(0, len(xb), self.workers + 1).astype(int)
        tasks = [add_shard.remote(blob, index.factory, xb[a:b], ids[a:b]) for a, b in itertools.pairwise(bounds)]
        index.merge([VectorIndex.from_bytes(b, index.factory, transport) for b in ray.get(tasks)])
        return index


def _add_shard(blob: tuple[bytes, bytes | None], factory: str, xb: np.ndarray, ids: np.ndarray
               ) -> tuple[bytes, bytes | None]:
    """A Ray task: one shard added to a copy of the trained index, shipped back serialised."""
    shard = VectorIndex.from_bytes(blob, factory, AnnConfig(use_gpu=False))
    shard.add(xb, ids)
    return shard.to_bytes()
