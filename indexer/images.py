"""Reading catalog images for encoding: decoded in worker threads while the encoder works on the previous batch."""
from __future__ import annotations

import http.client
import os
import stat
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitrine.encoders.clip import ClipEncoder
from vitrine.encoders.images import ImageError, decode_image
from vitrine.indexer.catalog import Item
from vitrine.indexer.multiphoto import photo_jobs

MAX_IMAGE_BYTES = 20 * 1024 * 1024
URL_TIMEOUT_S = 10.0


def read_image_bytes(location: str) -> bytes:
    """Reads a local path or an http(s) URL, refusing anything over MAX_IMAGE_BYTES (never reading more) and
    anything that is not a regular file (a device or a FIFO would exhaust memory or block). Raises OSError or
    ValueError only."""
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=URL_TIMEOUT_S) as resp:  # noqa: S310 - the shop's own URLs
                data = resp.read(MAX_IMAGE_BYTES + 1)
        except http.client.HTTPException as exc:  # a peer that does not speak HTTP, a truncated body
            raise OSError(f"bad HTTP response ({type(exc).__name__})") from None
    else:
        with open(location, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError("image: not a regular file")
            data = f.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image: larger than {MAX_IMAGE_BYTES} bytes")
    return data


def _input_side(encoder: ClipEncoder) -> int | None:
    size = getattr(encoder, "image_size", None)
    return max(size) if isinstance(size, (tuple, list)) else size


def load_batch(encoder: ClipEncoder, batch: Sequence[tuple[int, Item, str]]):
    ok, pixels, broken = [], [], []
    for docno, item, location in batch:
        try:
            img = decode_image(read_image_bytes(location), MAX_IMAGE_BYTES, min_side=_input_side(encoder))
            pixels.append(encoder.preprocess(img))
            ok.append(docno)
        except (OSError, ValueError) as exc:
            broken.append((item.id, f"{location}: {exc}"))
    return ok, pixels, broken


def encode_catalog_images(
    rows: Sequence[tuple[int, Item]], catalog_dir: Path, encoder: ClipEncoder, batch_size: int = 64,
    workers: int = 2, progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Encodes every photo of every row. Returns (vector ids: the doc number for an item's main photo, see
    indexer/multiphoto.py for the others; (N, D) vectors; [(item id, reason)] for broken photos).

    A broken, missing or unreachable photo is reported with its item id and location and does not stop the job (the
    item keeps its other photos).
    """
    import torch

    todo = photo_jobs(rows, catalog_dir)
    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    docnos: list[int] = []
    vectors: list[np.ndarray] = []
    broken: list[tuple[str, str]] = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc="encode images", unit="img",
                                                   disable=not progress, mininterval=1.0) as bar:
        pending: list[Future] = [pool.submit(load_batch, encoder, b) for b in batches[:workers + 1]]
        next_batch = len(pending)
        while pending:
            ok, pixels, bad = pending.pop(0).result()
            if next_batch < len(batches):  # keep decoding ahead while this batch encodes
                pending.append(pool.submit(load_batch, encoder, batches[next_batch]))
                next_batch += 1
            broken.extend(bad)
            if pixels:
                vectors.append(encoder.encode_pixels(torch.stack(pixels)))  # (B, D)
                docnos.extend(ok)
            bar.update(len(ok) + len(bad))
    xb = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)
    return np.array(docnos, dtype=np.int64), xb, broken

