"""`vitrine demo`: index a catalog, start the server in its own process, and query it from this one."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from server.client import VitrineClient

DEFAULT_DATA = Path("../shared/data/fashion")
COLORS = ["Black", "White", "Navy Blue", "Red", "Green", "Grey", "Pink", "Brown", "Yellow", "Purple"]
ARTICLES = [("Tshirts", "Apparel > Topwear > Tshirts"), ("Shirts", "Apparel > Topwear > Shirts"),
            ("Jeans", "Apparel > Bottomwear > Jeans"), ("Casual Shoes", "Footwear > Shoes > Casual Shoes"),
            ("Handbags", "Accessories > Bags > Handbags"), ("Watches", "Accessories > Watches > Watches"),
            ("Caps", "Accessories > Headwear > Caps"), ("Dresses", "Apparel > Dress > Dresses")]
BRANDS = ["Nimbus", "Orla", "Kestrel", "Tamarind", "Vela", "Quill"]
STYLES = ["Solid", "Striped", "Printed", "Checked", "Classic", "Slim Fit"]


def generate_catalog(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Writes a small synthetic fashion catalog (text only) so the demo works offline on any machine."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            color, (article, category), gender = rng.choice(COLORS), rng.choice(ARTICLES), rng.choice(["Men", "Women"])
            title = f"{rng.choice(BRANDS)} {gender} {rng.choice(STYLES)} {color} {article}"
            item = {"id": f"demo-{i}", "title": title, "category": category,
                    "attributes": {"gender": gender, "color": color, "article_type": article},
                    "price": round(rng.uniform(5, 120), 2)}
            f.write(json.dumps(item) + "\n")
    return path


def _vitrine(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", *args]


def start_server(bundle: Path, extra: list[str] | None = None, timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """Starts `vitrine serve --port 0` and returns the process and its HOST:PORT once it prints it."""
    proc = subprocess.Popen(_vitrine("serve", "--bundle", str(bundle), "--port", "0", *(extra or [])),
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split("listening on ", 1)[1].strip()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
    proc.kill()
    raise RuntimeError("server did not start listening in time")


def _show(title: str, client: VitrineClient, **kwargs: object) -> None:
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


def run_demo(data: str | None, workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data) if data else DEFAULT_DATA
    synthetic = not (data_dir / "catalog.jsonl").is_file()
    if not synthetic:
        catalog = data_dir / "catalog.jsonl"
        print(f"catalog: {catalog} (real fashion data)")
    else:
        catalog = generate_catalog(workdir / "catalog.jsonl")
        print(f"catalog: {data_dir} not found; generated {catalog} (400 synthetic items)")
    bundle = workdir / f"bundle-{catalog.parent.name}"
    manifest = bundle / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("catalog") != str(catalog.resolve()):
        print(f"indexing into {bundle} ...", flush=True)
        subprocess.run(_vitrine("index", "--catalog", str(catalog), "--out", str(bundle), "--force"), check=True)
    else:
        print(f"reusing bundle {bundle}")
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
            _show("bad request: unknown filter field", client, text="shirt", filters={"colour_typo": "Red"})
            _show("bad request: k too large", client, text="shirt", k=100000)
            _show("bad request: image bytes that are not an image", client, image=b"this is not a picture")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        print(f"\nserver stopped (exit status {proc.returncode})")
    return 0
