"""The index bundle: a versioned directory that the indexer writes atomically and the server and trainers read.

Layout:
    manifest.json        format version, bundle version, models, dimensions, counts, config
    docstore.sqlite      stored fields and the id <-> doc-number map
    bm25/                Tantivy index
    vectors/<source>.faiss   one FAISS index per dense source ("text", later "clip_image", ...)
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.ann import AnnConfig, VectorIndex
from vitrine.indexer.bm25 import CONTEXT_ATTRIBUTES, Bm25Config, Bm25Index
from vitrine.indexer.catalog import Item
from vitrine.indexer.clip_check import clip_check, trainer_heldout_ids
from vitrine.indexer.docstore import DocStore
from vitrine.indexer.durable import fsync_dir
from vitrine.indexer.lock import WriterLock
from vitrine.indexer.manifest import MANIFEST, Bm25Record, BrokenImage, Counts, Manifest, ModelRecord, VectorRecord
from vitrine.indexer.multiphoto import docnos_of, max_extra_photos, photo_numbers
from vitrine.indexer.variants import TEXT_VARIANTS, clip_variants, text_variants
from vitrine.indexer.vocabulary import model_words

if TYPE_CHECKING:
    from vitrine.encoders.clip import ClipEncoder


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
    # torch model on the catalog (indexer/variants.py), so the server can serve the fastest that loses nothing.
    onnx: bool = True
    ann: AnnConfig = field(default_factory=AnnConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    progress: bool = True  # progress bars on stderr (`vitrine index --quiet` turns them off)


@dataclass(frozen=True)
class CatalogSource:
    """Where a bundle's items came from: the folder their relative photo paths resolve in (default: the working
    directory), and what the manifest records of it, the catalog file and the configuration it was indexed with."""

    dir: str | Path | None = None
    path: str | None = None
    config: Mapping[str, Any] | None = None


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
    source: CatalogSource = CatalogSource(),
    force: bool = False,
    runner: LocalRunner | None = None,
) -> Manifest:
    """Indexes items into a new bundle at `out`, written in a temporary directory and renamed into place.

    Returns the manifest. With `force`, an existing bundle at `out` is replaced; otherwise it is an error. `source`
    says where relative photo paths resolve and what the manifest records of the catalog. `runner` says where
    encoding and the vector indexes run (default: this process; indexer/distributed.py: a Ray cluster).
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
            return _build_bundle(items, out, text_encoder, clip_encoder, config, source, runner)
    return _build_bundle(items, out, text_encoder, clip_encoder, config, source, runner)


def _build_bundle(items: Sequence[Item], out: Path, text_encoder: TextEncoder | None, clip_encoder: ClipEncoder | None,
                  config: IndexerConfig, source: CatalogSource, runner: LocalRunner) -> Manifest:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build = _Build(tmp, config, runner)
        docstore, rows = build.stores(items)
        (tmp / "vectors").mkdir()
        if text_encoder is not None:
            build.text(rows, text_encoder)
        if clip_encoder is not None:
            build.clip(rows, clip_encoder, Path(source.dir or "."))
        docstore.close()
        manifest = build.manifest(rows, int(docstore.next_docno), source)
        manifest.write(tmp / MANIFEST)
        publish_dir(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Build:
    """One bundle being written into `tmp`, step by step: each step writes its files and keeps its manifest records
    and its timings for the manifest written last."""

    def __init__(self, tmp: Path, config: IndexerConfig, runner: LocalRunner) -> None:
        self.tmp, self.config, self.runner = tmp, config, runner
        self.timings: dict[str, float] = {}
        self.models: dict[str, ModelRecord] = {}
        self.vectors: dict[str, VectorRecord] = {}
        self.broken: list[tuple[str, str]] = []

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0

    def stores(self, items: Sequence[Item]) -> tuple[DocStore, list[tuple[int, Item]]]:
        """The docstore (left open: the next doc number is read last) and the BM25 index; (docstore, rows)."""
        with self.timed("docstore_s"):
            docstore = DocStore(self.tmp / "docstore.sqlite")
            rows = docstore.assign(items)
            docstore.put_many(rows)
        with self.timed("bm25_s"):
            bm25 = Bm25Index(self.tmp / "bm25", self.config.bm25, create=True)
            bm25.add(rows)
            bm25.close()
        return docstore, rows

    def text(self, rows: Sequence[tuple[int, Item]], encoder: TextEncoder) -> None:
        """Text vectors of the items with text, and the text model's checked ONNX variants."""
        config, text_rows = self.config, [(docno, item) for docno, item in rows if item.has_text()]
        with self.timed("text_encode_s"):
            xb = self.runner.encode_texts(encoder, [item_text(it) for _, it in text_rows], config.batch_size,
                                          "encode text", config.progress)
        with self.timed("text_ann_build_s"):
            ids = np.array([d for d, _ in text_rows], dtype=np.int64)
            index = self.runner.build_vectors(xb, ids, config.ann) if len(ids) else VectorIndex.build(
                np.zeros((0, encoder.dim), np.float32), ids, AnnConfig(factory="Flat"))
            index.save(self.tmp / "vectors" / "text.faiss")
        self.vectors["text"] = VectorRecord(file="vectors/text.faiss", factory=index.factory, dim=index.dim,
                                            count=index.ntotal, model="text", metric="inner_product")
        variants = None
        if config.onnx and hasattr(encoder, "model") and len(text_rows):
            with self.timed("text_onnx_s"):
                variants = text_variants(encoder, self.tmp, xb, [it for _, it in text_rows])
        self.models["text"] = ModelRecord(name=encoder.name, dim=encoder.dim, kind="sentence-transformers",
                                          version=getattr(encoder, "version", encoder.name), variants=variants)

    def clip(self, rows: Sequence[tuple[int, Item]], clip: ClipEncoder, catalog_dir: Path) -> None:
        """CLIP vectors (photos, and text stand-ins), the check of CLIP's text tower, and both towers' variants."""
        config = self.config
        with self.timed("clip_s"):
            self.vectors["clip_image"], self.broken, ids, xb = _build_clip_index(rows, catalog_dir, clip, config,
                                                                                 self.tmp, self.runner)
        # The check and the variants' check score each item by its main photo (or text stand-in): rows of one id each,
        # so a catalog of one photo per item gives the figures it always gave.
        main = photo_numbers(ids) == 0
        with self.timed("clip_check_s"):
            photos = self.vectors["clip_image"].images  # the first rows of ids / xb are photo vectors, then text stand-ins
            check = clip_check(
                dict(rows), ids[:photos][main[:photos]], xb[:photos][main[:photos]],
                lambda texts: self.runner.encode_texts(clip, texts, config.batch_size, "check clip text", False),
                text=clip_item_text, heldout=trainer_heldout_ids(clip.name))
        variants = None
        if config.onnx and hasattr(clip, "model") and len(ids):
            with self.timed("clip_onnx_s"):
                by_docno = dict(rows)
                variants = clip_variants(clip, self.tmp, xb[main], [by_docno[int(d)] for d in ids[main]], catalog_dir)
        self.models["clip"] = ModelRecord(name=clip.name, dim=clip.dim, kind="open_clip",
                                          version=getattr(clip, "version", ""), check=check, variants=variants)

    def manifest(self, rows: Sequence[tuple[int, Item]], next_docno: int, source: CatalogSource) -> Manifest:
        text, clip, bm25 = self.vectors.get("text"), self.vectors.get("clip_image"), self.config.bm25
        counts = Counts(items=len(rows), text_vectors=text.count if text else 0, clip_vectors=clip.count if clip else 0,
                        images=clip.images if clip else 0, broken_images=len(self.broken),
                        items_with_images=clip.items_with_images if clip else 0,
                        max_extra_photos=max_extra_photos(it for _, it in rows))
        return Manifest(
            bundle_version=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6],
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            catalog=source.path, counts=counts,
            broken_images=tuple(BrokenImage(id=i, reason=r) for i, r in self.broken[:100]),
            next_docno=next_docno, models=self.models, vectors=self.vectors,
            bm25=Bm25Record(dir="bm25", tokenizer=bm25.tokenizer, boosts=dict(bm25.boosts)),
            config=source.config or {},
            timings={k: round(v, 3) for k, v in self.timings.items()},
            built_by=self.runner.describe(),
        )


def _build_clip_index(rows: Sequence[tuple[int, Item]], catalog_dir: Path, clip: ClipEncoder, config: IndexerConfig,
                      tmp: Path, runner: LocalRunner
                      ) -> tuple[VectorRecord, list[tuple[str, str]], np.ndarray, np.ndarray]:
    """CLIP image vectors of every photo of every item (ids: indexer/multiphoto.py); for text-only items (or items
    none of whose photos can be read) their CLIP text vector, so that photo queries can still reach them."""
    t0 = time.perf_counter()
    img_ids, xb_img, broken = runner.encode_images(clip, rows, catalog_dir, config.batch_size, config.progress)
    images_per_s = len(img_ids) / max(time.perf_counter() - t0, 1e-9)
    have = set(docnos_of(img_ids).tolist())
    text_rows = [(d, it) for d, it in rows if d not in have and it.has_text()]
    xb_txt = runner.encode_texts(clip, [clip_item_text(it) for _, it in text_rows], config.batch_size,
                                 "encode clip text", config.progress) if text_rows else np.zeros((0, clip.dim), np.float32)
    ids = np.concatenate([img_ids, np.array([d for d, _ in text_rows], dtype=np.int64)])
    xb = np.concatenate([xb_img, xb_txt])
    if len(ids) == 0:
        index = VectorIndex.build(np.zeros((0, clip.dim), np.float32), ids, AnnConfig(factory="Flat"))
    else:
        index = runner.build_vectors(xb, ids, config.ann)
    index.save(tmp / "vectors" / "clip_image.faiss")
    return VectorRecord(file="vectors/clip_image.faiss", factory=index.factory, dim=index.dim, count=index.ntotal,
                        images=int(len(img_ids)), text_only=len(text_rows), items_with_images=len(have),
                        images_per_s=round(images_per_s, 1),
                        model="clip", metric="inner_product"), broken, ids, xb


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
        # Rebound, never changed in place, when a live index checkpoints (indexer/live.py): a reader holds a whole one.
        self.manifest: Manifest = Manifest.read(manifest_path)
        self.docstore = DocStore(self.path / "docstore.sqlite")
        # The most extra photos an item has: an image search asks the photo index for that many more neighbours
        # (indexer/multiphoto.search_items). Counted once here; a live write that adds more raises it (never lowers).
        self.max_extra_photos: int = max_extra_photos(self.docstore.items.values())
        bm = self.manifest.bm25
        self.bm25 = Bm25Index(self.path / bm.dir, Bm25Config(tokenizer=bm.tokenizer,
                                                             boosts=Bm25Config().boosts if bm.boosts is None else bm.boosts),
                              known_words=model_words(self.path / TEXT_VARIANTS / "tokenizer.json"))
        self.vectors: dict[str, VectorIndex] = {}
        for source, meta in self.manifest.vectors.items():
            cfg = ann or AnnConfig()
            self.vectors[source] = VectorIndex.load(self.path / meta.file, meta.factory, cfg)

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def close(self) -> None:
        self.docstore.close()
        self.bm25.close()
