"""`vitrine demo`: index a catalog, start the server in its own process, and query it from this one."""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from vitrine.serving.process import start_serve, start_server  # noqa: F401 - the benches start servers through here

if TYPE_CHECKING:
    from vitrine.server.client import VitrineClient

DEFAULT_DATA = Path("../shared/data/fashion")
COLORS = ["Black", "White", "Navy Blue", "Red", "Green", "Grey", "Pink", "Brown", "Yellow", "Purple"]
ARTICLES = [("Tshirts", "Apparel > Topwear > Tshirts"), ("Shirts", "Apparel > Topwear > Shirts"),
            ("Jeans", "Apparel > Bottomwear > Jeans"), ("Casual Shoes", "Footwear > Shoes > Casual Shoes"),
            ("Handbags", "Accessories > Bags > Handbags"), ("Watches", "Accessories > Watches > Watches"),
            ("Caps", "Accessories > Headwear > Caps"), ("Dresses", "Apparel > Dress > Dresses")]
BRANDS = ["Nimbus", "Orla", "Kestrel", "Tamarind", "Vela", "Quill"]
STYLES = ["Solid", "Striped", "Printed", "Checked", "Classic", "Slim Fit"]


RGB = {"Black": (20, 20, 20), "White": (235, 235, 235), "Navy Blue": (20, 30, 90), "Red": (200, 30, 30),
       "Green": (30, 140, 50), "Grey": (128, 128, 128), "Pink": (240, 150, 180), "Brown": (120, 70, 30),
       "Yellow": (230, 210, 40), "Purple": (110, 40, 140)}


def draw_product(article: str, color: str, size: int = 96, seed: int = 0) -> "Image.Image":
    """A crude product photo: the article type decides the shape, the colour fills it."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(img)
    c, s, j = RGB[color], size, rng.randint(-4, 4)
    shapes = {
        "Tshirts": lambda: d.polygon([(20 + j, 20), (76, 20), (90, 40), (72, 44), (72, 86), (24, 86), (24, 44), (6, 40)], fill=c),
        "Shirts": lambda: (d.rectangle([24, 16 + j, 72, 88], fill=c), d.line([(48, 16), (48, 88)], fill=(255, 255, 255), width=2)),
        "Jeans": lambda: d.polygon([(28, 10), (68, 10), (74, 90), (54, 90), (48, 40), (42, 90), (22, 90)], fill=c),
        "Casual Shoes": lambda: d.polygon([(10, 60 + j), (50, 50), (86, 62), (86, 76), (10, 76)], fill=c),
        "Handbags": lambda: (d.rectangle([20, 40, 76, 84], fill=c), d.arc([30, 18, 66, 56], 180, 360, fill=c, width=5)),
        "Watches": lambda: (d.rectangle([42, 6, 54, 90], fill=(60, 60, 60)), d.ellipse([30, 32 + j, 66, 68 + j], fill=c)),
        "Caps": lambda: (d.pieslice([18, 26, 78, 86], 180, 360, fill=c), d.rectangle([48, 54, 92, 60], fill=c)),
        "Dresses": lambda: d.polygon([(38, 8), (58, 8), (62, 30), (82, 90), (14, 90), (34, 30)], fill=c),
    }
    shapes[article]()
    return img.resize((s, s))


def generate_catalog(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Writes a small synthetic fashion catalog with drawn product photos, so the demo works offline anywhere."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "images").mkdir(exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            color, (article, category), gender = rng.choice(COLORS), rng.choice(ARTICLES), rng.choice(["Men", "Women"])
            title = f"{rng.choice(BRANDS)} {gender} {rng.choice(STYLES)} {color} {article}"
            item = {"id": f"demo-{i}", "title": title, "category": category,
                    "attributes": {"gender": gender, "color": color, "article_type": article},
                    "price": round(rng.uniform(5, 120), 2), "image": f"images/demo-{i}.png"}
            draw_product(article, color, seed=i).save(path.parent / "images" / f"demo-{i}.png")
            f.write(json.dumps(item) + "\n")
    return path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="index a catalog, serve it and run example queries")
    p.add_argument("--data", default=None, help="fashion data folder (default ../shared/data/fashion if present)")
    p.add_argument("--workdir", default=".cache/demo")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.data, Path(args.workdir))


def _vitrine(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitrine.cli.main", *args]


def _show(title: str, client: VitrineClient, **kwargs: object) -> None:
    import grpc

    print(f"\n=== {title}")
    print(f"    request: {json.dumps({k: v for k, v in kwargs.items() if k != 'image'})}")
    try:
        result = client.search(fields=["title", "price", "category"], **kwargs)  # type: ignore[arg-type]
    except grpc.RpcError as exc:
        print(f"    -> {exc.code().name}: {exc.details()}")
        return
    for rank, hit in enumerate(result.hits, start=1 + int(kwargs.get("offset", 0))):  # type: ignore[arg-type]
        src = " ".join(f"{s}={v:.3f}" for s, v in sorted(hit.sources.items()))
        price = hit.fields.get("price")
        price_s = f"{price:>7.2f}" if isinstance(price, (int, float)) else "      -"
        print(f"    {rank:>2}. {hit.id:>10}  {hit.score:.3f}  {price_s}  {hit.fields.get('title', '')[:55]:<55}  [{src}]")
    print(f"    ({result.total_candidates} candidates, {result.took_ms:.1f} ms, bundle {result.bundle_version})")


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _say_clip_check(manifest: dict) -> None:
    """What the indexer measured of the CLIP, and so whether CLIP text joins the text queries below."""
    from vitrine.indexer.manifest import Manifest
    from vitrine.ranking.pipeline import SearchConfig, clip_text_trust

    check = manifest["models"]["clip"]["check"]
    trusted, why = clip_text_trust(Manifest.from_dict(manifest), SearchConfig().clip_text_min_recall)
    print(f"CLIP check by the indexer: {check['how']}")
    print(f"  -> CLIP text {'joins' if trusted else 'stays out of'} text queries: {why}. "
          "Photo and composed queries use CLIP either way.")


def run_demo(data: str | None, workdir: Path) -> int:
    from vitrine.server.client import VitrineClient

    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data) if data else DEFAULT_DATA
    synthetic = not (data_dir / "catalog.jsonl").is_file()
    if not synthetic:
        catalog = data_dir / "catalog.jsonl"
        print(f"catalog: {catalog} (real fashion data)")
    else:
        catalog = generate_catalog(workdir / "catalog.jsonl")
        print(f"catalog: {data_dir} not found; generated {catalog} (400 synthetic items)")
    clip_dir = workdir / f"clip-{catalog.parent.name}"
    if not (clip_dir / "model.safetensors").is_file() or "heldout_ids" not in _json(clip_dir / "training.json"):
        # No CLIP weights can be downloaded here: learn a small one from the catalog's own photos, once.
        print(f"training a small CLIP on the catalog's photos into {clip_dir} (cached; a few minutes on a CPU) ...", flush=True)
        subprocess.run(_vitrine("train", "clip", "--catalog", str(catalog), "--out", str(clip_dir), "--epochs", "3",
                                "--max-pairs", "2500", "--holdout", "200", "--quiet"), check=True)
    bundle = workdir / f"bundle-{catalog.parent.name}"
    manifest = bundle / "manifest.json"
    # A bundle from before the CLIP check (no models.clip.check) is rebuilt, so the demo shows today's behaviour.
    built = _json(manifest)
    if built.get("catalog") != str(catalog.resolve()) or "check" not in built.get("models", {}).get("clip", {}):
        print(f"indexing into {bundle} ...", flush=True)
        subprocess.run(_vitrine("index", "--catalog", str(catalog), "--out", str(bundle), "--force",
                                "--clip-model", str(clip_dir)), check=True)
    else:
        print(f"reusing bundle {bundle}")
    _say_clip_check(_json(manifest))
    print("starting the server ...", flush=True)
    proc, target = start_server(bundle)
    print(f"server is listening on {target} (pid {proc.pid}); querying it from this process")
    try:
        with VitrineClient(target) as client:
            _show("text: 'navy blue shirt for men'", client, text="navy blue shirt for men", k=5)
            _show("text, paraphrased: 'azure purse women's'", client, text="azure purse women's", k=5)
            if synthetic:
                _show("text + filter color=Black + price up to 40", client, text="casual shoes", k=5,
                      filters={"color": "Black"}, price_max=40.0)
            else:
                _show("text + filters color=Black, gender=Women", client, text="casual shoes", k=5,
                      filters={"color": "Black", "gender": "Women"})
            _show("page 2 of 'watch' (offset 5)", client, text="watch", k=5, offset=5)
            _show("BM25 only, RRF", client, text="red dress", k=3, sources=["bm25"], fusion="rrf")
            photo_item = next(json.loads(line) for line in open(catalog, encoding="utf-8") if '"image"' in line)
            photo = (catalog.parent / photo_item["image"]).read_bytes()
            print(f"\n(query photo: item {photo_item['id']}, {photo_item.get('title', '')!r})")
            _show("photo query (the item itself excluded)", client, image=photo, k=5, exclude_ids=[photo_item["id"]])
            _show("composed: this photo + 'the same but in red'", client, image=photo, text="the same but in red", k=5,
                  exclude_ids=[photo_item["id"]])
            _show("bad request: unknown filter field", client, text="shirt", filters={"colour_typo": "Red"})
            _show("bad request: k too large", client, text="shirt", k=100000)
            _show("bad request: image bytes that are not an image", client, image=b"this is not a picture")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        print(f"\nserver stopped (exit status {proc.returncode})")
    return 0
