"""A newcomer's first hour, scripted (issue 23): an own 40-item catalog with drawn photos, train a small CLIP, index,
serve, search, upsert an item with two photos and find it by either, get/delete/snapshot, a result page (a browse
with facets and a price sort, highlights, more like this; issue 26), grading results on the /ui workbench, exporting
the grades and evaluating on them (issue 27), then the bad inputs a new user meets, each of
which must be answered by one line naming the cause, with no traceback anywhere.

    .venv/bin/python bench/newcomer.py [--workdir DIR] [--keep]

Needs nothing beside the clone (no ../shared/data). Prints a transcript of every command and its output; writes
bench/results/newcomer.json (per-step pass/fail, the photo query's rank, bad inputs answered by one line, tracebacks
seen) and prints it as the last line. Exit 1 when any step fails.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

# (product, category, material, gender) — each drawn with its own shape; 8 products x 5 colours = 40 items.
PRODUCTS = [("T-Shirt", "Apparel > Topwear > T-Shirts", "Cotton", "Men"),
            ("Shirt", "Apparel > Topwear > Shirts", "Linen", "Men"),
            ("Jeans", "Apparel > Bottomwear > Jeans", "Denim", "Women"),
            ("Sneakers", "Footwear > Shoes > Sneakers", "Canvas", "Unisex"),
            ("Handbag", "Accessories > Bags > Handbags", "Leather", "Women"),
            ("Watch", "Accessories > Watches", "Steel", "Men"),
            ("Cap", "Accessories > Headwear > Caps", "Cotton", "Unisex"),
            ("Dress", "Apparel > Dresses", "Silk", "Women")]
COLORS = {"Red": (200, 30, 35), "Navy Blue": (25, 35, 100), "Green": (35, 140, 60), "Black": (25, 25, 25),
          "Yellow": (235, 205, 40)}
PATTERNS = ("Solid", "Striped", "Dotted")
NO_PHOTO = {"p-13", "p-22", "p-31"}   # items a shop has not photographed yet
DESCRIPTION_ONLY = "p-39"             # an item with nothing but a description
NEW_ID, NEW_COLOR = "new-1", (120, 40, 150)
SIZE = 96
LOG_KEYS = ("ts", "level")


# ---------------------------------------------------------------------------------------------- the shop's data

def _shape(draw: Any, product: str, jitter: int) -> None:
    """Draws the product's silhouette in white on a mask (96x96 coordinates)."""
    j, w = jitter, 255
    shapes = {
        "T-Shirt": lambda: draw.polygon([(20 + j, 18), (76, 18), (92, 40), (72, 46), (72, 88), (24, 88), (24, 46),
                                         (4, 40)], fill=w),
        "Shirt": lambda: draw.rectangle([24, 14 + j, 72, 90], fill=w),
        "Jeans": lambda: draw.polygon([(26, 8), (70, 8), (76, 90), (54, 90), (48, 38), (42, 90), (20, 90)], fill=w),
        "Sneakers": lambda: draw.polygon([(8, 58 + j), (46, 46), (88, 60), (88, 78), (8, 78)], fill=w),
        "Handbag": lambda: (draw.rectangle([18, 40, 78, 86], fill=w), draw.arc([30, 14, 66, 58], 180, 360, fill=w,
                                                                                    width=6)),
        "Watch": lambda: (draw.rectangle([42, 4, 54, 92], fill=w), draw.ellipse([28, 30 + j, 68, 70 + j], fill=w)),
        "Cap": lambda: (draw.pieslice([16, 24, 80, 88], 180, 360, fill=w), draw.rectangle([48, 54, 94, 62], fill=w)),
        "Dress": lambda: draw.polygon([(38, 6), (58, 6), (62, 30), (84, 92), (12, 92), (34, 30)], fill=w),
        "Scarf": lambda: draw.polygon([(6, 20 + j), (26, 6), (90, 72), (70, 90)], fill=w),
    }
    shapes[product]()


def draw_photo(product: str, rgb: tuple[int, int, int], pattern: str, seed: int) -> Any:
    """A product photo: the product's silhouette in its colour and pattern on a slightly tinted background."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    tint = rng.randint(235, 252)
    photo = Image.new("RGB", (SIZE, SIZE), (tint, tint, rng.randint(230, 252)))
    fill = Image.new("RGB", (SIZE, SIZE), rgb)
    ink = tuple(min(255, c + 90) for c in rgb) if sum(rgb) < 300 else tuple(max(0, c - 90) for c in rgb)
    d = ImageDraw.Draw(fill)
    if pattern == "Striped":
        for x in range(-SIZE, SIZE, 12):
            d.line([(x, 0), (x + SIZE, SIZE)], fill=ink, width=4)
    elif pattern == "Dotted":
        for y in range(4, SIZE, 14):
            for x in range(4 + (y // 14 % 2) * 7, SIZE, 14):
                d.ellipse([x, y, x + 5, y + 5], fill=ink)
    mask = Image.new("L", (SIZE, SIZE), 0)
    _shape(ImageDraw.Draw(mask), product, rng.randint(-4, 4))
    photo.paste(fill, (0, 0), mask)
    return photo


def write_catalog(folder: Path, seed: int = 23) -> Path:
    """The shop's 40 items as catalog.jsonl with photos under images/: three items without a photo and one with
    only a description."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(40):
        (product, category, material, gender), color = PRODUCTS[i % 8], list(COLORS)[i // 8]
        pattern = PATTERNS[rng.randrange(3)] if product not in ("Watch", "Sneakers") else "Solid"
        item: dict[str, Any] = {
            "id": f"p-{i}", "title": f"{color} {material} {product}", "category": category,
            "description": f"{pattern} {color.lower()} {product.lower()} in {material.lower()}, for {gender.lower()}.",
            "attributes": {"color": color, "gender": gender, "material": material, "pattern": pattern,
                           "article_type": product},
            "price": round(rng.uniform(9, 149), 2)}
        if item["id"] == DESCRIPTION_ONLY:
            item = {"id": item["id"], "description": "Gift card for any item in the shop, valid for one year."}
        elif item["id"] not in NO_PHOTO:
            draw_photo(product, COLORS[color], pattern, seed=i).save(folder / "images" / f"{item['id']}.png")
            item["image"] = f"images/{item['id']}.png"
        lines.append(json.dumps(item))
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_new_item(folder: Path) -> tuple[Path, Path]:
    """new.jsonl with one item the index has never seen, whose photo is a local JPEG (relative to the file)."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    photo = folder / "photos" / "scarf.jpg"
    draw_photo("Scarf", NEW_COLOR, "Striped", seed=99).save(photo, quality=92)
    # A second photo of the same scarf: the first one mirrored and cropped (issue 26, several photos per product).
    from PIL import Image, ImageOps
    with Image.open(photo) as im:
        w, h = im.size
        ImageOps.mirror(im).crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h)).save(
            folder / "photos" / "scarf-back.jpg", quality=92)
    item = {"id": NEW_ID, "title": "Purple Striped Silk Scarf", "category": "Accessories > Scarves",
            "attributes": {"color": "Purple", "gender": "Women", "material": "Silk", "pattern": "Striped",
                           "article_type": "Scarf"},
            "price": 39.0, "image": "photos/scarf.jpg", "images": ["photos/scarf-back.jpg"]}
    path = folder / "new.jsonl"
    path.write_text(json.dumps(item) + "\n", encoding="utf-8")
    return path, photo


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- running commands

@dataclass
class Run:
    """One command as a user typed it, and everything it printed."""

    argv: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    def user_lines(self) -> list[str]:
        """Non-blank lines a person reads: everything except the JSON log lines ({"ts", "level", ...})."""
        return [ln for ln in self.text.splitlines() if ln.strip() and not is_log_line(ln)]


def is_log_line(line: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and all(k in obj for k in LOG_KEYS)


def traceback_lines(text: str) -> list[str]:
    """Lines that are (or carry) a traceback: a raw one, or a JSON log line with an exception attached."""
    found = []
    for line in text.splitlines():
        if "Traceback" in line:
            found.append(line)
        elif is_log_line(line) and ({"exc", "exc_info", "stack", "stack_info"} & set(json.loads(line))):
            found.append(line)
    return found


@dataclass
class Session:
    """The newcomer's terminal: runs commands, keeps the transcript, the steps and every traceback seen."""

    work: Path
    steps: list[dict] = field(default_factory=list)
    bad_inputs: list[dict] = field(default_factory=list)
    tracebacks: list[dict] = field(default_factory=list)
    servers: list[tuple[str, subprocess.Popen]] = field(default_factory=list)   # (name, process)

    def vitrine(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300.0) -> Run:
        argv = [sys.executable, "-m", "vitrine.cli.main", *args]
        prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        print(f"\n$ {prefix + ' ' if prefix else ''}vitrine {shlex.join(args)}", flush=True)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=self.work,
                                  env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
            run = Run(list(args), done.returncode, done.stdout, done.stderr, time.perf_counter() - t0)
        except subprocess.TimeoutExpired as exc:
            out, err = (exc.stdout or b""), (exc.stderr or b"")
            run = Run(list(args), None, out if isinstance(out, str) else out.decode(errors="replace"),
                      err if isinstance(err, str) else err.decode(errors="replace"), time.perf_counter() - t0)
        show(run.text)
        print(f"  -> exit {run.rc if run.rc is not None else f'none: still running after {timeout_s:.0f} s, killed'}"
              f" ({run.seconds:.1f} s)", flush=True)
        self.scan(f"vitrine {' '.join(args[:1])}", run.text)
        return run

    def scan(self, where: str, text: str) -> None:
        for line in traceback_lines(text):
            self.tracebacks.append({"where": where, "line": line[:300]})

    def serve(self, name: str, *args: str, timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
        """`vitrine serve --port 0 ARGS` in the background; returns it and its HOST:PORT once it says so."""
        argv = ["serve", "--port", "0", *args]
        print(f"\n$ vitrine {shlex.join(argv)} &", flush=True)
        err = open(self.work / f"{name}.stderr", "w", encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "vitrine.cli.main", *argv], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=self.work, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err.close()
        self.servers.append((name, proc))
        deadline = time.monotonic() + timeout_s
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                target = line.split("listening on ", 1)[1].strip()
                print(f"  {line.strip()} (pid {proc.pid})", flush=True)
                return proc, target
            if not line and proc.poll() is not None:
                break
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        show((self.work / f"{name}.stderr").read_text(encoding="utf-8", errors="replace"))
        raise RuntimeError(f"vitrine serve ({name}) exited with status {proc.returncode} before listening")

    def stop_servers(self) -> None:
        for name, proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            text = (self.work / f"{name}.stderr").read_text(encoding="utf-8", errors="replace")
            self.scan(f"server {name}", text)
            print(f"\nserver {name} (pid {proc.pid}) stopped, exit {proc.returncode}; its stderr: "
                  f"{len(text.splitlines())} lines, {len(traceback_lines(text))} carrying a traceback")
        self.servers.clear()

    def step(self, name: str, ok: bool, **detail: Any) -> bool:
        self.steps.append({"step": name, "ok": bool(ok), **detail})
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def bad_input(self, n: int, name: str, checks: list[dict]) -> None:
        ok = all(c["ok"] for c in checks)
        self.bad_inputs.append({"n": n, "input": name, "ok": ok, "checks": checks})
        print(f"  [{'PASS' if ok else 'FAIL'}] bad input {n}: {name}", flush=True)


def show(text: str, limit: int = 14) -> None:
    lines = text.rstrip("\n").splitlines()
    for line in lines[:limit]:
        print(f"  | {line[:240]}")
    if len(lines) > limit:
        print(f"  | ... {len(lines) - limit} more lines")


def cli(run: Run) -> str:
    return "vitrine " + shlex.join(run.argv)


def verdict(check: dict) -> dict:
    """Prints one check's outcome under its command, and returns it."""
    print(f"    {'ok ' if check['ok'] else 'BAD'} {check['check']}" + ("" if check["ok"] else f" ({check.get('why', '')})"),
          flush=True)
    return check


def one_line(run: Run, rcs: tuple[int, ...], words: list[str], what: str) -> dict:
    """The check behind every bad input: the expected exit status, exactly one line a person reads, naming the cause
    (every word in `words`, case-insensitive), and no traceback."""
    lines = run.user_lines()
    missing = [w for w in words if w.lower() not in (lines[0].lower() if len(lines) == 1 else "")]
    tb = traceback_lines(run.text)
    check = {"check": what, "ok": run.rc in rcs and len(lines) == 1 and not missing and not tb, "command": cli(run),
             "exit": run.rc, "lines": lines[:6]}
    if not check["ok"]:
        why = [f"exit {run.rc}, expected {'/'.join(map(str, rcs))}" if run.rc not in rcs else "",
               f"{len(lines)} lines a person reads, expected 1" if len(lines) != 1 else "",
               f"the line does not name {missing}" if missing and len(lines) == 1 else "",
               f"{len(tb)} traceback line(s)" if tb else ""]
        check["why"] = "; ".join(w for w in why if w)
    return verdict(check)


def rpc_line(call: Any, label: str, code: str, words: list[str], what: str) -> dict:
    """A Python-client call that must fail with status `code` and a one-line detail naming the cause."""
    import grpc

    print(f"\n>>> {label}", flush=True)
    try:
        line, got = f"returned {call()!r} (no error)", "OK"
    except grpc.RpcError as exc:
        got, line = exc.code().name, f"{exc.code().name}: {exc.details()}"
    print(f"  | {line}")
    missing = [w for w in words if w.lower() not in line.lower()]
    check = {"check": what, "ok": got == code and "\n" not in line and not missing and not traceback_lines(line),
             "command": label, "status": got, "lines": [line]}
    if not check["ok"]:
        check["why"] = f"expected {code} naming {words}, got {got}" + (f" not naming {missing}" if missing else "")
    return verdict(check)


def hits_of(run: Run) -> list[dict]:
    """`vitrine search` prints one JSON object per hit on stdout."""
    hits = []
    for line in run.out.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "id" in obj:
            hits.append(obj)
    return hits


def rank_of(item_id: str, hits: list[dict]) -> int | None:
    return next((r for r, h in enumerate(hits, 1) if h["id"] == item_id), None)


def summary_of(run: Run) -> dict:
    """`vitrine search`'s summary (total_candidates, request_id, ...) on stderr."""
    for line in run.err.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "request_id" in obj:
            return obj
    return {}


# ---------------------------------------------------------------------------------------------- the first hour

def build(s: Session, ctx: dict) -> bool:
    """`vitrine train clip` on the shop's photos, then `vitrine index` with that CLIP; True when both worked."""
    print("\n##### the happy path: own catalog -> CLIP -> bundle -> server -> queries and live writes")
    catalog, bundle, clip = ctx["catalog"], ctx["bundle"], s.work / "clip"
    # The flags `vitrine demo` trains its demo CLIP with (cli/demo.py), at a small image size: a 40-item shop.
    run = s.vitrine("train", "clip", "--catalog", str(catalog), "--out", str(clip), "--epochs", "3", "--max-pairs",
                    "2500", "--holdout", "200", "--image-size", "64", "--quiet", timeout_s=900)
    if not s.step("train clip", run.rc == 0 and (clip / "model.safetensors").is_file(), seconds=round(run.seconds, 1)):
        return False
    run = s.vitrine("index", "--catalog", str(catalog), "--out", str(bundle), "--clip-model", str(clip), "--quiet",
                    timeout_s=900)
    models = json.loads((bundle / "manifest.json").read_text()).get("models", {}) if run.rc == 0 else {}
    return s.step("index", run.rc == 0 and "clip" in models, seconds=round(run.seconds, 1), models=sorted(models))


def serve_and_query(s: Session, ctx: dict) -> None:
    """Serve the bundle; search by text and photo; upsert a new item with a photo and find it by that photo; get,
    delete, snapshot. Leaves the writer running in ctx (target, proc) for the bad inputs."""
    try:
        ctx["proc"], ctx["target"] = proc, target = s.serve("writer", "--bundle", str(ctx["bundle"]))
    except RuntimeError as exc:
        s.step("serve", False, error=str(exc))
        return
    s.step("serve", True, target=target, pid=proc.pid)

    run = s.vitrine("search", "--target", target, "--text", "red cotton t-shirt", "--k", "5", "--fields", "title")
    hits = hits_of(run)
    ctx["request_id"] = summary_of(run).get("request_id", "")   # for Feedback, below
    s.step("text search 'red cotton t-shirt' finds the red t-shirt (top 3)", run.rc == 0 and rank_of("p-0", hits[:3])
           is not None, top=[h.get("fields", {}).get("title", h["id"]) for h in hits[:3]])
    run = s.vitrine("search", "--target", target, "--text", "gift card", "--k", "3")
    s.step("text search 'gift card' finds the description-only item", rank_of(DESCRIPTION_ONLY, hits_of(run)) == 1,
           rank=rank_of(DESCRIPTION_ONLY, hits_of(run)))
    photo = ctx["catalog"].parent / "images" / "p-11.png"   # the green linen shirt's own photo
    run = s.vitrine("search", "--target", target, "--image", str(photo), "--k", "10")
    s.step("photo query with an indexed item's photo finds it (top 10)", rank_of("p-11", hits_of(run)) is not None,
           rank=rank_of("p-11", hits_of(run)))

    run = s.vitrine("upsert", "--target", target, "--catalog", str(ctx["new_jsonl"]))
    s.step("upsert a new item with a local photo", run.rc == 0 and f"ack {NEW_ID}" in run.out)
    # An ack means durable; BM25 sees a write at Tantivy's next commit, within 1 s (README, live updates), as a
    # search engine's refresh interval. The vectors are searchable at once.
    time.sleep(1.0)
    run = s.vitrine("search", "--target", target, "--image", str(ctx["new_photo"]), "--k", "10")
    ctx["photo_rank"] = rank = rank_of(NEW_ID, hits_of(run))
    s.step("photo query with the new item's photo finds it (top 10)", rank is not None, rank=rank)
    run = s.vitrine("search", "--target", target, "--image", str(ctx["new_photo"].with_name("scarf-back.jpg")),
                    "--k", "10")
    s.step("photo query with the new item's second photo finds it (top 10)", rank_of(NEW_ID, hits_of(run)) is not None,
           rank=rank_of(NEW_ID, hits_of(run)))
    run = s.vitrine("search", "--target", target, "--text", "purple silk scarf", "--k", "5")
    s.step("text query finds the new item", rank_of(NEW_ID, hits_of(run)) == 1, rank=rank_of(NEW_ID, hits_of(run)))
    run = s.vitrine("get", "--target", target, "--ids", f"{NEW_ID},p-0")
    got = [json.loads(ln) for ln in run.out.splitlines() if ln.startswith("{")]
    s.step("get the new item and an indexed one", run.rc == 0 and [g.get("id") for g in got] == [NEW_ID, "p-0"],
           titles=[g.get("title") for g in got])

    run = s.vitrine("delete", "--target", target, "--ids", "p-5")
    s.step("delete an item", run.rc == 0 and '"deleted": 1' in run.out)
    run = s.vitrine("search", "--target", target, "--text", "red steel watch", "--k", "10")
    s.step("a deleted item is gone from search", run.rc == 0 and rank_of("p-5", hits_of(run)) is None)
    snap = s.work / "snapshot"
    run = s.vitrine("snapshot", "--target", target, "--out", str(snap))
    items = json.loads(run.out.strip().splitlines()[-1]).get("items") if run.rc == 0 and run.out.strip() else None
    s.step("snapshot (40 items: 40 indexed + 1 upserted - 1 deleted)", run.rc == 0 and (snap / "manifest.json").is_file()
           and items == 40, items=items)


def shop_page(s: Session, ctx: dict) -> None:
    """What a result page needs: a browse with facets and a sort, highlights, more like this (issue 26)."""
    target = ctx["target"]
    catalog = [json.loads(x) for x in ctx["catalog"].read_text().splitlines()]
    shirts = [c for c in catalog if c.get("attributes", {}).get("article_type") == "T-Shirt"]
    run = s.vitrine("search", "--target", target, "--any", "article_type=T-Shirt", "--sort", "price", "--facet", "color",
                    "--k", "3", "--fields", "price")
    hits = hits_of(run)
    facets = next((json.loads(x)["facets"] for x in run.out.splitlines() if x.startswith('{"facets"')), [])
    counts = {v["value"]: v["count"] for v in facets[0]["values"]} if facets else {}
    want = Counter(c["attributes"]["color"] for c in shirts)
    cheapest = [c["id"] for c in sorted(shirts, key=lambda c: c["price"])[:3]]
    s.step("browse the t-shirts by price, with colour counts", run.rc == 0 and [h["id"] for h in hits] == cheapest
           and counts == dict(want), top=[h["id"] for h in hits], colours=counts)
    run = s.vitrine("search", "--target", target, "--text", "red cotton t-shirts", "--highlight", "--k", "3")
    marked = [m for h in hits_of(run) for m in h.get("highlights", [])]
    s.step("highlights mark the query's words (after stemming)", run.rc == 0 and any("<b>" in m for m in marked),
           first=marked[:1])
    run = s.vitrine("search", "--target", target, "--like", "p-0", "--k", "5")
    s.step("more like this item leaves the item out", run.rc == 0 and hits_of(run) and rank_of("p-0", hits_of(run))
           is None, top=[h["id"] for h in hits_of(run)[:3]])


def feedback(s: Session, ctx: dict) -> list[dict]:
    """1. Feedback on a server without a click log, and for an unknown request id (no CLI command: the Python client)."""
    from vitrine.server.client import VitrineClient

    target, rid = ctx["target"], ctx.get("request_id", "")
    with VitrineClient(target) as client:
        return [rpc_line(lambda: client.feedback(rid, ["p-0"]), f"VitrineClient({target!r}).feedback({rid!r}, ['p-0'])",
                         "FAILED_PRECONDITION", ["click_log"],
                         "feedback for a served request, no click log: FAILED_PRECONDITION saying how to enable it"),
                rpc_line(lambda: client.feedback("no-such-request", ["p-0"]),
                         f"VitrineClient({target!r}).feedback('no-such-request', ['p-0'])", "NOT_FOUND",
                         ["no-such-request"], "feedback for an unknown request id: NOT_FOUND")]


def shop_fields(s: Session, ctx: dict) -> list[dict]:
    """A range on a text field, a sort on one, a facet of a field the catalog lacks: one line naming each."""
    target = ctx["target"]
    return [one_line(s.vitrine("search", "--target", target, "--text", "shirt", "--range", "color=1..2"), (1, 2),
                     ["where.color", "not a number"], "a range on a text attribute"),
            one_line(s.vitrine("search", "--target", target, "--text", "shirt", "--sort", "material"), (1, 2),
                     ["sort.field", "material"], "a sort on a text attribute"),
            one_line(s.vitrine("search", "--target", target, "--facet", "brand"), (1, 2),
                     ["facets[0].field", "brand"], "a facet of a field the catalog does not have")]


def unknown_field(s: Session, ctx: dict) -> list[dict]:
    """2. A catalog with an unknown field: one warning line with the count; --strict refuses it."""
    catalog, bad = ctx["catalog"], ctx["bad"]
    rows = [json.loads(ln) for ln in catalog.read_text().splitlines()[:6]]
    for r in rows[:4]:
        r["colour"] = r.get("attributes", {}).get("color", "Red")
    extra = write_jsonl(catalog.parent / "extra-field.jsonl", rows)   # beside catalog.jsonl, so its photos resolve
    run = s.vitrine("index", "--catalog", str(extra), "--out", str(bad / "extra-field"), "--no-text-vectors", "--quiet")
    logged = [json.loads(ln).get("msg", "") for ln in run.text.splitlines() if is_log_line(ln)]
    warned = [ln for ln in run.user_lines() + logged if '"colour"' in ln]
    check = {"check": "unknown field: one warning line with its count, bundle built", "command": cli(run), "exit": run.rc,
             "ok": run.rc == 0 and len(warned) == 1 and "4" in warned[0] and not traceback_lines(run.text),
             "lines": warned[:3]}
    if not check["ok"]:
        check["why"] = f"exit {run.rc}; {len(warned)} line(s) name the field (expected 1, with the count 4)"
    verdict(check)
    run = s.vitrine("index", "--catalog", str(extra), "--out", str(bad / "extra-field-strict"), "--no-text-vectors",
                    "--quiet", "--strict")
    return [check, one_line(run, (2,), ["colour"], "unknown field with --strict: refused")]


def read_only_get(s: Session, ctx: dict) -> list[dict]:
    """3. Get on a --read-only server (a read), started beside the writer on the same bundle."""
    try:
        _, target = s.serve("read-only", "--bundle", str(ctx["bundle"]), "--read-only")
    except RuntimeError as exc:
        return [verdict({"check": "start a read-only server beside the writer", "ok": False, "why": str(exc)})]
    run = s.vitrine("get", "--target", target, "--ids", "p-0")
    got = [json.loads(ln).get("id") for ln in run.out.splitlines() if ln.startswith("{")]
    return [verdict({"check": "get on a read-only server answers the item", "command": cli(run), "exit": run.rc,
                     "ok": run.rc == 0 and got == ["p-0"] and not traceback_lines(run.text),
                     "lines": run.text.strip().splitlines()[:3]})]


def port_in_use(s: Session, ctx: dict) -> list[dict]:
    """4. A port in use (the writer's)."""
    port = ctx["target"].rsplit(":", 1)[1]
    run = s.vitrine("serve", "--bundle", str(ctx["bundle"]), "--read-only", "--port", port, timeout_s=120)
    return [one_line(run, (2,), [port, "in use"], "port in use")]


def watch_directory(s: Session, ctx: dict) -> list[dict]:
    """5. serve --watch on a bundle directory (not a symlink): refused before it says `listening on`."""
    run = s.vitrine("serve", "--bundle", str(ctx["bundle"]), "--read-only", "--watch", "2", "--port", "0",
                    timeout_s=120)
    return [one_line(run, (2,), ["symlink"], "--watch on a directory")]


def missing_extra(s: Session, ctx: dict) -> list[dict]:
    """6. A client-only install: a server package is missing (simulated with a sitecustomize that hides it)."""
    checks = []
    for module, args in (("faiss", ["index", "--catalog", str(ctx["catalog"]), "--out", str(ctx["bad"] / "no-faiss")]),
                         ("PIL", ["demo", "--workdir", str(ctx["bad"] / "no-pil-demo")])):
        site = ctx["bad"] / f"without-{module}"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None  # not installed\n")
        run = s.vitrine(*args, env={"PYTHONPATH": str(site)}, timeout_s=300)
        checks.append(one_line(run, (2,), [module, "[server]"], f"vitrine {args[0]} without {module}: names the "
                                                                 "[server] extra"))
    return checks


def duplicate_id(s: Session, ctx: dict) -> list[dict]:
    """7. An upsert file with one id twice."""
    dup = write_jsonl(ctx["bad"] / "dup.jsonl", [{"id": "dup-1", "title": "Blue Wool Scarf"},
                                                 {"id": "dup-1", "title": "Grey Wool Scarf"}])
    run = s.vitrine("upsert", "--target", ctx["target"], "--catalog", str(dup))
    return [one_line(run, (2,), ["dup-1"], "duplicate id refused")]


def cheap_price(s: Session, ctx: dict) -> list[dict]:
    """8. A patch whose price is not a number."""
    cheap = write_jsonl(ctx["bad"] / "cheap.jsonl", [{"id": "p-1", "price": "cheap"}])
    run = s.vitrine("upsert", "--target", ctx["target"], "--catalog", str(cheap), "--patch")
    return [one_line(run, (2,), ["price", "cheap"], "bad price names the field")]


def second_writer(s: Session, ctx: dict) -> list[dict]:
    """9. A second writable server on the writer's bundle."""
    run = s.vitrine("serve", "--bundle", str(ctx["bundle"]), "--port", "0", timeout_s=180)
    return [one_line(run, (2,), [str(ctx["bundle"]), str(ctx["proc"].pid)],
                     "second writer refused, naming the bundle and the holder's pid")]


class Page:
    """The workbench as a browser talks to it: a cookie jar, the page's CSRF token, JSON calls (issue 27)."""

    def __init__(self, base: str) -> None:
        import http.cookiejar
        import urllib.request

        self.base, self.csrf = base, ""
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def open(self) -> bool:
        import re

        with self.opener.open(self.base + "/ui", timeout=30) as resp:
            found = re.search(r'name="csrf-token" content="([^"]+)"', resp.read().decode())
        self.csrf = found.group(1) if found else ""
        return bool(found)

    def call(self, path: str, body: dict) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", "x-csrf-token": self.csrf})
        try:
            with self.opener.open(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def workbench(s: Session, ctx: dict) -> None:
    """Grade results on the /ui workbench of a read-only server with API keys, export the grades, and evaluate the
    served bundle on them (issue 27); a key without the judge scope cannot grade."""
    keys = s.work / "judges.json"
    ana = s.vitrine("keys", "create", "--file", str(keys), "--tenant", "default", "--scopes", "search,judge", "--id", "ana")
    carol = s.vitrine("keys", "create", "--file", str(keys), "--tenant", "default", "--scopes", "search", "--id", "carol")
    try:
        proc, target = s.serve("workbench", "--bundle", str(ctx["bundle"]), "--read-only", "--http-port", "0",
                               "--keys", str(keys), "--judgments", str(s.work / "judgments"))
    except RuntimeError as exc:
        s.step("serve the workbench", False, error=str(exc))
        return
    base = proc.stdout.readline().split("http on ", 1)[-1].strip()
    page = Page(base)
    opened = page.open()
    status, _ = page.call("/ui/api/login", {"key": ana.out.strip()})
    if status == 200:
        page.open()
    status, found = page.call("/ui/api/search", {"request": {"text": "navy blue shirt", "k": 10}})
    hits = [h["id"] for h in found.get("hits", [])]
    grades = [page.call("/ui/api/judge", {"text": "navy blue shirt", "item": h, "grade": g})[0]
              for h, g in zip(hits, (2, 1, 0))]
    s.step("the workbench: log in with a judge key, search, grade three results", opened and status == 200
           and grades == [200] * 3, base=base, top=hits[:3])
    looker = Page(base)
    looker.open()
    looker.call("/ui/api/login", {"key": carol.out.strip()})
    looker.open()
    refused = looker.call("/ui/api/judge", {"text": "navy blue shirt", "item": hits[0] if hits else "p-1", "grade": 2})
    s.step("a key without the judge scope cannot grade (403)", refused[0] == 403, answer=refused)
    run = s.vitrine("judgments", "export", "--from", str(s.work / "judgments"), "--out", str(s.work / "judged"))
    s.step("export the grades as qrels", run.rc == 0 and (s.work / "judged" / "qrels" / "test.tsv").is_file())
    run = s.vitrine("eval", "--target", target, "--judgments", str(s.work / "judged"), "--json",
                    env={"VITRINE_AUTH_TOKEN": ana.out.strip()})
    ndcg = next((json.loads(x)["reports"][0]["metrics"].get("ndcg@10") for x in run.out.splitlines()
                 if x.startswith("{")), None)
    s.step("vitrine eval reads the exported grades", run.rc == 0 and ndcg is not None and ndcg > 0, ndcg_at_10=ndcg)


def judgments_nowhere(s: Session, ctx: dict) -> list[dict]:
    """12. Judgments exported from a folder that has none."""
    run = s.vitrine("judgments", "export", "--from", str(ctx["bad"] / "no-judgments"), "--out", str(ctx["bad"] / "j"))
    return [one_line(run, (2,), ["no-judgments"], "judgments export --from a folder without judgments")]


def unreadable(s: Session, ctx: dict) -> list[dict]:
    """10. Unreadable files: a catalog that is a directory, one that does not exist, a photo that is not an image."""
    bad, target = ctx["bad"], ctx["target"]
    run = s.vitrine("index", "--catalog", str(ctx["catalog"].parent / "images"), "--out", str(bad / "from-dir"))
    checks = [one_line(run, (2,), ["images", "directory"], "index --catalog DIRECTORY")]
    run = s.vitrine("upsert", "--target", target, "--catalog", str(bad / "missing.jsonl"))
    checks.append(one_line(run, (2,), ["missing.jsonl"], "upsert --catalog MISSING"))
    (bad / "photos").mkdir(exist_ok=True)
    (bad / "photos" / "broken.jpg").write_text("this is not a JPEG, just text with a .jpg name\n")
    broken = write_jsonl(bad / "broken-photo.jsonl", [{"id": "broken-1", "title": "Orange Wool Scarf",
                                                       "image": "photos/broken.jpg"}])
    run = s.vitrine("upsert", "--target", target, "--catalog", str(broken))
    checks.append(one_line(run, (1, 2), ["broken-1", "image"], "upsert with a .jpg that is not an image: refused "
                                                               "naming the item and field"))
    run = s.vitrine("get", "--target", target, "--ids", "broken-1,dup-1")
    stored = [ln for ln in run.out.splitlines() if ln.startswith("{")]
    checks.append(verdict({"check": "nothing of the refused upserts was stored", "ok": run.rc == 0 and not stored,
                           "command": cli(run), "exit": run.rc, "lines": stored[:3]}))
    return checks


BAD_INPUTS = [("Feedback without a click log / for an unknown request id", feedback),
              ('a catalog with an unknown field "colour"', unknown_field),
              ("Get on a --read-only server", read_only_get),
              ("serve on a port in use", port_in_use),
              ("serve --watch on a non-symlink", watch_directory),
              ("a client-only install's missing extra", missing_extra),
              ("upsert with a duplicate id", duplicate_id),
              ('a patch with price "cheap"', cheap_price),
              ("a second writable server on the same bundle", second_writer),
              ("unreadable files and a bad photo", unreadable),
              ("a range, a sort and a facet on the wrong fields", shop_fields),
              ("judgments exported from a folder that has none", judgments_nowhere)]


def bad_inputs(s: Session, ctx: dict) -> None:
    """The bad inputs of issues 23 and 26, each answered by one line naming the cause (they need the running writer)."""
    print(f"\n##### {len(BAD_INPUTS)} bad inputs, each answered by one line naming the cause")
    ctx["bad"].mkdir(exist_ok=True)
    for n, (name, check) in enumerate(BAD_INPUTS, 1):
        print(f"\n--- bad input {n}: {name}")
        checks = (check(s, ctx) if ctx.get("target") else
                  [{"check": name, "ok": False, "why": "not tried: the happy path did not get a server running"}])
        s.bad_input(n, name, checks)


def after_restart(s: Session, ctx: dict) -> None:
    """Stop the servers and serve the bundle again: the live writes (the photo, the delete) are still there."""
    print("\n##### restart: what was acknowledged is still there")
    s.stop_servers()
    try:
        _, target = s.serve("restarted", "--bundle", str(ctx["bundle"]))
    except RuntimeError as exc:
        s.step("serve again after a restart", False, error=str(exc))
        return
    run = s.vitrine("search", "--target", target, "--image", str(ctx["new_photo"]), "--k", "10")
    ctx["photo_rank_after_restart"] = rank = rank_of(NEW_ID, hits_of(run))
    s.step("after a restart the new item's photo still finds it (top 10)", run.rc == 0 and rank is not None, rank=rank)
    run = s.vitrine("get", "--target", target, "--ids", "p-5,new-1")
    got = [json.loads(ln).get("id") for ln in run.out.splitlines() if ln.startswith("{")]
    s.step("after a restart the delete holds and the new item is stored", run.rc == 0 and got == [NEW_ID], got=got)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="work here instead of a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="vitrine-newcomer-"))
    work.mkdir(parents=True, exist_ok=True)
    s = Session(work)
    t0 = time.perf_counter()
    print(f"newcomer's first hour in {work}")
    catalog = write_catalog(work / "shop")
    new_jsonl, new_photo = write_new_item(work / "new")
    print(f"catalog: {catalog} (40 items, {len(list((work / 'shop' / 'images').iterdir()))} photos); new item: "
          f"{new_jsonl} with {new_photo}")
    run = s.vitrine("--version")
    s.step("vitrine --version", run.rc == 0 and run.out.startswith("vitrine "), version=run.out.strip())
    ctx: dict = {"catalog": catalog, "bundle": work / "bundle", "bad": work / "bad", "new_jsonl": new_jsonl,
                 "new_photo": new_photo}
    try:
        if build(s, ctx):
            serve_and_query(s, ctx)
            if ctx.get("target"):
                shop_page(s, ctx)
                workbench(s, ctx)
        bad_inputs(s, ctx)
        if ctx.get("target"):
            after_restart(s, ctx)
    finally:
        s.stop_servers()
    answered = sum(b["ok"] for b in s.bad_inputs)
    s.step("no traceback anywhere in the output", not s.tracebacks, seen=len(s.tracebacks))
    result = {
        "bench": "newcomer", "passed": all(st["ok"] for st in s.steps) and answered == len(BAD_INPUTS),
        "steps": s.steps, "photo_query_rank": ctx.get("photo_rank"),
        "photo_query_rank_after_restart": ctx.get("photo_rank_after_restart"),
        "bad_inputs_answered_by_one_line": answered, "bad_inputs_goal": len(BAD_INPUTS), "bad_inputs": s.bad_inputs,
        "tracebacks_seen": len(s.tracebacks), "tracebacks": s.tracebacks[:20],
        "seconds": round(time.perf_counter() - t0, 1), **machine()}
    print(f"\n##### summary: {sum(st['ok'] for st in s.steps)}/{len(s.steps)} steps pass; photo query rank "
          f"{ctx.get('photo_rank')}; bad inputs answered by one line: {answered}/{len(BAD_INPUTS)}; tracebacks: {len(s.tracebacks)}")
    for st in s.steps:
        if not st["ok"]:
            print(f"  FAIL step: {st['step']}")
    for b in s.bad_inputs:
        for c in b["checks"]:
            if not c["ok"]:
                print(f"  FAIL bad input {b['n']}: {c['check']}: {c.get('why', '')}\n      {c.get('command', '')}"
                      f"\n      {c.get('lines')}")
    report("newcomer", result)
    if not (args.workdir or args.keep):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
