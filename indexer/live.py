"""Live catalog updates over an open bundle: a write-ahead log, consistent apply, checkpoints, replay, snapshots.

- A write is validated, encoded (every dense source, as the indexer does: indexer/live_vectors.py), appended with
  those vectors to the WAL (indexer/wal.py) and fsync'd, then applied to the docstore, Tantivy and every vector index
  under the exclusive side of a readers/writer lock, and only then acked. One writer mutex orders WAL appends and
  applies, so the log order is the apply order.
- Replay at start-up re-applies every intact WAL record. Records carry whole items, so re-applying a record that is
  already reflected on disk is a no-op ("idempotent by id"); records carry their vectors, so replay needs no model
  and no photo. An upsert of an item equal to the stored one changes nothing, a delete of a missing id changes nothing.
- The docstore (SQLite) is the source of truth after replay; a reconcile pass (indexer/reconcile.py) then makes
  Tantivy and FAISS hold exactly its doc numbers, so a crash at any point (between the three stores, or
  mid-checkpoint) leaves no ghost and no hole.
- A checkpoint commits Tantivy, saves each FAISS index (temp file + fsync + rename), checkpoints
  SQLite, rewrites the manifest's counts, and only then truncates the WAL to zero bytes.
- Photos sent as bytes are kept with the bundle (indexer/photos.py), so a snapshot carries them.
- One writer per bundle: a LiveIndex holds the bundle's writer lock (indexer/lock.py) while it is open.
Tantivy only shows committed documents, so a background thread commits every `commit_interval_s`
when there were writes; deletes are invisible at once because the searcher drops doc numbers that
are missing from the docstore.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.encoders.base import TextEncoder
from vitrine.serving.schema import check, check_positive_ints, config_from_dict
from vitrine.indexer.bm25 import Bm25Index
from vitrine.indexer.bundle import Bundle, publish_dir
from vitrine.indexer.durable import fsync_dir
from vitrine.indexer.catalog import Item, item_from_dict
from vitrine.indexer.live_vectors import WriteEncoder
from vitrine.indexer.lock import ReadWriteLock, WriterLock
from vitrine.indexer.manifest import MANIFEST, Manifest
from vitrine.indexer.multiphoto import item_vector_ids, max_extra_photos, photo_id, split_key
# BUNDLE_PHOTO, MAX_PHOTO_BYTES, BadPhoto, export_catalog, bm25_docnos and vector_ids are imported from here by the
# server, the commands and the tests: what live writes raise and keep, and what a bundle's stores hold.
from vitrine.indexer.photos import BUNDLE_PHOTO, MAX_PHOTO_BYTES, PHOTOS_DIR, BadPhoto, export_catalog
from vitrine.indexer.reconcile import bm25_docnos, reconcile, vector_ids
from vitrine.indexer.wal import WAL_NAME, Wal, pack_vector, unpack_vector

__all__ = ["BUNDLE_PHOTO", "MAX_PHOTO_BYTES", "BadPhoto", "LiveConfig", "LiveIndex", "Overloaded", "Wal", "bm25_docnos",
           "export_catalog", "merge_patch", "vector_ids"]

log = logging.getLogger("vitrine.live")


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


def merge_patch(item: Item, price: float | None, attributes: Mapping[str, str]) -> Item:
    """The item with `price` replaced (when given) and `attributes` merged; an empty value removes a key."""
    attrs = dict(item.attributes)
    for key, value in attributes.items():
        if value == "":
            attrs.pop(key, None)
        else:
            attrs[key] = value
    return replace(item, attributes=attrs, price=item.price if price is None else price)


class LiveIndex:
    """Applies upserts and deletes to an open bundle durably; searches take `lock.read()`.

    Every dense source is encoded for a write as the indexer would: the text model for "text", CLIP for
    "clip_image" (each of the item's photos; its CLIP text vector when it has none). `clip_encoder` is needed when the
    bundle has CLIP vectors.
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
        self._vectors = WriteEncoder(bundle, text_encoder, clip_encoder, self.lock)
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
                    self._apply_upserts(items, self._vectors.encode(items, {}, replaying=True)[1])
            elif rec["op"] == "delete":
                self._apply_delete(rec["ids"])
        fixed = self.reconcile()
        if records or any(fixed.values()):
            self.checkpoint()
        log.info("live index ready: replayed %d WAL records, reconciled %s in %.2f s", len(records), fixed, time.perf_counter() - t0)

    def reconcile(self) -> dict[str, int]:
        """Makes Tantivy and every vector index hold exactly the docstore's doc numbers; returns fix counts."""
        return reconcile(self.bundle, self.encoder)

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

    def upsert(self, items: Sequence[Item], photos: Mapping[str, bytes] | None = None,
               extra_photos: Mapping[str, Sequence[bytes]] | None = None) -> int:
        """Durably inserts or replaces whole items; returns how many changed. Ids must be unique within one call (as
        in a catalog file): a batch that names an item twice is refused, not silently resolved.

        `photos` maps an item id to its main photo's bytes (the item's own `image` and `extra_images`, if any, follow
        it), `extra_photos` to the bytes of more photos (after those); every photo path or URL is read here. A photo that
        cannot be read or decoded raises BadPhoto and nothing is written. A bundle without CLIP vectors keeps sent
        photos (for display, and for a re-index with a CLIP) and encodes none.
        """
        items = list(items)
        dup = sorted(i for i, n in Counter(it.id for it in items).items() if n > 1)
        if dup:
            raise ValueError(f"items: id {dup[0]!r} appears more than once in one upsert ({len(dup)} duplicated ids); "
                             "send each item once.")
        # Outside every lock, on the low-priority encoding thread: reading photos and encoding are the slow part,
        # and searches come first.
        items, vectors = self._encode_pool.submit(self._vectors.encode, items, dict(photos or {}),
                                                  extra_photos=dict(extra_photos or {})).result()
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

    def _apply_upserts(self, items: Sequence[Item], vectors: Sequence[Mapping[str, np.ndarray]]) -> None:
        docstore, bundle = self.bundle.docstore, self.bundle
        with self.lock.write():
            old = [docstore.docno_by_id[it.id] for it in items if it.id in docstore.docno_by_id]
            rows = docstore.assign(items)
            docstore.put_many(rows)
            bundle.bm25.delete(old)
            bundle.bm25.add(rows)
            # Photo j of an item is keyed "clip_image/j" in its row and has id (j << 40) | docno (indexer/multiphoto.py);
            # a replaced item loses every vector of its old doc number, all its photos included.
            for source, vi in bundle.vectors.items():
                if old:
                    vi.remove(item_vector_ids(old, source))
                xb, ids = [], []
                for (docno, _), row in zip(rows, vectors):
                    for key, x in row.items():
                        of, j = split_key(key)
                        if of == source:
                            xb.append(x)
                            ids.append(photo_id(docno, j))
                if xb:
                    vi.add(np.stack(xb), np.array(ids, dtype=np.int64))
            bundle.max_extra_photos = max(bundle.max_extra_photos, max_extra_photos(items))
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
                for source, vi in self.bundle.vectors.items():
                    vi.remove(item_vector_ids(docnos, source))
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
            for source, meta in bundle.manifest.vectors.items():
                bundle.vectors[source].save(bundle.path / meta.file)
            if bundle.vectors:
                fsync_dir(bundle.path / "vectors")
            bundle.docstore._db.execute("PRAGMA wal_checkpoint(FULL)")
            self._write_manifest()
            self.wal.truncate()
            self.last_checkpoint_t = time.time()

    def _write_manifest(self) -> None:
        bundle = self.bundle
        bundle.manifest = bundle.manifest.with_live_counts(
            len(bundle.docstore), {source: bundle.vectors[source].ntotal for source in bundle.manifest.vectors},
            int(bundle.docstore.next_docno), bundle.max_extra_photos)
        bundle.manifest.write(bundle.path / MANIFEST)

    def snapshot(self, out: str | Path) -> Manifest:
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
                manifest = self.bundle.manifest
                vectors = {}
                for source, meta in manifest.vectors.items():
                    vi = self.bundle.vectors[source]
                    vi.save(tmp / meta.file)
                    vectors[source] = replace(meta, count=vi.ntotal)
            if (self.bundle.path / "models").is_dir():  # the ONNX variants the manifest names
                shutil.copytree(self.bundle.path / "models", tmp / "models")
            if (self.bundle.path / PHOTOS_DIR).is_dir():  # photos sent as bytes; a photo is never rewritten, so a
                shutil.copytree(self.bundle.path / PHOTOS_DIR, tmp / PHOTOS_DIR,  # copy outside the writer is whole
                                ignore=shutil.ignore_patterns(".*.tmp-*"))
            bm25 = Bm25Index(tmp / "bm25", self.bundle.bm25.config, create=True)
            bm25.add(rows)
            bm25.close()
            # Only the vector records' counts are the copy's own: "counts" keeps the last checkpoint's "*_vectors".
            manifest = replace(
                manifest, vectors=vectors,
                counts=replace(manifest.counts, items=len(rows), max_extra_photos=max_extra_photos(it for _, it in rows)),
                bundle_version=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-snap-" + uuid.uuid4().hex[:6],
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                snapshot_of=self.bundle.version, next_docno=next_docno,
            )
            manifest.write(tmp / MANIFEST)
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
