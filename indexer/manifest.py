"""A bundle's manifest.json as a typed record: what the bundle holds, the models that made it, how it was built.

The indexer writes it, a live index rewrites its counts, the server and the commands read it. `Manifest.read` takes
every manifest this format has written (keys added later are optional); `to_dict` is exactly the JSON written.
"""
from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

FORMAT_VERSION = 1  # manifest.json's "format_version"; a reader refuses any other
MANIFEST = "manifest.json"
R = TypeVar("R")

# Every record keeps the keys this version does not know in `extra`, so a manifest read and written again (a live
# checkpoint) loses nothing a later version or another tool put there. A field whose default is None is a key that
# bundles written before it existed lack: left out of the JSON while None.


def _record(cls: type[R], d: Mapping[str, Any], **typed: Any) -> R:
    """`cls` from its JSON object: known keys become fields (`typed` gives the nested records), the rest `extra`."""
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in d.items() if k in names}
    return cls(**{**known, **typed}, extra={k: v for k, v in d.items() if k not in names})


def _plain(value: Any) -> Any:
    """A field's value as JSON: records as objects, tuples as lists, and a copy of anything mutable."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):   # keys sorted, as manifest.json is written (and Info shows it)
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


class _Json:
    """The JSON side of a record: every field (one whose default is None only when set), then `extra`."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type] - every subclass is a dataclass
            value = getattr(self, f.name)
            if f.name != "extra" and not (value is None and f.default is None):
                out[f.name] = _plain(value)
        return _plain({**out, **_plain(self.extra)})  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ModelRecord(_Json):
    """models.<role>: the model that encoded a dense source ("text": sentence-transformers, "clip": open_clip)."""

    name: str
    dim: int
    kind: str
    version: str | None = None
    variants: Mapping[str, Any] | None = None  # its checked ONNX variants (indexer/variants.py), when exported
    check: Mapping[str, Any] | None = None     # CLIP: its text tower's check (indexer/clip_check.py)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorRecord(_Json):
    """vectors.<source>: one FAISS index of the bundle, and the model (a `models` role) whose vectors it holds."""

    file: str
    factory: str
    dim: int
    count: int
    model: str
    metric: str = "inner_product"
    images: int | None = None          # clip_image: rows that are photo vectors (the rest stand in with text)
    text_only: int | None = None
    items_with_images: int | None = None  # clip_image: items with at least one photo vector (several photos each)
    images_per_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Counts(_Json):
    """counts: items, rows of each vector index, photos encoded and photos that could not be read; items with a photo
    vector and the most extra photos an item has (indexer/multiphoto.py; a live checkpoint raises the latter)."""

    items: int = 0
    text_vectors: int = 0
    clip_vectors: int | None = None
    images: int | None = None
    broken_images: int | None = None
    items_with_images: int | None = None
    max_extra_photos: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_vectors(self, source: str, n: int) -> Counts:
        """These counts with "<source>_vectors" = n, as a live checkpoint records each vector index. The indexer
        names CLIP's count "clip_vectors" and a checkpoint "clip_image_vectors", so a checkpointed bundle has both."""
        key = f"{source}_vectors"
        if key in {f.name for f in fields(self)}:
            return replace(self, **{key: n})
        return replace(self, extra={**self.extra, key: n})


@dataclass(frozen=True)
class Bm25Record(_Json):
    """bm25: the Tantivy index's folder and the settings it was built with."""

    dir: str = "bm25"
    tokenizer: str = "en_stem"
    boosts: Mapping[str, float] | None = None  # None: indexer.bm25.Bm25Config's
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokenImage(_Json):
    """broken_images[i]: an item whose photo the indexer could not read, and why."""

    id: str
    reason: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest(_Json):
    """manifest.json. `catalog` is the catalog file indexed (absolute; relative photo paths resolve beside it), or None."""

    bundle_version: str
    created: str
    catalog: str | None
    counts: Counts
    next_docno: int
    models: Mapping[str, ModelRecord]
    vectors: Mapping[str, VectorRecord]
    bm25: Bm25Record
    config: Mapping[str, Any]
    timings: Mapping[str, float]
    format_version: int = FORMAT_VERSION
    broken_images: tuple[BrokenImage, ...] | None = None  # the first 100 photos the indexer could not read
    built_by: Mapping[str, Any] | None = None             # where encoding ran (indexer.bundle.LocalRunner.describe)
    snapshot_of: str | None = None                        # a live snapshot: the bundle version it copied
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "this manifest") -> Manifest:
        # Every writer has written "format_version"; a manifest without it is not one of this format's.
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{source} has format version {version}; this Vitrine reads {FORMAT_VERSION}")
        try:
            return cls._from_dict(d)
        except (TypeError, AttributeError) as exc:   # a record without a key every writer writes, or not an object
            raise ValueError(f"{source}: manifest.json is damaged ({exc}); re-index the catalog.") from None

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        broken = d.get("broken_images")
        return _record(
            cls, {"bundle_version": "", "created": "", "catalog": None, "next_docno": 0, "config": {}, "timings": {},
                  **d, "format_version": FORMAT_VERSION},
            counts=_record(Counts, d.get("counts", {})),
            models={role: _record(ModelRecord, m) for role, m in d.get("models", {}).items()},
            vectors={name: _record(VectorRecord, v) for name, v in d.get("vectors", {}).items()},
            bm25=_record(Bm25Record, d.get("bm25", {})),
            broken_images=None if broken is None else tuple(_record(BrokenImage, b) for b in broken))

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """The manifest of the bundle at `path` (its directory, or its manifest.json)."""
        file = _file(path)
        return cls.from_dict(json.loads(file.read_text(encoding="utf-8")), f"bundle {file.parent}")

    def write(self, path: str | Path) -> None:
        """Writes it atomically (temporary file, fsync, rename) into the bundle at `path` (or to that file)."""
        write_json_atomic(_file(path), self.to_dict())

    def with_live_counts(self, items: int, vectors: Mapping[str, int], next_docno: int,
                         max_extra_photos: int | None = None) -> Manifest:
        """This manifest with a live index's counts now: items, each vector index's rows, the next doc number, and
        (when given) the most extra photos an item has."""
        counts = replace(self.counts, items=items)
        if max_extra_photos is not None:
            counts = replace(counts, max_extra_photos=max_extra_photos)
        records = dict(self.vectors)
        for source, n in vectors.items():
            records[source] = replace(records[source], count=n)
            counts = counts.with_vectors(source, n)
        return replace(self, counts=counts, vectors=records, next_docno=next_docno)


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
