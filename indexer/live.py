"""Live catalog updates over an open bundle: a write-ahead log, consistent apply, checkpoints, replay, snapshots.

The WAL (`<bundle>/wal.log`) is the only thing a write waits on before it is acknowledged:

    record  := magic "VW" | length u32 LE | crc32(payload) u32 LE | payload (length bytes, UTF-8 JSON)
    payload := {"seq": n, "op": "upsert", "items": [...], "vectors": [{source: base64 float32}, ...]}
             | {"seq": n, "op": "upsert", "items": [...], "keep_vectors": true}      (a patch)
             | {"seq": n, "op": "delete", "ids": [...]}

- A write is validated, encoded (every dense source: the text model's vector, and CLIP's image vector of the item's
  photo, or its CLIP text vector when it has none, as the indexer does), appended with those vectors and fsync'd, then
  applied to the docstore,
  Tantivy and every vector index under the exclusive side of a readers/writer lock, and only then acked.
  One writer mutex orders WAL appends and applies, so the log order is the apply order.
- Replay at start-up reads records until the first short or CRC-failing one; that torn tail was never
  acked (its fsync did not return) and is truncated away. Records carry whole items, so re-applying a
  record that is already reflected on disk is a no-op ("idempotent by id"); records carry their vectors, so replay
  needs no model and no photo. An upsert of an item equal
  to the stored one changes nothing, a delete of a missing id changes nothing.
- The docstore (SQLite) is the source of truth after replay; a reconcile pass then deletes doc numbers
  from Tantivy and FAISS that the docstore lacks and adds the ones they lack, so a crash at any point
  (between the three stores, or mid-checkpoint) leaves no ghost and no hole.
- A checkpoint commits Tantivy, saves each FAISS index (temp file + fsync + rename), checkpoints
  SQLite, rewrites the manifest's counts, and only then truncates the WAL to zero bytes.
- Photos sent as bytes are kept with the bundle (`photos/<sha256>.<ext>`, fsync'd before the WAL record that
  names them; the item's `image` becomes `bundle:photos/...`), so a snapshot carries them and a re-index can read
  them. A photo given as a path or URL stays the shop's: the item keeps that location. An upsert that keeps an
  item's photo (same `image`) keeps its stored CLIP vector instead of reading the photo again.
- One writer per bundle: a LiveIndex holds the bundle's writer lock (indexer/lock.py) while it is open.
Tantivy only shows committed documents, so a background thread commits every `commit_interval_s`
when there were writes; deletes are invisible at once because the searcher drops doc numbers that
are missing from the docstore.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import tantivy

from vitrine.encoders.base import TextEncoder
from vitrine.encoders.config import check, check_positive_ints, config_from_dict
from vitrine.indexer.bm25 import Bm25Index
from vitrine.indexer.bundle import MANIFEST, Bundle, clip_item_text, fsync_dir, item_text, publish_dir, write_json_atomic
from vitrine.indexer.catalog import Item, item_from_dict
from vitrine.indexer.lock import WriterLock

log = logging.getLogger("vitrine.live")

WAL_NAME = "wal.log"
PHOTOS_DIR = "photos"      # in a bundle: photos that live upserts sent as bytes
BUNDLE_PHOTO = "bundle:"   # an item image kept in its bundle: "bundle:photos/<sha256>.<ext>"
MAX_PHOTO_BYTES = 20 * 1024 * 1024
_MAGIC = b"VW"
_HEADER = struct.Struct("<2sII")  # magic, payload length, crc32
MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LiveConfig:
    """[live] section: how often Tantivy commits for visibility and how often the WAL is checkpointed."""

    commit_interval_s: float = 0.5  # Tantivy commits cost ~50-100 ms of CPU on a 2-core box; 0.5 s keeps visibility < 1 s
    checkpoint_interval_s: float = 60.0
    checkpoint_records: int = 5_000
    max_pending_writes: int = 64  # writers queued on the writer mutex beyond this get RESOURCE_EXHAUSTED

    @classmethod
    def from_dict(cls, d: dict) -> LiveConfig:
        cfg = config_from_dict(cls, d, "live")
        for name in ("commit_interval_s", "checkpoint_interval_s"):
            check(getattr(cfg, name) > 0, f"live.{name}", "a positive number of seconds", getattr(cfg, name))
        check_positive_ints(cfg, "live", ("checkpoint_records", "max_pending_writes"))
        return cfg


class Overloaded(RuntimeError):
    """Too many writes are queued; the caller should back off and retry."""


class BadPhoto(ValueError):
    """An upserted item's photo cannot be read or decoded; nothing of that write was logged."""

    def __init__(self, item_id: str, field_name: str, reason: str) -> None:
        super().__init__(f"item {item_id!r}: {field_name}: {reason}")
        self.item_id = item_id
        self.field = field_name
        self.reason = reason


def photo_location(bundle: Bundle, image: str) -> str:
    return resolve_photo(bundle.path, bundle.manifest, image)


def resolve_photo(bundle_dir: Path, manifest: Mapping[str, Any], image: str) -> str:
    """Where an item's `image` can be read: a photo kept in the bundle, an http(s) URL, an absolute path, or a path
    relative to the catalog the bundle was built from (as the indexer resolved it)."""
    if image.startswith(BUNDLE_PHOTO):
        return str(bundle_dir / image[len(BUNDLE_PHOTO):])
    if image.startswith(("http://", "https://")) or Path(image).is_absolute():
        return image
    catalog = manifest.get("catalog")
    return str((Path(catalog).parent if catalog else bundle_dir) / image)


def export_catalog(bundle_dir: str | Path, out: str | Path) -> int:
    """Writes a bundle's items as a catalog JSONL that `vitrine index` reads: live writes included, and every
    image as a location that file can be read from (photos kept in the bundle and catalog-relative paths become
    absolute paths). Returns the number of items. The bundle may be served meanwhile (SQLite readers do not block;
    only the docstore and the manifest are read)."""
    from vitrine.indexer.docstore import DocStore

    bundle_dir, out = Path(bundle_dir), Path(out)
    if not (bundle_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"bundle {bundle_dir} does not exist or is not a Vitrine bundle (no {MANIFEST}).")
    manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    docstore = DocStore(bundle_dir / "docstore.sqlite")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for _, item in sorted(docstore.items.items()):
                row = item.to_dict()
                if item.image:
                    where = resolve_photo(bundle_dir, manifest, item.image)
                    row["image"] = where if where.startswith(("http://", "https://")) else str(Path(where).resolve())
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        n = len(docstore)
    finally:
        docstore.close()
    os.replace(tmp, out)
    return n


def pack_vector(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def unpack_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers so writes are never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Wal:
    """An append-only log of length+CRC framed JSON records; see the module docstring for the format."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "ab+", buffering=0)
        self.broken = False
        self.records = 0          # records since the last truncation
        self.oldest_t: float | None = None  # wall time of the oldest record not yet checkpointed

    def replay(self) -> list[dict[str, Any]]:
        """Returns every intact record in order and truncates a torn or corrupt tail."""
        self._f.seek(0)
        data = self._f.read()
        out, pos = [], 0
        while pos + _HEADER.size <= len(data):
            magic, length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if magic != _MAGIC or length > MAX_RECORD_BYTES or end > len(data):
                break
            payload = data[pos + _HEADER.size:end]
            if zlib.crc32(payload) != crc:
                break
            out.append(json.loads(payload))
            pos = end
        if pos < len(data):
            log.warning("WAL %s: dropping %d bytes of torn or corrupt tail after %d records", self.path, len(data) - pos, len(out))
            self._f.truncate(pos)
            os.fsync(self._f.fileno())
        self._f.seek(0, os.SEEK_END)
        self.records = len(out)
        self.oldest_t = time.time() if out else None
        return out

    def append(self, payload: dict[str, Any]) -> None:
        """Appends one record and returns only after it is on disk. A failed append (disk full, I/O error) is cut
        off again, so neither a torn record in the middle of the log nor a record the caller was told had failed
        survives to replay; if even that fails, the log refuses every later append."""
        if self.broken:
            raise OSError(f"WAL {self.path} could not be repaired after a failed write; restart the server.")
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(body) > MAX_RECORD_BYTES:
            raise ValueError(f"one write of {len(body)} bytes is over the log's record limit of {MAX_RECORD_BYTES}; "
                             "send fewer items per call.")
        fd = self._f.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            os.write(fd, _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body)  # unbuffered: nothing lingers
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                self.broken = True
            raise
        self.records += 1
        if self.oldest_t is None:
            self.oldest_t = time.time()

    def truncate(self) -> None:
        self._f.truncate(0)
        self._f.seek(0)
        os.fsync(self._f.fileno())
        self.records = 0
        self.oldest_t = None

    def size_bytes(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


def merge_patch(item: Item, price: float | None, attributes: Mapping[str, str]) -> Item:
    """The item with `price` replaced (when given) and `attributes` merged; an empty value removes a key."""
    attrs = dict(item.attributes)
    for key, value in attributes.items():
        if value == "":
            attrs.pop(key, None)
        else:
            attrs[key] = value
    return Item(id=item.id, title=item.title, description=item.description, category=item.category,
                attributes=attrs, price=item.price if price is None else price, image=item.image)


class LiveIndex:
    """Applies upserts and deletes to an open bundle durably; searches take `lock.read()`.

    Every dense source is encoded for a write as the indexer would: the text model for "text", CLIP for
    "clip_image" (the item's photo; its CLIP text vector when it has none). `clip_encoder` is needed when the bundle
    has CLIP vectors.
    """

    def __init__(self, bundle: Bundle, text_encoder: TextEncoder | None, config: LiveConfig = LiveConfig(),
                 clip_encoder: Any | None = None) -> None:
        if "text" in bundle.vectors and text_encoder is None:
            raise ValueError(f"bundle {bundle.path} has text vectors, so live updates need its text encoder.")
        if "clip_image" in bundle.vectors and clip_encoder is None:
            raise ValueError(f"bundle {bundle.path} has CLIP vectors, so live updates need its CLIP model "
                             "(serve it with the bundle's CLIP, or --read-only).")
        self._writer_lock = WriterLock(bundle.path).acquire()  # first: a second writer must touch nothing
        try:
            self._open(bundle, text_encoder, clip_encoder, config)
        except BaseException:
            self._writer_lock.release()
            raise

    def _open(self, bundle: Bundle, text_encoder: TextEncoder | None, clip_encoder: Any | None,
              config: LiveConfig) -> None:
        self.bundle = bundle
        self.encoder = text_encoder
        self.clip = clip_encoder
        self.config = config
        self.lock = ReadWriteLock()
        self._writer = threading.Lock()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._dirty = False
        self._seq = 0
        self.last_checkpoint_t = time.time()
        # The WAL carries durability, so SQLite need not fsync each commit; a checkpoint syncs it.
        bundle.docstore._db.execute("PRAGMA synchronous=NORMAL")
        self.wal = Wal(bundle.path / WAL_NAME)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Work a write adds besides its own durability runs at a lower CPU priority than searches: documents are
        # encoded on this one thread, and Tantivy commits and merges on threads created by the background thread.
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="vitrine-encode", initializer=lower_priority)
        try:
            self._recover()
        except BaseException:
            self._encode_pool.shutdown()
            self.wal.close()
            raise

    # ----- start-up -----------------------------------------------------------------------------

    def _recover(self) -> None:
        t0 = time.perf_counter()
        records = self.wal.replay()
        for rec in records:
            self._seq = max(self._seq, int(rec.get("seq", 0)))
            if rec["op"] == "upsert":
                items = [item_from_dict(d) for d in rec["items"]]
                if rec.get("keep_vectors"):
                    for item in items:
                        if item.id in self.bundle.docstore.docno_by_id:
                            self._apply_patch(item)
                        # else a later record deleted or replaced it (SQLite holds every applied write): skip,
                        # which needs no model and no photo
                elif "vectors" in rec:  # the vectors the write was acked with: no model, no photo needed
                    self._apply_upserts(items, [{s: unpack_vector(v) for s, v in row.items()} for row in rec["vectors"]])
                else:  # a record of a version that logged no vectors: encode, standing in for unreadable photos
                    self._apply_upserts(items, self._encode_all(items, {}, replaying=True)[1])
            elif rec["op"] == "delete":
                self._apply_delete(rec["ids"])
        fixed = self.reconcile()
        if records or any(fixed.values()):
            self.checkpoint()
        log.info("live index ready: replayed %d WAL records, reconciled %s in %.2f s", len(records), fixed, time.perf_counter() - t0)

    def reconcile(self) -> dict[str, int]:
        """Makes Tantivy and every vector index hold exactly the docstore's doc numbers; returns fix counts."""
        docstore, fixed = self.bundle.docstore, {}
        live = set(docstore.items)
        in_bm25 = set(bm25_docnos(self.bundle.bm25))
        extra, missing = in_bm25 - live, live - in_bm25
        if extra:
            self.bundle.bm25.delete(sorted(extra))
        if missing:
            self.bundle.bm25.add([(d, docstore.items[d]) for d in sorted(missing)])
        if extra or missing:
            self.bundle.bm25.commit()
        fixed["bm25"] = len(extra) + len(missing)
        for source, vi in self.bundle.vectors.items():
            have = vector_ids(vi.index)
            both = have if vi.refine is None else have & vector_ids(vi.refine)
            anywhere = have if vi.refine is None else have | vector_ids(vi.refine)
            want = {d for d in live if docstore.items[d].has_text()} if source == "text" else anywhere & live
            stale = (anywhere - want) | (anywhere - both)
            if stale:
                vi.remove(np.array(sorted(stale), dtype=np.int64))
            add = sorted(want - (both - stale))
            if add and source == "text":
                xb = self.encoder.encode_texts([item_text(docstore.items[d]) for d in add])  # (N, D)
                vi.add(xb, np.array(add, dtype=np.int64))
            fixed[source] = len(stale) + len(add)
        return fixed

    # ----- writes ---------------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._pending_lock:
            if self._pending >= self.config.max_pending_writes:
                raise Overloaded(f"{self._pending} writes are already queued; retry later.")
            self._pending += 1
        try:
            with self._writer:
                yield
        finally:
            with self._pending_lock:
                self._pending -= 1

    def upsert(self, items: Sequence[Item], photos: Mapping[str, bytes] | None = None) -> int:
        """Durably inserts or replaces whole items; returns how many changed. Ids must be unique within one call (as
        in a catalog file): a batch that names an item twice is refused, not silently resolved.

        `photos` maps an item id to its photo's bytes (which replace the item's `image`); an item's `image` path or
        URL is read here. A photo that cannot be read or decoded raises BadPhoto and nothing is written. A bundle
        without CLIP vectors keeps sent photos (for display, and for a re-index with a CLIP) and encodes none.
        """
        items = list(items)
        dup = sorted(i for i, n in Counter(it.id for it in items).items() if n > 1)
        if dup:
            raise ValueError(f"items: id {dup[0]!r} appears more than once in one upsert ({len(dup)} duplicated ids); "
                             "send each item once.")
        # Outside every lock, on the low-priority encoding thread: reading photos and encoding are the slow part,
        # and searches come first.
        items, vectors = self._encode_pool.submit(self._encode_all, items, dict(photos or {})).result()
        with self._writing():
            docstore = self.bundle.docstore
            changed = [i for i, it in enumerate(items) if docstore.get(it.id) != it]
            if not changed:
                return 0
            items, vectors = [items[i] for i in changed], [vectors[i] for i in changed]
            self._log({"op": "upsert", "items": [it.to_dict() for it in items],
                       "vectors": [{s: pack_vector(x) for s, x in row.items()} for row in vectors]})
            self._apply_upserts(items, vectors)
        return len(items)

    def patch(self, item_id: str, price: float | None = None, attributes: Mapping[str, str] | None = None) -> Item | None:
        """Durably updates price and attributes in place without re-encoding; None when the id is unknown."""
        with self._writing():
            current = self.bundle.docstore.get(item_id)
            if current is None:
                return None
            merged = merge_patch(current, price, attributes or {})
            if merged != current:
                self._log({"op": "upsert", "items": [merged.to_dict()], "keep_vectors": True})
                self._apply_patch(merged)
            return merged

    def delete(self, ids: Sequence[str]) -> int:
        """Durably deletes items by id; returns how many existed."""
        with self._writing():
            present = [i for i in dict.fromkeys(ids) if i in self.bundle.docstore.docno_by_id]
            if present:
                self._log({"op": "delete", "ids": present})
                self._apply_delete(present)
            return len(present)

    def get(self, ids: Sequence[str]) -> list[Item]:
        with self.lock.read():
            return [it for it in (self.bundle.docstore.get(i) for i in ids) if it is not None]

    def _log(self, payload: dict[str, Any]) -> None:
        self._seq += 1
        self.wal.append({"seq": self._seq, **payload})

    def _encode_all(self, items: list[Item], photos: dict[str, bytes], replaying: bool = False
                    ) -> tuple[list[Item], list[dict[str, np.ndarray]]]:
        """Keeps sent photos in the bundle and encodes every dense source: (the items as stored, per item
        {source: (D,) vector}). An item without text gets no text vector, as in the indexer."""
        images: dict[int, Any] = {}
        for i, it in enumerate(items):
            if it.id in photos:
                images[i] = self._decode(photos[it.id], it.id, "image")
                items[i] = replace(it, image=BUNDLE_PHOTO + self._keep_photo(photos[it.id]))
        vectors: list[dict[str, np.ndarray]] = [{} for _ in items]
        if "text" in self.bundle.vectors:
            rows = [i for i, it in enumerate(items) if it.has_text()]
            if rows:
                xb = self.encoder.encode_texts([item_text(items[i]) for i in rows])  # (N, D)
                for i, x in zip(rows, xb):
                    vectors[i]["text"] = x
        if "clip_image" in self.bundle.vectors:
            self._encode_clip(items, images, vectors, replaying)
        return items, vectors

    def _encode_clip(self, items: list[Item], images: dict[int, Any], vectors: list[dict[str, np.ndarray]],
                     replaying: bool = False) -> None:
        """CLIP vectors as the indexer makes them: the photo's image vector, else the CLIP text vector of the item's
        text. A photo the item already had (same `image`) keeps its stored vector when the index holds exact ones."""
        for i, it in enumerate(items):
            if i in images or not it.image:
                continue
            kept, x = self._stored_vector("clip_image", it)
            if x is not None:
                vectors[i]["clip_image"] = x
                continue
            where = photo_location(self.bundle, it.image)
            try:
                images[i] = self._decode(self._read_photo_checked(where, it.id, "image_uri"), it.id, "image_uri")
            except BadPhoto as exc:
                if not (kept or replaying):
                    raise
                # The photo it was indexed with is gone: stand in with its text, as the indexer does for a broken photo.
                log.warning("item %r: its stored photo cannot be read again (%s); using its CLIP text vector", it.id, exc.reason)
        order = sorted(images)
        for start in range(0, len(order), 32):
            chunk = order[start:start + 32]
            xb = self.clip.encode_images([images[i] for i in chunk])  # (B, D)
            for i, x in zip(chunk, xb):
                vectors[i]["clip_image"] = x
        texts = [i for i, it in enumerate(items) if "clip_image" not in vectors[i] and it.has_text()]  # no photo to use
        if texts:
            xb = self.clip.encode_texts([clip_item_text(items[i]) for i in texts])  # (T, D)
            for i, x in zip(texts, xb):
                vectors[i]["clip_image"] = x

    def _decode(self, data: bytes, item_id: str, field_name: str) -> Any:
        from vitrine.encoders.images import decode_image

        size = getattr(self.clip, "image_size", None)  # no CLIP (a text-only bundle): the photo is still checked and kept
        try:
            return decode_image(data, MAX_PHOTO_BYTES, min_side=max(size) if isinstance(size, (tuple, list)) else size)
        except ValueError as exc:
            raise BadPhoto(item_id, field_name, str(exc).removeprefix("image: ")) from None

    def _read_photo_checked(self, where: str, item_id: str, field_name: str) -> bytes:
        from vitrine.indexer.images import read_image_bytes

        try:
            return read_image_bytes(where)
        except (OSError, ValueError) as exc:
            raise BadPhoto(item_id, field_name, f"cannot read {where}: {exc}") from None

    def _keep_photo(self, data: bytes) -> str:
        """Writes the photo into the bundle, durably, named by its content; returns its path in the bundle."""
        from PIL import Image

        try:
            ext = (Image.open(io.BytesIO(data)).format or "bin").lower()
        except Exception:  # noqa: BLE001 - decoded fine above; only the extension is unknown
            ext = "bin"
        folder = self.bundle.path / PHOTOS_DIR
        name = f"{PHOTOS_DIR}/{hashlib.sha256(data).hexdigest()[:40]}.{ext}"
        target = self.bundle.path / name
        if not target.exists():
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(folder)
        return name

    def _stored_vector(self, source: str, item: Item) -> tuple[bool, np.ndarray | None]:
        """(whether the stored item has the same `image`, its exact stored vector when it has and the index keeps
        exact vectors). One read lock over the lookup, the comparison and the read: a concurrent write to the same
        id cannot pair one photo with another's vector."""
        with self.lock.read():
            docno = self.bundle.docstore.docno_by_id.get(item.id)
            old = None if docno is None else self.bundle.docstore.items.get(docno)
            if old is None or old.image != item.image:
                return False, None
            try:
                xb = self.bundle.vectors[source].reconstruct(np.array([docno], dtype=np.int64))
            except RuntimeError:  # not stored in this index
                return True, None
        return True, None if xb is None else xb[0]

    def _apply_upserts(self, items: Sequence[Item], vectors: Sequence[Mapping[str, np.ndarray]]) -> None:
        docstore, bundle = self.bundle.docstore, self.bundle
        with self.lock.write():
            old = [docstore.docno_by_id[it.id] for it in items if it.id in docstore.docno_by_id]
            rows = docstore.assign(items)
            docstore.put_many(rows)
            bundle.bm25.delete(old)
            bundle.bm25.add(rows)
            for source, vi in bundle.vectors.items():
                if old:
                    vi.remove(np.array(old, dtype=np.int64))
                keep = [i for i, row in enumerate(vectors) if source in row]
                if keep:
                    vi.add(np.stack([vectors[i][source] for i in keep]), np.array([rows[i][0] for i in keep], dtype=np.int64))
            self._dirty = True

    def _apply_patch(self, item: Item) -> None:
        """Same doc number, so every vector stays; stored fields, filters and the BM25 document change."""
        docstore, bm25 = self.bundle.docstore, self.bundle.bm25
        docno = docstore.docno_by_id.get(item.id)
        if docno is None:  # callers check under the writer mutex (and replay skips an id a later record removed)
            return
        if docstore.items[docno] == item:
            return
        with self.lock.write():
            docstore.delete_ids([item.id])
            docstore.put_many([(docno, item)])
            bm25.delete([docno])
            bm25.add([(docno, item)])
            self._dirty = True

    def _apply_delete(self, ids: Sequence[str]) -> None:
        with self.lock.write():
            docnos = self.bundle.docstore.delete_ids(ids)
            if docnos:
                self.bundle.bm25.delete(docnos)
                for vi in self.bundle.vectors.values():
                    vi.remove(np.array(docnos, dtype=np.int64))
                self._dirty = True

    # ----- visibility, checkpoints, snapshots ----------------------------------------------------

    def commit(self) -> None:
        """Makes BM25 see every applied write (Tantivy only searches committed segments)."""
        with self._writer:
            if self._dirty:
                self._dirty = False
                self.bundle.bm25.commit()

    def checkpoint(self) -> None:
        """Persists Tantivy, FAISS and SQLite, then truncates the WAL; writes wait, searches do not."""
        with self._writer:
            bundle = self.bundle
            self._dirty = False
            bundle.bm25.commit()
            for source, meta in bundle.manifest.get("vectors", {}).items():
                bundle.vectors[source].save(bundle.path / meta["file"])
            if bundle.vectors:
                fsync_dir(bundle.path / "vectors")
            bundle.docstore._db.execute("PRAGMA wal_checkpoint(FULL)")
            self._write_manifest()
            self.wal.truncate()
            self.last_checkpoint_t = time.time()

    def _write_manifest(self) -> None:
        manifest = self.bundle.manifest
        manifest.setdefault("counts", {})["items"] = len(self.bundle.docstore)
        for source, meta in manifest.get("vectors", {}).items():
            meta["count"] = self.bundle.vectors[source].ntotal
            manifest["counts"][f"{source}_vectors"] = meta["count"]
        manifest["next_docno"] = int(self.bundle.docstore.next_docno)
        write_json_atomic(self.bundle.path / MANIFEST, manifest)

    def snapshot(self, out: str | Path) -> dict:
        """Writes a consistent, versioned bundle of the current state to `out` while searches go on."""
        out = Path(out)
        if out.exists():
            raise FileExistsError(f"snapshot directory {out} already exists")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        (tmp / "vectors").mkdir(parents=True)
        try:
            with self._writer:  # writes wait while the state is copied; Tantivy is rebuilt afterwards
                rows = sorted(self.bundle.docstore.items.items())
                next_docno = int(self.bundle.docstore.next_docno)
                src = sqlite3.connect(str(self.bundle.docstore.path))
                dst = sqlite3.connect(str(tmp / "docstore.sqlite"))
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                    src.close()
                manifest = json.loads(json.dumps(self.bundle.manifest))
                for source, meta in manifest.get("vectors", {}).items():
                    vi = self.bundle.vectors[source]
                    vi.save(tmp / meta["file"])
                    meta["count"] = vi.ntotal
            if (self.bundle.path / "models").is_dir():  # the ONNX variants the manifest names
                shutil.copytree(self.bundle.path / "models", tmp / "models")
            if (self.bundle.path / PHOTOS_DIR).is_dir():  # photos sent as bytes; a photo is never rewritten, so a
                shutil.copytree(self.bundle.path / PHOTOS_DIR, tmp / PHOTOS_DIR,  # copy outside the writer is whole
                                ignore=shutil.ignore_patterns(".*.tmp-*"))
            bm25 = Bm25Index(tmp / "bm25", self.bundle.bm25.config, create=True)
            bm25.add(rows)
            bm25.close()
            manifest.update(
                bundle_version=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-snap-" + uuid.uuid4().hex[:6],
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                snapshot_of=self.bundle.version, next_docno=next_docno,
            )
            manifest.setdefault("counts", {})["items"] = len(rows)
            write_json_atomic(tmp / MANIFEST, manifest)
            publish_dir(tmp, out)  # `out` was checked absent above, so this is a plain rename
            return manifest
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def start(self) -> None:
        """Starts the background thread that commits Tantivy and checkpoints the WAL."""
        self._thread = threading.Thread(target=self._run, name="vitrine-live", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lower_priority()
        try:
            with self._writer:  # Tantivy's indexing and merge threads inherit the priority of the thread that makes them
                self.bundle.bm25.reopen_writer()
        except Exception:  # noqa: BLE001 - the old writer still works; keep committing and checkpointing
            log.exception("could not reopen the Tantivy writer at low priority")
        cfg = self.config
        while not self._stop.wait(cfg.commit_interval_s):
            try:
                due = (self.wal.records >= cfg.checkpoint_records or
                       (self.wal.records and time.time() - self.last_checkpoint_t >= cfg.checkpoint_interval_s))
                self.checkpoint() if due else self.commit()
            except Exception:  # noqa: BLE001 - keep serving; the WAL still holds every write
                log.exception("background commit or checkpoint failed")

    def stats(self) -> dict[str, float]:
        wal = self.wal
        return {"items": len(self.bundle.docstore), "wal_records": wal.records, "wal_bytes": wal.size_bytes(),
                "wal_lag_s": 0.0 if wal.oldest_t is None else time.time() - wal.oldest_t,
                **{f"vectors_{s}": vi.ntotal for s, vi in self.bundle.vectors.items()}}

    def close(self) -> None:
        """Stops the background thread and checkpoints, so the next start replays nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.wal.records or self._dirty:
                self.checkpoint()  # if this fails, the WAL still holds every write for the next start
        finally:
            self.wal.close()
            self._encode_pool.shutdown()
            self._writer_lock.release()


def lower_priority(niceness: int = 10) -> None:
    """Lowers the calling thread's CPU priority (Linux schedules threads by their own nice value); threads it
    starts inherit it. Elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


def bm25_docnos(bm25: Bm25Index) -> list[int]:
    """Every doc number in the committed Tantivy index."""
    bm25.index.reload()
    searcher = bm25.index.searcher()
    n = searcher.num_docs
    if n == 0:
        return []
    result = searcher.search(tantivy.Query.all_query(), limit=n, count=False)
    return [int(d) for d in searcher.fast_field_values("docno", [addr for _, addr in result.hits])]


def vector_ids(index: faiss.Index) -> set[int]:
    """Every id stored in an id-mapped or IVF FAISS index."""
    if hasattr(index, "id_map"):
        return set(faiss.vector_to_array(index.id_map).tolist())
    ivf = faiss.extract_index_ivf(index)
    out: set[int] = set()
    for lst in range(ivf.nlist):
        n = ivf.invlists.list_size(lst)
        if n:
            out.update(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n).tolist())
    return out
