"""Several photos per item in one CLIP index: vector ids that carry the photo's number, and the search that scores an
item by its best photo and returns it once.

An item's main photo (photo 0) has FAISS id = its doc number, as a one-photo item always had; its photo j (1..15) has
id `(j << 40) | docno`. So a catalog of one photo per item gets exactly the ids (and results) it had before.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from vitrine.indexer.ann import VectorIndex
from vitrine.indexer.catalog import MAX_EXTRA_PHOTOS, Item, resolve_location

PHOTO_SOURCE = "clip_image"  # the vector index whose ids carry photo numbers
PHOTO_SHIFT = 40             # doc numbers stay below 2**40 (a trillion writes); 15 << 40 is far inside int64
DOCNO_MASK = (1 << PHOTO_SHIFT) - 1


def photo_id(docno: int, j: int) -> int:
    """The vector id of photo `j` (0 = the main photo) of the item at `docno`."""
    if not 0 <= j <= MAX_EXTRA_PHOTOS:
        raise ValueError(f"photo number {j} is outside 0..{MAX_EXTRA_PHOTOS}.")
    return (j << PHOTO_SHIFT) | docno


def docnos_of(ids: np.ndarray) -> np.ndarray:
    """The doc numbers of vector ids (any shape); a missing result (-1) stays -1."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids < 0, ids, ids & DOCNO_MASK)


def photo_numbers(ids: np.ndarray) -> np.ndarray:
    """Which photo of its item each vector id is (0 = the main photo, or a text stand-in)."""
    return np.asarray(ids, dtype=np.int64) >> PHOTO_SHIFT


def expand_ids(docnos: np.ndarray, max_extra: int) -> np.ndarray:
    """Every vector id photos 0..max_extra of these doc numbers can have: (len(docnos) * (1 + max_extra),)."""
    docnos = np.asarray(docnos, dtype=np.int64).reshape(-1)
    if max_extra <= 0:
        return docnos
    shifts = np.arange(max_extra + 1, dtype=np.int64) << PHOTO_SHIFT  # (J,)
    return (docnos[None, :] | shifts[:, None]).reshape(-1)


def photo_key(source: str, j: int) -> str:
    """The key of photo j's vector in a live write's {source: vector} row (and its WAL record): "clip_image" for the
    main photo, as before, "clip_image/2" for photo 2."""
    return source if j == 0 else f"{source}/{j}"


def split_key(key: str) -> tuple[str, int]:
    """(source, photo number) of a key photo_key made (any other key is photo 0 of that source)."""
    source, _, j = key.partition("/")
    return source, int(j) if j else 0


def photo_jobs(rows: Iterable[tuple[int, Item]], catalog_dir: Path) -> list[tuple[int, Item, str]]:
    """(vector id, item, absolute location) for every photo of every row, item by item, the main photo first."""
    return [(photo_id(docno, j), item, resolve_location(photo, catalog_dir))
            for docno, item in rows for j, photo in enumerate(item.photos)]


def max_extra_photos(items: Iterable[Item]) -> int:
    """The most extra photos any of these items has (0 for a catalog of one photo per item)."""
    return max((len(it.extra_images) for it in items), default=0)


def search_items(index: VectorIndex, xq: np.ndarray, depth: int, allowed: np.ndarray | None,
                 max_extra: int) -> tuple[np.ndarray, np.ndarray]:
    """Like `index.search(xq, depth, allowed)`, with I doc numbers: each item at most once, at its best photo's score,
    best first. `allowed` holds doc numbers; `max_extra` is the most extra photos an item of the index has.

    With max_extra == 0 it is exactly index.search. Otherwise the index is asked for depth * (1 + max_extra)
    neighbours: an item has at most 1 + max_extra of them, so they hold at least `depth` different items (all the
    index has, when it has fewer), each with its best photo among them.
    """
    if max_extra <= 0:
        return index.search(xq, depth, allowed)
    k = max(1, min(depth * (1 + max_extra), index.ntotal))
    D, I = index.search(xq, k, None if allowed is None else expand_ids(allowed, max_extra))
    return collapse(D, I, depth)


def collapse(D: np.ndarray, I: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (D, I) sorted best first, with vector ids, as (D, I) of doc numbers: each doc number once, at its
    first (best) place, at most `depth` per row; -1 / -inf pad rows with fewer."""
    width = max(1, min(depth, I.shape[1]))
    D_out = np.full((len(I), width), -np.inf, dtype=np.float32)
    I_out = np.full((len(I), width), -1, dtype=np.int64)
    for row, (d, ids) in enumerate(zip(D, I)):
        keep = ids >= 0
        docnos, scores = docnos_of(ids[keep]), d[keep]
        _, first = np.unique(docnos, return_index=True)  # the first place of each doc number
        first = np.sort(first)[:width]
        D_out[row, :len(first)] = scores[first]
        I_out[row, :len(first)] = docnos[first]
    return D_out, I_out


def item_vector_ids(docnos: Sequence[int], source: str) -> np.ndarray:
    """Every vector id the items at `docnos` can have in `source`'s index (all photo numbers for the photo index)."""
    docnos = np.asarray(docnos, dtype=np.int64)
    return expand_ids(docnos, MAX_EXTRA_PHOTOS) if source == PHOTO_SOURCE else docnos
