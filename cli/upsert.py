"""`vitrine upsert`: stream catalog items (or --patch partial updates) to a running server; `ack ID` per durable write."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from vitrine.cli.target import add_target, client_options
from vitrine.indexer.catalog import UnknownFields, check_catalog_path, collect_items, iter_catalog_jsonl, iter_utf8_jsonl
from vitrine.proto import search_pb2

PATCH_FIELDS = ("id", "price", "attributes")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upsert", help="stream catalog items (JSONL) to a running server; prints `ack ID` per durable write")
    add_target(p)
    p.add_argument("--catalog", required=True, help="items as JSONL, one catalog object per line")
    p.add_argument("--patch", action="store_true", help="lines are partial updates: {id, price?, attributes?}; an "
                                                        "attribute set to \"\" or null is removed")
    p.set_defaults(handler=cmd_upsert)


def _got(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


def patch_from_dict(obj: Any) -> search_pb2.UpsertRequest:
    """One line of a patch file, {id, price?, attributes?}, as an UpsertRequest; ValueError names the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object {{id, price?, attributes?}}, got {type(obj).__name__}")
    for key in obj:
        if key not in PATCH_FIELDS:
            raise ValueError(f"{key}: a patch changes only price and attributes; send the whole item without --patch "
                             f"to change {key}" if key in ("title", "description", "category", "image", "images")
                             else f"{key}: not a patch field (a patch is {{id, price?, attributes?}})")
    raw_id = obj.get("id")
    if raw_id is None:
        raise ValueError("id: missing; every patch names the item it changes")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise ValueError(f"id: expected a non-empty string, got {_got(raw_id)}")
    attributes = obj.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise ValueError(f"attributes: expected an object of name -> value, got {_got(attributes)}")
    attrs: dict[str, str] = {}
    for key, value in attributes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise ValueError(f"attributes.{key}: expected a string or number (\"\" or null removes it), got {_got(value)}")
        attrs[str(key)] = "" if value is None else str(value)
    patch = search_pb2.ItemPatch(id=str(raw_id).strip(), attributes=attrs)
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise ValueError(f"price: expected a number, got {_got(price)}")
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price: expected a finite non-negative number, got {_got(price)}")
        patch.price = float(price)
    return search_pb2.UpsertRequest(patch=patch)


def read_upserts(path: str | Path, patch: bool) -> list[search_pb2.UpsertRequest]:
    """Every line of an upsert (or --patch) file as a request, or CatalogError listing each bad line and each
    duplicate id, as `vitrine index` refuses them, before anything is sent. Unknown item fields get one warning each."""
    from vitrine.server.client import item_to_proto, local_photo

    path = check_catalog_path(path)
    if patch:
        requests, _ = collect_items(iter_utf8_jsonl(path, patch_from_dict), path, skip_invalid=False,
                                    id_of=lambda r: r.patch.id)
        return requests
    unknown = UnknownFields()
    items, _ = collect_items(iter_catalog_jsonl(path, unknown), path, skip_invalid=False)
    for line in unknown.warnings():
        print(line, file=sys.stderr)
    missing = [(it.id, str(photo)) for it in items for image in it.photos if (photo := local_photo(image, path.parent))
               and not (photo.is_file() and os.access(photo, os.R_OK))]
    if missing:
        raise ValueError(f"{path}: {len(missing)} item(s) name a photo that is not a readable file here, e.g. item "
                         f"{missing[0][0]!r}: {missing[0][1]} (image paths are relative to the catalog file).")
    return [search_pb2.UpsertRequest(item=item_to_proto(it)) for it in items]


def cmd_upsert(args: argparse.Namespace) -> int:
    from vitrine.server.client import CatalogClient, with_photo_bytes

    requests = read_upserts(args.catalog, args.patch)
    base_dir = Path(args.catalog).parent  # as read_upserts checked the photos
    failed: list[ValueError] = []

    def stream():  # noqa: ANN202 - photos are read as the stream goes; a catalog's photos need not fit in memory
        for r in requests:
            try:
                yield with_photo_bytes(r, base_dir)
            except ValueError as exc:  # unreadable since the check: end the stream cleanly, report it below
                failed.append(exc)
                return

    with CatalogClient(args.target, **client_options(args)) as client:
        for ack in client.upsert(stream()):
            print(f"ack {ack.id}", flush=True)
    if failed:
        raise failed[0]  # every item acked above is durable; this one and the rest were not sent
    return 0
