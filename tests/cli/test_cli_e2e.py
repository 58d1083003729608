"""End to end through the command line: `vitrine index`, `vitrine serve --port 0`, `vitrine search`, with real MiniLM."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vitrine.cli.demo import generate_catalog, start_server
from vitrine.cli.main import main

VITRINE = [sys.executable, "-m", "vitrine.cli.main"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*VITRINE, *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"vitrine {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    catalog = generate_catalog(root / "catalog.jsonl", n=120)
    out = root / "bundle"
    proc = run("index", "--catalog", str(catalog), "--out", str(out), "--quiet")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["items"] == 120 and summary["vectors"]["text"]["count"] == 120
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["models"]["text"]["dim"] == 384
    assert not list(root.glob(".bundle.tmp-*"))  # the temporary directory was renamed away
    return out


@pytest.fixture(scope="module")
def server(bundle):
    proc, target = start_server(bundle)
    yield target
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # graceful shutdown


def test_search_from_another_process(server):
    proc = run("search", "--target", server, "--text", "green watch for men", "--k", "5", "--fields", "title,attributes")
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(hits) == 5
    top = hits[0]["fields"]
    assert top["attributes"]["article_type"] == "Watches" and top["attributes"]["color"] == "Green" and top["attributes"]["gender"] == "Men"
    assert set(hits[0]["sources"]) <= {"bm25", "text"}


def test_filters_from_cli(server):
    proc = run("search", "--target", server, "--text", "shirt", "--filter", "color=Red", "--k", "20", "--fields", "attributes")
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    assert hits and all(h["fields"]["attributes"]["color"] == "Red" for h in hits)


def test_batch_mode_writes_a_run(server, tmp_path):
    queries = tmp_path / "queries" / "q.jsonl"
    queries.parent.mkdir()
    queries.write_text(json.dumps({"qid": "q1", "text": "red dress"}) + "\n" +
                       json.dumps({"qid": "q2", "text": "navy blue jeans", "exclude_ids": ["demo-0"]}) + "\n")
    out = tmp_path / "run.jsonl"
    proc = run("search", "--target", server, "--queries", str(queries), "--k", "7", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["qid"] for r in rows] == ["q1", "q2"] and all(len(r["hits"]) == 7 for r in rows)
    assert "demo-0" not in {h["id"] for h in rows[1]["hits"]}
    assert "p99" in json.loads(proc.stderr.strip().splitlines()[-1])["latency_ms"]


def test_bad_input_exits_nonzero_with_status(server, tmp_path):
    proc = run("search", "--target", server, "--text", "", check=False)
    assert proc.returncode == 1 and "INVALID_ARGUMENT: text" in proc.stderr
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    proc = run("search", "--target", server, "--image", str(bad), check=False)
    assert proc.returncode == 1 and "INVALID_ARGUMENT: image" in proc.stderr
    proc = run("search", "--target", server, "--text", "x", "--filter", "size=M", check=False)
    assert proc.returncode == 1 and "unknown filter field 'size'" in proc.stderr


def test_index_reports_bad_lines_with_numbers(tmp_path, capsys):
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "ok"}\n{broken\n{"id": "a"}\n')
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--no-text-vectors"]) == 2
    err = capsys.readouterr().err
    assert "line 2: invalid JSON" in err and "line 3: duplicate id 'a'" in err
    assert not (tmp_path / "b").exists()
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--no-text-vectors", "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 invalid line(s)" in captured.err
    assert json.loads(captured.out)["items"] == 1


def test_serve_missing_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--bundle", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "is not a Vitrine bundle" in capsys.readouterr().err


def test_bad_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "vitrine.toml"
    cfg.write_text("[search]\nfusion = 'magic'\n")
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "ok"}\n')
    assert main(["index", "--catalog", str(catalog), "--out", str(tmp_path / "b"), "--config", str(cfg)]) == 2
    assert "search.fusion" in capsys.readouterr().err
