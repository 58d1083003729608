"""The vectors a live write is logged with, made as the indexer makes a bundle's: the text model's vector of the item's
text, and CLIP's vector of each of the item's photos, or its CLIP text vector when it has none (or none of its stored
photos can be read). An upsert that keeps a photo (same location) keeps its stored CLIP vector instead of reading the
photo again. Photo j's vector is keyed photo_key("clip_image", j) in a write's row (indexer/multiphoto.py).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vitrine.encoders.base import TextEncoder
from vitrine.indexer.bundle import Bundle, clip_item_text, item_text
from vitrine.indexer.catalog import MAX_EXTRA_PHOTOS, Item
from vitrine.indexer.lock import ReadWriteLock
from vitrine.indexer.multiphoto import PHOTO_SOURCE, photo_id, photo_key, split_key
from vitrine.indexer.photos import BUNDLE_PHOTO, BadPhoto, decode_photo, keep_photo, photo_location, read_photo

log = logging.getLogger("vitrine.live")


class WriteEncoder:
    """Encodes writes to `bundle` with its models; `lock` is the live index's, read while a stored vector is looked up."""

    def __init__(self, bundle: Bundle, text_encoder: TextEncoder | None, clip: Any | None, lock: ReadWriteLock) -> None:
        self.bundle, self.encoder, self.clip, self.lock = bundle, text_encoder, clip, lock

    def encode(self, items: list[Item], photos: dict[str, bytes], replaying: bool = False,
               extra_photos: dict[str, Sequence[bytes]] | None = None) -> tuple[list[Item], list[dict[str, np.ndarray]]]:
        """Keeps sent photos in the bundle and encodes every dense source: (the items as stored, per item
        {source or photo key: (D,) vector}). `photos` maps an id to its main photo's bytes (the item's own photos,
        paths or URLs, follow it), `extra_photos` to more photos' bytes (after all those). An item without text gets
        no text vector, as in the indexer."""
        images: dict[tuple[int, int], Any] = {}  # (item row, photo number) -> a photo sent as bytes, decoded
        extra_photos = extra_photos or {}
        for i, it in enumerate(items):
            if it.id in photos or extra_photos.get(it.id):
                items[i], sent = self._keep_sent(it, photos.get(it.id), extra_photos.get(it.id, ()))
                images.update({(i, j): img for j, img in sent.items()})
        vectors: list[dict[str, np.ndarray]] = [{} for _ in items]
        if "text" in self.bundle.vectors:
            rows = [i for i, it in enumerate(items) if it.has_text()]
            if rows:
                xb = self.encoder.encode_texts([item_text(items[i]) for i in rows])  # (N, D)
                for i, x in zip(rows, xb):
                    vectors[i]["text"] = x
        if PHOTO_SOURCE in self.bundle.vectors:
            self._encode_clip(items, images, vectors, replaying)
        return items, vectors

    def _keep_sent(self, item: Item, main: bytes | None, extra: Sequence[bytes]) -> tuple[Item, dict[int, Any]]:
        """The item with its photos sent as bytes kept in the bundle (`main` first, then the item's own photos, then
        `extra`; each photo once), and those photos decoded by photo number. Every sent photo is decoded before any
        is kept: a bad one raises BadPhoto naming its field and keeps nothing."""
        sent: list[tuple[bytes, Any]] = []
        if main is not None:
            sent.append((main, self._decode(main, item.id, "image")))
        sent += [(data, self._decode(data, item.id, f"images[{n}]")) for n, data in enumerate(extra)]
        kept = [BUNDLE_PHOTO + keep_photo(self.bundle.path, data) for data, _ in sent]
        head = 1 if main is not None else 0
        decoded = {location: img for location, (_, img) in zip(kept, sent)}
        photos = list(dict.fromkeys(kept[:head] + list(item.photos) + kept[head:]))
        if len(photos) > 1 + MAX_EXTRA_PHOTOS:
            raise BadPhoto(item.id, "images", f"{len(photos)} different photos; an item has at most "
                                              f"{1 + MAX_EXTRA_PHOTOS} (its main photo and {MAX_EXTRA_PHOTOS} more)")
        stored = replace(item, image=photos[0], extra_images=tuple(photos[1:]))
        return stored, {j: decoded[p] for j, p in enumerate(photos) if p in decoded}

    def _encode_clip(self, items: list[Item], images: dict[tuple[int, int], Any], vectors: list[dict[str, np.ndarray]],
                     replaying: bool = False) -> None:
        """CLIP vectors as the indexer makes them: each photo's image vector, else the CLIP text vector of the item's
        text. A photo the item already had (same location) keeps its stored vector when the index holds exact ones."""
        for i, it in enumerate(items):
            if not it.photos:
                continue
            kept, stored = self._stored_vectors(it)
            for j, where in enumerate(it.photos):
                if (i, j) in images:
                    continue
                if j in stored:
                    vectors[i][photo_key(PHOTO_SOURCE, j)] = stored[j]
                    continue
                field = "image_uri" if j == 0 else "image_uris"
                try:
                    images[(i, j)] = self._decode(read_photo(photo_location(self.bundle, where), it.id, field), it.id, field)
                except BadPhoto as exc:
                    if not (j in kept or replaying):
                        raise
                    # A photo it was indexed with is gone: its other photos (or its text, as the indexer does for
                    # an item without a readable photo) stand in.
                    log.warning("item %r: its stored photo %d cannot be read again (%s)", it.id, j, exc.reason)
        order = sorted(images)
        for start in range(0, len(order), 32):
            chunk = order[start:start + 32]
            xb = self.clip.encode_images([images[key] for key in chunk])  # (B, D)
            for (i, j), x in zip(chunk, xb):
                vectors[i][photo_key(PHOTO_SOURCE, j)] = x
        texts = [i for i, it in enumerate(items)  # no photo to use
                 if not any(split_key(key)[0] == PHOTO_SOURCE for key in vectors[i]) and it.has_text()]
        if texts:
            xb = self.clip.encode_texts([clip_item_text(items[i]) for i in texts])  # (T, D)
            for i, x in zip(texts, xb):
                vectors[i][PHOTO_SOURCE] = x

    def _decode(self, data: bytes, item_id: str, field_name: str) -> Any:
        # No CLIP (a text-only bundle): the photo is still checked and kept.
        return decode_photo(data, item_id, field_name, getattr(self.clip, "image_size", None))

    def _stored_vectors(self, item: Item) -> tuple[set[int], dict[int, np.ndarray]]:
        """(the numbers of the item's photos that the stored item has too, {photo number: its exact stored vector}
        for those the index keeps exactly). One read lock over the lookup, the comparison and the reads: a concurrent
        write to the same id cannot pair one photo with another's vector."""
        with self.lock.read():
            docno = self.bundle.docstore.docno_by_id.get(item.id)
            old = None if docno is None else self.bundle.docstore.items.get(docno)
            if old is None:
                return set(), {}
            was = {location: k for k, location in enumerate(old.photos)}
            kept = {j for j, location in enumerate(item.photos) if location in was}
            out: dict[int, np.ndarray] = {}
            for j in sorted(kept):
                try:
                    xb = self.bundle.vectors[PHOTO_SOURCE].reconstruct(
                        np.array([photo_id(docno, was[item.photos[j]])], dtype=np.int64))
                except RuntimeError:  # not stored in this index (a photo the indexer could not read)
                    continue
                if xb is None:  # the index keeps no exact vectors: every photo is read again
                    break
                out[j] = xb[0]
        return kept, out
