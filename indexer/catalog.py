"""Catalog items and the readers that validate JSONL, CSV and Parquet catalogs line (row) by line."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vitrine.indexer.jsonl import LineError, parse_jsonl_lines

TEXT_FIELDS = ("title", "description", "category")
KNOWN_FIELDS = ("id", "title", "description", "category", "attributes", "price", "image", "images")
MAX_ID_LENGTH = 256
MAX_EXTRA_PHOTOS = 15  # photos of one item besides its main one (indexer/multiphoto.py numbers them 1..15)
T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    """One catalog item. Only `id` is required; an item may carry text, photos, or both. `image` is its main photo and
    `extra_images` are up to MAX_EXTRA_PHOTOS more of the same product (never without a main one)."""

    id: str
    title: str = ""
    description: str = ""
    category: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    price: float | None = None
    image: str | None = None  # a path (relative to the catalog, or absolute) or an http(s) URL
    extra_images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.extra_images, tuple):  # a list compares unequal to the same photos as a tuple
            object.__setattr__(self, "extra_images", tuple(self.extra_images))
        if self.extra_images and not self.image:
            raise ValueError(f"item {self.id!r}: extra_images without a main image; the first photo is the main one.")
        if len(self.extra_images) > MAX_EXTRA_PHOTOS:
            raise ValueError(f"item {self.id!r}: {len(self.extra_images)} extra photos; the limit is {MAX_EXTRA_PHOTOS}.")

    @property
    def photos(self) -> tuple[str, ...]:
        """Every photo of the item, the main one first (photo number j is photos[j])."""
        return ((self.image,) if self.image else ()) + self.extra_images

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        for name in TEXT_FIELDS:
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.price is not None:
            out["price"] = self.price
        if self.image:
            out["image"] = self.image
        if self.extra_images:  # every photo, main first: read again, it gives the same item
            out["images"] = list(self.photos)
        return out

    def has_text(self) -> bool:
        return bool(self.title or self.description or self.category or self.attributes)


class CatalogError(ValueError):
    """A catalog has invalid lines; `errors` lists each with its line number."""

    def __init__(self, path: Path, errors: list[LineError]) -> None:
        self.errors = errors
        if len(errors) == 1:   # one bad line: one line of output
            super().__init__(f"{path}: {errors[0]}")
            return
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} invalid line(s):\n  {shown}{more}")


def item_from_dict(obj: Any) -> Item:
    """Validates one decoded catalog object; raises ValueError naming the offending field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise ValueError("missing required field 'id'")
    raw_id = obj["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise ValueError(f"field 'id' must be a string, got {type(raw_id).__name__}")
    item_id = str(raw_id).strip()
    if not item_id:
        raise ValueError("field 'id' must not be empty")
    if len(item_id) > MAX_ID_LENGTH:
        raise ValueError(f"field 'id' is longer than {MAX_ID_LENGTH} characters")
    texts: dict[str, str] = {}
    for name in TEXT_FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
        texts[name] = value
    attributes = obj.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError(f"field 'attributes' must be an object, got {type(attributes).__name__}")
    clean_attrs: dict[str, str] = {}
    for key, value in attributes.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"field 'attributes.{key}' must be a string or number, got {type(value).__name__}")
        if str(value).strip():  # an empty value is no value (a live upsert refuses one, and no filter can name it)
            clean_attrs[str(key)] = str(value)
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
            raise ValueError(f"field 'price' must be a finite number, got {price!r}")
        price = float(price)
    photos = merge_photos(obj.get("image"), obj.get("images"))
    return Item(id=item_id, attributes=clean_attrs, price=price, image=photos[0] if photos else None,
                extra_images=photos[1:], **texts)


def merge_photos(image: Any, images: Any) -> tuple[str, ...]:
    """`image` then `images`, each photo once in order of appearance: the first is the main photo."""
    if image is not None and not isinstance(image, str):
        raise ValueError(f"field 'image' must be a string path or URL, got {type(image).__name__}")
    if images is None:
        images = []
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"field 'images' must be a list of photo paths or URLs, got {type(images).__name__}")
    for n, photo in enumerate(images):
        if not isinstance(photo, str) or not photo.strip():
            got = type(photo).__name__ if not isinstance(photo, str) else "an empty string"
            raise ValueError(f"field 'images[{n}]' must be a non-empty string path or URL, got {got}")
    photos = tuple(dict.fromkeys(([image] if image else []) + list(images)))
    if len(photos) > 1 + MAX_EXTRA_PHOTOS:
        raise ValueError(f"field 'images' gives {len(photos)} different photos; an item has at most "
                         f"{1 + MAX_EXTRA_PHOTOS} (its main photo and {MAX_EXTRA_PHOTOS} more)")
    return photos


@dataclass
class UnknownFields:
    """Top-level keys of catalog objects that are not catalog fields, counted as a reader streams (item_from_dict
    ignores them). Mutable on purpose, like ClickLogSummary: the reader fills it in."""

    counts: Counter = field(default_factory=Counter)
    first_line: dict[str, int] = field(default_factory=dict)

    def add(self, obj: Any, line: int) -> None:
        if not isinstance(obj, dict):
            return
        for key in obj:
            if key not in KNOWN_FIELDS:
                self.counts[key] += 1
                self.first_line.setdefault(key, line)

    def warnings(self) -> list[str]:
        """One line per unknown field, most frequent first."""
        return [f"warning: {n} item{'s' if n != 1 else ''} {'have' if n != 1 else 'has'} the unknown field {json.dumps(k)} "
                f"(ignored; put shop fields under \"attributes\"; first on line {self.first_line[k]})"
                for k, n in self.counts.most_common()]

    def refusal(self, path: str | Path) -> str:
        """The one-line reason a strict read refuses the catalog."""
        fields = ", ".join(f"{json.dumps(k)} ({n} item{'s' if n != 1 else ''}, first on line {self.first_line[k]})"
                           for k, n in self.counts.most_common())
        top = json.dumps(self.counts.most_common(1)[0][0]) if self.counts else '"colour"'
        return (f"catalog {path} has unknown field(s) {fields}; put shop fields under \"attributes\" "
                f"(e.g. \"attributes\": {{{top}: ...}}), or drop --strict to ignore them.")


_BAD_BYTE = re.compile("[\udc80-\udcff]")   # what errors="surrogateescape" makes of a byte that is not UTF-8


def parse_utf8_jsonl_lines(lines: Iterable[str], parse: Callable[[Any], T]) -> Iterator[tuple[int, T | LineError]]:
    """indexer.jsonl.parse_jsonl_lines for lines decoded with errors="surrogateescape": a line holding bytes that are
    not UTF-8 is a LineError naming the byte, never a value whose text silently lost characters. A byte-order mark on
    the first line is dropped."""
    for lineno, line in enumerate(lines, start=1):
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        bad = _BAD_BYTE.search(line)
        if bad:
            byte = ord(bad.group()) - 0xDC00
            yield lineno, LineError(lineno, f"not UTF-8 text (byte {byte:#04x} at column {bad.start() + 1}); save the "
                                            "file as UTF-8")
            continue
        for _, row in parse_jsonl_lines([line], parse):
            yield lineno, LineError(lineno, row.message) if isinstance(row, LineError) else row


def iter_utf8_jsonl(path: str | Path, parse: Callable[[Any], T]) -> Iterator[tuple[int, T | LineError]]:
    """Streams a JSONL file through `parse` (see parse_utf8_jsonl_lines)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from parse_utf8_jsonl_lines(f, parse)


def parse_catalog_lines(lines: Iterable[str], unknown: UnknownFields | None = None
                        ) -> Iterator[tuple[int, Item | LineError]]:
    """Yields (line number, Item or LineError) for every non-blank line, counting unknown fields in `unknown`."""
    for lineno, row in parse_utf8_jsonl_lines(lines, lambda obj: (item_from_dict(obj), obj)):
        if isinstance(row, LineError):
            yield lineno, row
            continue
        item, obj = row
        if unknown is not None:
            unknown.add(obj, lineno)
        yield lineno, item


def iter_catalog_jsonl(path: Path, unknown: UnknownFields | None = None) -> Iterator[tuple[int, Item | LineError]]:
    """Yields (line number, Item or LineError) for every non-blank line of a JSONL catalog (see parse_catalog_lines)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from parse_catalog_lines(f, unknown)


def parse_column_map(spec: str | None) -> dict[str, str]:
    """Parses `field=column,...` (e.g. `id=sku,title=name,attributes.color=colour`)."""
    mapping: dict[str, str] = {}
    if not spec:
        return mapping
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"column map entry {part!r} must look like field=column.")
        key, column = (s.strip() for s in part.split("=", 1))
        base = key.split(".", 1)[0]
        if base not in KNOWN_FIELDS:
            raise ValueError(f"column map names unknown catalog field {key!r}; known: {', '.join(KNOWN_FIELDS)}.")
        mapping[key] = column
    return mapping


def iter_csv(path: Path, column_map: Mapping[str, str]) -> Iterator[tuple[int, Item | LineError]]:
    """Yields items from a CSV export. Unmapped columns that are not catalog fields become attributes."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if any(_BAD_BYTE.search(c) for c in columns):
            yield 1, LineError(1, "the CSV header is not UTF-8 text; save the file as UTF-8")
            return
        by_column = {column: key for key, column in column_map.items()}
        missing = [c for c in by_column if c not in columns]
        if missing:
            yield 1, LineError(1, f"CSV header lacks mapped column(s): {', '.join(missing)}")
            return
        for row in reader:
            lineno = reader.line_num
            bad = next((c for c, v in row.items() if isinstance(v, str) and _BAD_BYTE.search(v)), None)
            if bad is not None:
                yield lineno, LineError(lineno, f"column {bad!r} is not UTF-8 text; save the file as UTF-8")
                continue
            obj: dict[str, Any] = {"attributes": {}}
            for column, value in row.items():
                if column is None:
                    continue
                key = by_column.get(column, column if column in KNOWN_FIELDS else f"attributes.{column}")
                if value is None or value == "":
                    continue
                if key.startswith("attributes."):
                    obj["attributes"][key.split(".", 1)[1]] = value
                elif key == "price":
                    try:
                        obj["price"] = float(value)
                    except ValueError:
                        obj["price"] = value  # rejected with a message by item_from_dict
                elif key == "images":
                    obj["images"] = csv_photos(value)
                else:
                    obj[key] = value
            try:
                yield lineno, item_from_dict(obj)
            except ValueError as exc:
                yield lineno, LineError(lineno, str(exc))


def check_catalog_path(path: str | Path) -> Path:
    """The catalog's path, or FileNotFoundError / IsADirectoryError saying what to give instead."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"catalog {path} is a directory; give the catalog file in it (JSONL, .csv or .parquet)")
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} does not exist")
    return path


def read_catalog(
    path: str | Path, *, skip_invalid: bool = False, column_map: Mapping[str, str] | None = None,
    unknown: UnknownFields | None = None,
) -> tuple[list[Item], list[LineError]]:
    """Reads and validates a whole catalog (JSONL, or CSV by extension).

    Raises CatalogError listing every bad line unless `skip_invalid`, in which case the bad
    lines are returned beside the valid items. Duplicate ids are errors: the first one wins.
    Top-level fields that are not catalog fields are ignored, and counted in `unknown` when given (JSONL, Parquet;
    a CSV's extra columns become attributes).
    """
    path = check_catalog_path(path)
    suffix = path.suffix.lower()
    rows = (iter_csv(path, column_map or {}) if suffix == ".csv" else iter_parquet(path, unknown) if suffix == ".parquet"
            else iter_catalog_jsonl(path, unknown))
    return collect_items(rows, path, skip_invalid)


def collect_items(rows: Iterable[tuple[int, T | LineError]], path: Path, skip_invalid: bool,
                  id_of: Callable[[T], str] = lambda item: item.id) -> tuple[list[T], list[LineError]]:
    """Validated rows in catalog order: duplicate ids are errors (the first wins); CatalogError unless skip_invalid.
    Rows are Items, or anything else `id_of` takes the id of (e.g. the lines of a patch file)."""
    items: list[T] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        if isinstance(row, LineError):
            errors.append(row)
        elif id_of(row) in seen:
            errors.append(LineError(lineno, f"duplicate id {id_of(row)!r} (first seen on line {seen[id_of(row)]})"))
        else:
            seen[id_of(row)] = lineno
            items.append(row)
    if errors and not skip_invalid:
        raise CatalogError(path, errors)
    return items, errors


def parquet_rows(records: Iterable[Mapping[str, Any]], unknown: UnknownFields | None = None
                 ) -> Iterator[tuple[int, Item | LineError]]:
    """Catalog records read from Parquet (one per row, row numbers from 1 as "line" numbers), validated like JSONL.
    Nested attributes arrive as a dict (struct) or a list of (key, value) pairs (map); nulls are absent fields."""
    for n, rec in enumerate(records, start=1):
        obj = {k: v for k, v in rec.items() if v is not None}
        attrs = obj.get("attributes")
        if isinstance(attrs, list):
            obj["attributes"] = dict(attrs)
        elif isinstance(attrs, dict):
            obj["attributes"] = {k: v for k, v in attrs.items() if v is not None}
        try:
            item = item_from_dict(obj)
        except ValueError as exc:
            yield n, LineError(n, str(exc))
            continue
        if unknown is not None:
            unknown.add(obj, n)
        yield n, item


def iter_parquet(path: Path, unknown: UnknownFields | None = None) -> Iterator[tuple[int, Item | LineError]]:
    """Streams a Parquet catalog (the columns of the JSONL schema) by record batch."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading a Parquet catalog needs pyarrow: pip install 'vitrine-search[ray]' (or pyarrow)") from None
    records = (rec for batch in pq.ParquetFile(path).iter_batches(batch_size=4096) for rec in batch.to_pylist())
    return parquet_rows(records, unknown)


def csv_photos(cell: str) -> Any:
    """A CSV cell of photos: a JSON array, or locations separated by "|" (validated by item_from_dict)."""
    if cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell  # refused with a message by item_from_dict
    return [p.strip() for p in cell.split("|") if p.strip()]


def resolve_image(item: Item, catalog_dir: Path) -> str | None:
    """Returns the item's (main) image as an absolute path or URL, or None."""
    return resolve_location(item.image, catalog_dir) if item.image else None


def resolve_location(image: str, catalog_dir: Path) -> str:
    """One photo location as an absolute path or URL (a relative path is relative to the catalog's folder)."""
    if image.startswith(("http://", "https://")):
        return image
    p = Path(image)
    return str(p if p.is_absolute() else (catalog_dir / p).resolve())
