"""The index bundle: a versioned directory that the indexer writes atomically and the server and trainers read.

Layout:
    manifest.json        format version, bundle version, models, dimensions, counts, config
    docstore.sqlite      stored fields and the id <-> doc-number map
    bm25/                Tantivy index
    vectors/<source>.faiss   one FAISS index per dense source ("text", later "clip_image", ...)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.ann import AnnConfig, VectorIndex
from vitrine.indexer.bm25 import CONTEXT_ATTRIBUTES, Bm25Config, Bm25Index
from vitrine.indexer.catalog import Item
from vitrine.indexer.clip_check import clip_check, target_ranks, trainer_heldout_ids
from vitrine.indexer.docstore import DocStore
from vitrine.indexer.lock import WriterLock

log = logging.getLogger("vitrine.indexer")

if TYPE_CHECKING:
    from vitrine.encoders.clip import ClipEncoder

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def item_text(item: Item, max_chars: int = 2000) -> str:
    """The text a dense encoder sees for an item: title, attribute values, then description.

    Context attributes (season, usage) and the category path are left out: on fashion, title plus
    gender/colour/article type encodes best with MiniLM (bench/tune_first_stage.py); the article type
    already carries the category's leaf.
    """
    parts = [item.title]
    attrs = [str(v) for k, v in item.attributes.items() if k not in CONTEXT_ATTRIBUTES and v]
    if attrs:
        parts.append(", ".join(attrs))
    if item.description:
        parts.append(item.description)
    return ". ".join(p for p in parts if p)[:max_chars]


@dataclass(frozen=True)
class IndexerConfig:
    batch_size: int = 64
    # Write ONNX fp32 and int8 variants of the text model into the bundle (models/text/), each checked against the
    # torch model on the catalog (check_text_variants), so the server can serve the fastest that loses nothing.
    onnx: bool = True
    ann: AnnConfig = field(default_factory=AnnConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp: Path, out: Path) -> None:
    """Makes a fully written directory visible at `out` in one rename, replacing an existing one.

    Readers see the old directory or the new one, never half of either; the fsyncs make the rename durable.
    """
    fsync_dir(tmp)
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)


def encode_in_batches(encode: Callable[[list], np.ndarray], inputs: Sequence, batch_size: int, desc: str,
                      dim: int, progress: bool = True) -> np.ndarray:
    """Runs `encode` over `inputs` in batches under one progress bar; returns (N, dim) float32."""
    out = np.zeros((len(inputs), dim), dtype=np.float32)
    with tqdm(total=len(inputs), desc=desc, unit="item", disable=not progress, mininterval=1.0) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = list(inputs[start:start + batch_size])
            out[start:start + len(chunk)] = encode(chunk)
            bar.update(len(chunk))
    return out


class LocalRunner:
    """Where a bundle's encoding and vector-index building run: this process (GPU when present). The Ray runner
    (indexer/distributed.py) has the same three methods and runs them on a cluster; the bundle is the same."""

    workers = 1

    def encode_texts(self, encoder: TextEncoder, texts: Sequence[str], batch_size: int, desc: str,
                     progress: bool) -> np.ndarray:
        return encode_in_batches(encoder.encode_texts, texts, batch_size, desc, encoder.dim, progress)

    def encode_images(self, encoder: ClipEncoder, rows: Sequence[tuple[int, Item]], catalog_dir: Path, batch_size: int,
                      progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        from vitrine.indexer.images import encode_catalog_images

        return encode_catalog_images(rows, catalog_dir, encoder, batch_size, progress=progress)

    def build_vectors(self, xb: np.ndarray, ids: np.ndarray, config: AnnConfig) -> VectorIndex:
        return VectorIndex.build(xb, ids, config)

    def describe(self) -> dict:
        import torch

        return {"workers": 1, "devices": ["cuda" if torch.cuda.is_available() else "cpu"]}


def build_bundle(
    items: Sequence[Item],
    out: str | Path,
    text_encoder: TextEncoder | None,
    config: IndexerConfig = IndexerConfig(),
    *,
    clip_encoder: ClipEncoder | None = None,
    catalog_dir: str | Path | None = None,
    catalog_path: str | None = None,
    config_dict: dict | None = None,
    force: bool = False,
    progress: bool = True,
    runner: LocalRunner | None = None,
) -> dict:
    """Indexes items into a new bundle at `out`, written in a temporary directory and renamed into place.

    Returns the manifest. With `force`, an existing bundle at `out` is replaced; otherwise it is an error. `runner`
    says where encoding and the vector indexes run (default: this process; indexer/distributed.py: a Ray cluster).
    """
    runner = runner or LocalRunner()
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if (out / MANIFEST).is_file():
        # Replacing a bundle that a writable server holds would drop the writes it acknowledges into its WAL; so
        # would replacing one whose WAL still holds writes a crashed server acknowledged.
        with WriterLock(out, "vitrine index --force"):
            wal = out / "wal.log"
            if wal.is_file() and wal.stat().st_size > 0:
                raise FileExistsError(f"{out} has acknowledged writes in its WAL that no checkpoint holds yet; start "
                                      f"`vitrine serve --bundle {out}` once (it replays them), or export them with "
                                      f"`vitrine export`, before replacing it.")
            return _build_bundle(items, out, text_encoder, config, clip_encoder, catalog_dir, catalog_path,
                                 config_dict, progress, runner)
    return _build_bundle(items, out, text_encoder, config, clip_encoder, catalog_dir, catalog_path, config_dict,
                         progress, runner)


def _build_bundle(items: Sequence[Item], out: Path, text_encoder: TextEncoder | None, config: IndexerConfig,
                  clip_encoder: ClipEncoder | None, catalog_dir: str | Path | None, catalog_path: str | None,
                  config_dict: dict | None, progress: bool, runner: LocalRunner) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        docstore = DocStore(tmp / "docstore.sqlite")
        rows = docstore.assign(items)
        docstore.put_many(rows)
        timings["docstore_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        bm25 = Bm25Index(tmp / "bm25", config.bm25, create=True)
        bm25.add(rows)
        bm25.close()
        timings["bm25_s"] = time.perf_counter() - t0

        vectors: dict[str, dict] = {}
        models: dict[str, dict] = {}
        (tmp / "vectors").mkdir()
        if text_encoder is not None:
            text_rows = [(docno, item) for docno, item in rows if item.has_text()]
            t0 = time.perf_counter()
            xb = runner.encode_texts(text_encoder, [item_text(it) for _, it in text_rows], config.batch_size,
                                     "encode text", progress)
            timings["text_encode_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            ids = np.array([d for d, _ in text_rows], dtype=np.int64)
            index = runner.build_vectors(xb, ids, config.ann) if len(ids) else VectorIndex.build(
                np.zeros((0, text_encoder.dim), np.float32), ids, AnnConfig(factory="Flat"))
            index.save(tmp / "vectors" / "text.faiss")
            timings["text_ann_build_s"] = time.perf_counter() - t0
            vectors["text"] = {"file": "vectors/text.faiss", "factory": index.factory, "dim": index.dim,
                               "count": index.ntotal, "model": "text", "metric": "inner_product"}
            models["text"] = {"name": text_encoder.name, "dim": text_encoder.dim, "kind": "sentence-transformers",
                              "version": getattr(text_encoder, "version", text_encoder.name)}
            if config.onnx and hasattr(text_encoder, "model") and len(text_rows):
                t0 = time.perf_counter()
                record = _variants("text", lambda: write_text_variants(text_encoder, tmp / TEXT_VARIANTS, xb,
                                                                       [it for _, it in text_rows]), tmp / TEXT_VARIANTS)
                if record:
                    models["text"]["variants"] = _summary(record, TEXT_VARIANTS)
                timings["text_onnx_s"] = time.perf_counter() - t0
        broken: list[tuple[str, str]] = []
        if clip_encoder is not None:
            t0 = time.perf_counter()
            meta, broken, clip_ids, clip_xb = _build_clip_index(rows, Path(catalog_dir or "."), clip_encoder, config, tmp,
                                                                progress, runner)
            timings["clip_s"] = time.perf_counter() - t0
            vectors["clip_image"] = meta
            models["clip"] = {"name": clip_encoder.name, "dim": clip_encoder.dim, "kind": "open_clip",
                              "version": getattr(clip_encoder, "version", "")}
            t0 = time.perf_counter()
            photos = meta["images"]  # the first rows of clip_ids / clip_xb are photo vectors, then text stand-ins
            models["clip"]["check"] = clip_check(
                dict(rows), clip_ids[:photos], clip_xb[:photos],
                lambda texts: runner.encode_texts(clip_encoder, texts, config.batch_size, "check clip text", False),
                text=clip_item_text, heldout=trainer_heldout_ids(clip_encoder.name))
            timings["clip_check_s"] = time.perf_counter() - t0
            if config.onnx and hasattr(clip_encoder, "model") and len(clip_ids):
                t0 = time.perf_counter()
                by_docno = dict(rows)
                record = _variants("CLIP", lambda: write_clip_variants(
                    clip_encoder, tmp / CLIP_VARIANTS, clip_xb, [by_docno[int(d)] for d in clip_ids], Path(catalog_dir or ".")),
                    tmp / CLIP_VARIANTS)
                if record:
                    models["clip"]["variants"] = _summary(record, CLIP_VARIANTS)
                timings["clip_onnx_s"] = time.perf_counter() - t0
        docstore.close()

        manifest = {
            "format_version": FORMAT_VERSION,
            "bundle_version": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "catalog": catalog_path,
            "counts": {"items": len(rows), "text_vectors": vectors.get("text", {}).get("count", 0),
                       "clip_vectors": vectors.get("clip_image", {}).get("count", 0),
                       "images": vectors.get("clip_image", {}).get("images", 0), "broken_images": len(broken)},
            "broken_images": [{"id": i, "reason": r} for i, r in broken[:100]],
            "next_docno": int(docstore.next_docno),
            "models": models,
            "vectors": vectors,
            "bm25": {"dir": "bm25", "tokenizer": config.bm25.tokenizer, "boosts": dict(config.bm25.boosts)},
            "config": config_dict or {},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "built_by": runner.describe(),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        publish_dir(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    that moves embeddings shows up as a loss.
    """
    rng = np.random.default_rng(seed)
    rows = [i for i, it in enumerate(items) if len(it.title.split()) >= words]
    out = []
    for i in rng.permutation(rows)[:n]:
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
    return onnx.write_record(out, onnx.add_quality(record, ndcg, f"catalog self-retrieval: {len(texts)} queries of 3 "
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
    record["checked_on"] = (f"catalog self-retrieval over the bundle's CLIP vectors: {len(texts)} queries of 3 title "
                            f"words (text tower), {len(pictures)} mirrored photos (image tower); nDCG@10; ms = one text + one photo")
    return onnx.write_record(out, record)


def _build_clip_index(rows: Sequence[tuple[int, Item]], catalog_dir: Path, clip: ClipEncoder, config: IndexerConfig,
                      tmp: Path, progress: bool, runner: LocalRunner) -> tuple[dict, list[tuple[str, str]]]:
    """CLIP image vectors for items with an image; for text-only items (or broken images) their CLIP text vector,
    so that photo queries can still reach them."""
    t0 = time.perf_counter()
    img_ids, xb_img, broken = runner.encode_images(clip, rows, catalog_dir, config.batch_size, progress)
    images_per_s = len(img_ids) / max(time.perf_counter() - t0, 1e-9)
    have = set(img_ids.tolist())
    text_rows = [(d, it) for d, it in rows if d not in have and it.has_text()]
    xb_txt = runner.encode_texts(clip, [clip_item_text(it) for _, it in text_rows], config.batch_size,
                                 "encode clip text", progress) if text_rows else np.zeros((0, clip.dim), np.float32)
    ids = np.concatenate([img_ids, np.array([d for d, _ in text_rows], dtype=np.int64)])
    xb = np.concatenate([xb_img, xb_txt])
    if len(ids) == 0:
        index = VectorIndex.build(np.zeros((0, clip.dim), np.float32), ids, AnnConfig(factory="Flat"))
    else:
        index = runner.build_vectors(xb, ids, config.ann)
    index.save(tmp / "vectors" / "clip_image.faiss")
    return {"file": "vectors/clip_image.faiss", "factory": index.factory, "dim": index.dim, "count": index.ntotal,
            "images": int(len(img_ids)), "text_only": len(text_rows), "images_per_s": round(images_per_s, 1),
            "model": "clip", "metric": "inner_product"}, broken, ids, xb


def clip_item_text(item: Item) -> str:
    """The text CLIP pairs with an item's image (in training) or stands in for it (text-only items):
    title plus category path and attribute values."""
    parts = [item.title, item.category.replace(" > ", ", ") if item.category else "", ", ".join(item.attributes.values())]
    return ". ".join(p for p in parts if p)


class Bundle:
    """An opened bundle: docstore, BM25 and vector indexes, ready to search."""

    def __init__(self, path: str | Path, ann: AnnConfig | None = None) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a Vitrine bundle (no {MANIFEST}); build one with `vitrine index`")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"bundle {self.path} has format version {version}; this Vitrine reads {FORMAT_VERSION}")
        self.docstore = DocStore(self.path / "docstore.sqlite")
        bm = self.manifest.get("bm25", {})
        self.bm25 = Bm25Index(self.path / bm.get("dir", "bm25"),
                              Bm25Config(tokenizer=bm.get("tokenizer", "en_stem"), boosts=bm.get("boosts", Bm25Config().boosts)))
        self.vectors: dict[str, VectorIndex] = {}
        for source, meta in self.manifest.get("vectors", {}).items():
            cfg = ann or AnnConfig()
            self.vectors[source] = VectorIndex.load(self.path / meta["file"], meta["factory"], cfg)

    @property
    def version(self) -> str:
        return str(self.manifest.get("bundle_version", ""))

    def close(self) -> None:
        self.docstore.close()
        self.bm25.close()
