"""The /ui workbench in headless Chromium on a real fashion bundle (issue 27): how fast the first result grid renders
for text queries, side by side, grading, and the README's screenshots.

    .venv/bin/python bench/workbench.py --bundle BUNDLE [--data ../shared/data] [--queries 30]

BUNDLE is a fashion bundle with text and CLIP vectors (the one bench/images.py builds, BUNDLES/fashion-clip). One
`vitrine serve --read-only --http-port 0 --keys K` process serves it, warmed with every query first (a shop's server
is warm); Chromium (Debian's, `make browser`) logs in with a judge key and runs the first `--queries` fashion
text-literal queries by typing them, reading the page's own measure of each (`data-render-ms`: from the request to the
grid in the DOM, including the search). Then it grades three cards, compares the default column with BM25 alone, drops
a photo for a composed query, and saves screenshots (bench/results/workbench/*.jpg). Last stdout line: the results JSON
(also bench/results/workbench.json).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

from vitrine.ranking.metrics import load_queries  # noqa: E402
from vitrine.server.auth import create_key  # noqa: E402
from vitrine.serving.process import start_serve  # noqa: E402

SHOTS = ROOT / "bench" / "results" / "workbench"


def chromium(profile: str):  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 f"--user-data-dir={profile}", "--window-size=1400,1050"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def shot(driver, name: str) -> str:  # noqa: ANN001
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.jpg"
    Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").save(path, quality=80)
    return str(path.relative_to(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="a fashion bundle with text and CLIP vectors")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--queries", type=int, default=30)
    args = p.parse_args(argv)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    folder = Path(args.data) / "fashion"
    texts = [q["text"] for q in load_queries(folder / "queries" / "text-literal.jsonl")][:args.queries]
    composed = load_queries(folder / "queries" / "composed.jsonl")[0]
    work = Path(tempfile.mkdtemp(prefix="vitrine-wb-"))
    _, key = create_key(work / "keys.json", "default", ["search", "judge"], "bench")
    proc, target = start_serve(["--bundle", args.bundle, "--read-only", "--http-port", "0", "--keys",
                                str(work / "keys.json"), "--judgments", str(work / "judgments")], 300)
    driver = None
    try:
        base = proc.stdout.readline().split("http on ", 1)[1].strip()
        for text in texts:   # a shop's server is warm: encoders, caches
            req = urllib.request.Request(f"{base}/v1/search", data=json.dumps({"text": text, "k": 20}).encode(),
                                         headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
            urllib.request.urlopen(req, timeout=60).read()
        driver = chromium(str(work / "profile"))
        wait = WebDriverWait(driver, 30)
        body = lambda: driver.find_element(By.TAG_NAME, "body")  # noqa: E731
        t0 = time.perf_counter()
        driver.get(f"{base}/ui")
        wait.until(lambda d: d.find_element(By.ID, "key").is_displayed())
        driver.find_element(By.ID, "key").send_keys(key, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "q").is_displayed())
        page_ms = (time.perf_counter() - t0) * 1e3

        def search(text: str) -> float:
            before = body().get_attribute("data-searches") or "0"
            box = driver.find_element(By.ID, "q")
            box.clear()
            box.send_keys(text, Keys.ENTER)
            wait.until(lambda d: (body().get_attribute("data-searches") or "0") != before)
            return float(driver.find_element(By.CSS_SELECTOR, '.column[data-col="A"] .grid').get_attribute("data-render-ms"))

        render = [search(t) for t in texts]
        # Photos on the cards come from the bundle: count the loaded ones on the last grid.
        wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('.column .photo')]"
                                              ".every(i => i.complete)"))
        photos = driver.execute_script("const i = [...document.querySelectorAll('.column .photo')];"
                                       "return [i.length, i.filter(x => x.naturalWidth > 0).length]")
        search("navy blue shirt for men")
        cards = driver.find_elements(By.CSS_SELECTOR, '.column[data-col="A"] .card')
        for card, grade in zip(cards, (2, 2, 1)):
            n = int(body().get_attribute("data-judged") or 0)
            card.find_element(By.CSS_SELECTOR, f'.grade[data-grade="{grade}"]').click()
            wait.until(lambda d: int(body().get_attribute("data-judged") or 0) == n + 1)
        cards[0].find_element(By.CLASS_NAME, "why").click()
        shots = {"search": shot(driver, "search")}
        driver.find_element(By.ID, "compare").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.column[data-col="B"] .card'))
        before = body().get_attribute("data-searches")
        for box in driver.find_elements(By.CSS_SELECTOR, '.column[data-col="B"] .source'):
            if box.get_attribute("value") != "bm25":
                box.click()
        wait.until(lambda d: body().get_attribute("data-searches") != before)
        time.sleep(1.0)
        shots["side_by_side"] = shot(driver, "side-by-side")
        ndcg = [driver.find_element(By.CSS_SELECTOR, f'.column[data-col="{c}"] .ndcg').text for c in "AB"]
        driver.find_element(By.ID, "compare").click()
        before = body().get_attribute("data-searches")
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys(composed.get("text", ""))
        driver.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "photo.jpg", {type: "image/jpeg"}));
            document.querySelector("#drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """, base64.b64encode((folder / composed["image"]).read_bytes()).decode())
        wait.until(lambda d: body().get_attribute("data-searches") != before)
        time.sleep(1.0)
        shots["composed"] = shot(driver, "composed")
        r = np.array(render)
        result = {"bench": "workbench", "bundle": args.bundle, "queries": len(texts), "page_and_login_ms": round(page_ms, 1),
                  "first_grid_ms": round(render[0], 1), "grid_ms": {"p50": round(float(np.percentile(r, 50)), 1),
                                                                    "p95": round(float(np.percentile(r, 95)), 1),
                                                                    "max": round(float(r.max()), 1)},
                  "card_photos_loaded": f"{photos[1]}/{photos[0]}", "side_by_side_ndcg@10": ndcg,
                  "composed_query": {"text": composed.get("text", ""), "image": composed["image"]},
                  "screenshots": shots, "met": bool(r.max() < 1000), **machine()}
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    report("workbench", result)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
