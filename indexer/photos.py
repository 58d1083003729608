"""Where a bundle's item photos are, and the photos a bundle keeps itself.

Photos sent as bytes to a live index are kept with the bundle (`photos/<sha256>.<ext>`, fsync'd before the WAL record
that names them; the item's `image` becomes `bundle:photos/...`), so a snapshot carries them and a re-index can read
them. A photo given as a path or URL stays the shop's: the item keeps that location.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitrine.indexer.durable import write_durably
from vitrine.indexer.manifest import MANIFEST, Manifest

if TYPE_CHECKING:
    from vitrine.indexer.bundle import Bundle

PHOTOS_DIR = "photos"      # in a bundle: photos that live upserts sent as bytes
BUNDLE_PHOTO = "bundle:"   # an item image kept in its bundle: "bundle:photos/<sha256>.<ext>"
MAX_PHOTO_BYTES = 20 * 1024 * 1024


class BadPhoto(ValueError):
    """An upserted item's photo cannot be read or decoded; nothing of that write was logged."""

    def __init__(self, item_id: str, field_name: str, reason: str) -> None:
        super().__init__(f"item {item_id!r}: {field_name}: {reason}")
        self.item_id = item_id
        self.field = field_name
        self.reason = reason


def photo_location(bundle: Bundle, image: str) -> str:
    return resolve_photo(bundle.path, bundle.manifest, image)


def resolve_photo(bundle_dir: Path, manifest: Manifest, image: str) -> str:
    """Where an item's `image` can be read: a photo kept in the bundle, an http(s) URL, an absolute path, or a path
    relative to the catalog the bundle was built from (as the indexer resolved it)."""
    if image.startswith(BUNDLE_PHOTO):
        return str(bundle_dir / image[len(BUNDLE_PHOTO):])
    if image.startswith(("http://", "https://")) or Path(image).is_absolute():
        return image
    catalog = manifest.catalog
    return str((Path(catalog).parent if catalog else bundle_dir) / image)


def export_catalog(bundle_dir: str | Path, out: str | Path) -> int:
    """Writes a bundle's items as a catalog JSONL that `vitrine index` reads: live writes included, and every
    photo (`image`, `images`) as a location that file can be read from (photos kept in the bundle and catalog-relative
    paths become absolute paths). Returns the number of items. The bundle may be served meanwhile (SQLite readers do
    not block; only the docstore and the manifest are read)."""
    from vitrine.indexer.docstore import DocStore

    bundle_dir, out = Path(bundle_dir), Path(out)
    if not (bundle_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"bundle {bundle_dir} does not exist or is not a Vitrine bundle (no {MANIFEST}).")
    manifest = Manifest.read(bundle_dir)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    docstore = DocStore(bundle_dir / "docstore.sqlite")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for _, item in sorted(docstore.items.items()):
                row = item.to_dict()
                photos = [_readable(resolve_photo(bundle_dir, manifest, photo)) for photo in item.photos]
                if photos:
                    row["image"] = photos[0]
                if len(photos) > 1:
                    row["images"] = photos
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        n = len(docstore)
    finally:
        docstore.close()
    os.replace(tmp, out)
    return n


def _readable(where: str) -> str:
    return where if where.startswith(("http://", "https://")) else str(Path(where).resolve())


def decode_photo(data: bytes, item_id: str, field_name: str, image_size: Any) -> Any:
    """The decoded photo, checked as a CLIP of `image_size` needs it (None: no CLIP, the photo is still checked)."""
    from vitrine.encoders.images import decode_image

    size = max(image_size) if isinstance(image_size, (tuple, list)) else image_size
    try:
        return decode_image(data, MAX_PHOTO_BYTES, min_side=size)
    except ValueError as exc:
        raise BadPhoto(item_id, field_name, str(exc).removeprefix("image: ")) from None


def read_photo(where: str, item_id: str, field_name: str) -> bytes:
    from vitrine.indexer.images import read_image_bytes

    try:
        return read_image_bytes(where)
    except (OSError, ValueError) as exc:
        raise BadPhoto(item_id, field_name, f"cannot read {where}: {exc}") from None


def keep_photo(bundle_dir: Path, data: bytes) -> str:
    """Writes the photo into the bundle, durably, named by its content; returns its path in the bundle."""
    from PIL import Image

    try:
        ext = (Image.open(io.BytesIO(data)).format or "bin").lower()
    except Exception:  # noqa: BLE001 - decoded fine above; only the extension is unknown
        ext = "bin"
    folder = bundle_dir / PHOTOS_DIR
    name = f"{PHOTOS_DIR}/{hashlib.sha256(data).hexdigest()[:40]}.{ext}"
    target = bundle_dir / name
    if not target.exists():
        folder.mkdir(exist_ok=True)
        write_durably(target, data)
    return name
