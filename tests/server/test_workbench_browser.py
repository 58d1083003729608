"""The workbench in a real browser (issue 27): headless Chromium (Debian's chromium and chromium-driver, which `make
test` installs through `make browser`) driven by Selenium against a real server on a real port. Types a query, drops a
photo, judges results with the mouse and the keyboard, compares two columns, exports the judgments, checks the export
with `vitrine eval`, and shows that catalog text cannot inject script. Skips, saying why, without a browser."""
from __future__ import annotations

import base64
import json
import shutil
import time

import pytest

from tests.server.test_images_e2e import draw, png
from tests.server.test_live_photos import drawn_shop
from vitrine.cli.main import main
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.indexer.live import LiveConfig, LiveIndex
from vitrine.ranking.metrics import ndcg_at_k
from vitrine.ranking.pipeline import Searcher
from vitrine.ranking.types import Stage
from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig
from vitrine.ranking.search_config import SearchConfig
from vitrine.server.app import create_server, single
from vitrine.server.auth import KeyStore, create_key
from vitrine.server.http import http_app, start_http
from vitrine.server.search_service import SearchServicer
from vitrine.server.workbench import Workbench
from vitrine.serving.assemble import Served

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium/chromedriver on PATH: `make browser` installs Debian's (as root)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

XSS_TITLE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> Red Square poster'


@pytest.fixture(scope="module")
def shop(tmp_path_factory, keyword_encoder, tiny_cross_encoder_dir):
    """24 drawn products with photos, a tiny CLIP, a cross-encoder a column may turn on (the first stage is the
    default), a live index, API keys, and a text-only copy to compare with."""
    root = tmp_path_factory.mktemp("wb-shop")
    (root / "cat").mkdir()
    items, clip = drawn_shop(root / "cat", root / "clip")
    out = root / "bundle"
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False),
                 clip_encoder=clip, source=CatalogSource(dir=root / "cat", path=str(root / "cat" / "catalog.jsonl")))
    # The comparison copy is taken before the live index opens the bundle: a copy during its commits would race them.
    copy = Bundle(shutil.copytree(out, root / "copy"))
    keys_file = root / "keys.json"
    keys = {who: create_key(keys_file, "default", scopes, who)[1]
            for who, scopes in (("alice", ["search", "judge"]), ("bob", ["search", "judge"]), ("carol", ["search"]))}
    bundle = Bundle(out)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(commit_interval_s=0.05), clip)
    live.upsert([Item(id="xss", title=XSS_TITLE)])
    reranker = CrossEncoderReranker(tiny_cross_encoder_dir, RerankConfig(depth=8, max_length=32), device="cpu")
    searcher = Searcher(bundle, keyword_encoder, SearchConfig(stages=Stage.FIRST), clip_encoder=clip, reranker=reranker)
    served = create_server(single(Served(searcher), live), "127.0.0.1:0")
    text_only = SearchServicer(single(Served(Searcher(copy, keyword_encoder))))
    store = KeyStore.load(keys_file)
    wb = Workbench(served.search, store, lambda tenant: root / "judgments", compare={"text-only": text_only})
    http, thread = start_http(http_app(served.search, served.catalog, store, wb), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{http.servers[0].sockets[0].getsockname()[1]}"
    yield {"base": base, "keys": keys, "root": root, "target": f"127.0.0.1:{served.port}"}
    http.should_exit = True
    thread.join(10)
    served.stop(0)
    live.close()
    bundle.close()
    copy.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # As root in a container: no sandbox; no background networking (this machine's closed network refuses it).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def wait(driver, until, timeout=15):
    return WebDriverWait(driver, timeout).until(lambda d: until(d))


def log_in(driver, base: str, key: str) -> None:
    driver.delete_all_cookies()
    driver.get(base + "/ui")
    wait(driver, lambda d: d.find_element(By.ID, "key").is_displayed())
    driver.find_element(By.ID, "key").send_keys(key, Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "q").is_displayed())


def search(driver, text: str) -> list:
    before = driver.find_element(By.TAG_NAME, "body").get_attribute("data-searches") or "0"
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait(driver, lambda d: (d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") or "0") != before)
    return cards(driver, "A")


def cards(driver, col: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f'.column[data-col="{col}"] .card')


def judged_count(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-judged") or 0)


def grade_with_mouse(driver, card, grade: int) -> None:
    n = judged_count(driver)
    card.find_element(By.CSS_SELECTOR, f'.grade[data-grade="{grade}"]').click()
    wait(driver, lambda d: judged_count(d) == n + 1)


def grade_with_keyboard(driver, card, grade: int) -> None:
    n = judged_count(driver)
    driver.execute_script("arguments[0].focus()", card)
    driver.switch_to.active_element.send_keys(str(grade))
    wait(driver, lambda d: judged_count(d) == n + 1)


def drop_photo(driver, data: bytes) -> None:
    """A real drop event on the drop zone, carrying the photo as a File (what dragging one from the desktop sends)."""
    before = driver.find_element(By.TAG_NAME, "body").get_attribute("data-searches") or "0"
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "query.png", {type: "image/png"}));
        document.querySelector("#drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, base64.b64encode(data).decode())
    wait(driver, lambda d: (d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") or "0") != before)


def page_ndcg(driver, col: str) -> float:
    return float(driver.find_element(By.CSS_SELECTOR, f'.column[data-col="{col}"] .ndcg').get_attribute("data-value"))


def eval_ndcg(capsys, *args: str) -> float:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    return report["metrics"]["ndcg@10"]


def test_judge_compare_export_and_eval_in_a_real_browser(shop, browser, tmp_path, capsys):
    base, keys = shop["base"], shop["keys"]
    log_in(browser, base, keys["alice"])
    shown = search(browser, "Red Square")
    render_ms = float(browser.find_element(By.CSS_SELECTOR, '.column[data-col="A"] .grid').get_attribute("data-render-ms"))
    with capsys.disabled():   # the figure, in the test's output (pytest -s)
        print(f"\nfirst result grid for a text query rendered in {render_ms:.1f} ms")
    assert render_ms < 1000
    titles = [c.find_element(By.CLASS_NAME, "title").text for c in shown]
    assert len(shown) >= 10 and titles[0].startswith("Red Square")
    assert shown[0].find_element(By.CLASS_NAME, "photo").get_attribute("naturalWidth") == "16"   # served from the bundle
    ids = [c.get_attribute("data-id") for c in shown]
    # Three grades: two with the mouse, one with the keyboard.
    # Grades out of the ranking's order, so nDCG@10 is below 1 and means something.
    grade_with_mouse(browser, shown[0], 1)
    grade_with_keyboard(browser, shown[1], 2)
    grade_with_mouse(browser, shown[2], 0)
    assert [c.get_attribute("data-grade") for c in cards(browser, "A")[:3]] == ["1", "2", "0"]
    mine = {ids[0]: 1, ids[1]: 2, ids[2]: 0}
    assert page_ndcg(browser, "A") == pytest.approx(ndcg_at_k(ids, mine, 10), abs=1e-6)
    # The explanation opens on the card.
    shown = cards(browser, "A")
    shown[0].find_element(By.CLASS_NAME, "why").click()
    assert "bm25" in shown[0].find_element(By.CLASS_NAME, "explain").text

    # Side by side: column B is the text-only comparison bundle; its rank changes are marked against A.
    browser.find_element(By.ID, "compare").click()
    wait(browser, lambda d: cards(d, "B"))
    target = browser.find_element(By.CSS_SELECTOR, '.column[data-col="B"] .target')
    n = browser.find_element(By.TAG_NAME, "body").get_attribute("data-searches")
    target.find_element(By.CSS_SELECTOR, 'option[value="bundle:text-only"]').click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") != n)
    b_ids = [c.get_attribute("data-id") for c in cards(browser, "B")]
    a_ids = [c.get_attribute("data-id") for c in cards(browser, "A")]
    assert a_ids == ids and b_ids != a_ids
    marks = {c.get_attribute("data-id"): c.find_element(By.CLASS_NAME, "mark").text for c in cards(browser, "B")}
    for rank, item in enumerate(b_ids[:10]):
        expected = "new" if item not in a_ids else ("" if a_ids.index(item) == rank else
                                                    ("▲" if a_ids.index(item) > rank else "▼") + str(abs(a_ids.index(item) - rank)))
        assert marks[item] == expected
    assert page_ndcg(browser, "B") == pytest.approx(ndcg_at_k(b_ids, mine, 10), abs=1e-6)
    # Page 2: ranks go on from 21, and marks compare whole rankings (not page 2 against page 2).
    n = browser.find_element(By.TAG_NAME, "body").get_attribute("data-searches")
    browser.find_element(By.ID, "next").click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") != n)
    a_all = a_ids + [c.get_attribute("data-id") for c in cards(browser, "A")]
    b_page = cards(browser, "B")
    b_all = b_ids + [c.get_attribute("data-id") for c in b_page]
    assert b_page and b_page[0].find_element(By.CLASS_NAME, "rank").text == str(len(b_ids) + 1)
    for c in b_page:
        item, rank = c.get_attribute("data-id"), b_all.index(c.get_attribute("data-id"))
        before = a_all.index(item) if item in a_all else None
        expected = ("new" if before is None else "" if before == rank else
                    ("▲" if before > rank else "▼") + str(abs(before - rank)))
        assert c.find_element(By.CLASS_NAME, "mark").text == expected
    assert page_ndcg(browser, "B") == pytest.approx(ndcg_at_k(b_ids, mine, 10), abs=1e-6)   # the query's, not page 2's
    browser.save_screenshot(str(tmp_path / "side-by-side.png"))
    browser.find_element(By.ID, "compare").click()

    # A photo dropped on the page: an image query, graded too (its photo is kept with the judgments).
    photo = png(draw("Blue", "Stripe", 5))
    browser.find_element(By.ID, "q").clear()   # text left in the box would make it a composed query
    drop_photo(browser, photo)
    by_photo = cards(browser, "A")
    assert [c.find_element(By.CLASS_NAME, "title").text for c in by_photo[:1]] == ["Blue Stripe"]
    photo_ids = [c.get_attribute("data-id") for c in by_photo]
    grade_with_mouse(browser, by_photo[0], 1)
    browser.find_element(By.ID, "q").send_keys("typed, not searched")   # a grade belongs to the query shown
    grade_with_keyboard(browser, by_photo[1], 2)
    browser.save_screenshot(str(tmp_path / "photo.png"))

    # Export, then `vitrine eval` on the export and on the same grades written by hand: the same nDCG@10.
    out = tmp_path / "judged"
    assert main(["judgments", "export", "--from", str(shop["root"] / "judgments"), "--out", str(out)]) == 0
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "query.png").write_bytes(photo)
    (hand / "queries.jsonl").write_text(json.dumps({"qid": "text", "text": "Red Square"}) + "\n"
                                        + json.dumps({"qid": "photo", "image": "query.png"}) + "\n")
    rows = [("text", i, g) for i, g in mine.items()] + [("photo", photo_ids[0], 1), ("photo", photo_ids[1], 2)]
    (hand / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{i}\t{g}\n" for q, i, g in rows))
    from_page = eval_ndcg(capsys, "--target", shop["target"], "--judgments", str(out))
    by_hand = eval_ndcg(capsys, "--target", shop["target"], "--queries", str(hand / "queries.jsonl"),
                        "--qrels", str(hand / "qrels.tsv"), "--image-root", str(hand))
    with capsys.disabled():
        print(f"\nnDCG@10 from the page's judgments {from_page:.6f}, from the same judgments by hand {by_hand:.6f}")
    assert from_page == by_hand and 0 < from_page < 1

    # A second judge grades the same text query, differing on one item: the export reports the agreement.
    log_in(browser, base, keys["bob"])
    shown = search(browser, "red square")   # the same query, typed differently
    assert [c.get_attribute("data-id") for c in shown] == ids
    grade_with_mouse(browser, shown[0], 1)
    grade_with_mouse(browser, shown[1], 2)
    grade_with_mouse(browser, shown[2], 2)
    capsys.readouterr()
    assert main(["judgments", "export", "--from", str(shop["root"] / "judgments"), "--out", str(tmp_path / "two"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    agreement = json.loads((tmp_path / "two" / "agreement.json").read_text())
    (pair,) = agreement["judge_pairs"]
    assert sorted(pair["judges"]) == ["alice", "bob"] and pair["shared"] == 3
    assert pair["kappa"] == pytest.approx(0.5)   # observed 2/3, chance 1/3 (grades 1,2,0 against 1,2,2)
    assert [(d["item"], d["grades"]) for d in agreement["disagreements"]] == [(ids[2], {"alice": 0, "bob": 2})]
    assert summary["judges"] == 2


def test_catalog_text_cannot_inject_script(shop, browser):
    log_in(browser, shop["base"], shop["keys"]["alice"])
    shown = search(browser, "poster")
    titles = {c.get_attribute("data-id"): c.find_element(By.CLASS_NAME, "title").text for c in shown}
    assert titles["xss"] == XSS_TITLE                          # shown as the characters it is
    time.sleep(0.3)                                            # an onerror handler would have run by now
    assert browser.execute_script("return window.__xss") is None
    assert not browser.find_elements(By.CSS_SELECTOR, ".card script, .card img[src='x']")


def test_a_key_without_judge_can_look_but_not_grade(shop, browser):
    log_in(browser, shop["base"], shop["keys"]["carol"])
    shown = search(browser, "Green Stripe")
    assert shown and all(not b.is_enabled() for b in shown[0].find_elements(By.CLASS_NAME, "grade"))
    assert "look only" in browser.find_element(By.ID, "who").text
    # Even a request made past the disabled buttons is refused by the server.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/ui/api/judge", {method: "POST", headers: {"content-type": "application/json",
              "x-csrf-token": document.querySelector('meta[name="csrf-token"]').content},
              body: JSON.stringify({text: "Green Stripe", item: arguments[0], grade: 2})}).then(r => done(r.status));
    """, shown[0].get_attribute("data-id"))
    assert status in (403, 401)


def test_a_column_can_weigh_sources_turn_on_the_second_stage_and_explain_its_change(shop, browser):
    log_in(browser, shop["base"], shop["keys"]["carol"])
    search(browser, "Red Square")
    browser.find_element(By.ID, "compare").click()
    wait(browser, lambda d: cards(d, "B"))
    # A fusion weight per source: BM25 weighed 0 in B changes B's scores, not A's.
    scores = lambda col: [c.find_element(By.CLASS_NAME, "score").text for c in cards(browser, col)]  # noqa: E731
    assert scores("A") == scores("B")
    n = browser.find_element(By.TAG_NAME, "body").get_attribute("data-searches")
    weight = browser.find_element(By.CSS_SELECTOR, '.column[data-col="B"] .weight[data-source="bm25"]')
    weight.send_keys("0", Keys.TAB)
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") != n)
    assert scores("A") != scores("B")
    n = browser.find_element(By.TAG_NAME, "body").get_attribute("data-searches")
    stages = browser.find_element(By.CSS_SELECTOR, '.column[data-col="B"] .stages')
    stages.find_element(By.CSS_SELECTOR, 'option[value="cross"]').click()
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searches") != n)
    meta = [browser.find_element(By.CSS_SELECTOR, f'.column[data-col="{c}"] .meta').text.split(" ")[0] for c in "AB"]
    assert meta == ["first", "cross"]
    first = cards(browser, "B")[0]
    first.find_element(By.CLASS_NAME, "why").click()
    text = first.find_element(By.CLASS_NAME, "explain").text
    assert "cross-encoder=" in text and "second stage (cross): fused rank" in text
    browser.find_element(By.ID, "compare").click()
