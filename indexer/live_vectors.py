"""The vectors a live write is logged with, made as the indexer makes a bundle's: the text model's vector of the item's
text, and CLIP's vector of the item's photo, or its CLIP text vector when it has none (or its stored photo is gone).
An upsert that keeps an item's photo (same `image`) keeps its stored CLIP vector instead of reading the photo again.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.bundle import Bundle, clip_item_text, item_text
from vitrine.indexer.catalog import Item
from vitrine.indexer.lock import ReadWriteLock
from vitrine.indexer.photos import BUNDLE_PHOTO, BadPhoto, decode_photo, keep_photo, photo_location, read_photo

log = logging.getLogger("vitrine.live")


class WriteEncoder:
    """Encodes writes to `bundle` with its models; `lock` is the live index's, read while a stored vector is looked up."""

    def __init__(self, bundle: Bundle, text_encoder: TextEncoder | None, clip: Any | None, lock: ReadWriteLock) -> None:
        self.bundle, self.encoder, self.clip, self.lock = bundle, text_encoder, clip, lock

    def encode(self, items: list[Item], photos: dict[str, bytes], replaying: bool = False
               ) -> tuple[list[Item], list[dict[str, np.ndarray]]]:
        """Keeps sent photos in the bundle and encodes every dense source: (the items as stored, per item
        {source: (D,) vector}). An item without text gets no text vector, as in the indexer."""
        images: dict[int, Any] = {}
        for i, it in enumerate(items):
            if it.id in photos:
                images[i] = self._decode(photos[it.id], it.id, "image")
                items[i] = replace(it, image=BUNDLE_PHOTO + keep_photo(self.bundle.path, photos[it.id]))
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
                images[i] = self._decode(read_photo(where, it.id, "image_uri"), it.id, "image_uri")
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
        # No CLIP (a text-only bundle): the photo is still checked and kept.
        return decode_photo(data, item_id, field_name, getattr(self.clip, "image_size", None))

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
