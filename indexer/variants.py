"""The ONNX variants a bundle carries (models/text, models/clip), each exported and checked against the torch model.

A variant's check is catalog self-retrieval: three title words of an item (and, for CLIP's image tower, a mirrored
photo) must find that item among the bundle's own vectors; what a variant loses in nDCG@10 against torch is recorded,
so the server serves the fastest one that loses nothing (encoders/onnx.py).
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.catalog import Item
from vitrine.indexer.clip_check import target_ranks

if TYPE_CHECKING:
    from vitrine.encoders.clip import ClipEncoder

log = logging.getLogger("vitrine.indexer")

TEXT_VARIANTS = "models/text"  # in a bundle: the text model's ONNX variants (encoders/onnx.py)
CLIP_VARIANTS = "models/clip"  # in a bundle: both CLIP towers' ONNX variants


def _variants(what: str, write: Callable[[], dict], folder: Path) -> dict:
    """Runs an ONNX export; a model that cannot be exported is served by torch (logged), never a failed index."""
    try:
        return write()
    except Exception as exc:  # noqa: BLE001 - the bundle is complete without variants
        log.warning("no ONNX variants of the %s model (the server will run it on torch): %s: %s", what, type(exc).__name__, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return {}


def _summary(record: dict, folder: str) -> dict:
    return {"dir": folder, "checked_on": record["checked_on"],
            **{n: {k: v[k] for k in ("loss", "ms_per_query", "bytes") if k in v} for n, v in record["variants"].items()}}


def check_queries(items: Sequence[Item], n: int = 1000, words: int = 3, seed: int = 0) -> list[tuple[str, int]]:
    """Catalog self-retrieval queries: `words` words of a sampled item's title, in order, and that item's row.

    Titles of fewer words are skipped. Three words are ambiguous enough that nDCG@10 is far from 1, so a variant
    that moves embeddings shows up as a loss. A catalog whose titles are all shorter ("Red Shirt") is checked with as
    many words as its longest title has (it used to get no ONNX variants at all: an empty sample).
    """
    rng = np.random.default_rng(seed)
    words = min(words, max((len(it.title.split()) for it in items), default=0))
    rows = [i for i, it in enumerate(items) if words and len(it.title.split()) >= words]
    out = []
    for i in rng.permutation(np.asarray(rows, dtype=np.int64))[:n]:
        title = items[int(i)].title.split()
        keep = np.sort(rng.choice(len(title), size=words, replace=False))
        out.append((" ".join(title[j] for j in keep), int(i)))
    return out


def self_retrieval_ndcg(xq: np.ndarray, xb: np.ndarray, targets: Sequence[int], k: int = 10) -> float:
    """Mean nDCG@k of exact inner-product search when each query's one relevant row is `targets[i]`."""
    rank = target_ranks(xq, xb, np.asarray(targets))  # rows strictly better than the target
    return float(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def write_text_variants(encoder: TextEncoder, out: Path, xb: np.ndarray, items: Sequence[Item]) -> dict:
    """Exports the text model's ONNX variants to `out` and records, for each, nDCG@10 on catalog self-retrieval
    against the document vectors `xb` (encoded by the torch model) and ms per single-text call on the CPU."""
    from vitrine.encoders import onnx
    from vitrine.encoders.text import OnnxTextEncoder, export_text_onnx

    record = export_text_onnx(encoder, out)
    queries = check_queries(items)
    texts, targets = [q for q, _ in queries], [t for _, t in queries]
    encoders = {"torch": encoder, **{name: OnnxTextEncoder(out, name) for name in record["variants"]}}
    ndcg = {name: self_retrieval_ndcg(e.encode_texts(texts), xb, targets) for name, e in encoders.items()}
    cpu = getattr(encoder, "device", "cpu") == "cpu"
    ms = {name: onnx.timed_ms(e.encode_texts, texts[:50]) for name, e in encoders.items()} if cpu else None
    words = len(texts[0].split()) if texts else 0
    return onnx.write_record(out, onnx.add_quality(record, ndcg, f"catalog self-retrieval: {len(texts)} queries of {words} "
                                                                  "title words, nDCG@10 over the bundle's vectors", ms))


def write_clip_variants(clip: ClipEncoder, out: Path, xb: np.ndarray, items: Sequence[Item], catalog_dir: Path,
                        photos: int = 100) -> dict:
    """Exports both CLIP towers' ONNX variants to `out` and records what each loses against torch, over the
    bundle's CLIP vectors `xb` (row i is items[i]): the text tower on catalog self-retrieval (3 title words), the
    image tower on `photos` catalog photos, mirrored, finding their own item. A variant's loss is the larger."""
    from PIL import ImageOps

    from vitrine.encoders import onnx
    from vitrine.encoders.clip import ClipEncoder, export_clip_onnx
    from vitrine.encoders.images import decode_image
    from vitrine.indexer.images import read_image_bytes

    record = export_clip_onnx(clip, out)
    queries = check_queries(items)
    texts, targets = [q for q, _ in queries], [t for _, t in queries]
    rng = np.random.default_rng(0)
    rows = [i for i in rng.permutation(len(items)) if items[i].image][:photos]
    pictures, picture_rows = [], []
    for i in rows:
        try:
            where = items[i].image if items[i].image.startswith(("http://", "https://")) else str(catalog_dir / items[i].image)
            pictures.append(ImageOps.mirror(decode_image(read_image_bytes(where))))
            picture_rows.append(int(i))
        except Exception:  # noqa: BLE001 - a broken photo is simply not part of the check
            continue
    encoders = {"torch": clip, **{name: ClipEncoder(clip.name, device="cpu", variants=out, backend=name)
                                  for name in record["variants"]}}
    # A catalog without titles (photos only) or without photos cannot check that tower: its nDCG is None, and so
    # is every variant's loss, which keeps "auto" on torch (a tenant may still name a backend in its config).
    text_ndcg = {n: self_retrieval_ndcg(e.encode_texts(texts), xb, targets) if texts else None for n, e in encoders.items()}
    image_ndcg = {n: self_retrieval_ndcg(e.encode_images(pictures), xb, picture_rows) if pictures else None
                  for n, e in encoders.items()}
    cpu = getattr(clip, "device", "cpu") == "cpu"
    probe = texts[:30] or ["a photo"]
    ms = {n: onnx.timed_ms(e.encode_texts, probe) + (onnx.timed_ms(lambda b, e=e: e.encode_images(b), pictures[:30])
                                                      if pictures else 0.0)
          for n, e in encoders.items()} if cpu else None
    r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    record["torch"] = {"text_ndcg@10": r4(text_ndcg["torch"]), "image_ndcg@10": r4(image_ndcg["torch"]),
                       **({"ms_per_query": round(ms["torch"], 3)} if ms else {})}
    for name, v in record["variants"].items():
        checked = text_ndcg["torch"] is not None and image_ndcg["torch"] is not None
        loss = max(text_ndcg["torch"] - text_ndcg[name], image_ndcg["torch"] - image_ndcg[name]) if checked else None
        v.update(text_ndcg=r4(text_ndcg[name]), image_ndcg=r4(image_ndcg[name]), loss=r4(loss),
                 **({"ms_per_query": round(ms[name], 3)} if ms else {}))
    words = len(texts[0].split()) if texts else 0
    record["checked_on"] = (f"catalog self-retrieval over the bundle's CLIP vectors: {len(texts)} queries of {words} title "
                            f"words (text tower), {len(pictures)} mirrored photos (image tower); nDCG@10; ms = one text + one photo")
    return onnx.write_record(out, record)


def text_variants(encoder: TextEncoder, bundle_dir: Path, xb: np.ndarray, items: Sequence[Item]) -> dict | None:
    """Exports and checks the text model's variants into the bundle being written (`xb`: its text vectors, row i is
    items[i]); their summary for the manifest, or None when the model could not be exported."""
    record = _variants("text", lambda: write_text_variants(encoder, bundle_dir / TEXT_VARIANTS, xb, items),
                       bundle_dir / TEXT_VARIANTS)
    return _summary(record, TEXT_VARIANTS) if record else None


def clip_variants(clip: ClipEncoder, bundle_dir: Path, xb: np.ndarray, items: Sequence[Item], catalog_dir: Path
                  ) -> dict | None:
    """Exports and checks both CLIP towers' variants into the bundle being written (`xb`: its CLIP vectors, row i is
    items[i]); their summary for the manifest, or None when the model could not be exported."""
    record = _variants("CLIP", lambda: write_clip_variants(clip, bundle_dir / CLIP_VARIANTS, xb, items, catalog_dir),
                       bundle_dir / CLIP_VARIANTS)
    return _summary(record, CLIP_VARIANTS) if record else None
