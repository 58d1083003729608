"""Photos added live are image-searchable: upsert held-out fashion items with their photos through `vitrine upsert`,
query each with its own photo, and check the same after a restart and after a kill -9 during the writes.

Figures (issue 23): share of the 200 upserted items in the top 10 of a query with their own photo (goal >= 99%, as
batch-indexed items; the same 200 batch-indexed are the control), the same after a restart; after kill -9 at a random
moment of a one-at-a-time write stream: acknowledged items missing from image search (goal 0: own photo not in the
top 10 of the CLIP vectors, i.e. served without the photo-attribute boost, which ranks by predicted attributes) and
items present that were never sent (goal 0); a title-only upsert of 100 indexed items leaves their image
self-retrieval unchanged.

    .venv/bin/python bench/live_photos.py [--data ../shared/data] [--out bench/results/live_photos.json]

The CLIP is `--clip DIR`, or one trained here with `vitrine train clip`'s defaults on the whole fashion catalog
(about 45 min on 2 CPUs; cached in .cache/models/clip-fashion): the 200 items are held out of the *indexed* catalog,
as new products are, and the same 200 batch-indexed (a control bundle of the whole catalog) give the figure to match.
The default image query adds a boost for the attributes CLIP's heads predict from the photo, so a CLIP whose heads
are weak ranks same-attribute look-alikes above an item's own photo: the control separates that from the live path.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from vitrine.cli.demo import _vitrine, start_server  # noqa: E402
from vitrine.indexer.catalog import Item, item_from_dict  # noqa: E402
from vitrine.proto import search_pb2  # noqa: E402
from vitrine.server.client import CatalogClient, VitrineClient, item_to_proto, with_photo_bytes  # noqa: E402

HELD_OUT, TITLE_ONLY, K = 200, 100, 10


def _order(ids: list[str], seed: str) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def split(catalog: Path) -> tuple[list[dict], list[dict]]:
    """(items to index, items held out for live upserts): a seeded pick of items with photos, by id hash."""
    rows = [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines() if line.strip()]
    with_photo = [r["id"] for r in rows if r.get("image") and (catalog.parent / r["image"]).is_file()]
    held = set(_order(with_photo, "live-photos")[:HELD_OUT])
    for r in rows:  # absolute photo paths: the catalogs written here live elsewhere
        if r.get("image"):
            r["image"] = str((catalog.parent / r["image"]).resolve())
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def self_retrieval(target: str, rows: list[dict]) -> tuple[float, list[str]]:
    """Share of items whose own photo finds them in the top K (image query, all sources), and the ids that missed."""
    missed = []
    with VitrineClient(target, timeout_s=30.0) as client:
        for r in rows:
            hits = client.search(image=Path(r["image"]).read_bytes(), k=K).hits
            if r["id"] not in [h.id for h in hits]:
                missed.append(r["id"])
    return 1.0 - len(missed) / max(len(rows), 1), missed


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def kill_during_writes(bundle: Path, rows: list[dict], seed: int, no_boost: Path) -> dict:
    """Streams the rows one at a time (each acked before the next), kill -9s the server at a random moment of the
    stream (after a seeded number of acks, plus a random part of one write), restarts it and checks image search
    against what was acknowledged."""
    proc, target = start_server(bundle)
    acked: list[str] = []
    sent: list[str] = []
    base = Path("/")
    rng = random.Random(seed)
    kill_after, jitter_s = rng.randrange(20, len(rows) - 20), rng.uniform(0.0, 0.05)
    reached = threading.Event()

    def writer() -> None:
        try:
            with CatalogClient(target, timeout_s=30.0) as client:
                for r in rows:
                    sent.append(r["id"])
                    req = with_photo_bytes(search_pb2.UpsertRequest(item=item_to_proto(item_from_dict(r))), base)
                    for ack in client.upsert([req]):
                        acked.append(ack.id)
                    if len(acked) == kill_after:
                        reached.set()
        except Exception:  # noqa: BLE001 - the kill ends the stream
            pass
        reached.set()

    t = threading.Thread(target=writer)
    t.start()
    reached.wait(600)
    time.sleep(jitter_s)  # the next write is on its way: encoding, in the WAL, or applied
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t.join(60)
    delay = f"after {kill_after} acks + {jitter_s * 1000:.0f} ms"
    proc, target = start_server(bundle)
    try:
        with CatalogClient(target) as client:
            present = {s["id"] for s in client.get([r["id"] for r in rows])}
        by_id = {r["id"]: r for r in rows}
        recall, missed = self_retrieval(target, [by_id[i] for i in acked])
        in_flight = [i for i in sent if i not in acked]
    finally:
        stop(proc)
    proc, target = start_server(bundle, ["--read-only", "--config", str(no_boost)])
    try:
        vectors_recall, vectors_missed = self_retrieval(target, [by_id[i] for i in acked])
    finally:
        stop(proc)
    return {"killed": delay, "acked": len(acked), "sent": len(sent),
            "acked_missing_from_store": len(set(acked) - present),
            "present_never_sent": len(present - set(sent)),
            "in_flight_present": len(set(in_flight) & present), "in_flight": len(in_flight),
            "self_retrieval_of_acked": round(recall, 4), "acked_missed_ids": missed[:10],
            "self_retrieval_of_acked_without_attribute_boost": round(vectors_recall, 4),
            "acked_missing_from_image_search": len(vectors_missed)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--work", default=str(ROOT / ".cache" / "live-photos"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "live_photos.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", help="a CLIP model directory to use instead of training one")
    args = p.parse_args(argv)
    catalog = Path(args.data) / "fashion" / "catalog.jsonl"
    if not catalog.is_file():
        print(f"error: {catalog} not found; pass --data DIR (the shared data folder)", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    indexed, held = split(catalog)
    indexed_path = write_jsonl(work / "indexed.jsonl", indexed)
    held_path = write_jsonl(work / "held_out.jsonl", held)
    clip_dir = Path(args.clip) if args.clip else ROOT / ".cache" / "models" / "clip-fashion"
    if not (clip_dir / "model.safetensors").is_file():
        run(_vitrine("train", "clip", "--catalog", str(catalog), "--out", str(clip_dir), "--quiet", "--no-mlflow"))
    pristine, control = work / "bundle-indexed", work / "bundle-control"
    for out, path in ((pristine, indexed_path), (control, write_jsonl(work / "all.jsonl", indexed + held))):
        if not (out / "manifest.json").is_file() or json.loads((out / "manifest.json").read_text()).get(
                "models", {}).get("clip", {}).get("name") != str(clip_dir.resolve()):
            run(_vitrine("index", "--catalog", str(path), "--out", str(out), "--clip-model", str(clip_dir),
                         "--quiet", "--force"))
    result: dict = {"catalog": str(catalog), "clip": str(clip_dir), "indexed_items": len(indexed),
                    "held_out_items": len(held), "k": K}
    proc, target = start_server(control, ["--read-only"])
    try:
        recall, missed = self_retrieval(target, held)
        result["control_batch_self_retrieval_of_the_held_out"] = round(recall, 4)
        result["control_missed"] = missed[:20]
    finally:
        stop(proc)

    bundle = work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(pristine, bundle)
    proc, target = start_server(bundle)
    title_rows = [r for r in indexed if r.get("image")]
    title_rows = [r for r in title_rows if r["id"] in set(_order([r["id"] for r in title_rows], "title-only")[:TITLE_ONLY])]
    try:
        result["batch_indexed_self_retrieval"] = round(self_retrieval(target, title_rows)[0], 4)
        t0 = time.perf_counter()
        run(_vitrine("upsert", "--target", target, "--catalog", str(held_path)))
        result["upsert_s"] = round(time.perf_counter() - t0, 1)
        recall, missed = self_retrieval(target, held)
        result["live_self_retrieval"] = round(recall, 4)
        result["live_missed"] = missed[:20]
        # A title-only upsert of indexed items (the image stays the same location): their vectors are kept.
        with CatalogClient(target) as client:
            stored = [item_from_dict(s) for s in client.get([r["id"] for r in title_rows])]
            list(client.upsert_items([Item(**{**it.__dict__, "title": it.title + " (renamed)"}) for it in stored]))
        result["title_only_self_retrieval"] = round(self_retrieval(target, title_rows)[0], 4)
    finally:
        stop(proc)
    proc, target = start_server(bundle)
    try:
        result["after_restart_live_self_retrieval"] = round(self_retrieval(target, held)[0], 4)
        result["after_restart_title_only_self_retrieval"] = round(self_retrieval(target, title_rows)[0], 4)
    finally:
        stop(proc)
    # The same bundle without the photo-attribute boost: what the live vectors alone give (a diagnosis, not a default).
    no_boost = work / "no_boost.toml"
    no_boost.write_text("[search]\nattribute_bonus = 0.0\n")
    proc, target = start_server(bundle, ["--read-only", "--config", str(no_boost)])
    try:
        result["without_attribute_boost_live_self_retrieval"] = round(self_retrieval(target, held)[0], 4)
    finally:
        stop(proc)

    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(pristine, bundle)
    result["kill_9"] = kill_during_writes(bundle, held, args.seed, no_boost)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result.update(commit=commit, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=f"{os.cpu_count()} CPUs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
